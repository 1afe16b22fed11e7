"""The contract every built node satisfies.

A `Mixer` maps a sequence ``(B, T, D)`` to ``(B, T, D)`` causally, and has a recurrent form:
``init_state(batch)`` then ``step(x_t, state) -> (y_t, state)`` with ``x_t`` of shape ``(B, D)``
reproduces ``forward`` token by token.  It also reports its costs:

* ``flops(seq_len)``: forward FLOPs for one sequence of that length, counting 2 per
  multiply-accumulate of every matrix product (projections, attention scores and values,
  recurrent state updates); element-wise operations are not counted.
* ``state_size(seq_len)``: the most numbers the inference state holds for one sequence while
  stepping through ``seq_len`` tokens (a KV cache grows with length, a windowed cache or a
  recurrent state does not).

Parameters are counted from the module itself (`einsearch.costs.count_params`).
States are nested tuples of tensors (and ints), so combinators can carry them without knowing
what is inside.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

State = Any  # a nested tuple of tensors / ints


class Mixer(nn.Module):
    """Base class: subclasses implement forward, init_state, step, flops and state_size."""

    d_model: int

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        raise NotImplementedError

    def init_state(self, batch: int) -> State:
        return ()

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:  # (B, D) -> (B, D)
        raise NotImplementedError

    def flops(self, seq_len: int) -> float:
        raise NotImplementedError

    def state_size(self, seq_len: int) -> int:
        return 0

    # helpers for subclasses
    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device if any(True for _ in self.parameters()) else torch.device("cpu")

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype if any(True for _ in self.parameters()) else torch.get_default_dtype()


class Pointwise(Mixer):
    """A position-wise map: stateless, so `step` is `forward` on one position."""

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self(x[:, None])[:, 0], state

    def flops(self, seq_len: int) -> float:
        return seq_len * self.flops_per_token()

    def flops_per_token(self) -> float:
        return 0.0


class BuildError(ValueError):
    """An architecture cannot be built at the requested width (e.g. heads do not divide d_model)."""


def head_dim(d_model: int, heads: int, op: str) -> int:
    if d_model % heads:
        raise BuildError(f"{op}: heads={heads} does not divide d_model={d_model}")
    return d_model // heads
