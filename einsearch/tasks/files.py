"""Reading a task's data file: one place for the checks and the messages every file task gives.

`read_text` refuses a missing path or a file too large to hold in memory, opens it as UTF-8 text
(a byte-order mark is skipped), hands it to the task's parser, and turns every failure into one
`TaskError` line naming the file.  The parsed result is kept in memory while the file is unchanged
(same size and modification time), so the repeated trainings of a search read it once.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from einsearch.messages import clip, shown
from einsearch.tasks.base import TaskError

Parser = Callable[[IO[str], str], Any]  # (open text file, its name for messages) -> parsed data


def read_text(task: str, path: str, max_bytes: int, parse: Parser) -> Any:
    """`parse(file, name)` of the file at `path`; a `TaskError` starting with `task` for a missing
    or unreadable file, one over `max_bytes`, or one that is not UTF-8 text or CSV."""
    file = Path(path).expanduser()
    if "\0" in path or not file.is_file():
        raise TaskError(f"{task}: no such file: {shown(path)}")
    stat = file.stat()
    if stat.st_size > max_bytes:
        raise TaskError(f"{task}: {shown(path)} has {stat.st_size:,} bytes; at most {max_bytes:,} fit in memory")
    return _read(task, str(file), parse, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4)
def _read(task: str, path: str, parse: Parser, size: int, modified: int) -> Any:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return parse(f, shown(path))
    except UnicodeDecodeError as e:
        raise TaskError(f"{task}: {shown(path)} is not a text file (a byte near offset {e.start:,} is not UTF-8)") from None
    except csv.Error as e:
        raise TaskError(f"{task}: {shown(path)} is not a readable CSV ({clip(str(e), 80, quote=False)})") from None
    except OSError as e:
        raise TaskError(f"{task}: cannot read {shown(path)}: {e.strerror or e}") from None
