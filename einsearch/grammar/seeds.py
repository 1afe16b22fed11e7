"""The seed zoo: named architectures read from `seeds.ein`."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from functools import lru_cache
from importlib import resources

from einsearch.arch import Arch
from einsearch.grammar.parser import ArchSyntaxError, parse
from einsearch.messages import clip


def read_seeds(text: str) -> dict[str, Arch]:
    """Parse the seed file format: `name:` lines, each followed by indented architecture text."""
    sources: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line[0].isspace() and stripped.endswith(":"):
            name = stripped[:-1]
            sources[name] = []
        elif name is None:
            raise ArchSyntaxError(f"seed file: architecture text before any `name:` line: {stripped!r}")
        else:
            sources[name].append(stripped)
    seeds = {}
    for name, lines in sources.items():
        try:
            seeds[name] = parse(" ".join(lines))
        except ArchSyntaxError as e:
            raise ArchSyntaxError(f"seed {name!r}: {e}") from None
    return seeds


class Seeds(Mapping[str, Arch]):
    """Read-only mapping name -> Arch, loaded on first use."""

    @staticmethod
    @lru_cache(maxsize=1)
    def _table() -> dict[str, Arch]:
        return read_seeds(resources.files("einsearch.grammar").joinpath("seeds.ein").read_text())

    def __getitem__(self, name: str) -> Arch:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


seeds = Seeds()


def resolve(text_or_name: str) -> Arch:
    """A seed name or architecture text -> Arch."""
    name = text_or_name.strip()
    if name in seeds:
        return seeds[name]
    if "(" not in name:
        close = difflib.get_close_matches(name, list(seeds), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "`einsearch seeds` lists the seeds"
        raise ArchSyntaxError(f"{clip(name, 40)} is neither architecture text nor a seed name; {hint}")
    return parse(text_or_name)
