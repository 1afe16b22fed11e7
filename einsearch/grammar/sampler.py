"""Drawing architectures from a space: the derivation walk (`space.derive`) with a decider that
draws each decision from a `numpy.random.Generator`.

The walk itself, and the other deciders (`space.replay` for membership and log probability,
`suggest.py` for Optuna), live with the space: a space's membership is defined by the same walk.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np

from einsearch.arch import Arch
from einsearch.grammar.space import Decider, Space, Support, derive, load_space

SeedOrRng = Union[int, np.random.Generator, None]


# --------------------------------------------------------------------------- drawing
def rng_of(seed_or_rng: SeedOrRng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


def _drawer(rng: np.random.Generator) -> Decider:
    def draw(name: str, support: Support, _: Any) -> Any:
        if len(support.values) == 1:
            return support.values[0]
        return support.draw(rng.random())

    return draw


def sample(space: Space | str, seed_or_rng: SeedOrRng = None) -> Arch:
    """One architecture drawn from `space` (a Space, a built-in name or a file path).

    The same seed gives the same architecture on every machine: the only randomness is
    ``rng.random()`` from numpy's PCG64 generator, compared against cumulative probabilities.
    """
    space = load_space(space)
    return derive(space, _drawer(rng_of(seed_or_rng)))[0]


def sample_subtree(space: Space, rng: np.random.Generator, depth: int, budget: int) -> Arch:
    """A subtree for a position at `depth` (1: the root) that may use at most `budget` nodes."""
    return derive(space, _drawer(rng), depth=depth, budget=budget)[0]
