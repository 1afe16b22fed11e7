"""The task interface: data splits, a model shell, a loss, metrics and a default budget.

A task is a frozen dataclass whose fields are its options, so a task is addressed by text
(``mqar:vocab=256,seq_len=64,pairs=8``, see `einsearch.tasks.registry`) and is hashable.  It
supplies

* ``data()`` -> `Splits` (train / val / test), generated deterministically from the task's
  ``seed`` option and cached (in the process, and on disk for generated data, see `cache`);
* ``model(arch, d_model, layers)`` -> a `Shell` around L independently built copies of the block;
* ``loss(model, batch)`` -> scalar training loss on a batch drawn by ``train.sample``;
* ``evaluate(model, split)`` -> ``{metric: value}`` on a whole validation or test split;
* class attributes: the primary ``metric`` and whether it is maximised (``mode``), the default
  ``budget``, ``batch_size`` and peak ``lr`` for the trainer, and which weights are tested
  (``selection``: the last, or those of the best validation evaluation);
* ``at_length(factor)``: the same task at `factor` times its sequence length, for tasks that name
  their ``length_option`` (the trainer's ``eval_lengths`` tests at such lengths).

A `Suite` (e.g. MAD) is a task made of member tasks, one model each: it has no data, loss or
evaluation of its own, but `members`, each one's `share` of the budget, and the `aggregate` of
their metrics, which is all the trainer asks of it.

All task-side problems (bad options, unreadable or malformed files) raise `TaskError`, whose
message is one line meant for the user.  Every option declares its range with `option` (and
`check_option` enforces it where task text is parsed); the data a task would generate or read is
bounded by `MAX_DATA_BYTES`, so no option can make a task take the machine's memory.
"""

from __future__ import annotations

import dataclasses
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from einsearch.arch import Arch


class TaskError(ValueError):
    """A task cannot be set up: unknown name or option, missing or malformed data, bad sizes."""


# ---------------------------------------------------------------------------------------------
# budgets

_BUDGET_PART = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(steps?|s|sec|m|min|h)?\s*$")
_SECONDS_PER_UNIT = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Budget:
    """How long to train: a number of optimiser steps, a wall-clock time in seconds, or both
    (training stops at whichever comes first)."""

    steps: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("a budget needs steps, seconds or both")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"budget steps must be at least 1, got {self.steps}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"budget seconds must be positive, got {self.seconds}")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``"60s"``, ``"2m"``, ``"1.5h"``, ``"500steps"`` (or a bare ``"500"``), or two of them
        joined by a comma or plus: ``"500steps,2m"``."""
        steps, seconds = None, None
        parts = [p for p in re.split(r"[,+]", text) if p.strip()]
        if not parts:
            raise ValueError(f"empty budget {text!r}")
        for part in parts:
            match = _BUDGET_PART.match(part)
            if match is None:
                raise ValueError(f"cannot read budget {text!r}: use e.g. 60s, 2m, 1h, 500steps or 500steps,2m")
            number, unit = match.groups()
            if unit is None or unit.startswith("step"):
                if float(number) != int(float(number)):
                    raise ValueError(f"budget steps must be a whole number, got {part.strip()!r}")
                steps = int(float(number))
            else:
                seconds = float(number) * _SECONDS_PER_UNIT[unit]
        return cls(steps=steps, seconds=seconds)

    def __str__(self) -> str:
        parts = [f"{self.steps}steps"] if self.steps is not None else []
        if self.seconds is not None:
            parts.append(f"{self.seconds:g}s")
        return ",".join(parts)

    def progress(self, steps: int, seconds: float) -> float:
        """Fraction of the budget used, in [0, 1]: the larger of the step and time fractions."""
        fractions = []
        if self.steps is not None:
            fractions.append(steps / self.steps)
        if self.seconds is not None:
            fractions.append(seconds / self.seconds)
        return min(1.0, max(fractions))

    def split(self, parts: int) -> Budget:
        """An equal share of this budget (for suites that train one model per member task)."""
        return Budget(
            steps=None if self.steps is None else max(1, self.steps // parts),
            seconds=None if self.seconds is None else self.seconds / parts,
        )


# ---------------------------------------------------------------------------------------------
# data splits


class Split(Protocol):
    """What the trainer needs from a split: random training batches and, for evaluation, a fixed
    sequence of batches covering the split."""

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]: ...

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, ...]]: ...


class Examples:
    """A fixed set of examples: tensors that share their first dimension (e.g. inputs, targets)."""

    def __init__(self, *tensors: Tensor):
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("Examples needs tensors with the same first dimension")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        index = torch.randint(len(self), (batch_size,), generator=generator)
        return tuple(t[index] for t in self.tensors)

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, ...]]:
        for start in range(0, len(self), batch_size):
            yield tuple(t[start : start + batch_size] for t in self.tensors)


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split


# ---------------------------------------------------------------------------------------------
# tasks


MAX_DATA_BYTES = 4 * 2**30  # the most memory a task's data may need (generated, or read from a file)
SEEDS = {"at_least": 0, "at_most": 2**63 - 1}  # the range of every seed option
EXAMPLES = {"at_least": 1, "at_most": 10**9}  # the range of every example-count option


def option(
    default: Any,
    help: str,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A task option: a dataclass field with a default, a one-line description and its allowed
    values (numbers: `at_least`/`above` and `at_most`; words: `choices`)."""
    limits = {"at_least": at_least, "above": above, "at_most": at_most, "choices": choices}
    return field(default=default, metadata={"help": help} | {k: v for k, v in limits.items() if v is not None})


