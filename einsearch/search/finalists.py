"""Finalists: the evidence behind a claim that a search found something.

A search ranks its candidates by one training each, at one seed, on the validation split: a
noisy number, good for steering a search, not for a claim.  The finalists stage settles the
claim.  It retrains

* the top-k distinct architectures of the leaderboard (`RunConfig.finalists`, default 3), and
* the comparison seeds: the run's `--seed-arch` ones, plus the task's reference seeds from the
  zoo (`reference_seeds`) that keep the run's constraints (`max_params`, `max_flops`,
  `max_state`, measured as the search measures its candidates; a reference seed over a limit is
  left out, with the reason recorded),

each with n training seeds (`RunConfig.final_seeds`, default 3: `TrainConfig.seed` = 0..n-1) at
the run's full trial budget, and compares them on the task's *test* metric: per architecture the
mean, the sample standard deviation (ddof=1) and Welch's two-sided t-test against the best seed
(best by mean in the task's direction).  A candidate beats the seeds only if its mean is better
*and* p < `ALPHA` (`verdict`); one lucky trial never makes a win.

Files, beside trials.jsonl in the run folder:

    finalists.jsonl   one line per training (`FinalRecord`), appended durably: a rerun
                      (`einsearch final RUN`, or a resumed search) skips what is recorded
    finalists.json    the `Summary`, rewritten after every training

    summary = run_finalists(config, folder)    # train what is missing; write both files
    verdict(summary)                           # the candidate that makes the claim, and whether it holds

Trainings run on the run's executor: one by one in this process (`inline`), or as Ray tasks,
`workers` at a time (`ray`), each asking for the resources a search trial asks for
(`RunConfig.trial_resources`).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from einsearch.arch import Arch
from einsearch.grammar import equivalence_key, parse
from einsearch.grammar.seeds import resolve
from einsearch.grammar.seeds import seeds as zoo
from einsearch.search.cluster import ray_session
from einsearch.search.config import RunConfig
from einsearch.search.record import RunFolder, TrialRecord, leaderboard
from einsearch.search.run import Job, evaluate, model_costs, over_limits
from einsearch.tasks import Budget, Task, get_task

ALPHA = 0.05  # a candidate wins only with a better mean and Welch's p below this

# The zoo seeds every run on a task is compared with (besides its own --seed-arch ones): the
# strongest published mixers for the task's kind. Names missing from the zoo are skipped.
REFERENCE_SEEDS: dict[str, tuple[str, ...]] = {
    "lorenz96": ("transformer", "gru", "retnet"),  # retnet: the zoo's best at 1000 steps (BENCHMARKS.md, fidelity)
    "ks": ("transformer", "gru"),
    "csv": ("transformer", "linear"),
}
TOKEN_TASK_SEEDS = ("transformer", "gla")  # mqar, the MAD suite, passkey, lm


def reference_seeds(task: Task) -> tuple[str, ...]:
    """Names of the zoo seeds a run on `task` is compared with (those the zoo has)."""
    return tuple(name for name in REFERENCE_SEEDS.get(task.name, TOKEN_TASK_SEEDS) if name in zoo)


# ---------------------------------------------------------------------------------------------- who


@dataclass(frozen=True)
class Entrant:
    """An architecture in the final: a search candidate or a comparison seed."""

    arch: str  # canonical text
    id: str
    role: str  # "candidate" | "seed"
    name: str | None = None  # a seed's name in the zoo, if it has one
    trial: int | None = None  # the search trial a candidate comes from

    @property
    def label(self) -> str:
        return self.name or (f"trial {self.trial}" if self.trial is not None else self.arch)


@dataclass(frozen=True)
class Plan:
    candidates: tuple[Entrant, ...]
    seeds: tuple[Entrant, ...]
    excluded: dict[str, str] = field(default_factory=dict)  # reference seeds left out: name -> why

    @property
    def entrants(self) -> tuple[Entrant, ...]:
        """Everyone to train; nobody when the search has no candidate to compare."""
        return self.candidates + self.seeds if self.candidates else ()


def pick_candidates(
    records: list[TrialRecord], maximize: bool, k: int, exclude: Collection[Arch] = (), tokens: int | None = None
) -> list[Entrant]:
    """The top `k` distinct architectures of the leaderboard, skipping those in `exclude` (the
    comparison seeds: a seed the search rediscovered is no finding).  With `tokens` (the task's
    length), trees that train the same at that length (`at_length`) count as one."""
    same = (lambda arch: arch.id) if tokens is None else (lambda arch: equivalence_key(arch, tokens))  # noqa: E731
    chosen: list[Entrant] = []
    seen = {same(arch) for arch in exclude}
    for leader in leaderboard(records, maximize):
        if len(chosen) == k:
            break
        record = leader.record
        key = same(parse(record.arch))
        if key not in seen:
            seen.add(key)
            chosen.append(Entrant(record.arch, record.id, "candidate", trial=record.number))
    return chosen


def comparison_seeds(config: RunConfig, task: Task) -> tuple[list[Entrant], dict[str, str]]:
    """The run's `--seed-arch` architectures (always), then the task's reference seeds that build
    and keep the run's constraints; returns them and the reference seeds left out, with why."""
    names = {arch.id: name for name, arch in zoo.items()}
    chosen: dict[str, Entrant] = {}
    for text in config.seed_archs:
        arch = resolve(text)
        chosen.setdefault(arch.id, _seed(arch, names.get(arch.id)))
    excluded = {}
    for name in reference_seeds(task):
        arch = zoo[name]
        if arch.id in chosen:
            continue
        try:
            reason = over_limits(model_costs(task, arch, config.d_model, config.layers), config)
        except Exception as error:  # noqa: BLE001 - e.g. heads that do not divide d_model
            reason = f"does not build at d_model={config.d_model}: {error}"
        if reason is None:
            chosen[arch.id] = _seed(arch, name)
        else:
            excluded[name] = reason
    return list(chosen.values()), excluded


