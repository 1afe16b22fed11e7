"""Costs of a built architecture: parameters, FLOPs per token, inference state size."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from einsearch.primitives.base import Mixer


@dataclass(frozen=True)
class Costs:
    params: int
    flops_per_token: float
    state_size: int
    seq_len: int

    def as_dict(self) -> dict:
        return asdict(self)


def count_params(module: nn.Module) -> int:
    """Trainable parameters, each shared tensor counted once (as `repeat` shares weights)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def costs(module: Mixer, seq_len: int) -> Costs:
    """Parameters; forward FLOPs per token averaged over a sequence of `seq_len`; state size at `seq_len`."""
    return Costs(
        params=count_params(module),
        flops_per_token=module.flops(seq_len) / seq_len,
        state_size=module.state_size(seq_len),
        seq_len=seq_len,
    )