def allowed(metadata: Any) -> str:
    """The values an option allows, in words (e.g. ">= 0 and <= 9223372036854775807")."""
    if "choices" in metadata:
        return "one of " + ", ".join(metadata["choices"])
    parts = [f"{word} {metadata[key]:,}" for key, word in (("at_least", ">="), ("above", ">"), ("at_most", "<=")) if key in metadata]
    return " and ".join(parts)


def check_option(task: str, f: dataclasses.Field, value: Any) -> None:
    """Raise `TaskError` unless `value` is in the range `option` declared for the field `f`."""
    meta = f.metadata
    if isinstance(value, float) and not math.isfinite(value):
        raise TaskError(f"{task}: option {f.name} must be a finite number, got {value}")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return
    inside = (
        value in meta["choices"]
        if "choices" in meta
        else isinstance(value, str)
        or (
            ("at_least" not in meta or value >= meta["at_least"])
            and ("above" not in meta or value > meta["above"])
            and ("at_most" not in meta or value <= meta["at_most"])
        )
    )
    if not inside:
        shown = repr(value) if isinstance(value, str) else str(value)
        raise TaskError(f"{task}: option {f.name} must be {allowed(meta)}, got {shown[:40]}")


def check_data_size(task: str, need: float, what: str) -> None:
    """Raise `TaskError` if data of `need` bytes (an estimate) exceeds `MAX_DATA_BYTES`."""
    if need > MAX_DATA_BYTES:
        raise TaskError(f"{task}: {what} would need about {need / 2**30:,.1f} GiB of memory; at most {MAX_DATA_BYTES / 2**30:g} GiB")


