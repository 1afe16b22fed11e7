"""The delta-rule kernel (`einsearch.kernels.delta`) against the token loop `naive_delta_rule`.

Under the interpreter: float32 kernel vs float64 loop, T = 1, 13, 33 with chunks of 16 (state
carried across chunks, padded last chunk), key/value sizes that are not powers of two, plain and
gated, with an initial state; outputs, final states and the gradients of q, k, v, β, log α, h0.
"""

import pytest
import torch
import torch.nn.functional as F

from einsearch.ops.delta import delta_rule, delta_rule_chunked, naive_delta_rule
from tests.kernels.common import (
    assert_backends_agree,
    assert_gpu_matches,
    compare,
    forward_backward_seconds,
    needs_gpu,
    needs_interpreter,
)

pytest.importorskip("triton")
from einsearch.kernels.delta import delta_rule_triton  # noqa: E402

SHAPES = [(2, 1, 1), (1, 2, 13), (2, 1, 33)]  # (B, H, T)
DK, DV = 6, 9


def delta_inputs(B, H, T, gated, dk=DK, dv=DV, decay_scale=1.0, h0=True, seed=0, device="cpu"):
    """Keys L2-normalised and β in (0, 1), as DeltaNet feeds the core."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    inputs = {
        "q": randn(B, H, T, dk) / dk**0.5,
        "k": F.normalize(randn(B, H, T, dk), dim=-1),
        "v": randn(B, H, T, dv),
        "beta": torch.rand(B, H, T, generator=g, dtype=torch.float64),
        "log_alpha": -decay_scale * torch.rand(B, H, T, generator=g, dtype=torch.float64) if gated else None,
        "h0": randn(B, H, dk, dv) if h0 else None,
    }
    return {n: t.to(device) if t is not None else None for n, t in inputs.items()}


@needs_interpreter
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("B,H,T", SHAPES)
def test_matches_loop(gated, B, H, T):
    compare(delta_rule_triton, naive_delta_rule, delta_inputs(B, H, T, gated), tol=1e-5, block_t=16)


@needs_interpreter
def test_strong_decay_stays_finite_and_exact():
    """log α up to -30 per token; dlog α is ill-conditioned there, hence 1e-4."""
    compare(delta_rule_triton, naive_delta_rule, delta_inputs(1, 1, 33, True, decay_scale=30.0), tol=1e-4, block_t=16)


@needs_interpreter
def test_without_initial_state():
    compare(delta_rule_triton, naive_delta_rule, delta_inputs(1, 1, 20, True, h0=False), tol=1e-5, block_t=16)


@needs_interpreter
def test_dispatch_forced_triton_equals_torch(monkeypatch):
    assert_backends_agree(delta_rule, delta_inputs(1, 1, 13, True), monkeypatch)


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-3), (torch.bfloat16, 2e-2)])
def test_gpu_matches_chunked_reference(gated, dtype, tol):
    inputs = delta_inputs(2, 4, 1000, gated, dk=64, dv=64, device="cuda")
    assert_gpu_matches(delta_rule_triton, delta_rule_chunked, inputs, dtype, tol)


@pytest.mark.gpu
@needs_gpu
def test_gpu_faster_than_reference():
    inputs = delta_inputs(4, 4, 4096, True, dk=64, dv=64, h0=False, device="cuda")
    assert forward_backward_seconds(delta_rule_triton, inputs) < forward_backward_seconds(delta_rule_chunked, inputs)
