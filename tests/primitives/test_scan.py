"""Scans: the diagonal recurrence (S4D / Mamba) and Aaren, under the shared contract, plus their
functional cores against independent truth (the plain loop, a hand-unrolled recurrence, an
explicit masked softmax)."""

import pytest
import torch
import torch.nn.functional as F

import einsearch
from einsearch.ops.aaren import aaren_chunked, naive_aaren
from einsearch.ops.scan import naive_scan_diag, scan_diag_chunked
from einsearch.primitives.scan import Aaren, DiagScan
from tests.contract import PrimitiveContract


class TestDiagScanSelective(PrimitiveContract):
    arch = "scan(diag, state=4, selective=true)"
    constant_state = True


class TestDiagScanTimeInvariant(PrimitiveContract):
    arch = "scan(diag, state=3, selective=false)"
    constant_state = True


class TestAaren(PrimitiveContract):
    arch = "aaren(heads=2)"
    constant_state = True
    seq_len = 37  # crosses a chunk boundary of the default chunk length (32)


# ---------------------------------------------------------------- the diagonal core


def diag_inputs(T: int, seed: int = 0, batch: int = 2, d: int = 3, n: int = 4, decay: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, d, generator=g, dtype=torch.float64)
    log_a = -decay * torch.rand(batch, T, d, n, generator=g, dtype=torch.float64)
    b = torch.randn(batch, T, n, generator=g, dtype=torch.float64)
    c = torch.randn(batch, T, n, generator=g, dtype=torch.float64)
    h0 = torch.randn(batch, d, n, generator=g, dtype=torch.float64)
    return x, log_a, b, c, h0


def outputs_and_grads(fn, inputs, weights):
    inputs = [z.clone().requires_grad_(True) for z in inputs]
    y, h_T = fn(*inputs)
    ((y * weights).sum() + (h_T * h_T).sum()).backward()
    return y.detach(), h_T.detach(), [z.grad for z in inputs]


@pytest.mark.parametrize("T, chunk", [(63, 3), (63, 7), (63, 4), (63, 2), (63, 64), (64, 4), (13, 5), (13, 1), (1, 4), (1, 1)])
def test_diag_chunked_matches_loop(T, chunk):
    """Outputs, final state and the gradients of every input (x, log_a, b, c, h0) agree with the
    plain loop, for chunk lengths that divide T, that do not, and that exceed it."""
    inputs = diag_inputs(T)
    weights = torch.randn(2, T, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y, h_T, grads = outputs_and_grads(lambda *z: scan_diag_chunked(*z, chunk=chunk), inputs, weights)
    y_ref, h_T_ref, grads_ref = outputs_and_grads(naive_scan_diag, inputs, weights)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h_T, h_T_ref)
    for name, g, g_ref in zip(["x", "log_a", "b", "c", "h0"], grads, grads_ref):
        torch.testing.assert_close(g, g_ref, msg=name)


def test_diag_chunked_without_initial_state_starts_from_zero():
    x, log_a, b, c, _ = diag_inputs(13)
    zeros = torch.zeros(2, 3, 4, dtype=torch.float64)
    y, h_T = scan_diag_chunked(x, log_a, b, c, chunk=4)
    y_ref, h_T_ref = naive_scan_diag(x, log_a, b, c, zeros)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h_T, h_T_ref)


def test_diag_strong_decay_stays_finite():
    """log_a ≈ -50 (decay e^-50 per step, e^-200 over a chunk) next to channels with no decay at
    all: in float32 the chunked form stays finite, and with nothing surviving a step the output
    is the token's own term, y_t = x_t (c_t · b_t)."""
    x, log_a, b, c, _ = (z.float() for z in diag_inputs(63, seed=3))
    strong = -50.0 + log_a  # in [-52, -50]
    inputs = [z.clone().requires_grad_(True) for z in (x, strong, b, c)]
    y, h_T = scan_diag_chunked(*inputs, chunk=4)
    (y.sum() + h_T.sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(h_T).all()
    assert all(torch.isfinite(z.grad).all() for z in inputs)
    torch.testing.assert_close(y, x * (c * b).sum(-1, keepdim=True))

    mixed = torch.where(torch.arange(3)[:, None] == 0, torch.zeros_like(log_a), strong)  # channel 0: a = 1
    y, _ = scan_diag_chunked(x, mixed, b, c, chunk=4)
    y_ref, _ = naive_scan_diag(x, mixed, b, c)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)


