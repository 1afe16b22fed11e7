"""The configuration of a search run: one frozen dataclass, written to the run folder as JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from einsearch.search.strategies import STRATEGIES
from einsearch.settings import help_of, setting
from einsearch.tasks import DEFAULT_TASK
from einsearch.tasks.base import Budget
from einsearch.train import TrainConfig

OBJECTIVES = ("metric", "params", "flops", "state")  # cost objectives are minimised
EXECUTORS = ("ray", "inline")
SCHEDULERS = ("fifo", "asha")  # asha: successive halving (Optuna's pruner inline, Ray Tune's ASHAScheduler on Ray)


@dataclass(frozen=True)
class RunConfig:
    """A search run. The fields the command line offers carry their help text (`setting`): `einsearch
    run` reads each option's default and help from here."""

    task: str = setting(DEFAULT_TASK, "Task with options (see `einsearch tasks`).")
    space: str = setting("full", "Search space: a built-in name (see `einsearch space list`) or a space file.")
    strategy: str = setting("evolution", " | ".join(STRATEGIES) + ".")
    seed_archs: tuple[str, ...] = setting((), "Seed name or architecture text to start from (repeatable).")
    trials: int = setting(12, "Candidates to train; duplicates and candidates over a --max-* limit are recorded but not counted.")
    time_budget: float | None = setting(None, "Wall clock for the whole search, e.g. 90s, 30m, 2h.")  # in seconds here
    # the command line's default is the task's `trial_budget`
    trial_budget: str = setting("600steps", "Each candidate's full training budget in optimiser steps (e.g. 1500steps), never seconds.")
    time_limit: float | None = setting(None, "Seconds before a candidate fails as timeout: a safety limit, not a budget "
                                             "(default: 1 s per step of the trial budget + 60 s).")  # `candidate_time_limit`
    max_memory: int | None = setting(None, help_of(TrainConfig, "max_memory"))  # in bytes here
    workers: int = setting(2, "Candidates trained at once.")
    executor: str = setting("ray", "ray (local Ray or --address) | inline (in this process).")  # one of EXECUTORS
    address: str | None = setting(None, "Join this Ray cluster (default: RAY_ADDRESS, else a local Ray; --resume never "
                                        "takes it from the run folder).")  # fmt: skip
    device: str = setting(TrainConfig.device, help_of(TrainConfig, "device"))
    precision: str = setting(TrainConfig.precision, help_of(TrainConfig, "precision"))
    # what each trial (and each final training) asks Ray for; a trial sees a GPU only if it asks for one
    cpus_per_trial: float = setting(1.0, "Ray: CPUs each trial reserves; it trains on that many threads (at least 1).")
    gpus_per_trial: float = setting(0.0, "Ray: GPUs each trial reserves; a fraction (e.g. 0.5) lets several trials share one "
                                         "device. Needed for --device cuda or --precision bf16 on Ray.")  # fmt: skip
    resources_per_trial: tuple[tuple[str, float], ...] = setting(
        (), "Ray: other resources each trial reserves, as JSON, e.g. '{\"accelerator_type:H100\": 0.001}' (only nodes "
            "that offer them run trials).")  # fmt: skip  # sorted (name, amount) pairs; config.json keeps an object
    scheduler: str = setting("asha", "asha (successive halving: weak candidates stop at a rung) | fifo (all train the full budget).")
    rungs: int = setting(3, "asha: rungs of the ladder, at full/eta^(rungs-1), ..., full/eta, full steps.")
    eta: int = setting(3, "asha: reduction factor: about 1/eta of a rung's candidates go on.")
    eval_every: int | None = None  # steps between validation evaluations kept in a trial's history
    objectives: tuple[str, ...] = setting(("metric",), "metric, optionally with params, flops, state: e.g. metric,params.")
    # cheap constraints, at the task's sequence length: candidates above are rejected untrained
    max_params: int | None = setting(None, "Reject candidates with more parameters, untrained.")
    max_flops: float | None = setting(None, "Reject candidates with more FLOPs per token, untrained.")
    max_state: int | None = setting(None, "Reject candidates with more floats of inference state at the task's length, untrained.")
    d_model: int = setting(TrainConfig.d_model, help_of(TrainConfig, "d_model"))
    layers: int = setting(TrainConfig.layers, help_of(TrainConfig, "layers"))
    seed: int = setting(0, "Seed of the search and of every candidate's training.")
    storage: str | None = setting(None, "Optuna storage URL (default: a journal file in the run folder; --resume takes it only from here).")
    keep_weights: int = 10  # trained weights kept for this many best trials
    inherit: bool = setting(False, "Evolution: a child starts from its parent's trained weights wherever their trees agree.")
    # the search ends by retraining its top-k architectures and the comparison seeds (0: not), each
    # with `final_seeds` training seeds, at the full trial budget
    finalists: int = setting(3, "At the end, retrain the top K and the comparison seeds (0: skip).")
    final_seeds: int = setting(3, "Training seeds per finalist and comparison seed.")
    # evaluated only on fully trained weights: a trial the scheduler stops at a lower rung returns
    # before the trainer's final evaluation, so it never pays for the longer lengths
    eval_lengths: tuple[int, ...] = setting((), help_of(TrainConfig, "eval_lengths") + " Tested: the trials that train to the "
                                                "full budget (not those stopped at a lower rung) and every finalist training; "
                                                "trials.jsonl and finalists.jsonl keep the rows, `einsearch report` plots "
                                                "them (lengths.png).")  # fmt: skip
    study: str | None = None  # the Optuna study's name, fixed when the run starts: the run's identity, not its folder's path

    def __post_init__(self) -> None:
        problems = []
        if self.trials < 1:
            problems.append(f"trials must be at least 1, got {self.trials}")
        if self.workers < 1:
            problems.append(f"workers must be at least 1, got {self.workers}")
        if self.strategy not in STRATEGIES:
            problems.append(f"unknown strategy {self.strategy!r} (allowed: {', '.join(STRATEGIES)})")
        if self.executor not in EXECUTORS:
            problems.append(f"executor {self.executor!r} is not one of {', '.join(EXECUTORS)}")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"scheduler {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if not self.objectives or self.objectives[0] != "metric" or any(o not in OBJECTIVES for o in self.objectives):
            problems.append(f"objectives must start with 'metric' and use {', '.join(OBJECTIVES)}, got {','.join(self.objectives)}")
        if len(set(self.objectives)) != len(self.objectives):
            problems.append(f"objectives repeat: {','.join(self.objectives)}")
        if self.finalists < 0:
            problems.append(f"finalists must be at least 0, got {self.finalists}")
        if self.finalists > 0 and self.final_seeds < 2:
            problems.append(f"final seeds must be at least 2 (a mean ± std needs two), got {self.final_seeds}")
        if self.max_state is not None and self.max_state < 0:
            problems.append(f"max state must be at least 0, got {self.max_state}")
        if self.inherit and self.strategy != "evolution":
            problems.append(f"inherit needs the evolution strategy (children of parents), not {self.strategy}")
        if self.time_budget is not None and self.time_budget <= 0:
            problems.append(f"time budget must be positive, got {self.time_budget}")
        try:
            budget = Budget.parse(self.trial_budget)
        except ValueError as e:
            problems.append(f"trial budget: {e}")
        else:
            if budget.seconds is not None:
                problems.append(
                    f"trial budget: {self.trial_budget!r} counts seconds; give optimiser steps (e.g. 1500steps): a "
                    "score within seconds depends on what else the machine runs (time_limit is the safety limit in seconds)"
                )
            elif self.scheduler == "asha" and budget.steps < self.eta ** (self.rungs - 1):
                problems.append(
                    f"trial budget: {budget.steps} steps cannot hold {self.rungs} rungs a factor {self.eta} apart "
                    f"(it needs at least {self.eta ** (self.rungs - 1)} steps; or fewer rungs, or scheduler fifo)"
                )
        if self.rungs < 1:
            problems.append(f"rungs must be at least 1, got {self.rungs}")
        if self.eta < 2:
            problems.append(f"eta (the reduction factor) must be at least 2, got {self.eta}")
        try:
            TrainConfig(eval_lengths=self.eval_lengths)
        except ValueError as e:
            problems.append(str(e))
        problems += self._device_problems()
        if problems:
            raise ValueError("; ".join(problems))

    def _device_problems(self) -> list[str]:
        """What is wrong with the device, precision and per-trial resources (Ray's rules: a
        quantity above 1 is whole; a GPU only for a trial that asks for one)."""
        problems = []
        try:
            TrainConfig(device=self.device, precision=self.precision)
        except ValueError as e:
            problems.append(str(e))
        if not self.cpus_per_trial > 0:
            problems.append(f"cpus per trial must be positive, got {self.cpus_per_trial:g}")
        if not self.gpus_per_trial >= 0:
            problems.append(f"gpus per trial must be at least 0, got {self.gpus_per_trial:g}")
        for name, amount in (("cpus per trial", self.cpus_per_trial), ("gpus per trial", self.gpus_per_trial), *self.resources_per_trial):
            if amount > 1 and amount != int(amount):
                problems.append(f"{name}: Ray takes a fraction only below 1, whole numbers above it; got {amount:g}")
        for name, amount in self.resources_per_trial:
            if not isinstance(name, str) or not name or name.upper() in ("CPU", "GPU", "MEMORY"):
                problems.append(f"resources per trial: {str(name)[:40]!r} is not a custom resource name (CPUs and GPUs have "
                                "--cpus-per-trial and --gpus-per-trial)")  # fmt: skip
            elif not (isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount > 0):
                problems.append(f"resources per trial: {name[:40]!r} needs a positive amount, got {str(amount)[:20]}")
        if self.executor == "ray" and self.gpus_per_trial == 0 and (self.device == "cuda" or self.precision == "bf16"):
            problems.append(
                f"{'device cuda' if self.device == 'cuda' else 'precision bf16'} on Ray needs --gpus-per-trial (e.g. 1, or 0.5 "
                "to share a GPU): Ray gives a trial a GPU only if it asks for one"
            )
        if self.gpus_per_trial > 0 and self.device == "cpu":
            problems.append(f"--gpus-per-trial {self.gpus_per_trial:g} reserves GPUs that device cpu never uses")
        return problems

    @property
    def trial_resources(self) -> dict[str, float]:
        """What one trial (or final training) asks Ray for, in Ray's names: CPU, GPU (if any) and
        the custom resources."""
        return {"CPU": self.cpus_per_trial, **({"GPU": self.gpus_per_trial} if self.gpus_per_trial else {}), **dict(self.resources_per_trial)}

    @property
    def eval_interval(self) -> int | None:
        """Steps between validation evaluations during a trial (its history), as asked."""
        return self.eval_every

    @property
    def candidate_time_limit(self) -> float:
        """The safety limit of one training: as asked, else one second per step of the trial
        budget plus a minute (the transformer seed takes ~0.15 s per step of mqar on one core, so
        this stops only candidates several times slower, e.g. a Newton-solved RNN on a CPU)."""
        if self.time_limit is not None:
            return self.time_limit
        return Budget.parse(self.trial_budget).steps + 60.0

    @property
    def ladder(self) -> tuple[int, ...]:
        """The rungs in steps, the last being the full trial budget: r, r·eta, ..., r·eta^(rungs-2),
        full, with r = full // eta^(rungs-1) (the promotion points of Optuna's and Ray's
        successive halving with r as the first rung); just (full,) under fifo."""
        full = Budget.parse(self.trial_budget).steps
        if self.scheduler == "fifo" or self.rungs == 1:
            return (full,)
        first = full // self.eta ** (self.rungs - 1)
        return tuple(first * self.eta**k for k in range(self.rungs - 1)) + (full,)

    def training(self, **changes: Any) -> TrainConfig:
        """How a candidate of this run trains, in the search and in the final: the run's model
        size, full trial budget, safety limits, seed, evaluation interval and lengths to test at
        (after the full budget only); `changes` set the rest (where the weights go, rungs, the
        parent's weights) or override these."""
        return TrainConfig(**{
            "d_model": self.d_model, "layers": self.layers, "budget": Budget.parse(self.trial_budget), "seed": self.seed,
            "time_limit": self.candidate_time_limit, "max_memory": self.max_memory, "eval_every": self.eval_interval,
            "device": self.device, "precision": self.precision, "threads": max(1, int(self.cpus_per_trial)),
            "eval_lengths": self.eval_lengths,
            **changes,
        })  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "resources_per_trial": dict(self.resources_per_trial)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        for key in ("seed_archs", "objectives", "eval_lengths"):
            if key in data:
                data[key] = tuple(data[key])
        if "resources_per_trial" in data:
            data["resources_per_trial"] = resource_pairs(data["resources_per_trial"])
        return cls(**data)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Execution:
    """Where a run executes and where its study is stored, as given on the command line.

    A resumed run takes these from here, never from its config.json (a folder from elsewhere
    could name any host to join or any database to create): `executor` and `workers` fall back to
    the run's own (they reach nothing outside), `address` to a local Ray (or RAY_ADDRESS), and
    `storage` must repeat the run's own storage URL, if it has one."""

    executor: str | None = None
    workers: int | None = None
    address: str | None = None
    storage: str | None = None


def resource_pairs(resources: Any) -> tuple[tuple[str, float], ...]:
    """Custom resources as `RunConfig.resources_per_trial` holds them (sorted name, amount pairs),
    from a mapping or pairs; the amounts are checked by RunConfig."""
    return tuple(sorted(dict(resources).items()))


def parse_resources(text: str) -> tuple[tuple[str, float], ...]:
    """--resources-per-trial: a JSON object of resource names and amounts, e.g. '{"gpu_stand_in": 1}'."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"resources per trial: not JSON ({e.msg} at column {e.colno}); give an object such as '{{\"name\": 1}}'") from None
    if not isinstance(data, dict):
        raise ValueError(f"resources per trial: give a JSON object of names and amounts such as '{{\"name\": 1}}', not {type(data).__name__}")
    return resource_pairs(data)


def parse_duration(text: str) -> float:
    """'90s', '5m', '2h', '1.5h' or a bare number of seconds -> seconds."""
    text = text.strip().lower()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise ValueError(f"cannot read duration {text!r}: use e.g. 90s, 5m, 2h") from None
    if value <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return value


