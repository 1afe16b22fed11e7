"""Text -> `Arch`, through the Lark grammar in `arch.lark`.

The Transformer is generic because the grammar is shaped for it (see the header of arch.lark):
a parameter rule yields ``(key, value)``, a variant rule yields its word, a node rule yields an
`Arch` from those pieces.  Errors of any kind are raised as one type, `ArchSyntaxError`, whose
message is one line of bounded length (input echoed in it is clipped, see `clip`).

Text is checked against three limits before it is parsed, so that no input can exhaust the
recursion of the tree's later passes (build, print, hash) or the machine: its length
(`MAX_TEXT`), its nesting depth in parentheses (`MAX_DEPTH`) and the digits of a number
(`MAX_DIGITS`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Transformer
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from einsearch.arch import Arch, Value
from einsearch.messages import clip

MAX_TEXT = 20_000  # characters of architecture text (the zoo's longest seed has a few hundred)
MAX_DEPTH = 64  # nesting depth in parentheses (the built-in spaces stop at depth 6)
MAX_DIGITS = 12  # digits of a number in architecture text

_TERMINAL_WORDS = {
    "POSINT": "a positive integer",
    "INT": "a non-negative integer",
    "PROB": "a probability in (0, 1) such as 0.25",
    "BOOL": "true or false",
}


class ArchSyntaxError(ValueError):
    """Malformed architecture text: names the line and column, what was found and what is allowed."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None, text: str = ""):
        self.line, self.column, self.text = line, column, text
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(where + message)


def _position(text: str, pos: int) -> tuple[int, int]:
    """Line and column (both from 1) of the character at `pos`."""
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def check_limits(text: str) -> None:
    """Raise `ArchSyntaxError` if `text` is longer, more deeply nested or holds longer numbers
    than the limits of this module allow."""
    if len(text) > MAX_TEXT:
        raise ArchSyntaxError(f"architecture text has {len(text):,} characters; at most {MAX_TEXT:,} are allowed")
    depth = 0
    for pos, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if depth > MAX_DEPTH:
            raise ArchSyntaxError(f"nesting deeper than {MAX_DEPTH} levels of parentheses", *_position(text, pos), text)
    number = re.search(rf"\d{{{MAX_DIGITS + 1},}}", text)
    if number:
        raise ArchSyntaxError(
            f"number {clip(number.group(), 20)} has more than {MAX_DIGITS} digits", *_position(text, number.start()), text
        )


@lru_cache(maxsize=1)
def grammar() -> Lark:
    source = resources.files("einsearch.grammar").joinpath("arch.lark").read_text()
    return Lark(source, parser="lalr", maybe_placeholders=True, propagate_positions=True)


def _convert(token: Token) -> Value:
    if token.type in ("POSINT", "INT"):
        return int(token)
    if token.type == "PROB":
        return float(token)
    if token.type == "BOOL":
        return token == "true"
    return str(token)


class _ToArch(Transformer):
    def start(self, children):
        return children[0]

    def __default__(self, data, children, meta):
        tokens = [c for c in children if isinstance(c, Token)]
        if len(children) == 3 and tokens[1:2] == ["="]:  # parameter rule: key "=" value
            return (str(children[0]), _convert(children[2]))
        if len(children) == 1 and tokens:  # variant rule: one word
            return str(tokens[0])
        variant = next((c for c in children if isinstance(c, str) and not isinstance(c, Token)), None)
        return Arch(
            op=str(data),
            variant=variant,
            params=tuple(c for c in children if isinstance(c, tuple)),
            children=tuple(c for c in children if isinstance(c, Arch)),
        )


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    try:
        return repr(grammar().get_terminal(terminal).pattern.value)
    except KeyError:
        return terminal


def _expected(names) -> str:
    words = sorted({_describe(n) for n in names if n != "$END"})
    if "$END" in names:
        words.append("end of text")
    return words[0] if len(words) == 1 else "one of " + ", ".join(words)


def _word_at(text: str, pos: int) -> str:
    """The whole word (or the single character) at `pos`, quoted, for error messages."""
    match = re.compile(r"[\w.]+|\S").match(text, pos)
    return clip(match.group(), 30) if match else "end of text"


def _accepted(error: UnexpectedInput, fallback) -> set[str]:
    """The terminals the parser would really accept where it stopped.  The lexer's own list is the
    union over every context of the parser state (after ``norm(rms)`` at the top: ',' and ')'
    although only the end of text fits), so ask the parser itself where it can."""
    interactive = getattr(error, "interactive_parser", None)
    if interactive is not None:
        try:
            return set(interactive.accepts())
        except Exception:  # pragma: no cover - lark internals; the lexer's list is still right enough
            pass
    return set(fallback)


def parse(text: str) -> Arch:
    """Parse architecture text into its `Arch` tree; raise `ArchSyntaxError` if it is not valid."""
    check_limits(text)
    try:
        tree = grammar().parse(text)
    except UnexpectedToken as e:
        found = "end of text" if e.token.type == "$END" else _word_at(text, e.token.start_pos)
        raise ArchSyntaxError(
            f"unexpected {found}; expected {_expected(_accepted(e, e.accepts or e.expected))}", e.line, e.column, text
        ) from None
    except UnexpectedCharacters as e:
        found = _word_at(text, e.pos_in_stream)
        raise ArchSyntaxError(
            f"unexpected {found}; expected {_expected(_accepted(e, e.allowed))}", e.line, e.column, text
        ) from None
    except UnexpectedEOF as e:
        raise ArchSyntaxError(f"unexpected end of text; expected {_expected(e.expected)}") from None
    except UnexpectedInput as e:  # pragma: no cover - remaining Lark cases
        raise ArchSyntaxError(str(e), getattr(e, "line", None), getattr(e, "column", None), text) from None
    try:
        return _ToArch().transform(tree)
    except VisitError as e:  # pragma: no cover - the transformer has no failing paths
        raise ArchSyntaxError(str(e.orig_exc)) from None