def test_diag_chunk_must_be_positive():
    with pytest.raises(ValueError):
        scan_diag_chunked(*diag_inputs(5)[:4], chunk=0)


def test_diag_scan_matches_hand_unrolled_recurrence():
    """Selective scan at T=3 with chunk 2 (one chunk boundary), against the Mamba equations
    written out step by step from the module's parameters, then Mamba-2's RMS norm (ε = 1e-5)."""
    torch.manual_seed(0)
    module = DiagScan(4, state=3, selective=True, chunk=2)
    x = torch.randn(1, 3, 4)
    delta = F.softplus(x @ module.delta.weight.T + module.delta.bias)  # (1, 3, D)
    bc = x @ module.bc.weight.T
    b, c = bc[..., :3], bc[..., 3:]  # (1, 3, N)
    A = -torch.exp(module.A_log)  # (D, N)
    a = [torch.exp(delta[0, t, :, None] * A) for t in range(3)]  # (D, N)
    u = [delta[0, t, :, None] * x[0, t, :, None] * b[0, t, None, :] for t in range(3)]
    h1 = u[0]
    h2 = a[1] * h1 + u[1]
    h3 = a[2] * h2 + u[2]
    y = torch.stack([h @ c[0, t] for t, h in enumerate([h1, h2, h3])]) + module.skip * x[0]
    y = y / (y.square().mean(-1, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(module(x)[0], y)


def test_time_invariant_scan_matches_convolution():
    """S4D (not selective): with constant Δ, b, c the scan is a causal convolution with kernel
    K_j[d] = Σ_n c[n] exp(j Δ[d] A[d, n]) Δ[d] b[n]; y_t = Σ_j K_j x_{t-j} + skip x_t."""
    torch.manual_seed(1)
    module = DiagScan(5, state=3, selective=False)
    with torch.no_grad():
        module.delta_bias.fill_(0.5)  # decays far from 1, so the kernel varies over the window
    x = torch.randn(1, 9, 5)
    delta = F.softplus(module.delta_bias)  # (D,)
    A = -torch.exp(module.A_log)
    j = torch.arange(9, dtype=torch.float32)
    kernel = torch.einsum("n,jdn->jd", module.c * module.b, torch.exp(j[:, None, None] * delta[:, None] * A)) * delta
    y = torch.stack([sum(kernel[i] * x[0, t - i] for i in range(t + 1)) for t in range(9)]) + module.skip * x[0]
    torch.testing.assert_close(module(x)[0], y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("selective", [True, False])
def test_diag_scan_initialisation(selective):
    """S4D-real A = -(n+1); Δ = softplus(bias) in Mamba's [1e-3, 1e-1]; a fresh module maps unit
    inputs to outputs of order one."""
    torch.manual_seed(0)
    module = DiagScan(32, state=8, selective=selective)
    A = -torch.exp(module.A_log)
    torch.testing.assert_close(A, -torch.arange(1, 9, dtype=torch.float32).expand(32, 8))
    bias = module.delta.bias if selective else module.delta_bias
    delta = F.softplus(bias)
    assert (delta >= 1e-3 * 0.999).all() and (delta <= 1e-1 * 1.001).all()
    y = module(torch.randn(4, 200, 32))
    assert 0.3 < y.std().item() < 3.0


def test_diag_costs_by_hand():
    selective = einsearch.build("scan(diag, state=4, selective=true)", 16)
    # projections Δ: 16·16, b and c: 16·8; state update x bᵀ and readout h c: 16·4 each
    assert selective.flops(10) == 10 * 2 * (16 * 16 + 16 * 8 + 2 * 16 * 4)
    assert selective.state_size(10) == 16 * 4
    invariant = einsearch.build("scan(diag, state=4, selective=false)", 16)
    assert invariant.flops(10) == 10 * 2 * (2 * 16 * 4)


# ---------------------------------------------------------------- Aaren


def masked_softmax_truth(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """o_t = softmax over i ≤ t of s_i, applied to v: an explicit T × T matrix and torch.softmax."""
    T = s.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = s[..., None, :].expand(*s.shape[:-1], T, T).masked_fill(~causal, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_aaren_module_matches_explicit_masked_softmax():
    """The learned query attends over keys 1..t: compared with softmax(q·K/√d + causal mask) V
    written as a T × T matrix, through the module's own projections."""
    torch.manual_seed(0)
    for chunk in (4, 32):
        module = Aaren(8, heads=2, chunk=chunk)
        x = torch.randn(2, 13, 8)
        k, v = module.kv(x).view(2, 13, 2, 2, 4).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        s = (k * module.query[None, :, None, :]).sum(-1) / 2.0  # √4
        o = masked_softmax_truth(s, v)  # (B, H, T, d)
        expected = module.out(o.transpose(1, 2).reshape(2, 13, 8))
        torch.testing.assert_close(module(x), expected)


@pytest.mark.parametrize("T, chunk", [(63, 7), (63, 8), (63, 64), (64, 16), (1, 4), (13, 1)])
def test_aaren_chunked_matches_loop_and_softmax(T, chunk):
    """Outputs against the masked softmax; outputs and gradients against the combine loop."""
    g = torch.Generator().manual_seed(T + chunk)
    s = 3 * torch.randn(2, 3, T, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, T, 5, generator=g, dtype=torch.float64)
    weights = torch.randn(2, 3, T, 5, generator=g, dtype=torch.float64)
    results = []
    for fn in (lambda s, v: aaren_chunked(s, v, chunk=chunk), naive_aaren):
        s_, v_ = s.clone().requires_grad_(True), v.clone().requires_grad_(True)
        o = fn(s_, v_)
        (o * weights).sum().backward()
        results.append((o.detach(), s_.grad, v_.grad))
    (o, gs, gv), (o_ref, gs_ref, gv_ref) = results
    torch.testing.assert_close(o, masked_softmax_truth(s, v))
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(gs, gs_ref)
    torch.testing.assert_close(gv, gv_ref)


def test_aaren_large_scores_stay_finite():
    """Scores of ±80 (e^160 apart, beyond float32), including jumps from -80 to +80 inside a
    chunk and across chunks: finite outputs and gradients, equal to torch.softmax."""
    g = torch.Generator().manual_seed(0)
    T = 40
    v = torch.randn(2, 2, T, 4, generator=g)
    random = 80 * (2 * torch.rand(2, 2, T, generator=g) - 1)
    rising = torch.linspace(-80, 80, T).expand(2, 2, T)
    jump = torch.where(torch.arange(T) < 3, -80.0, 80.0).expand(2, 2, T)
    for s in (random, rising, jump, -jump):
        expected = masked_softmax_truth(s.double(), v.double()).float()
        for o in (aaren_chunked(s, v, chunk=8), naive_aaren(s, v)):
            assert torch.isfinite(o).all()
            torch.testing.assert_close(o, expected, atol=1e-5, rtol=1e-5)
        s_ = s.clone().requires_grad_(True)
        aaren_chunked(s_, v, chunk=8).sum().backward()
        assert torch.isfinite(s_.grad).all()


def test_aaren_costs_by_hand():
    module = einsearch.build("aaren(heads=2)", 16)
    # keys, values and output projections 3·16·16; q·k and v into u: 16 each
    assert module.flops(10) == 10 * 2 * (3 * 16 * 16 + 2 * 16)
    assert module.state_size(10) == 16 + 2 * 2  # u, and m, w per head
    assert einsearch.costs(module, 8).params == 2 * 8 + 3 * 16 * 16  # query per head, kv, out


def test_aaren_heads_must_divide_width():
    with pytest.raises(einsearch.primitives.base.BuildError):
        einsearch.build("aaren(heads=3)", 16)
