"""On-disk cache of generated data (trajectories, synthetic datasets, corpus files).

The folder is ``$EINSEARCH_CACHE`` if set, else ``~/.cache/einsearch``.  An entry is one ``.npz``
file named by a readable prefix and a hash of everything that determines its content; it is
written to a temporary file and renamed into place, so parallel workers that generate the same
entry never see half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Bump when a generator changes in a way that changes its output, so old entries are not reused.
GENERATOR_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("EINSEARCH_CACHE") or Path.home() / ".cache" / "einsearch")


def compact(array: np.ndarray) -> np.ndarray:
    """Integer arrays in the smallest of int8/int16/int32/int64 that holds their values."""
    if array.dtype.kind not in "iu" or array.size == 0:
        return array
    low, high = int(array.min()), int(array.max())
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return array.astype(dtype, copy=False)
    return array


def cached_arrays(prefix: str, key: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored under (prefix, key), made by `make()` and stored on first use (integer
    arrays compacted, see `compact`)."""
    digest = hashlib.sha256(f"v{GENERATOR_VERSION}|{key}".encode()).hexdigest()[:16]
    path = cache_dir() / f"{prefix}-{digest}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError):
            pass  # unreadable (e.g. a disk filled up mid-write elsewhere): make it again
    arrays = {name: compact(array) for name, array in make().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            np.savez(f, **arrays)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return arrays
