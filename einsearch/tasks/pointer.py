"""Pointer networks (Vinyals, Fortunato & Jaitly 2015, "Pointer Networks", NeurIPS): the output is
a sequence of positions of the input, chosen by attention over the inputs, so the output
"vocabulary" grows with the input.

Two tasks, each example a set of n points with continuous coordinates:

* ``sort``: n numbers drawn uniformly from [0, 1); the output is the input positions in increasing
  order of value (the stable argsort).  Sorting is the pointer-network task of Vinyals, Bengio &
  Kudlur 2016 ("Order Matters: Sequence to sequence for sets").
* ``hull``: n points drawn uniformly from the unit square, as in the paper; the output is the
  indices of the planar convex hull's vertices, counter-clockwise (the hull's interior on the
  left), starting from the vertex with the lowest index.  Only strict vertices count: a point
  on an edge between two vertices (collinear, probability zero for random points) is not one.

Targets are pointers: 0 .. n-1 are the points, n is END; every output ends with END, so sort
has n + 1 pointer steps and hull 4 to n + 1 (a hull has at least 3 vertices).  Targets are
stored as (N, n + 1) arrays, `IGNORE` after the END.

Model (`PointerModel`).  The causal blocks see one sequence, the points, then the decoder steps:

    position   0 .. n-1            n     n+1 .. n+S
    input      enc(x_0 .. x_n-1)   go    dec(x_y0) .. dec(x_yS-1)

with linear embeddings of the coordinates (``enc`` for the points read, ``dec`` for the points
fed back), and a learned ``go`` vector.  Decoder step i (position n + i) predicts pointer y_i;
its input is the point pointed to at the step before (teacher forcing in training: the true one).
The go position doubles as the END key.  With e_j the blocks' output at the n + 1 key positions
(the points and go) and d_i that at decoder step i, the pointer head (`PointerHead`, the paper's
eq. 3) is additive attention over the keys only:

    u_ij = v^T tanh(W1 e_j + W2 d_i),   p(y_i = j) = softmax_j u_ij,   j = 0 .. n

In the paper an encoder and a decoder LSTM play the two parts; here the L blocks play both: a
causal block sees, at every decoder step, all the points and the earlier steps, and nothing else
is needed.  No part of the shell is sized to n, so a model trained on n points runs on any number.

Training: cross-entropy of each target pointer given the true earlier ones.  Evaluation decodes
greedily (each step feeds back the model's own arg-max pointer) for n + 1 steps; the output ends
at its first END (later steps are no output, wrong against any target):

* ``accuracy`` (primary): the fraction of target pointer steps, END included, where the greedy
  output equals the target;
* ``exact``: the fraction of examples whose whole greedy output, through END, equals the target;
* ``loss``: the teacher-forced cross-entropy (nats per target pointer step).

Validation has n points like training; the test has ``test_n`` (2n by default): the paper trains
hulls on 50 points and tests on up to 500.  ``train --eval-lengths`` tests at multiples of that
(`PointerTask.at_length`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.arch import Arch
from einsearch.tasks.base import EXAMPLES, SEEDS, Budget, Examples, Splits, Task, TaskError, check_data_size, model_device, option
from einsearch.tasks.cache import cached_arrays
from einsearch.tasks.language import IGNORE, split_seeds, token_loss
from einsearch.tasks.shell import PointerModel, build_blocks

# ---------------------------------------------------------------------------------------------
# data


def sort_targets(values: np.ndarray) -> np.ndarray:
    """(N, n) numbers -> (N, n + 1) pointers: the positions in increasing order of value, then END."""
    N, n = values.shape
    order = np.argsort(values, axis=1, kind="stable")
    return np.concatenate([order, np.full((N, 1), n)], axis=1)


def hull_targets(points: np.ndarray) -> np.ndarray:
    """(N, n, 2) points -> (N, n + 1) pointers: the convex hull's strict vertices counter-clockwise
    from the lowest index, then END (= n), then `IGNORE`.

    Gift wrapping (Jarvis 1973), every example at once: from the leftmost point (the lowest of
    those), the next vertex is the point q with no point to the right of the line current -> q
    (on a tie, the farthest along it), until the walk is back at the start."""
    N, n, _ = points.shape
    p = points.astype(np.float64)
    rows = np.arange(N)
    start = np.lexsort((p[:, :, 1], p[:, :, 0]), axis=1)[:, 0]  # (N,) leftmost, then lowest
    hull = np.full((N, n), -1)  # vertex indices in walk order
    size = np.zeros(N, dtype=np.int64)
    current, done = start.copy(), np.zeros(N, dtype=bool)
    for _ in range(n):  # each vertex once; n rounds at most
        walking = np.flatnonzero(~done)  # (W,) the examples still walking
        hull[walking, size[walking]] = current[walking]
        size[walking] += 1
        here = p[walking, current[walking]]  # (W, 2)
        best = (current[walking] + 1) % n
        a = p[walking, best] - here  # (W, 2) towards the candidate
        for r in range(n):
            b = p[walking, r] - here  # (W, 2) towards point r
            cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]  # < 0: r is right of here -> candidate
            take = (cross < 0) | ((cross == 0) & ((b * b).sum(1) > (a * a).sum(1)))
            best = np.where(take, r, best)
            a = np.where(take[:, None], b, a)
        current[walking] = best
        done[walking] = best == start[walking]
        if done.all():
            break
    first = np.where(hull >= 0, hull, n).argmin(axis=1)  # (N,) where the lowest index sits in the walk
    steps = np.arange(n)[None, :]
    rotated = np.take_along_axis(hull, (first[:, None] + steps) % size[:, None], axis=1)  # (N, n)
    targets = np.full((N, n + 1), IGNORE, dtype=np.int64)
    targets[:, :n] = np.where(steps < size[:, None], rotated, IGNORE)
    targets[rows, size] = n
    return targets


# ---------------------------------------------------------------------------------------------
# model


def greedy_decode(model: nn.Module, points: Tensor) -> Tensor:
    """(B, n, dim) -> (B, n + 1) pointers, each step fed the model's own arg-max of the step
    before; `IGNORE` (no output) after the first END."""
    B, n, _ = points.shape
    fed = torch.zeros(B, 0, dtype=torch.long, device=points.device)
    for _ in range(n + 1):
        choice = model(points, fed)[:, -1].argmax(-1)  # (B,)
        fed = torch.cat([fed, choice[:, None]], dim=1)
    ends = (fed == n).long()
    after_end = ends.cumsum(1) - ends > 0
    return fed.masked_fill(after_end, IGNORE)


# ---------------------------------------------------------------------------------------------
# tasks


class PointerTask(Task):
    """Points -> a sequence of pointers into them, ended by END (see the module docstring)."""

    metric: ClassVar[str] = "accuracy"
    mode: ClassVar[str] = "max"
    budget: ClassVar[Budget] = Budget(steps=2000)  # not tuned; sort:n=5 is 0.94 exact after 300 steps
    batch_size: ClassVar[int] = 64
    lr: ClassVar[float] = 3e-3
    eval_batch_size: ClassVar[int] = 250
    length_option: ClassVar[str | None] = "n"
    dim: ClassVar[int]  # coordinates per point

    n: int
    test_n: int
    train: int
    val: int
    test: int
    seed: int

    def points(self, rng: np.random.Generator, examples: int, n: int) -> np.ndarray:
        """(examples, n, dim) float32 points."""
        return rng.random((examples, n, self.dim)).astype(np.float32)

    def targets(self, points: np.ndarray) -> np.ndarray:
        """(N, n, dim) -> (N, n + 1) pointers."""
        raise NotImplementedError

    def __post_init__(self) -> None:
        if min(self.train, self.val, self.test) < 1:
            raise TaskError(f"{self.name}: train, val and test need at least one example each")
        numbers = (self.train + self.val) * self.n * (self.dim + 1) + self.test * self.test_length * (self.dim + 1)
        check_data_size(self.name, 32 * numbers, f"train + val + test = {self.train + self.val + self.test:,} examples")

    @property
    def test_length(self) -> int:
        return self.test_n or 2 * self.n

    def at_length(self, factor: int) -> Task:
        """This task with `factor` times the points in every split: n and the test's points
        (test_n, or 2n) scale together, so factor 1 is this task's own test."""
        return replace(self, test_n=self.test_length).scaled(factor, "n", "test_n")

    @property
    def tokens(self) -> int:
        return 2 * self.n + 1  # n points, n + 1 decoder steps

    def make_data(self) -> Splits:
        sizes = (self.train, self.val, self.test)
        lengths = (self.n, self.n, self.test_length)

        def make() -> dict[str, np.ndarray]:
            arrays = {}
            for split, rng, examples, n in zip(("train", "val", "test"), split_seeds(self.seed), sizes, lengths):
                points = self.points(rng, examples, n)
                arrays[f"{split}_points"], arrays[f"{split}_targets"] = points, self.targets(points)
            return arrays

        arrays = cached_arrays(self.name, repr(self), make)
        return Splits(*(
            Examples(torch.from_numpy(arrays[f"{s}_points"]), torch.from_numpy(arrays[f"{s}_targets"]))
            for s in ("train", "val", "test")
        ))  # fmt: skip

    def model(self, arch: Arch, d_model: int, layers: int) -> nn.Module:
        return PointerModel(build_blocks(arch, d_model, layers), d_model, self.dim)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        points, targets = batch
        targets = targets.long()
        return token_loss(model(points, targets[:, :-1]), targets)  # teacher forcing

    def evaluate(self, model: nn.Module, split: Examples) -> dict[str, float]:
        device = model_device(model)
        n = split.tensors[0].shape[1]
        # few enough examples a batch that the head's (B, n + 1, n + 1, D) activations stay under 2^27 numbers
        batch_size = max(1, min(self.eval_batch_size, 2**27 // ((n + 1) ** 2 * model.d_model)))
        total_loss, correct, count, exact, examples = 0.0, 0, 0, 0, 0
        for points, targets in split.batches(batch_size):
            points, targets = points.to(device), targets.to(device).long()
            scored = targets != IGNORE
            logits = model(points, targets[:, :-1]).float()  # (B, n + 1, n + 1)
            total_loss += F.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
            right = (greedy_decode(model, points) == targets) & scored
            correct += int(right.sum())
            count += int(scored.sum())
            exact += int((right == scored).all(dim=1).sum())
            examples += len(targets)
        return {"loss": total_loss / count, "accuracy": correct / count, "exact": exact / examples}


_N = "points per training (and validation) example"
_TEST_N = "points per test example (0: 2n)"


@dataclass(frozen=True)
class Sort(PointerTask):
    name: ClassVar[str] = "sort"
    summary: ClassVar[str] = "point to n numbers in increasing order (pointer network; Vinyals et al. 2015, 2016)"
    dim: ClassVar[int] = 1

    n: int = option(10, _N, at_least=1, at_most=1024)
    test_n: int = option(0, _TEST_N, at_least=0, at_most=1024)
    train: int = option(100_000, "training examples", **EXAMPLES)
    val: int = option(1_000, "validation examples", **EXAMPLES)
    test: int = option(1_000, "test examples", **EXAMPLES)
    seed: int = option(0, "data seed", **SEEDS)

    def targets(self, points: np.ndarray) -> np.ndarray:
        return sort_targets(points[:, :, 0])


@dataclass(frozen=True)
class Hull(PointerTask):
    name: ClassVar[str] = "hull"
    summary: ClassVar[str] = "point to the convex hull's vertices, counter-clockwise (pointer network; Vinyals et al. 2015)"
    dim: ClassVar[int] = 2

    n: int = option(10, _N + "; a hull needs 3", at_least=3, at_most=1024)
    test_n: int = option(0, _TEST_N, at_least=0, at_most=1024)
    train: int = option(100_000, "training examples", **EXAMPLES)
    val: int = option(1_000, "validation examples", **EXAMPLES)
    test: int = option(1_000, "test examples", **EXAMPLES)
    seed: int = option(0, "data seed", **SEEDS)

    def __post_init__(self) -> None:
        if 0 < self.test_n < 3:
            raise TaskError(f"hull: test_n must be 0 (2n) or at least 3, got {self.test_n}")
        super().__post_init__()

    def targets(self, points: np.ndarray) -> np.ndarray:
        return hull_targets(points)
