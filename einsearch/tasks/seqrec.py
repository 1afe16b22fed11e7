"""Sequential recommendation on an interaction log, in the protocol of SASRec (Kang & McAuley 2018,
"Self-Attentive Sequential Recommendation", ICDM; reference code ``kang205/SASRec``).

The log is a file of (user, item, timestamp) interactions, one a line, in one of two layouts:

* a CSV whose header names the columns ``user``, ``item`` and ``timestamp`` (in any order; other
  columns are ignored), every value an integer;
* MovieLens' ``ratings.dat``: ``user::item::rating::timestamp``, no header (told apart by the
  ``::`` separator on the first line); the rating is ignored.

From it, as in the paper:

* each user's items ordered by timestamp (ties keep the order of the file);
* users with fewer than 3 interactions dropped (`info` says how many); the remaining users' items
  re-indexed 1..I in increasing order of their ids in the file (0 is padding);
* leave-one-out: a user's last item is the test target, the second-to-last the validation
  target, the rest is the training sequence;
* training predicts the next item at every position of the training sequence (input ``s[:-1]``,
  target ``s[1:]``, the last ``max_len`` of each, left-padded with 0), one example per user with at
  least two training items;
* evaluation ranks each user's held-out item among 100 negatives drawn uniformly (with
  replacement, as the reference code does) from the items that user never interacted with, fixed
  per split by the task's seed; the input is the training sequence for validation, the training
  sequence plus the validation item for test.  A negative scored equal to the target counts as
  ranked above it (so a constant model scores no hit).  HR@10 is the fraction of users whose
  item ranks in the top 10; NDCG@10 averages 1/log2(rank + 2) over them (rank 0 is the top).
  Drawing at random, HR@10 is 10/101 ≈ 0.099.

The model is SASRec's with the searched block in place of its self-attention layers: an item
embedding, the blocks, a final norm, and each position's score of item i the dot product with
item i's embedding (input and output embeddings shared, as in SASRec).  No positional embedding:
position comes from the block (the transformer seed's RoPE), as in every shell here.

Loss: full softmax cross-entropy over all items at every position, not the paper's binary
cross-entropy with one sampled negative per position.  The softmax is deterministic given the
batch (no negatives to draw inside the loss), affordable at these catalogue sizes (ML-1M: 3,416
items), and trains SASRec better (Klenitskiy & Vasilev 2023, "Turning Dross Into Gold Loss: is
BERT4Rec really better than SASRec?").

Problems with the file raise `TaskError` naming it: missing file, a file that is not UTF-8 text
or larger than `MAX_LOG_BYTES`, a header without the three columns, a line with too few fields or
a value that is not an integer (with its line number), too few users left to train and evaluate.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.arch import Arch
from einsearch.messages import clip, shown
from einsearch.tasks.base import MAX_DATA_BYTES, SEEDS, Budget, Examples, Splits, Task, TaskError, check_data_size, model_device, option
from einsearch.tasks.files import read_text
from einsearch.tasks.language import as_examples, split_seeds
from einsearch.tasks.shell import RecommenderModel, build_blocks

MAX_LOG_BYTES = MAX_DATA_BYTES // 8  # parsed rows take several times the file's size
MIN_INTERACTIONS = 3  # fewer leave no training item once validation and test take theirs
NEGATIVES = 100  # sampled items each held-out item is ranked against
TOP = 10  # the cut-off of HR@10 and NDCG@10
COLUMNS = ("user", "item", "timestamp")


# ---------------------------------------------------------------------------------------------
# reading the log


@dataclass(frozen=True, eq=False)  # compared (and cached) by identity: one object per read file
class Log:
    """The interactions of a file, in file order, as three (N,) int64 arrays."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray


def read_log(path: str) -> Log:
    """Read an interaction log; every problem is a `TaskError` naming the file (see
    `files.read_text`, which also keeps it in memory while the file is unchanged)."""
    return read_text("seqrec", path, MAX_LOG_BYTES, _log_from)


def _log_from(f: IO[str], path: str) -> Log:
    first = f.readline()
    f.seek(0)
    rows = _movielens_rows(f, path) if "::" in first else _csv_rows(csv.reader(f), path)
    table = np.array(rows, dtype=np.int64).reshape(-1, 3)  # (N, 3): user, item, timestamp
    return Log(users=table[:, 0].copy(), items=table[:, 1].copy(), times=table[:, 2].copy())