class Task(ABC):
    """Base class of all tasks; concrete tasks are ``@dataclass(frozen=True)`` subclasses whose
    fields are their options."""

    name: ClassVar[str]
    summary: ClassVar[str]
    metric: ClassVar[str]  # the primary metric reported by `evaluate`
    mode: ClassVar[str]  # "max" or "min": which direction of `metric` is better
    budget: ClassVar[Budget]
    # A search trial's full budget (`einsearch run` without --trial-budget), chosen from the rank
    # correlations of benchmarks/fidelity.py (BENCHMARKS.md); None: the training budget above.
    search_budget: ClassVar[Budget | None] = None
    batch_size: ClassVar[int]
    lr: ClassVar[float]
    positional: ClassVar[str | None] = None  # the option a bare value after "name:" sets (e.g. a path)
    selection: ClassVar[str] = "last"  # which weights are tested: "last", or "best" on validation
    length_option: ClassVar[str | None] = None  # the option that sets the sequence length (see `at_length`)

    @property
    def spec(self) -> str:
        """Canonical text of this task: the name and every option that differs from its default (a
        positional option, such as a path, comes first, as a bare value)."""
        changed = [
            str(value) if f.name == self.positional else f"{f.name}={value}"
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if (value := getattr(self, f.name)) != f.default
        ]
        return self.name + (":" + ",".join(changed) if changed else "")

    @property
    @abstractmethod
    def tokens(self) -> int:
        """Sequence length the blocks see per example (the length at which costs are reported)."""

    def data(self) -> Splits:
        """The train / val / test splits (built once per process; see `make_data`)."""
        return _data(self)

    @abstractmethod
    def make_data(self) -> Splits:
        """Build the splits; called once per process by `data`."""

    @abstractmethod
    def model(self, arch: Arch, d_model: int, layers: int) -> torch.nn.Module:
        """A model shell around `layers` independently built copies of `arch`."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """Scalar training loss on one batch from ``data().train.sample``."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, split: Any) -> dict[str, float]:
        """Metrics on a whole split (model in eval mode, no gradients: the caller sees to it)."""

    @classmethod
    def trial_budget(cls) -> Budget:
        """A search trial's full budget by default: `search_budget`, else `budget`."""
        return cls.search_budget or cls.budget

    def info(self) -> dict[str, Any]:
        """Facts about the data worth recording with a result (e.g. a corpus hash)."""
        return {}

    def at_length(self, factor: int) -> Task:
        """This task with sequences `factor` times as long: its `length_option` multiplied by
        `factor`, every other option (the seed included) kept, so its data is generated afresh at
        that length (length generalisation, e.g. the state collapse of recurrent models beyond
        their training length: Chen et al. 2024, "Stuffed Mamba").  A task whose other options
        must scale along overrides this.  Raises `TaskError` for a task without a length, and
        where the longer task's options are out of range."""
        if self.length_option is None:
            raise TaskError(f"{self.name} has no sequence length option, so it cannot be tested at other lengths")
        return self.scaled(factor, self.length_option)

    def scaled(self, factor: int, *options: str) -> Task:
        """This task with `options` multiplied by `factor` (a whole number, at least 1), checked
        against their ranges as task text is (`check_option`)."""
        if factor < 1:
            raise TaskError(f"{self.name}: a length factor must be a whole number of at least 1, got {factor}")
        fields = {f.name: f for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        values = {name: getattr(self, name) * factor for name in options}
        for name, value in values.items():
            check_option(self.name, fields[name], value)
        return dataclasses.replace(self, **values)  # type: ignore[type-var]


class Suite(Task):
    """A task made of member tasks, each of which trains a model of its own on an equal share of
    the budget; the suite's result aggregates the members' metrics.  As Optuna's GA base class
    owns a genetic sampler's generations and leaves its operators to the subclass, this base owns
    what every suite does alike (the budget's shares, the aggregation, the refusals below) and a
    concrete suite names its `members` and its primary `metric`, which every member reports.

    The trainer (`einsearch.train`) sees a suite only through this interface: it trains each of
    `members` on `share` of the budget and reports `aggregate` of their metrics.  A suite has no
    data, loss or evaluation of its own (there is no one model to train or evaluate), so
    `make_data`, `loss` and `evaluate` raise `TaskError`; `tokens` and `model` are the first
    member's (the length and shell at which an architecture's costs are reported)."""

    @property
    @abstractmethod
    def members(self) -> tuple[Task, ...]:
        """The member tasks, in the order in which they are trained and reported."""

    @property
    def tokens(self) -> int:
        return self.members[0].tokens

    def model(self, arch: Arch, d_model: int, layers: int) -> torch.nn.Module:
        return self.members[0].model(arch, d_model, layers)

    def share(self, budget: Budget) -> Budget:
        """Each member's budget: an equal share of the suite's."""
        return budget.split(len(self.members))

    def aggregate(self, metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
        """The suite's metrics from its members' (one mapping per member, in the order of
        `members`, keyed as a training result's are, e.g. ``"val/accuracy"``): every member's
        metric under its name (``"recall/val/accuracy"``), and on the val and test splits the mean
        of the members' primary `metric` where every member reports it (a member that failed
        reports none, and neither does the suite)."""
        members = self.members
        if len(metrics) != len(members):
            raise ValueError(f"{self.name}: {len(members)} members but metrics of {len(metrics)}")
        combined: dict[str, float] = {}
        for member, values in zip(members, metrics):
            combined.update({f"{member.name}/{key}": value for key, value in values.items()})
        for split in ("val", "test"):
            values = [m.get(f"{split}/{self.metric}") for m in metrics]
            if all(v is not None for v in values):
                combined[f"{split}/{self.metric}"] = sum(values) / len(values)  # type: ignore[arg-type]
        return combined

    def make_data(self) -> Splits:
        raise TaskError(f"{self.name} is a suite: its members have the data (einsearch.train trains each)")

    def loss(self, model: torch.nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        raise TaskError(f"{self.name} is a suite: train its members (einsearch.train does)")

    def evaluate(self, model: torch.nn.Module, split: Any) -> dict[str, float]:
        raise TaskError(f"{self.name} is a suite: evaluate its members and `aggregate` their metrics")


@lru_cache(maxsize=4)
def _data(task: Task) -> Splits:
    """One small in-process cache, so that repeated trainings on a task reuse its data."""
    with torch.no_grad():
        return task.make_data()


# ---------------------------------------------------------------------------------------------
# small helpers


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise TaskError(f"option {name} must be positive, got {value}")
