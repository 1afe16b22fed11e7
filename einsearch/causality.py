"""A numerical check that a sequence module is causal: y[t] depends only on x[:t+1].

Two independent probes at several cut points t:
* perturb the future x[:, t+1:] and require y[:, :t+1] to be unchanged;
* require the gradient of y[:, t] with respect to x[:, t+1:] to vanish.

A module that produces NaN or inf is reported as not causal and not finite: nothing about
causality can be concluded from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CausalityReport:
    causal: bool
    finite: bool  # False: the module produced NaN/inf, so nothing could be concluded
    max_output_change: float  # largest change of a past output when the future is perturbed
    max_future_grad: float  # largest |d y[t] / d x[t+1:]|
    cut: int | None  # the first cut point that failed

    def __bool__(self) -> bool:
        return self.causal


def check_causal(
    module: nn.Module,
    d_model: int,
    seq_len: int = 12,
    batch: int = 2,
    atol: float = 1e-5,
    seed: int = 0,
) -> CausalityReport:
    generator = torch.Generator().manual_seed(seed)
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    x = torch.randn(batch, seq_len, d_model, generator=generator, dtype=dtype)
    worst_change = worst_grad = 0.0
    failed_at = None
    for t in sorted({0, seq_len // 3, seq_len // 2, seq_len - 2}):
        if not 0 <= t < seq_len - 1:
            continue
        future = x.clone()
        future[:, t + 1 :] = torch.randn(batch, seq_len - t - 1, d_model, generator=generator, dtype=dtype) * 3
        with torch.no_grad():
            change = (module(x)[:, : t + 1] - module(future)[:, : t + 1]).abs().max().item()
        probe = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(module(probe)[:, t].sum(), probe, allow_unused=True)
        leak = 0.0 if grad is None else grad[:, t + 1 :].abs().max().item()
        if not (math.isfinite(change) and math.isfinite(leak)):
            return CausalityReport(False, False, change, leak, t)
        worst_change, worst_grad = max(worst_change, change), max(worst_grad, leak)
        if failed_at is None and not (change <= atol and leak <= atol):
            failed_at = t
    return CausalityReport(failed_at is None, True, worst_change, worst_grad, failed_at)