def _csv_rows(reader, path: str) -> list[tuple[int, int, int]]:
    """(user, item, timestamp) of every row of a CSV with a header; `path` names it in messages."""
    header = next(reader, None)
    if header is None:
        raise TaskError(f"seqrec: {path} is empty")
    names = [name.strip().lower() for name in header]
    if not set(COLUMNS) <= set(names):
        found = clip(",".join(header), 60)
        raise TaskError(f"seqrec: {path} line 1: the header must name the columns user, item and timestamp, found {found}")
    where = [names.index(name) for name in COLUMNS]
    rows = []
    for row in reader:
        if not row:
            continue
        line = reader.line_num
        if len(row) <= max(where):
            raise TaskError(f"seqrec: {path} line {line} has {len(row)} fields, the header has {len(header)}")
        rows.append(tuple(integer(row[i], name, path, line) for i, name in zip(where, COLUMNS)))
    return rows


def _movielens_rows(lines, path: str) -> list[tuple[int, int, int]]:
    """(user, item, timestamp) of every line ``user::item::rating::timestamp``."""
    rows = []
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        fields = text.strip().split("::")
        if len(fields) < 4:
            raise TaskError(f"seqrec: {path} line {line} has {len(fields)} fields; expected user::item::rating::timestamp")
        rows.append(tuple(integer(fields[i], name, path, line) for i, name in zip((0, 1, 3), COLUMNS)))
    return rows


def integer(text: str, column: str, path: str, line: int) -> int:
    """The integer in `text` (a 64-bit one), or a `TaskError` naming the place."""
    try:
        value = int(text.strip())
    except ValueError:
        raise TaskError(f"seqrec: {path} line {line}: {column} is not an integer ({clip(text.strip(), 40)})") from None
    if not -(2**63) <= value < 2**63:
        raise TaskError(f"seqrec: {path} line {line}: {column} {clip(text.strip(), 40)} does not fit in 64 bits")
    return value


# ---------------------------------------------------------------------------------------------
# user sequences, negatives, splits


@dataclass(frozen=True)
class Sequences:
    """The users kept (at least `MIN_INTERACTIONS` interactions each), their items in time order."""

    users: np.ndarray  # (U,) the kept users' ids in the file, increasing
    items: np.ndarray  # (I,) the kept items' ids in the file, increasing: item k + 1 is items[k]
    sequences: list[np.ndarray]  # per kept user, the re-indexed items (values in 1..I) in time order
    dropped: int  # users with fewer than MIN_INTERACTIONS interactions


@lru_cache(maxsize=4)
def user_sequences(log: Log) -> Sequences:
    """Group the log by user, order each user's items by time (ties by file order), drop users with
    too few interactions and re-index the remaining items 1..I."""
    n = len(log.users)
    if n == 0:
        return Sequences(users=log.users, items=log.items, sequences=[], dropped=0)
    order = np.lexsort((np.arange(n), log.times, log.users))  # by user, then time, then file order
    users, items = log.users[order], log.items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])  # (U,) first row of each user
    counts = np.diff(np.r_[starts, n])
    keep = counts >= MIN_INTERACTIONS
    kept = np.repeat(keep, counts)  # (N,) whether each sorted row belongs to a kept user
    item_ids = np.unique(items[kept])
    index = np.searchsorted(item_ids, items) + 1  # the new id of every kept row's item
    sequences = [index[s : s + c] for s, c in zip(starts[keep], counts[keep])]
    return Sequences(users=users[starts[keep]], items=item_ids, sequences=sequences, dropped=int((~keep).sum()))


def left_pad(sequence: np.ndarray, length: int) -> np.ndarray:
    """The last `length` items of `sequence`, with zeros (padding) in front where it is shorter."""
    out = np.zeros(length, dtype=np.int64)
    tail = sequence[-length:]
    out[length - len(tail) :] = tail
    return out


def sample_negatives(rng: np.random.Generator, sequences: list[np.ndarray], items: int, count: int) -> np.ndarray:
    """(U, count) items drawn uniformly with replacement from 1..`items` outside each user's
    sequence (every user must have an unseen item).  A draw r in [0, m) of a user's m unseen items
    is mapped to the r-th unseen item: r + 1 plus the number of seen items below it, which are the
    seen items s_j (sorted, j from 0) with at most r unseen items below them (s_j - 1 - j <= r)."""
    out = np.empty((len(sequences), count), dtype=np.int64)
    for u, sequence in enumerate(sequences):
        seen = np.unique(sequence)
        r = rng.integers(items - len(seen), size=count)
        out[u] = r + 1 + np.searchsorted(seen - 1 - np.arange(len(seen)), r, side="right")
    return out


# ---------------------------------------------------------------------------------------------
# model, metrics


