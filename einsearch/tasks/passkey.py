"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite Context
Length for Transformers", appendix prompt), at the byte level.

An example is the prompt of that paper, cut or extended to a fixed number of bytes:

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.
    I will quiz you about the important information there. <filler ...>
    The pass key is 68042. Remember it. 68042 is the pass key. <filler ...>
    What is the pass key? The pass key is 68042

The filler is "The grass is green. The sky is blue. The sun is yellow. Here we go. There and
back again. " repeated; the pass key line sits at a uniformly random sentence boundary of the
filler (its depth).  The model reads bytes (vocabulary 256) and is scored on the digits of the
answer (teacher-forced: the digit at each answer position given the earlier ones; ``exact`` is
the fraction of keys with every digit right), which is also all it is trained on.  ``test_len`` evaluates at another length than the training one (length
generalisation); so does ``at_length``, which the trainer's ``eval_lengths`` uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from einsearch.tasks.base import EXAMPLES, SEEDS, Budget, Splits, Task, TaskError, option
from einsearch.tasks.cache import cached_arrays
from einsearch.tasks.language import IGNORE, TokenTask, as_examples, split_seeds

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there. "
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is "


def shortest(digits: int) -> int:
    """Fewest bytes an example with a `digits`-digit pass key can have (no filler at all)."""
    return len(INTRO) + len(KEY_LINE.format(key="0" * digits)) + len(QUESTION) + digits


def passkey_instance(rng: np.random.Generator, length: int, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """One example of exactly `length` bytes: inputs (length,) and targets (length,), the targets
    being the answer's digits at the positions that precede them, `IGNORE` elsewhere."""
    key = "".join(str(d) for d in rng.integers(10, size=digits))
    key_line = KEY_LINE.format(key=key)
    n_filler = length + 1 - shortest(digits)  # +1: the inputs drop the last byte of the text
    filler = (FILLER * (n_filler // len(FILLER) + 1))[:n_filler]
    boundaries = [0] + [m.end() for m in re.finditer(r"\. ", filler)]  # sentence starts
    depth = boundaries[rng.integers(len(boundaries))]
    text = INTRO + filler[:depth] + key_line + filler[depth:] + QUESTION + key
    data = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64)
    targets = np.full(length, IGNORE, dtype=np.int64)
    targets[length - digits :] = data[length + 1 - digits :]  # the answer digits, shifted by one
    return data[:-1], targets


@dataclass(frozen=True)
class Passkey(TokenTask):
    name: ClassVar[str] = "passkey"
    summary: ClassVar[str] = "find a pass key hidden in filler text (bytes; Mohtashami & Jaggi 2023)"
    budget: ClassVar[Budget] = Budget(steps=2000)  # work, not time: the same result on any load
    batch_size: ClassVar[int] = 16
    lr: ClassVar[float] = 1e-3
    eval_batch_size: ClassVar[int] = 32
    length_option: ClassVar[str] = "seq_len"

    seq_len: int = option(512, "bytes per training example", at_least=1, at_most=2**20)
    test_len: int = option(0, "bytes per test example (0: seq_len)", at_least=0, at_most=2**20)
    digits: int = option(5, "digits of the pass key", at_least=1, at_most=64)
    train: int = option(20_000, "training examples", **EXAMPLES)
    val: int = option(500, "validation examples", **EXAMPLES)
    test: int = option(500, "test examples", **EXAMPLES)
    seed: int = option(0, "data seed", **SEEDS)

    def __post_init__(self) -> None:
        if self.digits < 1:
            raise TaskError(f"passkey: digits must be at least 1, got {self.digits}")
        need = shortest(self.digits)
        for name in ("seq_len", "test_len"):
            value = getattr(self, name)
            if value and value < need:
                raise TaskError(f"passkey: {name}={value} is shorter than the prompt without filler ({need} bytes)")
        self.check_splits(test_tokens=self.test_len or self.seq_len)

    @property
    def tokens(self) -> int:
        return self.seq_len

    @property
    def vocab_size(self) -> int:
        return 256

    def at_length(self, factor: int) -> Task:
        """seq_len and, where set, test_len `factor` times longer (test_len=0 stays: seq_len)."""
        return self.scaled(factor, "seq_len", "test_len")

    def make_data(self) -> Splits:
        lengths = (self.seq_len, self.seq_len, self.test_len or self.seq_len)
        sizes = (self.train, self.val, self.test)

        def make() -> dict[str, np.ndarray]:
            arrays = {}
            for split, rng, n, length in zip(("train", "val", "test"), split_seeds(self.seed), sizes, lengths):
                instances = [passkey_instance(rng, length, self.digits) for _ in range(n)]
                arrays[f"{split}_inputs"] = np.stack([i for i, _ in instances])
                arrays[f"{split}_targets"] = np.stack([t for _, t in instances])
            return arrays

        arrays = cached_arrays("passkey", repr(self), make)
        return Splits(*(as_examples(arrays[f"{s}_inputs"], arrays[f"{s}_targets"]) for s in ("train", "val", "test")))
