"""The MAD synthetic suite (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures"; generators in `mad/data/instances.py`, baseline settings in `configs/tasks/`).

Six token tasks, each with MAD's baseline setting as its defaults:

| task | MAD name | baseline |
|---|---|---|
| `recall` | in-context recall | vocab 16, length 128 |
| `fuzzy_recall` | fuzzy in-context recall | vocab 16, length 128, keys and values of 1-3 tokens |
| `noisy_recall` | noisy in-context recall | vocab 32 (16 of them noise), length 128, 20 % noise |
| `selective_copy` | selective copying | vocab 16, length 256, 16 tokens to copy |
| `compression` | compression | vocab 16, length 32 |
| `memorization` | memorization | vocab 256, length 32, 256 training examples |

with 12,800 training and 1,280 test examples (and 1,280 validation examples generated like the
test set, which MAD does not have).  The recall tasks are MAD's multi-query variants (its
baseline): every value whose key appeared earlier is a scored position.  As in MAD, the recall
tasks train on next-token prediction of the whole sequence while validation and test score only
the recalled values; compression uses MAD's auto-encoder shell (`shell.CompressionModel`).

The generators follow MAD's definitions draw for draw in distribution (not bit for bit: they
use this package's seeds), e.g. a random key of k tokens is a uniformly random ordered tuple of
distinct key tokens, exactly as MAD's choice from the shuffled list of permutations.

`mad` is the suite (a `base.Suite`): `einsearch.train` trains one model per member on an equal
share of the budget and reports each member's metrics and the mean accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
from torch import nn

from einsearch.arch import Arch
from einsearch.tasks.base import EXAMPLES, SEEDS, Budget, Splits, Suite, TaskError, option
from einsearch.tasks.cache import cached_arrays
from einsearch.tasks.language import IGNORE, TokenTask, as_examples, split_seeds
from einsearch.tasks.shell import CompressionModel, build_blocks

Instance = tuple[np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------------------------
# generators: one instance (inputs, targets) each


def recall_instance(
    rng: np.random.Generator, vocab: int, seq_len: int, noise_vocab: int, frac_noise: float, training: bool
) -> Instance:
    """Multi-query in-context recall (MAD `generate_in_context_recall_instance`, multi_query=True).

    seq_len/2 - 1 key-value pairs (keys from the first half of the non-noise vocabulary, values
    from the second; a key keeps its value within a sequence), each replaced by two noise tokens
    with probability `frac_noise`, then a probe pair repeating a key shown before.  Scored: the
    value of every pair whose key appeared earlier."""
    regular = vocab - noise_vocab
    n_keys = regular // 2
    pairs = seq_len // 2
    keep = rng.integers(pairs)  # this pair is never noise, so at least one key is shown
    kv: dict[int, int] = {}
    inputs: list[int] = []
    targets: list[int] = []
    for i in range(pairs - 1):
        if frac_noise > 0 and i != keep and rng.random() < frac_noise:
            inputs += list(rng.integers(regular, regular + noise_vocab, size=2))
            targets += [IGNORE, IGNORE]
            continue
        k = int(rng.integers(n_keys))
        seen = k in kv
        if not seen:
            kv[k] = int(rng.integers(n_keys, regular))
        inputs += [k, kv[k]]
        targets += [IGNORE, kv[k] if seen else IGNORE]
    probe = list(kv)[rng.integers(len(kv))]
    inputs += [probe, kv[probe]]
    targets += [IGNORE, kv[probe]]
    return shifted(np.array(inputs), np.array(targets), training)


def fuzzy_recall_instance(
    rng: np.random.Generator, vocab: int, seq_len: int, k_motif: int, v_motif: int, training: bool
) -> Instance:
    """Multi-query fuzzy in-context recall (MAD `generate_fuzzy_in_context_recall_instance`).

    Keys and values are tuples of 1..k_motif (1..v_motif) distinct tokens; at test time keys are
    always k_motif tokens long.  One probe pair is placed at a random depth and repeated at the
    end; the sequence is left-padded to length seq_len + 1 before the autoregressive shift.
    Scored: the value tokens of every pair whose key appeared earlier."""
    pad = vocab - 1
    regular = vocab - 1
    key_vocab, value_vocab = np.arange(regular // 2), np.arange(regular // 2, regular)
    key_sizes = list(range(1, k_motif + 1)) if training else [k_motif]
    value_sizes = list(range(1, v_motif + 1))

    def motif(tokens: np.ndarray, size: int) -> tuple[int, ...]:
        return tuple(rng.permutation(tokens)[:size].tolist())  # a uniform ordered draw without replacement

    probe_k_size = key_sizes[rng.integers(len(key_sizes))]
    probe_v_size = value_sizes[rng.integers(len(value_sizes))]
    probe_key, probe_value = motif(key_vocab, probe_k_size), motif(value_vocab, probe_v_size)
    probe_size = probe_k_size + probe_v_size
    probe_at = rng.integers(seq_len - 2 * probe_size)
    probe_added = False

    kv: dict[tuple[int, ...], tuple[int, ...]] = {}
    inputs: list[int] = []
    targets: list[int] = []
    while len(inputs) < seq_len - probe_size - (k_motif + v_motif):
        k_size = key_sizes[rng.integers(len(key_sizes))]
        v_size = value_sizes[rng.integers(len(value_sizes))]
        if len(inputs) >= probe_at and not probe_added:
            inputs += [*probe_key, *probe_value]
            targets += [IGNORE] * probe_size
            kv[probe_key] = probe_value
            probe_added = True
            continue
        key = motif(key_vocab, k_size)
        seen = key in kv
        if key == probe_key:
            value = probe_value
            probe_added = True
        else:
            value = kv[key] if seen else motif(value_vocab, v_size)
        inputs += [*key, *value]
        targets += [IGNORE] * k_size + (list(value) if seen else [IGNORE] * len(value))
        kv[key] = value
    inputs += [*probe_key, *probe_value]
    targets += [IGNORE] * probe_k_size + list(probe_value)
    n_pad = seq_len + 1 - len(inputs)
    inputs = [pad] * n_pad + inputs
    targets = [IGNORE] * n_pad + targets
    return shifted(np.array(inputs), np.array(targets), training)


def shifted(inputs: np.ndarray, targets: np.ndarray, training: bool) -> Instance:
    """MAD's autoregressive shift: training predicts every next token; evaluation only the
    scored ones."""
    return (inputs[:-1], inputs[1:]) if training else (inputs[:-1], targets[1:])


def selective_copy_instance(rng: np.random.Generator, vocab: int, seq_len: int, to_copy: int) -> Instance:
    """Selective copying (MAD `generate_copying_instance`, selective=True).

    `to_copy` tokens with blanks inserted before randomly chosen ones (each blank before a
    uniformly random token), a copy token, then `to_copy` blanks during which the model must emit
    the tokens in order."""
    copy_token, blank = vocab - 1, vocab - 2
    tokens = rng.integers(vocab - 2, size=to_copy)
    n_blank = seq_len - 2 * to_copy - 1
    blanks_before = rng.multinomial(n_blank, np.full(to_copy, 1.0 / to_copy))
    inputs: list[int] = []
    for token, count in zip(tokens, blanks_before):
        inputs += [blank] * int(count) + [int(token)]
    inputs += [copy_token] + [blank] * to_copy
    targets = [IGNORE] * (to_copy + n_blank + 1) + [int(t) for t in tokens]
    return np.array(inputs), np.array(targets)


def compression_instance(rng: np.random.Generator, vocab: int, seq_len: int) -> Instance:
    """Compression (MAD `generate_compression_instance`): seq_len - 1 random tokens and a
    compression token; the target is the whole input."""
    inputs = np.concatenate([rng.integers(vocab - 1, size=seq_len - 1), [vocab - 1]])
    return inputs, inputs.copy()


@lru_cache(maxsize=8)
def memorization_map(vocab: int, seed: int) -> dict[int, int]:
    """MAD `generate_kv_map` over the non-insert vocabulary: a fixed random pairing of keys from
    the first half with values from the second half."""
    rng = np.random.default_rng(seed)
    regular = vocab - 1
    keys = rng.permutation(regular // 2)
    values = rng.permutation(np.arange(regular // 2, regular))
    return {int(k): int(v) for k, v in zip(keys, values)}


def memorization_instance(rng: np.random.Generator, vocab: int, seq_len: int, kv: dict[int, int]) -> Instance:
    """Memorization (MAD `generate_memorization_instance`): pairs (key, insert token); at the
    insert token the model must emit the key's value from the fixed map, learned in its weights."""
    insert = vocab - 1
    keys = np.array(list(kv))[rng.integers(len(kv), size=seq_len // 2)]
    inputs = np.stack([keys, np.full_like(keys, insert)], axis=1).reshape(-1)
    targets = np.stack([np.full_like(keys, IGNORE), [kv[int(k)] for k in keys]], axis=1).reshape(-1)
    return inputs, targets


# ---------------------------------------------------------------------------------------------
# tasks


class MadTask(TokenTask):
    """A MAD task: fixed train / val / test sets of `instance` draws."""

    budget: ClassVar[Budget] = Budget(steps=1000)
    batch_size: ClassVar[int] = 32
    lr: ClassVar[float] = 1e-3

    vocab: int
    seq_len: int
    train: int
    val: int
    test: int
    seed: int

    def instance(self, rng: np.random.Generator, training: bool) -> Instance:
        raise NotImplementedError

    @property
    def tokens(self) -> int:
        return self.seq_len

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def make_data(self) -> Splits:
        def make() -> dict[str, np.ndarray]:
            arrays = {}
            sizes = (self.train, self.val, self.test)
            for split, rng, n in zip(("train", "val", "test"), split_seeds(self.seed), sizes):
                instances = [self.instance(rng, training=split == "train") for _ in range(n)]
                arrays[f"{split}_inputs"] = np.stack([i for i, _ in instances])
                arrays[f"{split}_targets"] = np.stack([t for _, t in instances])
            return arrays

        arrays = cached_arrays(self.name, repr(self), make)
        return Splits(*(as_examples(arrays[f"{s}_inputs"], arrays[f"{s}_targets"]) for s in ("train", "val", "test")))


_TRAIN = "training examples"
_VAL = "validation examples"
_TEST = "test examples"
_SEED = "data seed"


@dataclass(frozen=True)
class Recall(MadTask):
    name: ClassVar[str] = "recall"
    summary: ClassVar[str] = "MAD in-context recall (multi-query), Poli et al. 2024"

    vocab: int = option(16, "vocabulary size (keys: first half, values: second half)", at_least=2, at_most=2**20)
    seq_len: int = option(128, "sequence length (even)", at_least=2, at_most=2**16)
    train: int = option(12_800, _TRAIN, **EXAMPLES)
    val: int = option(1_280, _VAL, **EXAMPLES)
    test: int = option(1_280, _TEST, **EXAMPLES)
    seed: int = option(0, _SEED, **SEEDS)

    def __post_init__(self) -> None:
        self.check_splits()
        if self.seq_len % 2 or self.seq_len < 4 or self.vocab < 2:
            raise TaskError(f"recall: need an even seq_len >= 4 and vocab >= 2, got seq_len={self.seq_len}, vocab={self.vocab}")

    def instance(self, rng: np.random.Generator, training: bool) -> Instance:
        return recall_instance(rng, self.vocab, self.seq_len, 0, 0.0, training)


@dataclass(frozen=True)
class NoisyRecall(MadTask):
    name: ClassVar[str] = "noisy_recall"
    summary: ClassVar[str] = "MAD noisy in-context recall: key-value pairs among noise tokens"

    vocab: int = option(32, "vocabulary size, including the noise tokens", at_least=2, at_most=2**20)
    noise_vocab: int = option(16, "noise tokens (the last ones of the vocabulary)", at_least=1, at_most=2**20)
    frac_noise: float = option(0.2, "probability that a pair is replaced by two noise tokens", at_least=0, at_most=1)
    seq_len: int = option(128, "sequence length (even)", at_least=2, at_most=2**16)
    train: int = option(12_800, _TRAIN, **EXAMPLES)
    val: int = option(1_280, _VAL, **EXAMPLES)
    test: int = option(1_280, _TEST, **EXAMPLES)
    seed: int = option(0, _SEED, **SEEDS)

    def __post_init__(self) -> None:
        self.check_splits()
        if self.seq_len % 2 or self.seq_len < 4:
            raise TaskError(f"noisy_recall: need an even seq_len >= 4, got {self.seq_len}")
        if self.vocab - self.noise_vocab < 2 or self.noise_vocab < 1:
            raise TaskError(f"noisy_recall: need noise_vocab >= 1 and vocab - noise_vocab >= 2, got {self.vocab}, {self.noise_vocab}")
        if not 0 <= self.frac_noise < 1:
            raise TaskError(f"noisy_recall: frac_noise must be in [0, 1), got {self.frac_noise}")

    def instance(self, rng: np.random.Generator, training: bool) -> Instance:
        return recall_instance(rng, self.vocab, self.seq_len, self.noise_vocab, self.frac_noise, training)


@dataclass(frozen=True)
class FuzzyRecall(MadTask):
    name: ClassVar[str] = "fuzzy_recall"
    summary: ClassVar[str] = "MAD fuzzy in-context recall: keys and values of several tokens"

    vocab: int = option(16, "vocabulary size (the last token pads)", at_least=2, at_most=2**20)
    seq_len: int = option(128, "sequence length", at_least=2, at_most=2**16)
    k_motif: int = option(3, "largest number of tokens in a key", at_least=1, at_most=2**10)
    v_motif: int = option(3, "largest number of tokens in a value", at_least=1, at_most=2**10)
    train: int = option(12_800, _TRAIN, **EXAMPLES)
    val: int = option(1_280, _VAL, **EXAMPLES)
    test: int = option(1_280, _TEST, **EXAMPLES)
    seed: int = option(0, _SEED, **SEEDS)

    def __post_init__(self) -> None:
        self.check_splits()
        half = (self.vocab - 1) // 2
        if self.k_motif < 1 or self.v_motif < 1 or self.k_motif > half or self.v_motif > self.vocab - 1 - half:
            raise TaskError(f"fuzzy_recall: motifs of {self.k_motif}/{self.v_motif} tokens do not fit a vocabulary of {self.vocab}")
        if self.seq_len < 4 * (self.k_motif + self.v_motif):
            raise TaskError(f"fuzzy_recall: seq_len must be at least 4*(k_motif+v_motif) = {4 * (self.k_motif + self.v_motif)}")

    def instance(self, rng: np.random.Generator, training: bool) -> Instance:
        return fuzzy_recall_instance(rng, self.vocab, self.seq_len, self.k_motif, self.v_motif, training)


@dataclass(frozen=True)
class SelectiveCopy(MadTask):
    name: ClassVar[str] = "selective_copy"
    summary: ClassVar[str] = "MAD selective copying: copy the non-blank tokens after a copy token"

    vocab: int = option(16, "vocabulary size (the last two are blank and copy tokens)", at_least=2, at_most=2**20)
    seq_len: int = option(256, "sequence length", at_least=2, at_most=2**16)
    to_copy: int = option(16, "tokens to copy", at_least=1, at_most=2**14)
    train: int = option(12_800, _TRAIN, **EXAMPLES)
    val: int = option(1_280, _VAL, **EXAMPLES)
    test: int = option(1_280, _TEST, **EXAMPLES)
    seed: int = option(0, _SEED, **SEEDS)

    def __post_init__(self) -> None:
        self.check_splits()
        if self.vocab < 3 or self.to_copy < 1 or self.seq_len <= 2 * self.to_copy + 1:
            raise TaskError(f"selective_copy: need vocab >= 3, to_copy >= 1, seq_len > 2*to_copy + 1 = {2 * self.to_copy + 1}")

    def instance(self, rng: np.random.Generator, training: bool) -> Instance:
        return selective_copy_instance(rng, self.vocab, self.seq_len, self.to_copy)


@dataclass(frozen=True)
class Compression(MadTask):
    name: ClassVar[str] = "compression"
    summary: ClassVar[str] = "MAD compression: reconstruct a sequence from its last position (auto-encoder)"

    vocab: int = option(16, "vocabulary size (the last token marks the end)", at_least=2, at_most=2**20)
    seq_len: int = option(32, "sequence length", at_least=2, at_most=2**16)
    train: int = option(12_800, _TRAIN, **EXAMPLES)
    val: int = option(1_280, _VAL, **EXAMPLES)
    test: int = option(1_280, _TEST, **EXAMPLES)
    seed: int = option(0, _SEED, **SEEDS)

    def __post_init__(self) -> None:
        self.check_splits()
        if self.vocab < 2 or self.seq_len < 2:
            raise TaskError(f"compression: need vocab >= 2 and seq_len >= 2, got {self.vocab}, {self.seq_len}")

    def instance(self, rng: np.random.Generator, training: bool) -> Instance:
        return compression_instance(rng, self.vocab, self.seq_len)

    def model(self, arch: Arch, d_model: int, layers: int) -> nn.Module:
        return CompressionModel(build_blocks(arch, d_model, layers), d_model, self.vocab, self.seq_len)


@dataclass(frozen=True)
class Memorization(MadTask):
    name: ClassVar[str] = "memorization"
    summary: ClassVar[str] = "MAD memorization: recall a fixed key-value map learned in the weights"

    vocab: int = option(256, "vocabulary size (the last token is the insert token)", at_least=2, at_most=2**20)
    seq_len: int = option(32, "sequence length (even)", at_least=2, at_most=2**16)
    train: int = option(256, _TRAIN, **EXAMPLES)
    val: int = option(1_280, _VAL, **EXAMPLES)
    test: int = option(1_280, _TEST, **EXAMPLES)
    seed: int = option(0, _SEED, **SEEDS)

    def __post_init__(self) -> None:
        self.check_splits()
        if self.vocab < 3 or self.seq_len % 2 or self.seq_len < 2:
            raise TaskError(f"memorization: need vocab >= 3 and an even seq_len, got {self.vocab}, {self.seq_len}")

    def instance(self, rng: np.random.Generator, training: bool) -> Instance:
        return memorization_instance(rng, self.vocab, self.seq_len, memorization_map(self.vocab, self.seed))


MEMBERS = (Recall, FuzzyRecall, NoisyRecall, SelectiveCopy, Compression, Memorization)


@dataclass(frozen=True)
class MAD(Suite):
    """The suite: one model per member task on an equal share of the budget; the metric is the
    mean of the members' accuracies (`Suite.aggregate`)."""

    name: ClassVar[str] = "mad"
    summary: ClassVar[str] = "the MAD suite: mean accuracy over its six tasks (one model each)"
    metric: ClassVar[str] = "accuracy"
    mode: ClassVar[str] = "max"
    budget: ClassVar[Budget] = Budget(steps=6000)  # 1000 steps for each of the six members
    batch_size: ClassVar[int] = MadTask.batch_size
    lr: ClassVar[float] = MadTask.lr

    seed: int = option(0, "data seed of every member", **SEEDS)

    @property
    def members(self) -> tuple[MadTask, ...]:
        return tuple(member(seed=self.seed) for member in MEMBERS)