def ranking_metrics(model: nn.Module, split: Examples, batch_size: int = 256) -> dict[str, float]:
    """HR@10 and NDCG@10 of the first candidate of each row (the held-out item) against the other
    candidates (the negatives), scored at the input's last position."""
    device = model_device(model)
    hits, gains, users = 0.0, 0.0, 0
    for inputs, candidates in split.batches(batch_size):
        scores = model(inputs.to(device).long())[:, -1].float()  # (B, I + 1)
        picked = scores.gather(1, candidates.to(device).long())  # (B, 1 + NEGATIVES)
        rank = (picked[:, 1:] >= picked[:, :1]).sum(dim=1)  # (B,) negatives at or above the target
        top = rank < TOP
        hits += top.sum().item()
        gains += torch.where(top, 1.0 / torch.log2(rank.double() + 2), 0.0).sum().item()
        users += len(rank)
    return {"hr10": hits / users, "ndcg10": gains / users}


# ---------------------------------------------------------------------------------------------
# the task


@dataclass(frozen=True)
class SeqRec(Task):
    name: ClassVar[str] = "seqrec"
    summary: ClassVar[str] = "next-item recommendation on an interaction log (SASRec, Kang & McAuley 2018; HR@10)"
    metric: ClassVar[str] = "hr10"
    mode: ClassVar[str] = "max"
    budget: ClassVar[Budget] = Budget(steps=1000)
    batch_size: ClassVar[int] = 128  # SASRec's
    lr: ClassVar[float] = 1e-3  # SASRec's
    positional: ClassVar[str | None] = "path"
    selection: ClassVar[str] = "best"  # SASRec stops early on validation

    path: str = option("", "the interaction log: CSV with header user,item,timestamp, or MovieLens ratings.dat (required)")
    max_len: int = option(50, "items of history the model reads (SASRec: 50 for sparse data, 200 for ML-1M)", at_least=1, at_most=2**16)
    seed: int = option(0, "seed of the evaluation negatives", **SEEDS)

    def __post_init__(self) -> None:
        if not self.path:
            raise TaskError("seqrec: give the log, e.g. seqrec:data/ratings.dat,max_len=200")

    @property
    def tokens(self) -> int:
        return self.max_len

    def sequences(self) -> Sequences:
        return _sequences(self.path)

    def make_data(self) -> Splits:
        data = self.sequences()
        trained = [s for s in data.sequences if len(s) >= MIN_INTERACTIONS + 1]  # two training items or more
        if not trained:
            raise TaskError(
                f"seqrec: {shown(self.path)} has {len(data.sequences)} users with {MIN_INTERACTIONS}+ interactions "
                f"but none with {MIN_INTERACTIONS + 1}+; training needs two items before the validation and test ones"
            )
        users, T = len(data.sequences), self.max_len
        check_data_size(self.name, 16 * (2 * len(trained) * T + 2 * users * (T + 1 + NEGATIVES)), f"{users:,} users × max_len {T}")

        train_inputs = np.stack([left_pad(s[:-3], T) for s in trained])  # (U', T)
        train_targets = np.stack([left_pad(s[1:-2], T) for s in trained])  # (U', T), 0: not scored
        items = len(data.items)
        for user, sequence in zip(data.users, data.sequences):
            if len(np.unique(sequence)) == items:
                raise TaskError(f"seqrec: {shown(self.path)}: user {user} interacted with all {items} items, leaving no negatives to rank against")
        _, val_rng, test_rng = split_seeds(self.seed)
        evaluation = []
        for rng, history, held_out in ((val_rng, -2, -2), (test_rng, -1, -1)):
            inputs = np.stack([left_pad(s[:history], T) for s in data.sequences])  # (U, T)
            targets = np.array([s[held_out] for s in data.sequences])[:, None]  # (U, 1)
            candidates = np.concatenate([targets, sample_negatives(rng, data.sequences, items, NEGATIVES)], axis=1)
            evaluation.append(as_examples(inputs, candidates))  # (U, T), (U, 1 + NEGATIVES)
        return Splits(as_examples(train_inputs, train_targets), *evaluation)

    def model(self, arch: Arch, d_model: int, layers: int) -> nn.Module:
        return RecommenderModel(build_blocks(arch, d_model, layers), d_model, len(self.sequences().items))

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        inputs, targets = batch
        scores = model(inputs.long())  # (B, T, I + 1)
        return F.cross_entropy(scores.flatten(0, 1).float(), targets.flatten().long(), ignore_index=0)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Examples) -> dict[str, float]:
        return ranking_metrics(model, split)

    def info(self) -> dict[str, object]:
        data = self.sequences()
        return {
            "file": str(Path(self.path).expanduser()),
            "users": len(data.users),
            "items": len(data.items),
            "interactions": sum(len(s) for s in data.sequences),
            f"dropped_users_under_{MIN_INTERACTIONS}_interactions": data.dropped,
        }


def _sequences(path: str) -> Sequences:
    """The user sequences of the log at `path`, with at least one user to evaluate."""
    data = user_sequences(read_log(path))
    if not data.sequences:
        raise TaskError(f"seqrec: {shown(path)} has no user with at least {MIN_INTERACTIONS} interactions (users with fewer are dropped)")
    return data
