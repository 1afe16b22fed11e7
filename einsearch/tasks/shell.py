"""Model shells: the fixed parts of a model around the searched block.

    inputs -> embed -> block_1 -> ... -> block_L -> RMSNorm -> head

The L blocks are independent copies of the candidate (`einsearch.build` called L times, so no
weights are shared); there is no positional embedding (position, where a block needs it, comes
from the block itself, e.g. RoPE).  A shell reports its costs like a `Mixer` does, so
``einsearch.costs(shell, seq_len)`` gives the whole model's parameters, FLOPs per token (blocks plus
embedding/head matrix products) and inference state size (the sum over the blocks).

* `LanguageModel`: token embedding, a linear head to logits at every position.
* `NextStepModel`: a linear projection of each state vector, a head predicting the increment to
  the next state at every position (x_{t+1} ≈ x_t + head(h_t)); the head starts at zero, so a
  fresh model is the persistence forecast.
* `WindowModel`: optional non-overlapping patches of the lookback window (PatchTST, Nie et al.
  2023), each projected linearly; the last position's features give the whole horizon at once,
  as an offset from the last observed value (NLinear, Zeng et al. 2023).
* `CompressionModel`: MAD's auto-encoder for the compression task (Poli et al. 2024): the blocks
  encode, the last position's features are the code, and a small MLP decodes each position from
  the code plus a sinusoidal position embedding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from einsearch.arch import Arch
from einsearch.build import build
from einsearch.primitives.base import Mixer


def build_blocks(arch: Arch, d_model: int, layers: int) -> list[Mixer]:
    """`layers` independently initialised copies of the block."""
    if layers < 1:
        raise ValueError(f"layers must be at least 1, got {layers}")
    return [build(arch, d_model) for _ in range(layers)]


class Shell(nn.Module):
    """embed -> blocks -> final RMSNorm; subclasses add the head and the task's input/output form.

    `options` holds a subclass's constructor arguments beyond (blocks, d_model), so that the same
    shell can be rebuilt (e.g. by `einsearch export`)."""

    options: dict

    def __init__(self, blocks: list[Mixer], d_model: int):
        super().__init__()
        self.d_model = d_model
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(d_model)

    def trunk(self, h: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def io_flops(self, seq_len: int) -> float:
        """FLOPs of the shell's own matrix products (input projection, head) for one sequence."""
        return 0.0

    def flops(self, seq_len: int) -> float:
        return sum(block.flops(seq_len) for block in self.blocks) + self.io_flops(seq_len)

    def state_size(self, seq_len: int) -> int:
        return sum(block.state_size(seq_len) for block in self.blocks)


class LanguageModel(Shell):
    """Token embedding, blocks, norm, logits: (B, T) long -> (B, T, vocab)."""

    def __init__(self, blocks: list[Mixer], d_model: int, vocab: int):
        super().__init__(blocks, d_model)
        self.options = dict(vocab=vocab)
        self.embed = nn.Embedding(vocab, d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.trunk(self.embed(tokens)))

    def io_flops(self, seq_len: int) -> float:
        return 2.0 * self.head.weight.numel() * seq_len


class NextStepModel(Shell):
    """States (B, T, C) -> predicted next states (B, T, C), as x_t + head(h_t)."""

    def __init__(self, blocks: list[Mixer], d_model: int, channels: int):
        super().__init__(blocks, d_model)
        self.options = dict(channels=channels)
        self.embed = nn.Linear(channels, d_model, bias=False)
        self.head = nn.Linear(d_model, channels, bias=False)
        nn.init.zeros_(self.head.weight)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.head(self.trunk(self.embed(x)))

    def io_flops(self, seq_len: int) -> float:
        return 2.0 * (self.embed.weight.numel() + self.head.weight.numel()) * seq_len


class WindowModel(Shell):
    """Lookback window (B, lookback, C) -> forecast (B, horizon, C).

    The window is cut into lookback/patch non-overlapping patches of `patch` steps; each patch
    (patch*C numbers) is projected to d_model; the last position's features give
    ŷ = x_last + reshape(W h_last)."""

    def __init__(self, blocks: list[Mixer], d_model: int, channels: int, patch: int, horizon: int):
        super().__init__(blocks, d_model)
        self.options = dict(channels=channels, patch=patch, horizon=horizon)
        self.channels, self.patch, self.horizon = channels, patch, horizon
        self.embed = nn.Linear(patch * channels, d_model, bias=False)
        self.head = nn.Linear(d_model, horizon * channels, bias=False)
        nn.init.zeros_(self.head.weight)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        patches = x.reshape(B, T // self.patch, self.patch * C)  # (B, T/P, P*C)
        h = self.trunk(self.embed(patches))[:, -1]  # (B, D)
        return x[:, -1:, :] + self.head(h).view(B, self.horizon, C)

    def io_flops(self, seq_len: int) -> float:
        return 2.0 * self.embed.weight.numel() * seq_len + 2.0 * self.head.weight.numel()


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Fixed sine/cosine position embeddings (Vaswani et al. 2017), (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class CompressionModel(Shell):
    """MAD's auto-encoder (`mad/model/auto_encoder.py`): tokens (B, T) -> logits (B, T, vocab)
    reconstructed from the last position's features only (the blocks must compress the sequence
    into one vector)."""

    def __init__(self, blocks: list[Mixer], d_model: int, vocab: int, length: int):
        super().__init__(blocks, d_model)
        self.options = dict(vocab=vocab, length=length)
        self.embed = nn.Embedding(vocab, d_model)
        self.register_buffer("positions", sinusoidal_positions(length, d_model), persistent=False)
        self.decoder = nn.Sequential(
            nn.RMSNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(),
            nn.RMSNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(),
            nn.RMSNorm(d_model),
        )  # fmt: skip
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        code = self.trunk(self.embed(tokens))[:, -1]  # (B, D)
        h = code[:, None, :] + self.positions[:T]  # (B, T, D)
        return self.head(self.decoder(h))

    def io_flops(self, seq_len: int) -> float:
        decoder = sum(m.weight.numel() for m in self.decoder if isinstance(m, nn.Linear))
        return 2.0 * (decoder + self.head.weight.numel()) * seq_len