def _seed(arch: Arch, name: str | None) -> Entrant:
    return Entrant(arch.text, arch.id, "seed", name=name)


def plan(config: RunConfig, records: list[TrialRecord], task: Task) -> Plan:
    """Who is in the final of a run with these trial records."""
    chosen_seeds, excluded = comparison_seeds(config, task)
    seeds = [parse(s.arch) for s in chosen_seeds]
    candidates = pick_candidates(records, task.mode == "max", config.finalists, seeds, task.tokens)
    return Plan(tuple(candidates), tuple(chosen_seeds), excluded)


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class FinalRecord:
    """One finished training of the final, as a line of finalists.jsonl."""

    arch: str
    id: str
    role: str
    name: str | None
    trial: int | None
    seed: int  # the training seed (initialisation and batch order)
    budget: str
    status: str  # ok | failed
    reason: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    costs: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    detail: str = ""
    lengths: tuple[dict[str, Any], ...] = ()  # with `RunConfig.eval_lengths`: `TrainResult.lengths`

    @property
    def key(self) -> tuple[str, int, str]:
        return self.id, self.seed, self.budget

    @property
    def entrant(self) -> Entrant:
        return Entrant(self.arch, self.id, self.role, self.name, self.trial)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def records_path(folder: RunFolder) -> Path:
    return folder.path / "finalists.jsonl"


def summary_path(folder: RunFolder) -> Path:
    return folder.path / "finalists.json"


def read_records(folder: RunFolder) -> list[FinalRecord]:
    """The recorded trainings; a torn last line (a crash mid-write) is skipped."""
    path = records_path(folder)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
            records.append(FinalRecord(**{**data, "lengths": tuple(data.get("lengths", ()))}))  # none in a line from before eval_lengths
        except (json.JSONDecodeError, TypeError, AttributeError):
            continue
    return records


