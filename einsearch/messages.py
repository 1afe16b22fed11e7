"""Pieces of user input as error messages show them: every error is one line of bounded length,
so input echoed in it is cut (a 1 MB input must not make a 1 MB error line)."""

from __future__ import annotations

CLIP = 60  # characters of user input echoed in an error message


def clip(text: str, limit: int = CLIP, quote: bool = True) -> str:
    """`text` quoted by repr (unless `quote` is False), cut to about `limit` characters."""
    show = repr if quote else str
    return show(text) if len(text) <= limit else show(text[:limit]) + f"... ({len(text):,} characters)"


def shown(path: str, limit: int = 100) -> str:
    """A path as error messages show it: whole, or its last `limit` characters (a path's end says
    most about it), control characters escaped."""
    path = path if path.isprintable() else repr(path)[1:-1]
    return path if len(path) <= limit else "..." + path[-limit:]
