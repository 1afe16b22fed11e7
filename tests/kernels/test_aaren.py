"""The Aaren prefix-softmax kernel (`einsearch.kernels.aaren`) against `naive_aaren`.

Under the interpreter: float32 kernel vs float64 token-by-token combine, T = 1, 13, 33 with
chunks of 16 and a value size that is not a power of two; outputs and the gradients of s and v.
"""

import pytest
import torch

from einsearch.ops.aaren import aaren, aaren_chunked, naive_aaren
from tests.kernels.common import (
    assert_backends_agree,
    assert_gpu_matches,
    compare,
    forward_backward_seconds,
    needs_gpu,
    needs_interpreter,
)

pytest.importorskip("triton")
from einsearch.kernels.aaren import aaren_triton  # noqa: E402

SHAPES = [(2, 1, 1), (1, 2, 13), (2, 1, 33)]  # (B, H, T)


def aaren_inputs(B, H, T, E=5, score_scale=3.0, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "s": score_scale * torch.randn(B, H, T, generator=g, dtype=torch.float64),
        "v": torch.randn(B, H, T, E, generator=g, dtype=torch.float64),
    }
    return {n: t.to(device) for n, t in inputs.items()}


@needs_interpreter
@pytest.mark.parametrize("B,H,T", SHAPES)
def test_matches_loop(B, H, T):
    compare(aaren_triton, naive_aaren, aaren_inputs(B, H, T), tol=1e-5, block_t=16)


@needs_interpreter
def test_large_scores_do_not_overflow():
    """Scores of ±1000: exp(s) overflows, the running maximum keeps every exponent ≤ 0.  Only the
    output is compared: with near one-hot weights ds is rounding noise in any float32 form."""
    inputs = {n: t.float() for n, t in aaren_inputs(1, 1, 33, score_scale=1000.0).items()}
    got = aaren_triton(**inputs, block_t=16)
    want = naive_aaren(**{n: t.double() for n, t in inputs.items()})
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@needs_interpreter
def test_dispatch_forced_triton_equals_torch(monkeypatch):
    assert_backends_agree(aaren, aaren_inputs(1, 2, 13), monkeypatch)


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-3), (torch.bfloat16, 2e-2)])
def test_gpu_matches_chunked_reference(dtype, tol):
    inputs = aaren_inputs(2, 4, 1000, E=64, device="cuda")
    assert_gpu_matches(aaren_triton, aaren_chunked, inputs, dtype, tol)


@pytest.mark.gpu
@needs_gpu
def test_gpu_faster_than_reference():
    inputs = aaren_inputs(4, 4, 4096, E=64, device="cuda")
    assert forward_backward_seconds(aaren_triton, inputs) < forward_backward_seconds(aaren_chunked, inputs)
