"""The architecture tree: frozen, hashable, picklable pure data.

An `Arch` is one node of the language (see `grammar/arch.lark`): an `op` (the rule name), an
optional `variant` (e.g. ``softmax`` in ``attn(softmax, ...)``), named `params` in canonical
order, and child architectures.  Text is produced by `einsearch.grammar.to_text`; `Arch.id` is a
content hash of that text, identical across processes and machines.
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
        from einsearch.grammar.printer import to_text

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
