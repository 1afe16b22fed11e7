"""Run storage: the run folder, `trials.jsonl`, and the Optuna study that mirrors it.

A run folder holds everything a search leaves behind (DESIGN.md §6):

    runs/<name>/config.json        the RunConfig, so `--resume` needs nothing else
    runs/<name>/study.journal      the Optuna study (unless --storage names another)
    runs/<name>/trials.jsonl       one line per finished trial (the source of truth)
    runs/<name>/weights/<n>.safetensors   trained weights of the best trials (and with --inherit of
                                          evolution's population, the parents of later children)
    runs/<name>/best/              arch.txt and weights.safetensors of the current best

Only the driver process writes here; workers hand their results back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

STATUSES = ("ok", "failed", "rejected", "stopped")


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial, as written to trials.jsonl."""

    number: int
    arch: str
    id: str
    status: str  # ok | failed | rejected (cheap constraint, never trained) | stopped (at a rung, by the scheduler)
    reason: str | None
    objectives: tuple[float, ...] | None  # in the order of the run's objectives (a stopped trial's: at its last rung); None unless usable
    metrics: dict[str, float] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0  # the candidate's own training and evaluation time
    wall: float = 0.0  # from proposal to record, as the driver saw it
    finished_at: float = 0.0  # seconds since the search started (summed over resumed sessions)
    reused_from: int | None = None  # a duplicate architecture: the trial whose result was reused
    origin: str = ""  # how the strategy made it: seed, sample, mutation, crossover, optuna
    parent: int | None = None  # the trial it was made from (evolution; a crossover's first parent)
    inherited: int = 0  # tensors it started from the parent's trained weights (--inherit)
    rung: int | None = None  # the highest rung it reached (1 = the first; the ladder's length: the full budget); None without rungs
    rung_scores: tuple[float, ...] = ()  # its score (val metric of a cooled-down copy) at each intermediate rung it reached

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "TrialRecord":
        data = json.loads(line)
        if data.get("objectives") is not None:
            data["objectives"] = tuple(data["objectives"])
        data["rung_scores"] = tuple(data.get("rung_scores", ()))
        return cls(**data)


class RunFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def trials_path(self) -> Path:
        return self.path / "trials.jsonl"

    @property
    def journal_path(self) -> Path:
        return self.path / "study.journal"

    def weights_path(self, number: int) -> Path:
        return self.path / "weights" / f"{number}.safetensors"

    def exists(self) -> bool:
        return self.config_path.exists()

    def create(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "weights").mkdir(exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.path} is not a run folder (no config.json)")
        return json.loads(self.config_path.read_text())

    def append(self, record: TrialRecord) -> None:
        """Append one trial durably: a crash after this returns loses nothing."""
        with open(self.trials_path, "a") as f:
            f.write(record.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())

    def trials(self) -> list[TrialRecord]:
        """Finished trials in the order they finished; a torn last line (a crash mid-write) is skipped."""
        if not self.trials_path.exists():
            return []
        records = []
        for line in self.trials_path.read_text().splitlines():
            try:
                records.append(TrialRecord.from_json(line))
            except (json.JSONDecodeError, TypeError):
                continue
        return records

    def study(
        self, storage: str | None, directions: list[str], sampler: optuna.samplers.BaseSampler, suffix: str = "",
        pruner: optuna.pruners.BasePruner | None = None,
    ) -> optuna.Study:
        """The run's Optuna study (or, with a `suffix`, a companion study in the same storage):
        created on first use, loaded on resume.  A pruner is not stored with a study: it is given
        again at every load (None: none, not Optuna's default median pruner)."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        backend = storage or JournalStorage(JournalFileBackend(str(self.journal_path)))
        return optuna.create_study(
            storage=backend,
            study_name=self.path.name + suffix,
            directions=directions,
            sampler=sampler,
            pruner=pruner or optuna.pruners.NopPruner(),
            load_if_exists=True,
        )  # fmt: skip


@dataclass(frozen=True)
class Leader:
    rank: int
    record: TrialRecord


def scored(records: list[TrialRecord]) -> list[TrialRecord]:
    """Trials trained to the full budget with a usable objective, counting a reused result once
    (under its first trial)."""
    return [r for r in records if r.status == "ok" and r.objectives and r.reused_from is None]


def leaderboard(records: list[TrialRecord], maximize: bool) -> list[Leader]:
    """Trials with a score, best first: those trained to the full budget and those the scheduler
    stopped at a rung, ranked first by the rung they reached (a higher rung ranks higher) and then
    by their score there, so candidates are only compared at equal budget."""
    sign = 1.0 if maximize else -1.0
    candidates = [r for r in records if r.status in ("ok", "stopped") and r.objectives and r.reused_from is None]
    ranked = sorted(candidates, key=lambda r: (r.rung or 0, sign * r.objectives[0]), reverse=True)
    return [Leader(i + 1, r) for i, r in enumerate(ranked)]
