"""Set disjointness (SD), as in Arora et al. 2024, "Just read twice: closing the recall gap for
recurrent language models" (Sec. 3; their synthetic: `synthetic/zoology/data/non_autoreg.py` of
HazyResearch/prefix-linear-attention).

An example holds two sets of distinct tokens, one after the other, then a question:

    a_1 ... a_|A|  SEP  b_1 ... b_|B|  ASK   ->  target at ASK: YES if A ∩ B = ∅, else NO

* the small set has ``small`` elements, the large one ``large``; ``order`` says which comes first
  (``small_first``, ``large_first``, or ``random``: either, with equal chance, per example).  The
  paper shows that the memory a recurrent model needs to decide SD depends on that order: it
  must hold the first set, so reading the small set first is the easy order;
* elements come from [4, vocab) (0-3 are SEP, ASK, YES, NO), distinct within each set;
* exactly half of the examples intersect, and those share exactly one element, at a uniformly
  random position of each set; the other half are disjoint;
* only the ASK position is scored, so accuracy is the fraction of right answers (chance: 0.5).

The JRT code trains on the intersecting case only and asks for the shared token; this task asks
the decision problem of the paper's definition instead.  Train, validation and test sets use
independent seeds derived from the task's ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from einsearch.tasks.base import EXAMPLES, SEEDS, Budget, Splits, TaskError, option
from einsearch.tasks.cache import cached_arrays
from einsearch.tasks.language import IGNORE, TokenTask, as_examples, split_seeds
from einsearch.tasks.mqar import distinct_draws

SEP, ASK, YES, NO = 0, 1, 2, 3  # YES: the sets are disjoint
FIRST_ELEMENT = 4  # set elements are tokens [4, vocab)


def disjoint_sets(
    rng: np.random.Generator, examples: int, vocab: int, small: int, large: int, order: str
) -> tuple[np.ndarray, np.ndarray]:
    """SD examples: inputs (N, small + large + 2) and targets (N, same), `IGNORE` but at the end."""
    n = examples
    elements = FIRST_ELEMENT + distinct_draws(rng, n, vocab - FIRST_ELEMENT, small + large)  # (N, S+L), all distinct
    small_set, large_set = elements[:, :small], elements[:, small:]  # (N, S), (N, L): disjoint

    # half of the examples (exactly n // 2) share one element: a random one of the small set
    # takes the place of a random one of the large set
    shared = rng.permutation(n) < n // 2  # (N,)
    rows = np.flatnonzero(shared)
    large_set[rows, rng.integers(large, size=len(rows))] = small_set[rows, rng.integers(small, size=len(rows))]

    if order == "random":
        small_first = rng.random(n) < 0.5
    else:
        small_first = np.full(n, order == "small_first")
    sep, ask = np.full((n, 1), SEP), np.full((n, 1), ASK)
    inputs = np.where(
        small_first[:, None],
        np.concatenate([small_set, sep, large_set, ask], axis=1),
        np.concatenate([large_set, sep, small_set, ask], axis=1),
    )  # (N, S + L + 2)
    targets = np.full(inputs.shape, IGNORE, dtype=np.int64)
    targets[:, -1] = np.where(shared, NO, YES)
    return inputs, targets


@dataclass(frozen=True)
class Disjoint(TokenTask):
    name: ClassVar[str] = "disjoint"
    summary: ClassVar[str] = "set disjointness: do two sets share an element? (JRT, Arora et al. 2024)"
    budget: ClassVar[Budget] = Budget(steps=2000)  # not calibrated; at sizes (2, 8) gla reaches 0.99 in 1000 steps, a transformer 0.6
    batch_size: ClassVar[int] = 64
    lr: ClassVar[float] = 3e-3

    small: int = option(4, "elements of the small set", at_least=1, at_most=2**14)
    large: int = option(16, "elements of the large set (at least small)", at_least=1, at_most=2**14)
    order: str = option("small_first", "which set comes first", choices=("small_first", "large_first", "random"))
    vocab: int = option(256, "vocabulary size: set elements from [4, vocab), 0-3 are separator, question, yes, no", at_least=8, at_most=2**20)
    train: int = option(50_000, "training examples", **EXAMPLES)
    val: int = option(1_000, "validation examples", **EXAMPLES)
    test: int = option(2_000, "test examples", **EXAMPLES)
    seed: int = option(0, "data seed", **SEEDS)

    def __post_init__(self) -> None:
        if not 1 <= self.small <= self.large:
            raise TaskError(f"disjoint: need 1 <= small <= large, got small={self.small}, large={self.large}")
        if self.small + self.large > self.vocab - FIRST_ELEMENT:
            raise TaskError(f"disjoint: {self.small} + {self.large} distinct elements do not fit in vocab - 4 = {self.vocab - FIRST_ELEMENT} tokens")
        self.check_splits()

    @property
    def tokens(self) -> int:
        return self.small + self.large + 2

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def make_data(self) -> Splits:
        def make() -> dict[str, np.ndarray]:
            arrays = {}
            for split, rng, n in zip(("train", "val", "test"), split_seeds(self.seed), (self.train, self.val, self.test)):
                inputs, targets = disjoint_sets(rng, n, self.vocab, self.small, self.large, self.order)
                arrays[f"{split}_inputs"], arrays[f"{split}_targets"] = inputs, targets
            return arrays

        arrays = cached_arrays("disjoint", repr(self), make)
        return Splits(*(as_examples(arrays[f"{s}_inputs"], arrays[f"{s}_targets"]) for s in ("train", "val", "test")))
