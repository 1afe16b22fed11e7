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

Two options come from later papers of the same group:

* ``passes=K`` (JRT-Prompt; Arora et al. 2024, "Just read twice: closing the recall gap for
  recurrent language models"): the key-value context is written K times before the query region,
  so a recurrent model sees every pair again after it has seen them all.  The sequence grows by
  (K-1)·2P tokens; the queries, their gaps and the filler are those of K = 1.  (Zoology's
  ``num_passes`` keeps the total length and shortens the query region instead.)
* ``mixture=zoology``: Zoology's protocol (its MQAR configs, e.g.
  ``zoology/experiments/mqar_example_configs/original_mqar_configs.py``): training data mixes
  five (seq_len, pairs) settings up to (256, 64), validation draws from the same five, and the
  test reports accuracy per setting (``accuracy@512x128``) on seven settings up to (1024, 256)
  (`ZOOLOGY_TRAIN`, `ZOOLOGY_TEST`; vocab must exceed 1024, Zoology uses 8192).  The options
  ``train``, ``val`` and ``test`` are then totals, shared out over the settings.  A training
  batch comes from one setting, as in Zoology's loader, which never mixes settings in a batch:
  sequences of one length need no padding, so no compute goes to padding (`Mixture`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from einsearch.tasks.base import EXAMPLES, SEEDS, Budget, Examples, Splits, TaskError, check_data_size, option
from einsearch.tasks.cache import cached_arrays
from einsearch.tasks.language import IGNORE, TokenTask, as_examples, split_seeds, token_metrics

# Zoology's mixture (its MQAR configs, vocab 8192): five training settings, 100k examples of the
# first and 20k of each other (so shares 5:1:1:1:1), and seven test settings of 1k examples each.
ZOOLOGY_TRAIN = ((64, 4, 5), (128, 8, 1), (256, 16, 1), (256, 32, 1), (256, 64, 1))  # (seq_len, pairs, share)
ZOOLOGY_TEST = ((64, 4), (64, 8), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256))  # (seq_len, pairs)
EVAL_TOKENS = 256 * 64  # tokens per evaluation batch of a mixture (256 sequences of 64)


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


def repeat_context(inputs: np.ndarray, targets: np.ndarray, pairs: int, passes: int) -> tuple[np.ndarray, np.ndarray]:
    """JRT-Prompt: the key-value context (the first 2P tokens) written `passes` times before the
    query region, the repeats unscored.  (N, T) -> (N, T + (passes-1)·2P); passes=1 changes nothing."""
    context = 2 * pairs
    inputs = np.concatenate([np.tile(inputs[:, :context], (1, passes)), inputs[:, context:]], axis=1)
    repeats = np.full((len(targets), (passes - 1) * context), IGNORE, dtype=targets.dtype)
    return inputs, np.concatenate([repeats, targets], axis=1)


