"""Config fields that carry their help text, so that each default and its description are written
once, on the frozen config dataclass (`RunConfig`, `TrainConfig`), and the command line reads both
from there (a test compares `einsearch run --help` and `train --help` with the dataclasses)."""

from __future__ import annotations

import dataclasses
from typing import Any


def setting(default: Any, help: str) -> Any:
    """A dataclass field with an immutable `default` and the `help` the command line shows."""
    return dataclasses.field(default=default, metadata={"help": help})


def help_of(cls: type, name: str, default: str | None = None) -> str:
    """The help text of field `name` of dataclass `cls`; with `default` (a format string, ``{}``
    standing for the field's default) followed by ``(default: ...)``, for an option whose own
    default is None because it means more than the field's (e.g. "the run's" with --resume)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    text = field.metadata["help"]
    return text if default is None else f"{text.removesuffix('.')} (default: {default.format(field.default)})."
