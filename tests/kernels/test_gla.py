"""The GLA kernel (`einsearch.kernels.gla`) against the token loop `naive_gla`, and its dispatch.

Under the interpreter: float32 kernel vs float64 loop on odd sizes (T = 1, 13, 33 with chunks of 16,
so the state crosses chunk boundaries and the last chunk is padded; value sizes that are not
powers of two), for the three decay layouts (per channel, per head, none), with an initial state;
outputs, final states and the gradients of q, k, v, log α and h0.
"""

import pytest
import torch

from einsearch.ops.dispatch import use_triton
from einsearch.ops.gla import gla, gla_chunked, naive_gla
from tests.kernels.common import (
    assert_backends_agree,
    assert_gpu_matches,
    compare,
    forward_backward_seconds,
    needs_gpu,
    needs_interpreter,
)

pytest.importorskip("triton")
from einsearch.kernels.gla import gla_triton  # noqa: E402

SHAPES = [(2, 1, 1), (1, 2, 13), (2, 1, 33)]  # (B, H, T)
DK, DV = 8, 9


def gla_inputs(B, H, T, gate, dk=DK, dv=DV, decay_scale=1.0, h0=True, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    log_alpha = None
    if gate != "none":
        width = dk if gate == "channel" else 1
        log_alpha = -decay_scale * torch.rand(B, H, T, width, generator=g, dtype=torch.float64)
    inputs = {
        "q": randn(B, H, T, dk) / dk**0.5,
        "k": randn(B, H, T, dk),
        "v": randn(B, H, T, dv),
        "log_alpha": log_alpha,
        "h0": randn(B, H, dk, dv) if h0 else None,
    }
    return {n: t.to(device) if t is not None else None for n, t in inputs.items()}


@needs_interpreter
@pytest.mark.parametrize("gate", ["channel", "head", "none"])
@pytest.mark.parametrize("B,H,T", SHAPES)
def test_matches_loop(gate, B, H, T):
    compare(gla_triton, naive_gla, gla_inputs(B, H, T, gate), tol=1e-5, block_t=16)


@needs_interpreter
@pytest.mark.parametrize("gate", ["channel", "head"])
def test_strong_decay_stays_finite_and_exact(gate):
    """log α ≈ -15 per token on average: exp of cumulative sums would overflow; the kernel must
    not.  dlog α is ill-conditioned here (~2e-5 for the float32 PyTorch form too), hence 1e-4."""
    compare(gla_triton, naive_gla, gla_inputs(1, 1, 33, gate, decay_scale=30.0), tol=1e-4, block_t=16)


@needs_interpreter
def test_without_initial_state():
    compare(gla_triton, naive_gla, gla_inputs(1, 1, 20, "channel", h0=False), tol=1e-5, block_t=16)


@needs_interpreter
def test_dispatch_forced_triton_equals_torch(monkeypatch):
    """The dispatch function gives the same results whichever backend it is told to use."""
    assert_backends_agree(gla, gla_inputs(1, 2, 13, "head"), monkeypatch)


def test_dispatch_rules(monkeypatch):
    """CPU tensors take the PyTorch path unless forced; unknown settings are refused."""
    x = torch.zeros(2)
    monkeypatch.delenv("EINSEARCH_KERNELS", raising=False)
    assert not use_triton(x)
    monkeypatch.setenv("EINSEARCH_KERNELS", "torch")
    assert not use_triton(x)
    monkeypatch.setenv("EINSEARCH_KERNELS", "cuda")
    with pytest.raises(ValueError):
        use_triton(x)
    monkeypatch.setenv("EINSEARCH_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError):
        use_triton(x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError):  # the kernels take float32 / bfloat16 / float16 only
        use_triton(x.double())


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("gate", ["channel", "head", "none"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-3), (torch.bfloat16, 2e-2)])
def test_gpu_matches_chunked_reference(gate, dtype, tol):
    inputs = gla_inputs(2, 4, 1000, gate, dk=64, dv=64, device="cuda")
    assert_gpu_matches(gla_triton, gla_chunked, inputs, dtype, tol)


@pytest.mark.gpu
@needs_gpu
def test_gpu_faster_than_reference():
    inputs = gla_inputs(4, 4, 4096, "channel", dk=64, dv=64, h0=False, device="cuda")
    assert forward_backward_seconds(gla_triton, inputs) < forward_backward_seconds(gla_chunked, inputs)
