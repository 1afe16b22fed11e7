"""Run storage: the run folder, `trials.jsonl`, and the Optuna study that mirrors it.

A run folder holds everything a search leaves behind (`writable_targets` lists what a session
writes):

    runs/<name>/config.json        the RunConfig, so `--resume` needs nothing else
    runs/<name>/study.journal      the Optuna study (unless --storage names another); it decides
                                   which trials finished, and keeps a copy of each trial's record
    runs/<name>/trials.jsonl       one line per finished trial: arch, id, metrics, costs, status,
                                   reason, test metrics at other lengths (`RunConfig.eval_lengths`)
                                   (a line lost in a crash is restored from the study's copy)
    runs/<name>/weights/<n>.safetensors   trained weights of the best trials (and with --inherit of
                                          evolution's population, the parents of later children)
    runs/<name>/best/              arch.txt, trial.json and weights.safetensors of the current best
    runs/<name>/finalists.jsonl, finalists.json   the finalists stage's trainings and its summary
    runs/<name>/tune/              Ray Tune's own state (executor ray)

Only the driver process writes here; workers hand their results back.  A folder's identity is the
name of its study (`RunConfig.study`, in config.json), never its path, so a run folder can be
moved, copied or renamed and still resumed.  Every line of trials.jsonl is checked when read: a
damaged one is reported (one warning line, with its line number) and skipped.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

STATUSES = ("ok", "failed", "rejected", "stopped")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (unwritable, a study that is not its own, ...)."""


class DamagedRecord(ValueError):
    """A line of trials.jsonl that is not a valid trial record."""


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and all(_number(x) for x in v)


def _named_numbers(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _number(x) for k, x in v.items())


def _length_rows(v: Any) -> bool:
    """`TrainResult.lengths`: per factor, its factor and tokens, then test metrics (null where not
    finite) or a failure's reason and detail."""
    return isinstance(v, list) and all(
        isinstance(row, dict) and _whole(row.get("factor")) and row["factor"] >= 1 and _whole(row.get("tokens"))
        and all(isinstance(k, str) and (x is None or _number(x) or isinstance(x, str)) for k, x in row.items())
        for row in v
    )  # fmt: skip


# field -> (check, what it must be); a record must have the first six
FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "number": (lambda v: _whole(v) and v >= 0, "a trial number (a whole number >= 0)"),
    "arch": (lambda v: isinstance(v, str) and v != "", "architecture text"),
    "id": (lambda v: isinstance(v, str) and v != "", "an architecture id"),
    "status": (lambda v: v in STATUSES, "one of " + ", ".join(STATUSES)),
    "reason": (lambda v: v is None or isinstance(v, str), "text or null"),
    "objectives": (lambda v: v is None or (_numbers(v) and len(v) > 0), "a list of numbers or null"),
    "metrics": (_named_numbers, "an object of numbers"),
    "costs": (_named_numbers, "an object of numbers"),
    "steps": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "seconds": (_number, "a number"),
    "wall": (_number, "a number"),
    "finished_at": (_number, "a number"),
    "reused_from": (lambda v: v is None or _whole(v), "a trial number or null"),
    "origin": (lambda v: isinstance(v, str), "text"),
    "parent": (lambda v: v is None or _whole(v), "a trial number or null"),
    "inherited": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "rung": (lambda v: v is None or (_whole(v) and v >= 0), "a whole number or null"),
    "rung_scores": (_numbers, "a list of numbers"),
    "device": (lambda v: isinstance(v, str), "text"),
    "node": (lambda v: isinstance(v, str), "text"),
    "lengths": (_length_rows, "a list of rows, each with a factor, tokens and test metrics or a reason"),
}
REQUIRED = ("number", "arch", "id", "status", "reason", "objectives")


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    device: str = ""  # where it trained ("cpu", "cuda:0 <name>"); "" if it never started (or a record from before)
    node: str = ""  # the id of the Ray node it ran on; "" inline
    # with `RunConfig.eval_lengths`, of a trial trained to the full budget: `TrainResult.lengths`
    # (per factor of the task's length: factor, tokens, test metrics, or why that length failed)
    lengths: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "TrialRecord":
        """Read and check one line of trials.jsonl; `DamagedRecord` says what is wrong with it."""
        from einsearch.grammar import ArchSyntaxError, parse

        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise DamagedRecord(f"not JSON ({e.msg} at column {e.colno}): cut short or overwritten?") from None
        if not isinstance(data, dict):
            raise DamagedRecord(f"not a trial record but JSON {type(data).__name__}")
        missing = [name for name in REQUIRED if name not in data]
        unknown = sorted(set(data) - set(FIELD_CHECKS))
        if missing or unknown:
            raise DamagedRecord("; ".join(filter(None, (
                missing and f"missing {', '.join(missing)}", unknown and f"unknown field {shorten(', '.join(unknown), 40)}"))))  # fmt: skip
        for name, value in data.items():
            check, wanted = FIELD_CHECKS[name]
            if not check(value):
                raise DamagedRecord(f"{name} is {shorten(json.dumps(value), 40)}, not {wanted}")
        try:
            arch = parse(data["arch"])
        except (ArchSyntaxError, RecursionError, ValueError):
            raise DamagedRecord(f"arch {shorten(json.dumps(data['arch']), 40)} is not valid architecture text") from None
        if arch.id != data["id"]:
            raise DamagedRecord(f"id {shorten(data['id'], 20)} is not the id of its arch ({arch.id})")
        if data["objectives"] is not None:
            data["objectives"] = tuple(data["objectives"])
        data["rung_scores"] = tuple(data.get("rung_scores", ()))
        data["lengths"] = tuple(data.get("lengths", ()))  # a record from before eval_lengths has none
        return cls(**data)


