"""The diagonal-scan kernel (`einsearch.kernels.scan`) against the loop `naive_scan_diag`.

Under the interpreter: float32 kernel vs float64 loop, T = 1, 13, 33 with chunks of 16, channel
counts split over several channel blocks (D = 6 in blocks of 4) and a state size that is not a
power of two; outputs, final states and the gradients of x, log a, b, c and h0.
"""

import pytest
import torch

from einsearch.ops.scan import naive_scan_diag, scan_diag, scan_diag_chunked
from tests.kernels.common import (
    assert_backends_agree,
    assert_gpu_matches,
    compare,
    forward_backward_seconds,
    needs_gpu,
    needs_interpreter,
)

pytest.importorskip("triton")
from einsearch.kernels.scan import scan_diag_triton  # noqa: E402

SHAPES = [(2, 1), (1, 13), (2, 33)]  # (B, T)


def scan_inputs(B, T, D=6, N=3, decay_scale=1.0, h0=True, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    inputs = {
        "x": randn(B, T, D),
        "log_a": -decay_scale * torch.rand(B, T, D, N, generator=g, dtype=torch.float64),
        "b": randn(B, T, N),
        "c": randn(B, T, N),
        "h0": randn(B, D, N) if h0 else None,
    }
    return {n: t.to(device) if t is not None else None for n, t in inputs.items()}


@needs_interpreter
@pytest.mark.parametrize("B,T", SHAPES)
def test_matches_loop(B, T):
    compare(scan_diag_triton, naive_scan_diag, scan_inputs(B, T), tol=1e-5, block_t=16, block_d=4)


@needs_interpreter
def test_strong_decay_and_no_initial_state():
    """log a up to -30 per step: products of exp(log a) underflow to 0, nothing overflows."""
    inputs = scan_inputs(1, 20, D=3, decay_scale=30.0, h0=False)
    compare(scan_diag_triton, naive_scan_diag, inputs, tol=1e-5, block_t=16)


@needs_interpreter
def test_dispatch_forced_triton_equals_torch(monkeypatch):
    assert_backends_agree(scan_diag, scan_inputs(1, 13, D=3), monkeypatch)


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_gpu_matches_chunked_reference(dtype, tol):
    inputs = scan_inputs(2, 1000, D=256, N=16, device="cuda")
    assert_gpu_matches(scan_diag_triton, scan_diag_chunked, inputs, dtype, tol)


@pytest.mark.gpu
@needs_gpu
def test_gpu_faster_than_reference():
    inputs = scan_inputs(4, 4096, D=256, N=16, h0=False, device="cuda")
    assert forward_backward_seconds(scan_diag_triton, inputs) < forward_backward_seconds(scan_diag_chunked, inputs)
