"""Canonical text of an `Arch`: ``op(variant, child, ..., key=value, ...)``."""

from __future__ import annotations

from einsearch.arch import Arch, Value


def format_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def to_text(arch: Arch, indent: int | None = None) -> str:
    """One-line canonical text, or a multi-line layout (which parses to the same tree) with `indent`."""
    head = [arch.variant] if arch.variant is not None else []
    children = [to_text(c, indent) for c in arch.children]
    params = [f"{k}={format_value(v)}" for k, v in arch.params]
    items = head + children + params
    if indent is None or not arch.children:
        return f"{arch.op}({', '.join(items)})"
    pad = " " * indent
    body = ",\n".join(pad + line.replace("\n", "\n" + pad) for line in items)
    return f"{arch.op}(\n{body}\n)"
