"""Position-wise primitives: mlp, norm, linear, act (Transformer, Primer's relu²), and identity (the
block that leaves everything to the model shell: DLinear inside a forecasting shell)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.primitives.base import Pointwise

ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
    "silu": F.silu,
    "sigmoid": lambda x: x.sigmoid(),
    "tanh": lambda x: x.tanh(),
}
GATED = {"swiglu": F.silu, "geglu": F.gelu}  # act(x W_gate) * (x W_up)


class MLP(Pointwise):
    """y = W_down act(W_up x); gated forms (swiglu, geglu) use act(W_gate x) ⊙ W_up x. No biases."""

    def __init__(self, d_model: int, expand: int, act: str):
        super().__init__()
        self.d_model, self.hidden, self.act = d_model, expand * d_model, act
        self.gated = act in GATED
        self.fn = GATED[act] if self.gated else ACTIVATIONS[act]
        self.up = nn.Linear(d_model, self.hidden * (2 if self.gated else 1), bias=False)
        self.down = nn.Linear(self.hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)  # (B, T, hidden) or (B, T, 2*hidden)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.fn(gate) * up
        else:
            h = self.fn(h)
        return self.down(h)

    def flops_per_token(self) -> float:
        return 2.0 * (self.up.weight.numel() + self.down.weight.numel())


class Norm(Pointwise):
    """RMSNorm or LayerNorm with a learned scale (LayerNorm also a bias)."""

    def __init__(self, d_model: int, kind: str):
        super().__init__()
        self.d_model = d_model
        self.norm = nn.RMSNorm(d_model) if kind == "rms" else nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class Linear(Pointwise):
    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)

    def flops_per_token(self) -> float:
        return 2.0 * self.d_model**2


class Identity(Pointwise):
    """y = x.  No parameters, no FLOPs, no state: in a forecasting shell the model is then the
    shell's linear patch embedding and head alone (DLinear, Zeng et al. 2023)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model

    def forward(self, x: Tensor) -> Tensor:
        return x


class Act(Pointwise):
    def __init__(self, d_model: int, fn: str):
        super().__init__()
        self.d_model, self.fn = d_model, ACTIVATIONS[fn]

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)