@dataclass(frozen=True)
class Damage:
    """A line of trials.jsonl that was skipped, and why."""

    line: int  # 1-based
    problem: str


def warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class RunFolder:
    def __init__(self, path: str | os.PathLike, warn: Callable[[str], None] = warn_stderr):
        """`warn` gets one line per problem found when reading the folder (each reported once)."""
        self.path = Path(path)
        self.warn = warn
        self._warned: set[str] = set()

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

    def write_config(self, config: dict[str, Any]) -> None:
        """Rewrite config.json (of an existing run folder)."""
        self.config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    def append(self, record: TrialRecord) -> None:
        """Append one trial durably: a crash after this returns loses nothing.  A torn last line
        (a crash mid-write) is closed first, so it cannot swallow this record."""
        with open(self.trials_path, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(record.to_json().encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def read_trials(self) -> tuple[list[TrialRecord], list[Damage]]:
        """Finished trials in the order they finished, and the lines skipped as damaged (not a
        valid record, or a second record of a trial number)."""
        if not self.trials_path.exists():
            return [], []
        records: list[TrialRecord] = []
        damaged: list[Damage] = []
        first_line: dict[int, int] = {}
        text = self.trials_path.read_bytes().decode("utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = TrialRecord.from_json(line)
            except DamagedRecord as e:
                damaged.append(Damage(n, str(e)))
                continue
            if record.number in first_line:
                damaged.append(Damage(n, f"trial {record.number} is recorded already, on line {first_line[record.number]}"))
                continue
            first_line[record.number] = n
            records.append(record)
        return records, damaged

    def trials(self) -> list[TrialRecord]:
        """Finished trials in the order they finished; damaged lines are reported (once) and skipped."""
        records, damaged = self.read_trials()
        for d in damaged:
            self.report(f"{self.trials_path} line {d.line}: damaged record skipped: {d.problem}")
        return records

    def report(self, message: str) -> None:
        """Warn about a problem with the folder, once per message."""
        if message not in self._warned:
            self._warned.add(message)
            self.warn(message)

    # ------------------------------------------------------------------ checks before writing
    def writable_targets(self, journal: bool) -> list[Path]:
        """What a session writes to: the folder, its subfolders, and the files it appends to or
        rewrites (the journal only when the study lives there)."""
        names = ["config.json", "trials.jsonl", "weights", "best", "best/arch.txt", "best/trial.json",
                 "best/weights.safetensors", "finalists.jsonl", "finalists.json", "tune"]  # fmt: skip
        if journal:
            names += [self.journal_path.name, self.journal_path.name + ".lock"]
        return [self.path] + [self.path / name for name in names]

    def check_writable(self, journal: bool = True) -> None:
        """Refuse (`RunFolderError`) before anything starts when the session could not record
        what it does: an unwritable folder or file (permissions, a read-only mount, immutable)."""
        target = self.path
        if not target.exists():  # a new run: the nearest existing folder above must take it
            while not target.exists() and target != target.parent:
                target = target.parent
            if not os.access(target, os.W_OK | os.X_OK):
                raise RunFolderError(f"cannot create run folder {shorten(str(self.path))}: {shorten(str(target))} is not writable")
            return
        for target in self.writable_targets(journal):
            mode = os.W_OK | (os.X_OK if target.is_dir() else 0)
            if target.exists() and not os.access(target, mode):
                what = "folder" if target.is_dir() else "file"
                raise RunFolderError(f"run folder {shorten(str(self.path))}: the {what} {shorten(target.name, 40)} is not writable "
                                     "(permissions, read-only mount or immutable); a run must record every trial")  # fmt: skip

    def storage(self, storage: str | None) -> str | JournalStorage:
        """The Optuna storage: a URL, or (None) the journal file in this folder."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return storage or JournalStorage(JournalFileBackend(str(self.journal_path)))

    def study_name(self, storage: str | None) -> str:
        """The name of the run's study, for a run folder whose config.json does not name it
        (written before names were stored): the one main study in its storage (companion
        ``.rungs`` studies aside), or the folder's name when none is there yet."""
        if storage is None and not self.journal_path.exists():
            return self.path.name
        names = sorted(n for n in optuna.get_all_study_names(self.storage(storage)) if not n.endswith(".rungs"))
        if len(names) > 1:
            raise RunFolderError(
                f"run folder {shorten(str(self.path))}: its storage holds {len(names)} studies ({shorten(', '.join(names), 60)}) "
                'and config.json names none; add "study": "<name>" to config.json'
            )
        return names[0] if names else self.path.name

    def study(
        self, storage: str | None, directions: list[str], sampler: optuna.samplers.BaseSampler, suffix: str = "",
        pruner: optuna.pruners.BasePruner | None = None, name: str | None = None,
    ) -> optuna.Study:
        """The run's Optuna study `name` (default: the folder's name) or, with a `suffix`, a
        companion study in the same storage: created on first use, loaded on resume.  A pruner
        is not stored with a study: it is given again at every load (None: none, not Optuna's
        default median pruner)."""
        return optuna.create_study(
            storage=self.storage(storage),
            study_name=(name or self.path.name) + suffix,
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