def shares(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights` (rounded down; the rest goes to the first)."""
    counts = [total * w // sum(weights) for w in weights]
    counts[0] += total - sum(counts)
    return counts


class Mixture:
    """Examples of several settings, kept apart because their lengths differ: a training batch
    comes from one setting, drawn in proportion to its examples (as Zoology's loader, which never
    mixes settings in a batch); evaluation goes setting by setting.  `parts`: name -> examples."""

    def __init__(self, parts: dict[str, Examples]):
        self.parts = parts
        self.weights = torch.tensor([float(len(part)) for part in parts.values()])

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts.values())

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        which = int(torch.multinomial(self.weights, 1, generator=generator))
        return list(self.parts.values())[which].sample(batch_size, generator)

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, ...]]:
        for part in self.parts.values():
            yield from part.batches(batch_size)


@dataclass(frozen=True)
class MQAR(TokenTask):
    name: ClassVar[str] = "mqar"
    summary: ClassVar[str] = "multi-query associative recall (Zoology, Arora et al. 2023)"
    budget: ClassVar[Budget] = Budget(steps=3000)  # ~5 min of a 2-layer d=64 transformer on one core
    search_budget: ClassVar[Budget] = Budget(steps=600)  # transformer: val accuracy 0.974 at 600, 0.898 at 500
    batch_size: ClassVar[int] = 64
    lr: ClassVar[float] = 3e-3
    length_option: ClassVar[str] = "seq_len"

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
    passes: int = option(1, "times the key-value context is written before the queries (JRT-Prompt, Arora et al. 2024)", at_least=1, at_most=16)
    mixture: str = option("none", "zoology: train on Zoology's mix of (seq_len, pairs) settings, test per setting; needs vocab > 1024", choices=("none", "zoology"))

    def __post_init__(self) -> None:
        if not self.power_a > 0:
            raise TaskError(f"mqar: power_a must be positive, got {self.power_a}")
        if self.passes < 1:
            raise TaskError(f"mqar: passes must be at least 1, got {self.passes}")
        if self.mixture == "zoology":
            self.check_mixture()
            return
        if self.seq_len % 2:
            raise TaskError(f"mqar: seq_len must be even, got {self.seq_len}")
        if self.vocab <= self.seq_len:
            raise TaskError(f"mqar: vocab ({self.vocab}) must exceed seq_len ({self.seq_len}), as in Zoology")
        if self.pairs < 1 or 4 * self.pairs > self.seq_len:
            raise TaskError(f"mqar: need 1 <= pairs and 4*pairs <= seq_len, got pairs={self.pairs}, seq_len={self.seq_len}")
        if self.pairs >= self.vocab // 2:
            raise TaskError(f"mqar: {self.pairs} distinct keys do not fit in a vocabulary half of {self.vocab // 2 - 1}")
        self.check_splits()

    def check_mixture(self) -> None:
        fields = {f.name: f for f in dataclasses.fields(self)}
        if self.seq_len != fields["seq_len"].default or self.pairs != fields["pairs"].default:
            raise TaskError("mqar: mixture=zoology sets seq_len and pairs itself; leave them out")
        longest = max(seq_len for seq_len, _ in ZOOLOGY_TEST)
        if self.vocab <= longest:
            raise TaskError(f"mqar: mixture=zoology tests at seq_len up to {longest}, so vocab must exceed it (Zoology: 8192), got {self.vocab}")
        for split, n in (("train", self.train), ("val", self.val), ("test", self.test)):
            if min(count for _, _, count in self.settings(split)) < 1:
                raise TaskError(f"mqar: mixture=zoology needs at least one {split} example per setting, got {split}={n}")
        tokens = sum(count * self.length(seq_len, pairs) for split in ("train", "val", "test") for seq_len, pairs, count in self.settings(split))
        check_data_size("mqar", 32 * tokens, f"train + val + test = {self.train + self.val + self.test:,} examples")

    def settings(self, split: str) -> list[tuple[int, int, int]]:
        """(seq_len, pairs, examples) of each setting of a split: with ``mixture=zoology``,
        training and validation examples are shared out over Zoology's training settings as
        Zoology's are (5:1:1:1:1; validation: equally), test examples equally over its test
        settings; otherwise the one setting (seq_len, pairs)."""
        n = {"train": self.train, "val": self.val, "test": self.test}[split]
        if self.mixture == "none":
            return [(self.seq_len, self.pairs, n)]
        if split == "test":
            return [(t, p, c) for (t, p), c in zip(ZOOLOGY_TEST, shares(n, [1] * len(ZOOLOGY_TEST)))]
        weights = [share if split == "train" else 1 for _, _, share in ZOOLOGY_TRAIN]
        return [(t, p, c) for (t, p, _), c in zip(ZOOLOGY_TRAIN, shares(n, weights))]

    def length(self, seq_len: int, pairs: int) -> int:
        """Tokens of an example of the setting (seq_len, pairs) once its context is repeated."""
        return seq_len + (self.passes - 1) * 2 * pairs

    @property
    def tokens(self) -> int:
        return max(self.length(seq_len, pairs) for seq_len, pairs, _ in self.settings("train"))

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def data_key(self) -> str:
        """What determines the data, for the disk cache: the dataclass's repr, except that the
        options added after MQAR data was first cached (passes, mixture) appear only when they
        differ from their defaults, so entries cached before them are found again."""
        later = ("passes", "mixture")
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name not in later or getattr(self, f.name) != f.default
        ]
        return f"{type(self).__qualname__}({', '.join(shown)})"

    def make_data(self) -> Splits:
        names = ("train", "val", "test")

        def make() -> dict[str, np.ndarray]:
            arrays = {}
            for split, rng in zip(names, split_seeds(self.seed)):
                for seq_len, pairs, n in self.settings(split):
                    inputs, targets = multiquery_ar(rng, n, self.vocab, seq_len, pairs, self.power_a)
                    inputs, targets = repeat_context(inputs, targets, pairs, self.passes)
                    name = split if self.mixture == "none" else f"{split}_{seq_len}x{pairs}"
                    arrays[f"{name}_inputs"], arrays[f"{name}_targets"] = inputs, targets
            return arrays

        arrays = cached_arrays("mqar", self.data_key(), make)
        if self.mixture == "none":
            return Splits(*(as_examples(arrays[f"{s}_inputs"], arrays[f"{s}_targets"]) for s in names))
        return Splits(*(
            Mixture({
                f"{seq_len}x{pairs}": as_examples(arrays[f"{split}_{seq_len}x{pairs}_inputs"], arrays[f"{split}_{seq_len}x{pairs}_targets"])
                for seq_len, pairs, _ in self.settings(split)
            })
            for split in names
        ))  # fmt: skip

    def evaluate(self, model: nn.Module, split: Examples | Mixture) -> dict[str, float]:
        """Loss, accuracy and exact match; on a mixture, each setting's accuracy too
        (``accuracy@512x128``: seq_len x pairs), and overall the mean over examples, as Zoology's
        ``valid/accuracy`` is (every example of a setting has the same number of queries)."""
        if isinstance(split, Examples):
            return super().evaluate(model, split)
        metrics: dict[str, float] = {"loss": 0.0, "accuracy": 0.0, "exact": 0.0}
        for name, part in split.parts.items():
            length = part.tensors[0].shape[1]
            setting = token_metrics(model, part, max(1, EVAL_TOKENS // length))
            for key in ("loss", "accuracy", "exact"):
                metrics[key] += setting[key] * len(part) / len(split)
            metrics[f"accuracy@{name}"] = setting["accuracy"]
        return metrics
