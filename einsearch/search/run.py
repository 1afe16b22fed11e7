"""The search driver: proposes candidates, keeps the books, and decides when to stop.

`Search` is the single writer of a run folder.  Executors (inline, Ray Tune) only ask it for
the next `Job` and hand back each job's outcome:

    job = search.next_job()          # None: nothing more to start (trial count or time reached)
    outcome = evaluate(job)          # in a worker: train and score one candidate
    search.finish(job, outcome)      # record it (trials.jsonl + Optuna study), tell the strategy

Successive halving (``scheduler="asha"``): a job trains to the full budget but is scored at each
intermediate rung of the ladder (`RunConfig.ladder`; the trainer scores a cooled-down copy, so the
run itself goes on unchanged); the scheduler stops the weak ones there (inline: Optuna's
`SuccessiveHalvingPruner` on a companion study ``<name>.rungs``; on Ray: Ray Tune's
`ASHAScheduler`), and the promoted ones simply keep training, from where they are.  A stopped
trial is recorded as ``stopped`` with the rung it reached and its score there.

Before a job is handed out, duplicates (same `Arch.id` as a finished trial) reuse that trial's
result, and candidates over `max_params`/`max_flops`/`max_state` are rejected; neither costs any
training.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from einsearch.arch import Arch
from einsearch.costs import costs as measure
from einsearch.grammar import SpaceError, equivalence_key, load_space, parse, suggest
from einsearch.grammar.seeds import resolve
from einsearch.search.config import RunConfig
from einsearch.search.record import DamagedRecord, RunFolder, RunFolderError, TrialRecord, leaderboard, shorten
from einsearch.search.strategies import make_strategy
from einsearch.tasks import Task, get_task
from einsearch.tasks.base import Suite
from einsearch.limits import train_limited
from einsearch.train import TrainConfig, TrainResult, length_task

# A search gives up when its strategy has made this many proposals per trial asked for (the rest
# duplicates of trained ones or over a constraint): the space under its limits is used up.
PROPOSALS_PER_TRIAL = 10

COST_KEYS = {"params": "params", "flops": "flops_per_token", "state": "state_size"}


@dataclass
class Job:
    """One candidate to train: its tree, its task and how it trains. Within the driver's process
    it is passed as it is; `to_dict` is the plain data (the tree's text, the config as a dict) that
    travels to a worker, where `from_dict` (or `evaluate`) reads it back."""

    number: int
    arch: Arch
    task: str
    train: TrainConfig
    started: float = 0.0  # the driver's clock when the job was handed out (not sent to workers)

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "arch": self.arch.text, "task": self.task, "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(data["number"], parse(data["arch"]), data["task"], TrainConfig.from_dict(data["train"]))


def evaluate(job: Job | dict[str, Any], callback=None, state_path: str | None = None, ray_worker: bool = False) -> dict[str, Any]:
    """Train one job's candidate and return its `TrainResult` as a dict (in this process, or in a
    worker given the job's `to_dict`). `callback(step, val_metrics)` sees the scores at the job's
    rungs (and any ``eval_every`` evaluation) and may stop it; `state_path`: see `TrainConfig.state_path`.
    In a Ray worker (`ray_worker`), device auto is cuda exactly when Ray gave this worker a GPU
    (Ray 2.60 no longer hides the GPUs from a worker that asked for none, so torch's own view
    would put every trial on a GPU nobody reserved); elsewhere the trainer resolves it."""
    job = Job.from_dict(job) if isinstance(job, dict) else job
    config = job.train if state_path is None else replace(job.train, state_path=state_path)
    if ray_worker and config.device == "auto":
        import ray

        config = replace(config, device="cuda" if ray.get_gpu_ids() else "cpu")
    return train_limited(job.arch, job.task, config, callback=callback).to_dict()  # killed in a long step


class Search:
    def __init__(self, config: RunConfig, folder: RunFolder):
        """Check the configuration (task, space, strategy, seeds) without touching the folder."""
        self.config, self.folder = config, folder
        self.task = get_task(config.task)
        for factor in config.eval_lengths:  # a task without a length, or too long a one: TaskError now, not in each trial
            length_task(self.task, factor)
        self.space = load_space(config.space)
        self.maximize = self.task.mode == "max"
        self.seeds = tuple(resolve(text) for text in config.seed_archs)
        for seed in self.seeds:
            reason = self.space.explain(seed)
            if reason is not None:
                raise SpaceError(f"seed architecture {seed.text} is not in space {self.space.name}: {reason}")
        self.strategy = make_strategy(config.strategy, self.space, config.seed, self.seeds, self.maximize)
        self.records: list[TrialRecord] = []
        self.running: dict[int, tuple[Job, optuna.Trial]] = {}
        self.known: dict[str, TrialRecord] = {}  # `equivalence` key -> the trial that trained it
        self.elapsed_before = 0.0
        self.clock_start = time.monotonic()
        self._best_written: int | None = None  # the trial whose files are in best/
        # a suite (mad) trains its members one after another: no score at a rung, no rungs
        self.ladder = config.ladder if not isinstance(self.task, Suite) else config.ladder[-1:]
        self.reached: dict[int, int] = {}  # running trial -> rungs it has passed (progress view)
        self.pruning: dict[int, optuna.Trial] = {}  # running trial -> its trial in the rung study (inline)
        self.rung_study: optuna.Study | None = None  # successive halving's bookkeeping (inline)

    def attach(self) -> None:
        """Open the run folder's study and replay its finished trials (a resumed run continues);
        trials.jsonl is first reconciled with the study (`_reconcile`)."""
        directions = ["maximize" if self.maximize else "minimize"] + ["minimize"] * (len(self.config.objectives) - 1)
        name = self.config.study or self.folder.path.name
        self.study = self.folder.study(self.config.storage, directions, self.strategy.sampler(self.config.seed), name=name)
        self.records = self._reconcile(self.folder.trials())
        self.strategy.replay(self.records)
        self.known = {self.equivalence(parse(r.arch)): r for r in self.records if r.reused_from is None and r.status in ("ok", "failed", "stopped")}
        self.elapsed_before = max((r.finished_at for r in self.records), default=0.0)
        self.clock_start = time.monotonic()
        if len(self.ladder) > 1 and self.config.executor == "inline":  # Ray Tune's scheduler decides on Ray
            pruner = optuna.pruners.SuccessiveHalvingPruner(
                min_resource=self.ladder[0], reduction_factor=self.config.eta, min_early_stopping_rate=0
            )
            direction = ["maximize" if self.maximize else "minimize"]
            sampler = optuna.samplers.RandomSampler(seed=self.config.seed)  # samples nothing: trials carry no parameters
            self.rung_study = self.folder.study(self.config.storage, direction, sampler, suffix=".rungs", pruner=pruner, name=name)
        self._fail_stale_trials()

    def _reconcile(self, records: list[TrialRecord]) -> list[TrialRecord]:
        """The study is the source of truth for which trials finished.  A record of a trial the
        study does not hold means the study is not this run's: refused.  A trial finished in the
        study without a valid record (a crash between the two writes, a damaged line) is recorded
        again from the copy the study keeps, or else reported as missing (and not counted)."""
        frozen = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        strangers = sorted(r.number for r in records if r.number not in frozen)
        if strangers:
            raise RunFolderError(
                f"run folder {shorten(str(self.folder.path))}: study {shorten(self.study.study_name, 40)!r} does not hold trial(s) "
                f"{', '.join(map(str, strangers[:5]))}{' ...' if len(strangers) > 5 else ''} of trials.jsonl: it is not this run's study"
            )
        recorded = {r.number for r in records}
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        restored = []
        for number, t in sorted(frozen.items()):
            if number in recorded or t.state not in finished:
                continue
            copy = t.user_attrs.get("record")
            if copy is None:  # never recorded (interrupted, closed as stale), or a study from before copies
                if "record" not in t.user_attrs and "status" in t.user_attrs:
                    self.folder.report(f"trial {number} finished in the study but has no record in trials.jsonl (and the study no copy); not counted")
                continue
            try:
                record = TrialRecord.from_json(copy)
            except DamagedRecord as e:
                self.folder.report(f"trial {number} finished in the study but has no valid record, here or there ({e}); not counted")
                continue
            self.folder.append(record)
            restored.append(record)
            self.folder.report(f"trial {number} finished in the study but had no valid record in trials.jsonl; recorded again from the study")
        if not restored:
            return records
        return sorted(records + restored, key=lambda r: r.finished_at)  # finishing order (stable)

    # ------------------------------------------------------------------ state
    def equivalence(self, arch: Arch) -> str:
        """A key shared by the architectures that train the same on this task (`equivalence_key`
        at the task's length), so a proposal equal to a trained one in all but a no-op reuses its
        result."""
        return equivalence_key(arch, self.task.tokens)

    @property
    def elapsed(self) -> float:
        """Search time in seconds, summed over the sessions of a resumed run."""
        return self.elapsed_before + time.monotonic() - self.clock_start

    @property
    def remaining_time(self) -> float | None:
        return None if self.config.time_budget is None else max(0.0, self.config.time_budget - self.elapsed)

    @property
    def counted(self) -> int:
        """Trials that count towards `RunConfig.trials`: those trained (or failed trying), not the
        proposals that reused an earlier result or were rejected by a constraint."""
        return sum(r.reused_from is None and r.status != "rejected" for r in self.records)

    def can_start(self) -> bool:
        if self.counted + len(self.running) >= self.config.trials:
            return False
        if len(self.records) + len(self.running) >= PROPOSALS_PER_TRIAL * self.config.trials:
            return False  # the strategy keeps proposing what is known or over a limit: give up
        return self.remaining_time is None or self.remaining_time > 0

    @property
    def finished(self) -> bool:
        return not self.running and not self.can_start()

    def best(self) -> TrialRecord | None:
        board = leaderboard(self.records, self.maximize)
        return board[0].record if board else None

    # ------------------------------------------------------------------ proposing
    def next_job(self) -> Job | None:
        """The next candidate to train, recording duplicates and rejections on the way; None when
        nothing more should start."""
        while self.can_start():
            trial, origin = self.strategy.ask(self.study)
            arch = suggest(trial, self.space)
            previous = self.known.get(self.equivalence(arch))
            if previous is not None:
                self._record(trial, arch, origin, reused=previous)
                continue
            rejection = self._rejection(arch)
            if rejection is not None:
                reason, costs = rejection
                self._record(trial, arch, origin, status="rejected", reason=reason, costs=costs)
                continue
            train = self.config.training(
                weights_path=str(self.folder.weights_path(trial.number).absolute()),  # workers run elsewhere
                rungs=self.ladder[:-1],
                **self._inheritance(trial.user_attrs.get("parent")),
            )
            job = Job(trial.number, arch, self.task.spec, train, started=time.monotonic())
            trial.set_user_attr("origin", origin)
            self.running[job.number] = (job, trial)
            self.reached[job.number] = 0
            return job
        return None

    # ------------------------------------------------------------------ rungs
    def rung_reached(self, job: Job, step: int, value: float) -> None:
        """Note a running trial's score at a rung: for the progress view and, in a
        single-objective study, as the trial's intermediate value (Optuna's samplers rank pruned
        trials by it)."""
        if job.number not in self.running or step not in self.ladder[:-1]:
            return
        self.reached[job.number] = self.ladder.index(step) + 1
        if len(self.config.objectives) == 1:  # Optuna keeps no intermediate values for several objectives
            self.running[job.number][1].report(value, step)

    def pruning_callback(self, job: Job) -> Callable[[int, dict[str, float]], bool] | None:
        """For the inline executor: a trainer callback that reports the job's score at each rung
        to Optuna's successive-halving pruner (in the rung study) and stops the job when the
        pruner says so; None without rungs."""
        if self.rung_study is None:
            return None
        pruned = self.rung_study.ask()
        pruned.set_user_attr("trial", job.number)
        self.pruning[job.number] = pruned
        rungs = set(self.ladder[:-1])

        def callback(step: int, val: dict[str, float]) -> bool:
            if step not in rungs:
                return False
            value = val.get(self.task.metric, math.nan)
            self.rung_reached(job, step, value)
            pruned.report(value, step)
            return pruned.should_prune()

        return callback

    def _close_pruning(self, number: int, status: str, value: float | None) -> None:
        pruned = self.pruning.pop(number, None)
        if pruned is None:
            return
        if status == "ok" and value is not None and math.isfinite(value):
            self.rung_study.tell(pruned, value)
        else:
            state = optuna.trial.TrialState.PRUNED if status == "stopped" else optuna.trial.TrialState.FAIL
            self.rung_study.tell(pruned, state=state)

    def _rejection(self, arch: Arch) -> tuple[str, dict[str, float]] | None:
        """Cheap constraints (`max_params`, `max_flops`, `max_state`), checked on a built
        (untrained) model."""
        if not has_limits(self.config):
            return None
        try:
            cost = model_costs(self.task, arch, self.config.d_model, self.config.layers)
        except Exception:  # noqa: BLE001 - a build error is the trainer's to report
            return None
        reason = over_limits(cost, self.config)
        return None if reason is None else (reason, cost)

    # ------------------------------------------------------------------ finishing
    def finish(self, job: Job, outcome: dict[str, Any] | None, error: str | None = None, node: str = "") -> TrialRecord:
        """Record a job's outcome: a TrainResult dict, or None with `error` (a crashed worker,
        or a trial the scheduler stopped before it reported a final result); `node`: the Ray
        node it ran on."""
        _, trial = self.running.pop(job.number)
        self.reached.pop(job.number, None)
        arch = job.arch
        if outcome is None:
            status = "stopped" if error == "stopped" else "failed"
            self._close_pruning(job.number, status, None)
            rung = None if len(self.ladder) == 1 else 0
            origin = trial.user_attrs.get("origin", "")
            return self._record(trial, arch, origin, status=status, reason=error, started=job.started, rung=rung, node=node)
        result = TrainResult.from_dict(outcome)
        status = "stopped" if result.reason == "stopped" else result.status
        self._close_pruning(job.number, status, result.metrics.get(f"val/{self.task.metric}"))
        scores = tuple(float(r.get(self.task.metric, math.nan)) for r in result.rungs if r.get("step") in self.ladder[:-1])
        return self._record(
            trial,
            arch,
            trial.user_attrs.get("origin", ""),
            status=status,
            reason=None if status == "stopped" else result.reason,
            metrics=result.metrics,
            costs=result.costs or {},
            steps=result.steps,
            seconds=result.seconds,
            detail=result.detail,
            started=job.started,
            inherited=result.inherited,
            rung=None if len(self.ladder) == 1 else len(scores) + (status == "ok"),
            rung_scores=scores,
            device=result.device,
            node=node,
            lengths=result.lengths,
        )

    def _objectives(self, metrics: dict[str, float], costs: dict[str, Any]) -> tuple[float, ...] | None:
        value = metrics.get(f"val/{self.task.metric}")
        if value is None or not math.isfinite(value):
            return None
        return (value,) + tuple(float(costs[COST_KEYS[o]]) for o in self.config.objectives[1:])

    def _record(
        self,
        trial: optuna.Trial,
        arch: Arch,
        origin: str,
        status: str = "ok",
        reason: str | None = None,
        metrics: dict[str, float] | None = None,
        costs: dict[str, Any] | None = None,
        steps: int = 0,
        seconds: float = 0.0,
        detail: str = "",
        started: float | None = None,
        reused: TrialRecord | None = None,
        inherited: int = 0,
        rung: int | None = None,
        rung_scores: tuple[float, ...] = (),
        device: str = "",
        node: str = "",
        lengths: tuple[dict[str, Any], ...] = (),
    ) -> TrialRecord:
        if reused is not None:
            status, reason, metrics, costs = reused.status, reused.reason, reused.metrics, reused.costs
            objectives, rung, rung_scores, lengths = reused.objectives, reused.rung, reused.rung_scores, reused.lengths
        else:
            metrics, costs = metrics or {}, costs or {}
            objectives = self._objectives(metrics, costs) if status in ("ok", "stopped") else None
        record = TrialRecord(
            number=trial.number,
            arch=arch.text,
            id=arch.id,
            status=status,
            reason=reason,
            objectives=objectives if status in ("ok", "stopped") else None,
            metrics=metrics,
            costs=costs,
            steps=steps,
            seconds=seconds,
            wall=0.0 if started is None else time.monotonic() - started,
            finished_at=self.elapsed,
            reused_from=None if reused is None else reused.number,
            origin=origin,
            parent=trial.user_attrs.get("parent"),
            inherited=inherited,
            rung=rung,
            rung_scores=rung_scores,
            device=device,
            node=node,
            lengths=lengths,
        )
        for key, value in (("arch", record.arch), ("id", record.id), ("status", status), ("reason", reason),
                           ("detail", detail), ("metrics", json.dumps(metrics)), ("costs", json.dumps(costs)),
                           ("origin", origin), ("reused_from", record.reused_from),
                           ("record", record.to_json())):  # fmt: skip  (record: the study's copy, for `_reconcile`)
            trial.set_user_attr(key, value)
        if status == "ok" and record.objectives is not None:
            self.study.tell(trial, list(record.objectives))
        else:  # a pruned trial's value is its last intermediate one (single objective)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED if status == "stopped" else optuna.trial.TrialState.FAIL)
        self.folder.append(record)
        self.records.append(record)
        if reused is None and status in ("ok", "failed", "stopped"):
            self.known[self.equivalence(arch)] = record
        self.strategy.observe(record)
        self._keep_best_weights()
        return record

    def _keep_best_weights(self) -> None:
        """Weights of the `keep_weights` best trials stay (only successful trials save any), and
        with `inherit` those of possible parents too; the best also goes to best/ whenever it changes."""
        ranked = [leader.record for leader in leaderboard(self.records, self.maximize)]  # best first
        parents = self._parents() if self.config.inherit else set()
        for r in ranked[self.config.keep_weights :]:
            if r.number not in parents:
                self.folder.weights_path(r.number).unlink(missing_ok=True)
        if not ranked or ranked[0].number == self._best_written:
            return
        best, best_dir = ranked[0], self.folder.path / "best"
        best_dir.mkdir(exist_ok=True)
        (best_dir / "arch.txt").write_text(best.arch + "\n")
        (best_dir / "trial.json").write_text(best.to_json() + "\n")
        weights = self.folder.weights_path(best.number)
        if weights.exists():
            (best_dir / "weights.safetensors").write_bytes(weights.read_bytes())
        self._best_written = best.number

    # ------------------------------------------------------------------ weight inheritance
    def _inheritance(self, parent: int | None) -> dict[str, str]:
        """The training options that make a child start from its parent's weights (--inherit): none
        without a parent, or when the parent's weights are gone (e.g. a run resumed with
        --inherit that had none kept)."""
        weights = None if parent is None else self.folder.weights_path(parent)
        if not self.config.inherit or weights is None or not weights.exists():
            return {}
        arch = next(r.arch for r in self.records if r.number == parent)
        return dict(init_from=str(weights.absolute()), init_arch=arch)

    def _parents(self) -> set[int]:
        """Trials whose weights a child may still read: the strategy's candidate parents and the
        parents of the jobs running now."""
        running = {trial.user_attrs.get("parent") for _, trial in self.running.values()}
        return self.strategy.parents() | (running - {None})

    def _fail_stale_trials(self) -> None:
        """Trials left running by an interrupted session are closed as failed (they are re-proposed,
        never half-counted)."""
        for study in (self.study, self.rung_study):
            for frozen in () if study is None else study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if frozen.user_attrs.get("record") is not None:  # stopped before the tell: its record never was
                    optuna.Trial(study, frozen._trial_id).set_user_attr("record", None)
                study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)

    def interrupt(self) -> None:
        """Close the trials still running as failed in the study; trials.jsonl keeps only finished ones."""
        for number, (_, trial) in self.running.items():
            trial.set_user_attr("reason", "interrupted")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self._close_pruning(number, "failed", None)
        self.running.clear()
        self.reached.clear()


def new_run_folder(root: str | Path = "runs") -> RunFolder:
    """runs/<date>-<time>[-n]: a fresh, dated run folder name."""
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    path, n = Path(root) / stamp, 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{n}"
    return RunFolder(path)


# ---------------------------------------------------------------------------------------------- constraints
# Shared with the finalists stage, which holds the comparison seeds to the same limits.


def model_costs(task: Task, arch: Arch, d_model: int, layers: int) -> dict[str, Any]:
    """Parameters, FLOPs/token and state size of `arch` in `task`'s model shell, at the task's
    sequence length (what the trainer records as a result's costs)."""
    return measure(task.model(arch, d_model, layers), task.tokens).as_dict()


def has_limits(config: RunConfig) -> bool:
    return any(limit is not None for limit in (config.max_params, config.max_flops, config.max_state))


def over_limits(cost: dict[str, Any], config: RunConfig) -> str | None:
    """Why `cost` breaks the run's cheap constraints, or None if it keeps them."""
    if config.max_params is not None and cost["params"] > config.max_params:
        return f"params {cost['params']:,} > max {config.max_params:,}"
    if config.max_flops is not None and cost["flops_per_token"] > config.max_flops:
        return f"FLOPs/token {cost['flops_per_token']:,.0f} > max {config.max_flops:,.0f}"
    if config.max_state is not None and cost["state_size"] > config.max_state:
        return f"state {cost['state_size']:,} > max {config.max_state:,}"
    return None
