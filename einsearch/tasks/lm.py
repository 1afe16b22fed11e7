"""Byte-level language modelling on a text file or folder, scored in bits per byte.

The corpus is the bytes of one file, or of every file under a folder (recursively, hidden files
and folders skipped) concatenated in sorted order of their relative paths.  Without a path it is
the Python standard library's own source, present on every machine: every ``*.py`` file under
``sysconfig.get_paths()["stdlib"]`` outside test folders (``test``, ``tests``, ``idle_test``)
and installed packages (``site-packages``, ``dist-packages``).  The corpus's SHA-256 (over each
file's relative path and bytes, in order), file count and size are recorded in `info`, so results
on different machines can be told apart when their standard libraries differ.

Splits are contiguous: the first 90 % of the bytes train, the next 5 % validate, the last 5 %
test.  Evaluation scores the first ``eval_bytes`` bytes of a split in consecutive windows of
``seq_len`` (every position of every window is scored).  How training batches are drawn is the
``curriculum`` option:

* ``concat`` (the default): windows of ``seq_len`` bytes at random offsets of the concatenated
  training bytes, across file boundaries.
* ``dd``: dataset decomposition (Pouransari et al. 2024, "Dataset Decomposition: Faster LLM
  Training with Variable Sequence Length Curriculum", arXiv:2405.13226).  Each file is a document;
  a document of L bytes holds L - 1 next-byte predictions, cut into pieces whose lengths are
  powers of two: as many pieces of ``seq_len`` as fit, then one piece per binary digit of what is
  left, largest first, down to ``min_len`` (a remainder below ``min_len`` is dropped).  So a piece
  never crosses a document boundary.  Pieces of one length form a bucket; each training step
  draws one bucket, with probability proportional to the tokens it holds, and from it
  ``batch_size * seq_len / length`` pieces, so every step trains on the same number of tokens as
  a ``concat`` step.  (Drawing buckets by their tokens is the paper's baseline mixture, the same
  as going through every batch of an epoch in random order; its length curricula that favour
  short buckets early are not implemented.)  Validation and test are the same as under
  ``concat``, so the two curricula are compared on the same evaluation.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.arch import Arch
from einsearch.messages import clip
from einsearch.tasks.base import MAX_DATA_BYTES, Budget, Splits, Task, TaskError, check_data_size, model_device, option
from einsearch.tasks.shell import LanguageModel, build_blocks

CURRICULA = ("concat", "dd")
SKIPPED_FOLDERS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
TRAIN_FRACTION, VAL_FRACTION = 0.90, 0.05
MAX_CORPUS_BYTES = MAX_DATA_BYTES // 4  # the corpus is held about three times over (bytes, tensor, copies)


def stdlib_files() -> list[Path]:
    """The default corpus's files: the standard library's ``*.py`` outside tests and packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        (p for p in root.rglob("*.py") if not SKIPPED_FOLDERS & set(p.relative_to(root).parts[:-1]) and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def folder_files(root: Path) -> list[Path]:
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@dataclass(frozen=True)
class Corpus:
    data: bytes
    files: int
    sizes: tuple[int, ...]  # each file's bytes, in order: the documents of curriculum=dd
    sha256: str
    source: str


@lru_cache(maxsize=2)
def read_corpus(path: str) -> Corpus:
    """The corpus named by `path` ("" for the standard library's source)."""
    try:
        return _read_corpus(path)
    except OSError as e:
        where = clip(e.filename, 60, quote=False) if isinstance(e.filename, str) else clip(path, 60, quote=False)
        raise TaskError(f"lm: cannot read {where}: {e.strerror or e}") from None


def _read_corpus(path: str) -> Corpus:
    if path:
        root = Path(path).expanduser()
        if "\0" in path or not root.exists():
            raise TaskError(f"lm: no such file or folder: {clip(path, 60, quote=False)}")
        files = [root] if root.is_file() else folder_files(root)
        base = root.parent if root.is_file() else root
    else:
        base = Path(sysconfig.get_paths()["stdlib"])
        files = stdlib_files()
    size = sum(file.stat().st_size for file in files)
    if size > MAX_CORPUS_BYTES:
        raise TaskError(f"lm: the corpus has {size:,} bytes; at most {MAX_CORPUS_BYTES:,} fit in memory")
    digest = hashlib.sha256()
    parts = []
    for file in files:
        content = file.read_bytes()
        digest.update(file.relative_to(base).as_posix().encode() + b"\0" + content + b"\0")
        parts.append(content)
    data = b"".join(parts)
    if not data:
        raise TaskError(f"lm: the corpus {path or base} is empty")
    sizes = tuple(len(part) for part in parts)
    return Corpus(data=data, files=len(files), sizes=sizes, sha256=digest.hexdigest(), source=str(Path(path).expanduser() if path else base))


class Stream:
    """A byte stream: random training windows; fixed consecutive windows for evaluation."""

    def __init__(self, data: Tensor, seq_len: int, eval_bytes: int):
        self.data, self.seq_len, self.eval_bytes = data, seq_len, eval_bytes

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        starts = torch.randint(len(self.data) - self.seq_len, (batch_size,), generator=generator)
        offsets = starts[:, None] + torch.arange(self.seq_len + 1)  # (B, T+1)
        window = self.data[offsets]
        return window[:, :-1], window[:, 1:]

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        windows = min(self.eval_bytes, len(self.data) - 1) // self.seq_len
        starts = torch.arange(windows) * self.seq_len
        for first in range(0, windows, batch_size):
            offsets = starts[first : first + batch_size, None] + torch.arange(self.seq_len + 1)
            window = self.data[offsets]
            yield window[:, :-1], window[:, 1:]


def decompose(predictions: int, max_len: int, min_len: int) -> tuple[int, list[int]]:
    """Dataset decomposition of one document's `predictions` positions: ``(full, rest)``, `full`
    pieces of `max_len`, then the lengths of the rest's binary digits from `min_len` up, largest
    first (`max_len` and `min_len` are powers of two).  E.g. (203, 64, 4) -> (3, [8]): 203 = 3 * 64
    + 8 + 3, the 3 below `min_len` dropped."""
    full, rest = divmod(predictions, max_len)
    digits = range(int(math.log2(min_len)), int(math.log2(max_len)))
    return full, [2**i for i in reversed(digits) if rest >> i & 1]


def document_spans(sizes: tuple[int, ...], end: int) -> list[tuple[int, int]]:
    """(first byte, bytes) of each document in the concatenation's first `end` bytes."""
    spans, first = [], 0
    for size in sizes:
        if first >= end:
            break
        spans.append((first, min(size, end - first)))
        first += size
    return spans


def piece_starts(spans: list[tuple[int, int]], max_len: int, min_len: int) -> dict[int, Tensor]:
    """The first byte of every piece of every document, by piece length (longest first).  A piece
    of length n covers n + 1 bytes: n inputs, and their targets shifted by one."""
    full_pieces = [torch.zeros(0, dtype=torch.long)]
    shorter: dict[int, list[int]] = {2**i: [] for i in reversed(range(int(math.log2(min_len)), int(math.log2(max_len))))}
    for first, size in spans:
        full, rest = decompose(max(size - 1, 0), max_len, min_len)
        full_pieces.append(first + max_len * torch.arange(full))
        offset = first + max_len * full
        for length in rest:
            shorter[length].append(offset)
            offset += length
    return {max_len: torch.cat(full_pieces)} | {length: torch.tensor(s, dtype=torch.long) for length, s in shorter.items()}


class Buckets:
    """The training split of curriculum=dd: pieces drawn one bucket (one length) per batch, each
    batch holding ``batch_size * seq_len`` tokens."""

    def __init__(self, data: Tensor, starts: dict[int, Tensor], seq_len: int):
        self.data, self.seq_len = data, seq_len
        self.starts = {length: s for length, s in starts.items() if len(s)}  # non-empty buckets, longest first
        self.lengths = list(self.starts)
        self.tokens = torch.tensor([length * len(s) for length, s in self.starts.items()], dtype=torch.float64)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        bucket = int(torch.multinomial(self.tokens, 1, generator=generator))
        length, starts = self.lengths[bucket], self.starts[self.lengths[bucket]]
        pieces = torch.randint(len(starts), (batch_size * self.seq_len // length,), generator=generator)
        offsets = starts[pieces, None] + torch.arange(length + 1)  # (B * seq_len / length, length + 1)
        window = self.data[offsets]
        return window[:, :-1], window[:, 1:]

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Every piece once, bucket by bucket, ``batch_size * seq_len`` tokens a batch (or fewer,
        a bucket's last)."""
        for length, starts in self.starts.items():
            rows = batch_size * self.seq_len // length
            for first in range(0, len(starts), rows):
                window = self.data[starts[first : first + rows, None] + torch.arange(length + 1)]
                yield window[:, :-1], window[:, 1:]


@dataclass(frozen=True)
class LM(Task):
    name: ClassVar[str] = "lm"
    summary: ClassVar[str] = "byte-level language modelling in bits per byte (default corpus: Python's stdlib source)"
    metric: ClassVar[str] = "bpb"
    mode: ClassVar[str] = "min"
    budget: ClassVar[Budget] = Budget(steps=2000)  # work, not time: the same result on any load
    batch_size: ClassVar[int] = 16
    lr: ClassVar[float] = 2e-3
    positional: ClassVar[str | None] = "path"
    length_option: ClassVar[str] = "seq_len"

    path: str = option("", "text file or folder (empty: the Python standard library's source)")
    seq_len: int = option(256, "bytes per training window", at_least=1, at_most=2**20)
    eval_bytes: int = option(65_536, "bytes scored per evaluation of a split", at_least=1, at_most=2**32)
    curriculum: str = option("concat", "training batches: concat (random windows) or dd (dataset decomposition)", choices=CURRICULA)
    min_len: int = option(8, "dd: the shortest piece, a power of two (shorter remainders are dropped)", at_least=1, at_most=2**20)

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.eval_bytes < 1:
            raise TaskError(f"lm: seq_len and eval_bytes must be positive, got {self.seq_len}, {self.eval_bytes}")
        if self.curriculum not in CURRICULA:
            raise TaskError(f"lm: curriculum must be one of {', '.join(CURRICULA)}, got {clip(self.curriculum, 40)}")
        if self.curriculum == "dd":
            for name, value in (("seq_len", self.seq_len), ("min_len", self.min_len)):
                if value & (value - 1):
                    raise TaskError(f"lm: curriculum=dd needs {name} to be a power of two, got {value}")
            if self.min_len > self.seq_len:
                raise TaskError(f"lm: curriculum=dd needs min_len <= seq_len, got {self.min_len} > {self.seq_len}")
        elif self.min_len != LM.min_len:
            raise TaskError("lm: min_len applies only with curriculum=dd")

    @property
    def tokens(self) -> int:
        return self.seq_len

    def make_data(self) -> Splits:
        corpus = read_corpus(self.path)
        data = torch.frombuffer(bytearray(corpus.data), dtype=torch.uint8)
        n = len(data)
        train_end, val_end = int(n * TRAIN_FRACTION), int(n * (TRAIN_FRACTION + VAL_FRACTION))
        if min(val_end - train_end, n - val_end) < self.seq_len + 1:
            raise TaskError(
                f"lm: the corpus has {n} bytes, too short for validation and test windows of seq_len+1 = "
                f"{self.seq_len + 1} bytes (5 % of the corpus each)"
            )
        val, test = (Stream(part, self.seq_len, self.eval_bytes) for part in (data[train_end:val_end], data[val_end:]))
        if self.curriculum == "concat":
            return Splits(Stream(data[:train_end], self.seq_len, self.eval_bytes), val, test)
        return Splits(self.decomposed(data[:train_end], corpus.sizes), val, test)

    def decomposed(self, train: Tensor, sizes: tuple[int, ...]) -> Buckets:
        """The training bytes cut into pieces, file by file (see the module's docstring)."""
        spans = document_spans(sizes, len(train))
        full = len(train) // self.seq_len  # at most, held in tensors: 8 bytes each
        shorter = min(len(spans) * int(math.log2(self.seq_len // self.min_len)), len(train) // self.min_len)  # in lists first
        check_data_size("lm", 8 * full + 64 * shorter, f"curriculum=dd with seq_len={self.seq_len}, min_len={self.min_len}")
        buckets = Buckets(train, piece_starts(spans, self.seq_len, self.min_len), self.seq_len)
        if not buckets.lengths:
            raise TaskError(f"lm: curriculum=dd found no document in the training split with min_len+1 = {self.min_len + 1} bytes")
        return buckets

    def model(self, arch: Arch, d_model: int, layers: int) -> nn.Module:
        return LanguageModel(build_blocks(arch, d_model, layers), d_model, 256)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        inputs, targets = batch
        logits = model(inputs.long())
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().long())

    def evaluate(self, model: nn.Module, split: Stream) -> dict[str, float]:
        device = model_device(model)
        total, count = 0.0, 0
        for inputs, targets in split.batches(32):
            logits = model(inputs.to(device).long()).float()
            total += F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten().long(), reduction="sum").item()
            count += targets.numel()
        return {"loss": total / count, "bpb": total / count / math.log(2)}

    def info(self) -> dict[str, object]:
        corpus = read_corpus(self.path)
        return {"corpus": corpus.source, "files": corpus.files, "bytes": len(corpus.data), "sha256": corpus.sha256}
