"""Combinators: seq, res, par, gate, repeat. Each composes `Mixer`s and their recurrent states."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from einsearch.primitives.base import Mixer, State


class Seq(Mixer):
    """M_n(... M_1(x))."""

    def __init__(self, d_model: int, children: list[Mixer]):
        super().__init__()
        self.d_model, self.layers = d_model, nn.ModuleList(children)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def init_state(self, batch: int) -> State:
        return tuple(layer.init_state(batch) for layer in self.layers)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        new_state = []
        for layer, s in zip(self.layers, state):
            x, s = layer.step(x, s)
            new_state.append(s)
        return x, tuple(new_state)

    def flops(self, seq_len: int) -> float:
        return sum(layer.flops(seq_len) for layer in self.layers)

    def state_size(self, seq_len: int) -> int:
        return sum(layer.state_size(seq_len) for layer in self.layers)


class Res(Mixer):
    """x + M(x)."""

    def __init__(self, d_model: int, body: Mixer):
        super().__init__()
        self.d_model, self.body = d_model, body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)

    def init_state(self, batch: int) -> State:
        return self.body.init_state(batch)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y, state = self.body.step(x, state)
        return x + y, state

    def flops(self, seq_len: int) -> float:
        return self.body.flops(seq_len)

    def state_size(self, seq_len: int) -> int:
        return self.body.state_size(seq_len)


class _Branches(Mixer):
    """Shared plumbing for combinators that run several branches on the same input."""

    def __init__(self, d_model: int, branches: list[Mixer]):
        super().__init__()
        self.d_model, self.branches = d_model, nn.ModuleList(branches)

    def combine(self, outputs: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.combine([branch(x) for branch in self.branches])

    def init_state(self, batch: int) -> State:
        return tuple(branch.init_state(batch) for branch in self.branches)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        outputs, new_state = zip(*(branch.step(x, s) for branch, s in zip(self.branches, state)))
        return self.combine(list(outputs)), tuple(new_state)

    def flops(self, seq_len: int) -> float:
        return sum(branch.flops(seq_len) for branch in self.branches)

    def state_size(self, seq_len: int) -> int:
        return sum(branch.state_size(seq_len) for branch in self.branches)


class Par(_Branches):
    """Branches on the same input, aggregated: add (Σ), mul (Π) or cat (concatenate, then project)."""

    def __init__(self, d_model: int, branches: list[Mixer], agg: str):
        super().__init__(d_model, branches)
        self.agg = agg
        if agg == "cat":
            self.project = nn.Linear(len(branches) * d_model, d_model, bias=False)

    def combine(self, outputs: list[Tensor]) -> Tensor:
        if self.agg == "add":
            return torch.stack(outputs).sum(0)
        if self.agg == "mul":
            return torch.stack(outputs).prod(0)
        return self.project(torch.cat(outputs, dim=-1))

    def flops(self, seq_len: int) -> float:
        own = 2.0 * self.project.weight.numel() * seq_len if self.agg == "cat" else 0.0
        return super().flops(seq_len) + own


class Gate(_Branches):
    """M1(x) ⊙ fn(M2(x)) with fn = sigmoid or silu."""

    def __init__(self, d_model: int, value: Mixer, gate: Mixer, fn: str):
        super().__init__(d_model, [value, gate])
        self.fn = torch.sigmoid if fn == "sigmoid" else nn.functional.silu

    def combine(self, outputs: list[Tensor]) -> Tensor:
        value, gate = outputs
        return value * self.fn(gate)


class Repeat(Mixer):
    """M applied n times with shared weights (Universal Transformer depth recurrence).

    Each application keeps its own recurrent state: the weights are shared, the caches are not.
    """

    def __init__(self, d_model: int, body: Mixer, n: int):
        super().__init__()
        self.d_model, self.body, self.n = d_model, body, n

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(self.n):
            x = self.body(x)
        return x

    def init_state(self, batch: int) -> State:
        return tuple(self.body.init_state(batch) for _ in range(self.n))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        new_state = []
        for s in state:
            x, s = self.body.step(x, s)
            new_state.append(s)
        return x, tuple(new_state)

    def flops(self, seq_len: int) -> float:
        return self.n * self.body.flops(seq_len)

    def state_size(self, seq_len: int) -> int:
        return self.n * self.body.state_size(seq_len)
