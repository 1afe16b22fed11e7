"""What the token tasks share: a language-model shell, cross-entropy on the scored positions, and
accuracy of the arg-max prediction there.

Examples are ``(inputs, targets)`` of shape (N, T); a target of `IGNORE` marks a position that is
neither trained on nor scored.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.arch import Arch
from einsearch.tasks.base import Examples, Task, TaskError, check_data_size, model_device
from einsearch.tasks.cache import compact
from einsearch.tasks.shell import LanguageModel, build_blocks

IGNORE = -100  # target of positions that are not scored


def token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the positions whose target is not `IGNORE`."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten().long(), ignore_index=IGNORE)


def token_metrics(model: nn.Module, split: Examples, batch_size: int) -> dict[str, float]:
    """Over the scored positions: cross-entropy (nats) and accuracy of the arg-max prediction;
    ``exact``: the fraction of examples with every scored position right."""
    device = model_device(model)
    total_loss, correct, count, exact, examples = 0.0, 0, 0, 0, 0
    for inputs, targets in split.batches(batch_size):
        inputs, targets = inputs.to(device).long(), targets.to(device).long()
        logits = model(inputs).float()  # (B, T, V)
        scored = targets != IGNORE
        right = logits.argmax(-1) == targets
        total_loss += F.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
        correct += right[scored].sum().item()
        count += int(scored.sum())
        has_score = scored.any(dim=1)
        exact += int(((right | ~scored).all(dim=1) & has_score).sum())
        examples += int(has_score.sum())
    if count == 0:
        raise TaskError("the split has no scored positions")
    return {"loss": total_loss / count, "accuracy": correct / count, "exact": exact / examples}


def as_examples(inputs: np.ndarray, targets: np.ndarray) -> Examples:
    """Token arrays -> an `Examples` split, kept in their compact integer type (cast to long per
    batch by the loss and the metrics)."""
    return Examples(torch.from_numpy(compact(inputs)), torch.from_numpy(compact(targets)))


class TokenTask(Task):
    """A task on token sequences scored by accuracy at the target positions."""

    metric: ClassVar[str] = "accuracy"
    mode: ClassVar[str] = "max"
    eval_batch_size: ClassVar[int] = 256

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def check_splits(self, test_tokens: int | None = None) -> None:
        """Every split needs at least one example (the fields `train`, `val`, `test`), and all of
        them together must fit in memory while they are generated (inputs, targets and the
        generators' temporaries: about 32 bytes a token).  `test_tokens`: the test examples'
        length when it differs from `tokens`."""
        if min(self.train, self.val, self.test) < 1:
            raise TaskError(f"{self.name}: train, val and test need at least one example each")
        tokens = (self.train + self.val) * self.tokens + self.test * (test_tokens or self.tokens)
        check_data_size(self.name, 32 * tokens, f"train + val + test = {self.train + self.val + self.test:,} examples")

    def model(self, arch: Arch, d_model: int, layers: int) -> nn.Module:
        return LanguageModel(build_blocks(arch, d_model, layers), d_model, self.vocab_size)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        inputs, targets = batch
        return token_loss(model(inputs.long()), targets)

    def evaluate(self, model: nn.Module, split: Examples) -> dict[str, float]:
        return token_metrics(model, split, self.eval_batch_size)


def split_seeds(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators for the train, val and test splits of a task seeded with `seed`."""
    train, val, test = np.random.SeedSequence(seed).spawn(3)
    return np.random.default_rng(train), np.random.default_rng(val), np.random.default_rng(test)

