"""The architecture tree: frozen, hashable, picklable pure data.

An `Arch` is one node of the language (see `grammar/arch.lark`): an `op` (the rule name), an
optional `variant` (e.g. ``softmax`` in ``attn(softmax, ...)``), named `params` in canonical
order, and child architectures.  Its canonical text, ``op(variant, child, ..., key=value, ...)``, is
printed here (`to_text`) because `Arch.id` is a content hash of that text, identical across
processes and machines; `einsearch.grammar.parse` reads it back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Union

Value = Union[bool, int, float, str]


@dataclass(frozen=True)
class Arch:
    op: str
    variant: str | None = None
    params: tuple[tuple[str, Value], ...] = ()
    children: tuple["Arch", ...] = ()

    def __getitem__(self, key: str) -> Value:
        for name, value in self.params:
            if name == key:
                return value
        raise KeyError(f"{self.op} has no parameter {key!r}")

    def get(self, key: str, default: Value | None = None) -> Value | None:
        return next((value for name, value in self.params if name == key), default)

    @property
    def text(self) -> str:
        return to_text(self)

    @property
    def id(self) -> str:
        """12 hex digits of SHA-256 over the canonical text: stable across processes and machines."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    def walk(self) -> Iterator["Arch"]:
        """Every node of the tree, parents before children."""
        yield self
        for child in self.children:
            yield from child.walk()

    @property
    def size(self) -> int:
        return sum(1 for _ in self.walk())

    @property
    def depth(self) -> int:
        return 1 + max((c.depth for c in self.children), default=0)

    def __str__(self) -> str:
        return self.text


# --------------------------------------------------------------------------- canonical text
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
