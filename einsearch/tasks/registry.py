"""Tasks by name: ``name`` or ``name:option=value,...``, with one bare value allowed where the task
has a positional option (a path): ``csv:/data/ETTh1.csv,horizon=192``, ``lm:/some/folder``.

Option values are converted to the type of the option's default (int, float, str, bool) and
checked against the range the option declares (`base.option`); unknown tasks and options, values
of the wrong type and values out of range raise `TaskError`, whose message echoes at most a
short piece of the text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from einsearch.messages import clip
from einsearch.tasks.base import Task, TaskError, check_option
from einsearch.tasks.disjoint import Disjoint
from einsearch.tasks.dynamics import KuramotoSivashinsky, Lorenz96
from einsearch.tasks.lm import LM
from einsearch.tasks.mad import (
    MAD,
    Compression,
    FuzzyRecall,
    Memorization,
    NoisyRecall,
    Recall,
    SelectiveCopy,
)
from einsearch.tasks.mqar import MQAR
from einsearch.tasks.passkey import Passkey
from einsearch.tasks.pointer import Hull, Sort
from einsearch.tasks.seqrec import SeqRec
from einsearch.tasks.series import CSVSeries

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        MQAR, Disjoint, Recall, FuzzyRecall, NoisyRecall, SelectiveCopy, Compression, Memorization, MAD,
        Passkey, LM, Lorenz96, KuramotoSivashinsky, CSVSeries, SeqRec,
        Sort, Hull,
    )
}  # fmt: skip
DEFAULT_TASK = "mqar"  # what `einsearch run`, `train` and `inspect` use when no --task is given


def _convert(task: str, option: str, text: str, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise TaskError(f"{task}: option {option} expects {kind.__name__}, got {clip(text, 40)}") from None


def get_task(spec: str | Task) -> Task:
    """The task named by `spec` (a `Task` is returned as it is)."""
    if isinstance(spec, Task):
        return spec
    name, _, rest = spec.strip().partition(":")
    if name not in TASKS:
        raise TaskError(f"unknown task {clip(name, 40)}; tasks: {', '.join(TASKS)}")
    cls = TASKS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for item in (part.strip() for part in rest.split(",")) if rest.strip() else []:
        if not item:
            raise TaskError(f"{name}: empty option in {clip(spec, 60)}")
        key, eq, text = item.partition("=")
        if not eq:
            if cls.positional is None or cls.positional in values:
                raise TaskError(f"{name}: expected option=value, got {clip(item, 40)}")
            key, text = cls.positional, item
        key = key.strip()
        if key not in fields:
            raise TaskError(f"{name}: unknown option {clip(key, 40)}; options: {', '.join(fields) or 'none'}")
        if key in values:
            raise TaskError(f"{name}: option {key} given twice")
        values[key] = _convert(name, key, text.strip(), fields[key].default)
        check_option(name, fields[key], values[key])
    return cls(**values)


@dataclass(frozen=True)
class OptionInfo:
    name: str
    default: Any
    help: str


@dataclass(frozen=True)
class TaskInfo:
    name: str
    summary: str
    metric: str
    mode: str
    budget: str
    search_budget: str
    positional: str | None
    options: tuple[OptionInfo, ...]


def describe_tasks() -> list[TaskInfo]:
    """Every task with its primary metric, default budget and options (for `einsearch tasks`)."""
    return [
        TaskInfo(
            name=name,
            summary=cls.summary,
            metric=cls.metric,
            mode=cls.mode,
            budget=str(cls.budget),
            search_budget=str(cls.trial_budget()),
            positional=cls.positional,
            options=tuple(OptionInfo(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls)),  # type: ignore[arg-type]
        )
        for name, cls in TASKS.items()
    ]
