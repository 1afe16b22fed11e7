"""The architecture language: grammar, parser, printer (and, later, spaces and sampler)."""

from einsearch.grammar.parser import ArchSyntaxError, grammar, parse
from einsearch.grammar.printer import to_text

__all__ = ["ArchSyntaxError", "grammar", "parse", "to_text"]
