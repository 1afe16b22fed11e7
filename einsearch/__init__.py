"""einsearch: search for sequence-mixer architectures in a probabilistic grammar.

    einsearch.parse(text) -> Arch
    einsearch.build(arch, d_model) -> nn.Module
    einsearch.seeds[name] -> Arch
    einsearch.sample(space, seed_or_rng) -> Arch
"""

from einsearch.arch import Arch
from einsearch.build import build
from einsearch.causality import check_causal
from einsearch.costs import Costs, costs
from einsearch.grammar import ArchSyntaxError, parse, sample, to_text
from einsearch.grammar.seeds import resolve, seeds
from einsearch.primitives.base import BuildError

__all__ = [
    "Arch",
    "ArchSyntaxError",
    "BuildError",
    "Costs",
    "build",
    "check_causal",
    "costs",
    "parse",
    "resolve",
    "sample",
    "seeds",
    "to_text",
]
__version__ = "0.1.0"
