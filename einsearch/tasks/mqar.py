"""Multi-query associative recall (MQAR), as defined by Zoology (Arora, Eyuboglu et al. 2023,
"Zoology: Measuring and Improving Recall in Efficient Language Models"; generator
`zoology/data/multiquery_ar.py`).

An example of length T with P key-value pairs (vocabulary V):

    k_1 v_1 k_2 v_2 ... k_P v_P | x x k_3 x x x k_1 x ... (T - 2P tokens)

* keys are P distinct tokens from the first half of the vocabulary, [1, V/2) (0 is never a key);
  values are P distinct tokens from the second half, [V/2, V);
* the query region has (T - 2P)/2 even slots; query i goes to slot g_i, drawn without
  replacement with probability p(g) ∝ a·(g+1)^(a-1) (a = ``power_a``; small a makes short gaps
  frequent, as repeated bigrams in text are; a = 1 is uniform), at position 2P + 2 g_i;
* every other position of the query region holds a uniformly random token of the whole vocabulary;
* only the query positions are scored: the target there is the value that followed that key.

Train, validation and test sets use independent seeds derived from the task's ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from einsearch.tasks.base import EXAMPLES, SEEDS, Budget, Splits, TaskError, option
from einsearch.tasks.cache import cached_arrays
from einsearch.tasks.language import IGNORE, TokenTask, as_examples, split_seeds


def distinct_draws(rng: np.random.Generator, rows: int, population: int, k: int) -> np.ndarray:
    """(rows, k) integers in [0, population), distinct within a row, each row a uniformly random
    ordered sample without replacement."""
    if k > population:
        raise ValueError(f"cannot draw {k} distinct values from {population}")
    if k * k <= population:  # few collisions: draw with replacement, redraw the rows that collide
        draws = rng.integers(population, size=(rows, k))
        while True:
            ordered = np.sort(draws, axis=1)
            clash = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
            if not clash.any():
                return draws
            draws[clash] = rng.integers(population, size=(int(clash.sum()), k))
    out = np.empty((rows, k), dtype=np.int64)
    chunk = max(1, 4_000_000 // population)
    for start in range(0, rows, chunk):  # many collisions: the first k of random permutations
        n = min(chunk, rows - start)
        out[start : start + n] = np.argsort(rng.random((n, population)), axis=1)[:, :k]
    return out


def weighted_draws(rng: np.random.Generator, rows: int, p: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) indices drawn without replacement with probabilities `p` (successive sampling, as
    ``numpy.random.choice(replace=False, p=p)``): the k largest of log p + Gumbel noise, in
    decreasing order, have exactly that distribution (Efraimidis & Spirakis 2006)."""
    keys = np.log(p)[None, :] + rng.gumbel(size=(rows, len(p)))
    return np.argsort(-keys, axis=1)[:, :k]


def multiquery_ar(
    rng: np.random.Generator, examples: int, vocab: int, seq_len: int, pairs: int, power_a: float
) -> tuple[np.ndarray, np.ndarray]:
    """Zoology's MQAR examples: inputs (N, T) and targets (N, T), `IGNORE` where not scored."""
    context = 2 * pairs
    keys = 1 + distinct_draws(rng, examples, vocab // 2 - 1, pairs)  # (N, P) in [1, V/2)
    values = vocab // 2 + distinct_draws(rng, examples, vocab - vocab // 2, pairs)  # (N, P) in [V/2, V)

    slots = (seq_len - context) // 2
    gap = np.arange(1, slots + 1, dtype=np.float64)
    p = power_a * gap ** (power_a - 1)
    gaps = weighted_draws(rng, examples, p / p.sum(), pairs)  # (N, P) slot of each key's query

    inputs = rng.integers(vocab, size=(examples, seq_len))  # random tokens fill the query region
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    rows = np.arange(examples)[:, None]
    query_positions = context + 2 * gaps  # (N, P)
    inputs[rows, query_positions] = keys
    targets = np.full((examples, seq_len), IGNORE, dtype=np.int64)
    targets[rows, query_positions] = values
    return inputs, targets


@dataclass(frozen=True)
class MQAR(TokenTask):
    name: ClassVar[str] = "mqar"
    summary: ClassVar[str] = "multi-query associative recall (Zoology, Arora et al. 2023)"
    budget: ClassVar[Budget] = Budget(steps=3000)  # ~5 min of a 2-layer d=64 transformer on one core
    search_budget: ClassVar[Budget] = Budget(steps=600)  # transformer: val accuracy 0.974 at 600, 0.898 at 500
    batch_size: ClassVar[int] = 64
    lr: ClassVar[float] = 3e-3

    # 256 by default: small enough for a CPU search to tell candidates apart within seconds of
    # training; Zoology's sweeps use vocab=8192.
    vocab: int = option(256, "vocabulary size: keys from [1, vocab/2), values from [vocab/2, vocab); Zoology: 8192", at_least=8, at_most=2**20)
    seq_len: int = option(64, "sequence length (even, below vocab)", at_least=4, at_most=2**16)
    pairs: int = option(8, "key-value pairs per sequence; 4*pairs <= seq_len", at_least=1, at_most=2**14)
    power_a: float = option(0.01, "power-law exponent a of the query gaps, p(g) ∝ a·g^(a-1); 1 = uniform", above=0, at_most=100)
    train: int = option(100_000, "training examples", **EXAMPLES)
    val: int = option(1_000, "validation examples", **EXAMPLES)
    test: int = option(3_000, "test examples", **EXAMPLES)
    seed: int = option(0, "data seed", **SEEDS)

    def __post_init__(self) -> None:
        if self.seq_len % 2:
            raise TaskError(f"mqar: seq_len must be even, got {self.seq_len}")
        if self.vocab <= self.seq_len:
            raise TaskError(f"mqar: vocab ({self.vocab}) must exceed seq_len ({self.seq_len}), as in Zoology")
        if self.pairs < 1 or 4 * self.pairs > self.seq_len:
            raise TaskError(f"mqar: need 1 <= pairs and 4*pairs <= seq_len, got pairs={self.pairs}, seq_len={self.seq_len}")
        if self.pairs >= self.vocab // 2:
            raise TaskError(f"mqar: {self.pairs} distinct keys do not fit in a vocabulary half of {self.vocab // 2 - 1}")
        if not self.power_a > 0:
            raise TaskError(f"mqar: power_a must be positive, got {self.power_a}")
        self.check_splits()

    @property
    def tokens(self) -> int:
        return self.seq_len

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def make_data(self) -> Splits:
        def make() -> dict[str, np.ndarray]:
            arrays = {}
            for split, rng, n in zip(("train", "val", "test"), split_seeds(self.seed), (self.train, self.val, self.test)):
                inputs, targets = multiquery_ar(rng, n, self.vocab, self.seq_len, self.pairs, self.power_a)
                arrays[f"{split}_inputs"], arrays[f"{split}_targets"] = inputs, targets
            return arrays

        arrays = cached_arrays("mqar", repr(self), make)
        return Splits(*(as_examples(arrays[f"{s}_inputs"], arrays[f"{s}_targets"]) for s in ("train", "val", "test")))