def append_record(folder: RunFolder, record: FinalRecord) -> None:
    """Append one training durably: a crash after this returns loses nothing."""
    with open(records_path(folder), "a") as f:
        f.write(record.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Welch:
    t: float
    df: float  # Welch–Satterthwaite degrees of freedom
    p: float  # two-sided


def welch(a: tuple[float, ...], b: tuple[float, ...]) -> Welch | None:
    """Welch's unequal-variance t-test of mean(a) vs mean(b); None where it is undefined (fewer
    than two values on a side, or no variance on either)."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return None
    with warnings.catch_warnings():  # nearly equal values: scipy warns, and returns nan if undefined
        warnings.simplefilter("ignore", RuntimeWarning)
        result = ttest_ind(a, b, equal_var=False)
    if not math.isfinite(result.pvalue):
        return None
    return Welch(float(result.statistic), float(result.df), float(result.pvalue))


@dataclass(frozen=True)
class Standing:
    """One architecture's results in the final."""

    entrant: Entrant
    values: tuple[float, ...]  # the test metric of each successful training, by training seed
    failed: int = 0  # trainings that ended without a test metric
    costs: dict[str, Any] = field(default_factory=dict)
    test: Welch | None = None  # against the best seed (None for the best seed itself, or undefined)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1)."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    @property
    def p(self) -> float | None:
        return None if self.test is None else self.test.p


@dataclass(frozen=True)
class Summary:
    metric: str  # what is compared: "test/<task metric>"
    maximize: bool
    budget: str
    training_seeds: int  # per architecture
    standings: tuple[Standing, ...]  # candidates first, then seeds
    excluded: dict[str, str] = field(default_factory=dict)
    best_seed: str | None = None  # the id of the best comparison seed
    complete: bool = False  # every planned training is recorded

    @property
    def candidates(self) -> list[Standing]:
        return [s for s in self.standings if s.entrant.role == "candidate"]

    @property
    def best(self) -> Standing | None:
        return next((s for s in self.standings if s.entrant.role == "seed" and s.entrant.id == self.best_seed), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, standing in zip(data["standings"], self.standings):  # for readers of the JSON
            row.update(n=standing.n, mean=standing.mean, std=standing.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        standings = tuple(
            Standing(
                entrant=Entrant(**row["entrant"]),
                values=tuple(row["values"]),
                failed=row["failed"],
                costs=row["costs"],
                test=None if row["test"] is None else Welch(**row["test"]),
            )
            for row in data["standings"]
        )
        return cls(**{**data, "standings": standings})


def _finite(value: Any) -> float | None:
    """A recorded number, or None for a missing or non-finite one (JSON keeps those as null)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def summarise(the_plan: Plan, records: list[FinalRecord], training_seeds: int, metric: str, maximize: bool, budget: str) -> Summary:
    """Each entrant's results over training seeds 0..training_seeds-1 at `budget`, tested against
    the best seed."""
    by_key = {}
    for record in records:
        by_key.setdefault(record.key, record)  # the first line of a training counts
    standings, recorded = [], 0
    for entrant in the_plan.entrants:
        mine = [by_key[key] for s in range(training_seeds) if (key := (entrant.id, s, budget)) in by_key]
        recorded += len(mine)
        values = tuple(v for r in mine if r.status == "ok" and (v := _finite(r.metrics.get(metric))) is not None)
        costs = next((r.costs for r in mine if r.costs), {})
        standings.append(Standing(entrant, values, len(mine) - len(values), costs))
    ranked = sorted((s for s in standings if s.entrant.role == "seed" and s.values), key=lambda s: s.mean, reverse=maximize)
    best = ranked[0] if ranked else None
    if best is not None:
        standings = [s if s is best else replace(s, test=welch(s.values, best.values)) for s in standings]
    return Summary(
        metric=metric,
        maximize=maximize,
        budget=budget,
        training_seeds=training_seeds,
        standings=tuple(standings),
        excluded=dict(the_plan.excluded),
        best_seed=None if best is None else best.entrant.id,
        complete=recorded == training_seeds * len(the_plan.entrants),
    )


@dataclass(frozen=True)
class Verdict:
    candidate: Standing  # the candidate that makes the claim
    seed: Standing  # the best comparison seed
    wins: bool  # a better mean and p < ALPHA


def wins(candidate: Standing, seed: Standing, maximize: bool) -> bool:
    """A win needs both: a better mean and Welch's p below ALPHA."""
    return (
        candidate.mean is not None
        and seed.mean is not None
        and better(candidate.mean, seed.mean, maximize)
        and candidate.p is not None
        and candidate.p < ALPHA
    )


def verdict(summary: Summary) -> Verdict | None:
    """The best candidate that beats the best seed, else the best candidate by mean, and whether
    it wins; None while there is no trained candidate or seed to compare."""
    best, trained = summary.best, [s for s in summary.candidates if s.values]
    if best is None or not trained:
        return None
    winners = [s for s in trained if wins(s, best, summary.maximize)]
    pool = winners or trained
    pick = (max if summary.maximize else min)(pool, key=lambda s: s.mean)
    return Verdict(pick, best, bool(winners))


# ---------------------------------------------------------------------------------------------- running


def run_finalists(config: RunConfig, folder: RunFolder, on_record: Callable[[FinalRecord], None] = lambda r: None) -> Summary | None:
    """Train every finalist and comparison seed not yet recorded, write finalists.jsonl and
    finalists.json, and return the summary; None when the run asks for no finalists."""
    if config.finalists == 0:
        return None
    task = get_task(config.task)
    the_plan = plan(config, folder.trials(), task)
    budget = str(Budget.parse(config.trial_budget))
    records = read_records(folder)
    for record in searched_trainings(the_plan, folder.trials(), config, budget, {r.key for r in records}):
        append_record(folder, record)
        records.append(record)
    done = {r.key for r in records}
    todo = [(e, s) for s in range(config.final_seeds) for e in the_plan.entrants if (e.id, s, budget) not in done]
    # trained as the search trains (`RunConfig.training`, its memory ceiling included), with the final's seed
    jobs = [Job(i, parse(entrant.arch), task.spec, config.training(seed=seed, eval_every=None)) for i, (entrant, seed) in enumerate(todo)]

    def summary() -> Summary:
        return summarise(the_plan, records, config.final_seeds, f"test/{task.metric}", task.mode == "max", budget)

    for i, outcome in run_jobs(jobs, config):
        entrant, seed = todo[i]
        record = FinalRecord(
            arch=entrant.arch, id=entrant.id, role=entrant.role, name=entrant.name, trial=entrant.trial, seed=seed,
            budget=budget, status=outcome.get("status", "failed"), reason=outcome.get("reason"),
            metrics=outcome.get("metrics") or {}, costs=outcome.get("costs") or {}, steps=outcome.get("steps", 0),
            seconds=outcome.get("seconds", 0.0), detail=outcome.get("detail", ""), lengths=tuple(outcome.get("lengths") or ()),
        )  # fmt: skip
        append_record(folder, record)
        records.append(record)
        write_summary(folder, summary())
        on_record(record)
    result = summary()
    write_summary(folder, result)
    return result


def searched_trainings(the_plan: Plan, trials: list[TrialRecord], config: RunConfig, budget: str, done: Collection) -> list[FinalRecord]:
    """The search's own trainings that are already a final training: an entrant trained from
    scratch (nothing inherited) at the full budget with the run's seed is the same training as
    the final's with that training seed (budgets count steps, so it gives the same metrics), and
    is not run again."""
    if not 0 <= config.seed < config.final_seeds:
        return []
    full = Budget.parse(config.trial_budget).steps
    entrants = {e.id: e for e in the_plan.entrants}
    done, found = set(done), []
    for trial in trials:
        entrant = entrants.get(trial.id)
        if (entrant is None or trial.status != "ok" or trial.reused_from is not None or trial.inherited
                or trial.steps != full or (trial.id, config.seed, budget) in done):  # fmt: skip
            continue
        done.add((trial.id, config.seed, budget))
        found.append(FinalRecord(
            arch=entrant.arch, id=entrant.id, role=entrant.role, name=entrant.name, trial=entrant.trial, seed=config.seed,
            budget=budget, status="ok", reason=None, metrics=trial.metrics, costs=trial.costs, steps=trial.steps,
            seconds=trial.seconds, detail=f"the search's training of trial {trial.number}", lengths=trial.lengths,
        ))  # fmt: skip
    return found


def write_summary(folder: RunFolder, summary: Summary) -> None:
    path = summary_path(folder)
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(scratch, path)  # a reader never sees half a file


def read_summary(folder: RunFolder) -> Summary | None:
    """The run's finalists summary, or None if the stage has not run."""
    path = summary_path(folder)
    return Summary.from_dict(json.loads(path.read_text())) if path.exists() else None


def run_jobs(jobs: list[Job], config: RunConfig) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, TrainResult dict) for each job as it finishes, on the run's executor (on Ray,
    the jobs travel as plain data)."""
    if config.executor == "inline":
        for i, job in enumerate(jobs):
            yield i, evaluate(job)
    elif jobs:
        yield from _run_on_ray([job.to_dict() for job in jobs], config)


def _run_on_ray(jobs: list[dict[str, Any]], config: RunConfig) -> Iterator[tuple[int, dict[str, Any]]]:
    """Ray tasks with a trial's resources each, at most `workers` at once. Ray retries a task
    whose worker died; one that still fails is a failed training (`worker_crash`)."""
    with ray_session(config.workers, config.address, config.cpus_per_trial, config.trial_resources):
        yield from _run_tasks(jobs, config.workers, task_options(config))


def task_options(config: RunConfig) -> dict[str, Any]:
    """`ray.remote` options for one final training: what a search trial asks for."""
    resources = dict(config.trial_resources)
    return {"num_cpus": resources.pop("CPU"), "num_gpus": resources.pop("GPU", 0), "resources": resources}


def _evaluate_on_worker(job: dict[str, Any]) -> dict[str, Any]:
    """`evaluate` in a Ray worker: device auto is the GPU Ray gave this task, if any."""
    return evaluate(job, ray_worker=True)


def _run_tasks(jobs: list[dict[str, Any]], workers: int, options: dict[str, Any] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """`jobs` as Ray tasks on the Ray of this process, at most `workers` at once, each with
    `options` (`task_options`; default one CPU)."""
    import ray

    remote = ray.remote(**(options or {"num_cpus": 1}))(_evaluate_on_worker)
    waiting, running = list(enumerate(jobs)), {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                i, job = waiting.pop(0)
                running[remote.remote(job)] = i
            finished, _ = ray.wait(list(running), num_returns=1)
            for ref in finished:
                i = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as error:  # noqa: BLE001 - a lost worker, after Ray's retries
                    outcome = {"status": "failed", "reason": "worker_crash", "detail": f"{type(error).__name__}: {error}"}
                yield i, outcome
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
