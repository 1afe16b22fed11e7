"""The architecture language: grammar, parser (the printer, `to_text`, lives with `Arch` in
einsearch/arch.py); search spaces, sampler, mutation, crossover."""

from einsearch.arch import to_text
from einsearch.grammar.equivalent import at_length, equivalence_key
from einsearch.grammar.evolve import crossover, mutate
from einsearch.grammar.parser import ArchSyntaxError, grammar, parse
from einsearch.grammar.sampler import sample
from einsearch.grammar.space import Space, SpaceError, builtin_spaces, load_space
from einsearch.grammar.suggest import suggest, to_params

__all__ = [
    "ArchSyntaxError",
    "Space",
    "SpaceError",
    "at_length",
    "builtin_spaces",
    "crossover",
    "equivalence_key",
    "grammar",
    "load_space",
    "mutate",
    "parse",
    "sample",
    "suggest",
    "to_params",
    "to_text",
]
