"""scan(ssd), Mamba-2's state-space dual scan: the mixer under the shared contract, and its
functional core against independent truth (the plain loop, a hand-unrolled recurrence, and
Mamba-2's own quadratic "attention" form y = (L ∘ C Bᵀ) X)."""

import pytest
import torch

from einsearch.ops.ssd import naive_ssd, ssd_chunked, ssd_step
from tests.contract import PrimitiveContract
from tests.primitives.test_scan import outputs_and_grads


class TestSSD(PrimitiveContract):
    arch = "scan(ssd, heads=2, state=4)"
    constant_state = True
    seq_len = 37  # crosses the default chunk length (32)


class TestSSDOneHead(PrimitiveContract):
    arch = "scan(ssd, heads=1, state=3)"
    constant_state = True


# ---------------------------------------------------------------- the core


def ssd_inputs(T: int, seed: int = 0, batch: int = 2, heads: int = 3, p: int = 5, n: int = 4, decay: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, heads, p, generator=g, dtype=torch.float64)
    log_a = -decay * torch.rand(batch, T, heads, generator=g, dtype=torch.float64)
    b = torch.randn(batch, T, n, generator=g, dtype=torch.float64)
    c = torch.randn(batch, T, n, generator=g, dtype=torch.float64)
    h0 = torch.randn(batch, heads, p, n, generator=g, dtype=torch.float64)
    return x, log_a, b, c, h0


@pytest.mark.parametrize("T, chunk", [(63, 4), (63, 7), (63, 64), (64, 16), (13, 5), (13, 1), (1, 4), (1, 1)])
def test_chunked_matches_loop(T, chunk):
    """Outputs, final state and the gradients of every input (x, log_a, b, c, h0) agree with the
    plain loop, for chunk lengths that divide T, that do not, and that exceed it."""
    inputs = ssd_inputs(T)
    weights = torch.randn(2, T, 3, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y, h_T, grads = outputs_and_grads(lambda *z: ssd_chunked(*z, chunk=chunk), inputs, weights)
    y_ref, h_T_ref, grads_ref = outputs_and_grads(naive_ssd, inputs, weights)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h_T, h_T_ref)
    for name, g, g_ref in zip(["x", "log_a", "b", "c", "h0"], grads, grads_ref):
        torch.testing.assert_close(g, g_ref, msg=name)


def test_loop_is_the_recurrence_written_out():
    """Two steps by hand, per head: H_1 = a_1 H_0 + x_1 b_1ᵀ, H_2 = a_2 H_1 + x_2 b_2ᵀ, y_t = H_t c_t."""
    x, log_a, b, c, h0 = ssd_inputs(2, batch=1, heads=2)
    y, h_T = naive_ssd(x, log_a, b, c, h0)
    for h in range(2):
        H = h0[0, h]
        for t in range(2):
            H = log_a[0, t, h].exp() * H + torch.outer(x[0, t, h], b[0, t])
            torch.testing.assert_close(y[0, t, h], H @ c[0, t])
        torch.testing.assert_close(h_T[0, h], H)


def test_chunked_is_the_quadratic_dual_form():
    """From a zero state, y = (L ∘ C Bᵀ) X per head with L[t, i] = Π_{i<r≤t} a_r for i ≤ t and 0
    above: the masked 'attention' form that gives SSD its name (Dao & Gu 2024, §3)."""
    x, log_a, b, c, _ = ssd_inputs(23)
    y, _ = ssd_chunked(x, log_a, b, c, chunk=8)
    T = x.shape[1]
    for h in range(x.shape[2]):
        L = torch.zeros(2, T, T, dtype=torch.float64)
        for t in range(T):
            for i in range(t + 1):
                L[:, t, i] = log_a[:, i + 1 : t + 1, h].sum(-1).exp()
        expected = (L * (c @ b.transpose(1, 2))) @ x[:, :, h]  # (B, T, P)
        torch.testing.assert_close(y[:, :, h], expected)


def test_strong_decay_stays_finite():
    """A decay of e^-1e4 per step in float32: nothing survives a step, so y_t = x_t (c_t · b_t)."""
    x, log_a, b, c, _ = (z.float() for z in ssd_inputs(63, seed=3))
    y, h_T = ssd_chunked(x, torch.full_like(log_a, -1e4), b, c, chunk=16)
    assert torch.isfinite(y).all() and torch.isfinite(h_T).all()
    torch.testing.assert_close(y, x * (c * b).sum(-1)[:, :, None, None])


def test_step_is_one_step_of_the_loop():
    x, log_a, b, c, h0 = ssd_inputs(1)
    y, h = ssd_step(x[:, 0], log_a[:, 0], b[:, 0], c[:, 0], h0)
    y_ref, h_ref = naive_ssd(x, log_a, b, c, h0)
    torch.testing.assert_close(y, y_ref[:, 0])
    torch.testing.assert_close(h, h_ref)
