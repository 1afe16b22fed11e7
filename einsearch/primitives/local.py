"""Local token mixers: causal depthwise convolution (MambaOut, Primer) and token shift."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.primitives.base import Mixer, State


class Conv(Mixer):
    """Causal depthwise convolution: y_t = b + Σ_{i<k} w_i ⊙ x_{t-k+1+i} (zeros before t=0)."""

    def __init__(self, d_model: int, k: int):
        super().__init__()
        self.d_model, self.k = d_model, k
        self.conv = nn.Conv1d(d_model, d_model, k, groups=d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x.transpose(1, 2), (self.k - 1, 0))  # (B, D, T + k - 1)
        return self.conv(x).transpose(1, 2)  # (B, T, D)

    def init_state(self, batch: int) -> State:
        return torch.zeros(batch, self.d_model, self.k - 1, device=self._device, dtype=self._dtype)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        window = torch.cat([state, x[:, :, None]], dim=2)  # (B, D, k)
        y = (window * self.conv.weight[:, 0]).sum(-1) + self.conv.bias
        return y, window[:, :, 1:]

    def flops(self, seq_len: int) -> float:
        return 2.0 * self.k * self.d_model * seq_len

    def state_size(self, seq_len: int) -> int:
        return (self.k - 1) * self.d_model


class Shift(Mixer):
    """Token shift (RWKV-style): y_t = μ ⊙ x_t + (1 - μ) ⊙ x_{t-1}, μ learned per channel."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.mu = nn.Parameter(torch.full((d_model,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        previous = F.pad(x, (0, 0, 1, -1))  # (B, T, D), x_{t-1} with zeros at t=0
        return self.mu * x + (1 - self.mu) * previous

    def init_state(self, batch: int) -> State:
        return torch.zeros(batch, self.d_model, device=self._device, dtype=self._dtype)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.mu * x + (1 - self.mu) * state, x

    def flops(self, seq_len: int) -> float:
        return 0.0

    def state_size(self, seq_len: int) -> int:
        return self.d_model
