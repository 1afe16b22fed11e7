"""Nonlinear recurrences (`rnn`): the shared contract, torch's own LSTM/GRU/RNN, the RHN and sLSTM
equations as published, sparse wiring, and Newton (ParaRNN) against the sequential loop."""

import networkx as nx
import pytest
import torch
import torch.nn.functional as F

import einsearch
from einsearch.ops.newton import linear_recurrence, naive_linear_recurrence, reverse_linear_recurrence
from tests.contract import PrimitiveContract


class TestLSTM(PrimitiveContract):
    arch = "rnn(lstm, heads=2, wiring=none, parallel=sequential)"
    constant_state = True


class TestGRU(PrimitiveContract):
    arch = "rnn(gru, heads=2, wiring=none, parallel=sequential)"
    constant_state = True


class TestRHN(PrimitiveContract):
    arch = "rnn(rhn, heads=2, wiring=none, parallel=sequential)"
    constant_state = True


class TestSLSTM(PrimitiveContract):
    arch = "rnn(slstm, heads=2, wiring=none, parallel=sequential)"
    constant_state = True


class TestElman(PrimitiveContract):
    arch = "rnn(elman, heads=2, wiring=none, parallel=sequential)"
    constant_state = True


class TestLSTMBarabasiAlbert(PrimitiveContract):
    arch = "rnn(lstm, heads=2, wiring=ba, parallel=sequential)"
    constant_state = True


class TestGRUNewtonWattsStrogatz(PrimitiveContract):
    arch = "rnn(gru, heads=1, wiring=ws, parallel=newton)"
    constant_state = True


class TestElmanNewtonErdosRenyi(PrimitiveContract):
    arch = "rnn(elman, heads=2, wiring=er, parallel=newton)"
    constant_state = True


class TestLSTMNewton(PrimitiveContract):
    arch = "rnn(lstm, heads=2, wiring=none, parallel=newton)"
    constant_state = True


class TestSLSTMNewton(PrimitiveContract):
    arch = "rnn(slstm, heads=2, wiring=none, parallel=newton)"
    constant_state = True


class TestRHNNewtonWattsStrogatz(PrimitiveContract):
    arch = "rnn(rhn, heads=2, wiring=ws, parallel=newton)"
    constant_state = True


def rnn(cell: str, heads: int = 1, wiring: str = "none", parallel: str = "sequential", d_model: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    return einsearch.build(f"rnn({cell}, heads={heads}, wiring={wiring}, parallel={parallel})", d_model)


def sequence(batch: int = 2, seq_len: int = 13, d_model: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, seq_len, d_model, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- torch's cells as independent truth


def copy_torch_weights(module, torch_rnn) -> None:
    """heads=1: torch's (weight_ih, bias_ih, weight_hh, bias_hh) are the module's input and recurrent weights."""
    with torch.no_grad():
        module.input.weight.copy_(torch_rnn.weight_ih_l0)
        module.input.bias.copy_(torch_rnn.bias_ih_l0)
        module.recurrent[0].copy_(torch_rnn.weight_hh_l0.T)
        module.recurrent_bias[0].copy_(torch_rnn.bias_hh_l0)


@pytest.mark.parametrize("parallel", ["sequential", "newton"])
@pytest.mark.parametrize("cell, torch_class", [("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU), ("elman", torch.nn.RNN)])
def test_hidden_sequence_matches_torch(cell, torch_class, parallel):
    torch.manual_seed(3)
    reference = torch_class(8, 8, batch_first=True)
    module = rnn(cell, parallel=parallel)
    copy_torch_weights(module, reference)
    x = sequence()
    expected, _ = reference(x)  # (B, T, 8)
    torch.testing.assert_close(module.hidden_sequence(x).flatten(-2), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- RHN and sLSTM as published


def test_rhn_matches_zilly_equations():
    """Zilly et al. 2017, eqs. 6-8 with coupled carry c = 1 - t, recurrence depth L = 2, one head:
    s⁰_t = y_{t-1};  h_l = tanh(W_H x [l=1] + R_{H_l} s^{l-1} + b_{H_l});
    t_l = σ(W_T x [l=1] + R_{T_l} s^{l-1} + b_{T_l});  s^l = h_l t_l + s^{l-1} (1 - t_l);  y_t = s^L."""
    module, x = rnn("rhn"), sequence()
    d = 8
    W_H, W_T = module.input.weight.split(d)  # input enters the first micro-layer only
    b_in_H, b_in_T = module.input.bias.split(d)
    R_H1, R_T1, R_H2, R_T2 = module.recurrent[0].T.split(d)  # as (out, in) matrices
    b_H1, b_T1, b_H2, b_T2 = module.recurrent_bias[0].split(d)
    y, ys = torch.zeros(2, d), []
    for t in range(x.shape[1]):
        h1 = torch.tanh(x[:, t] @ W_H.T + b_in_H + y @ R_H1.T + b_H1)
        t1 = torch.sigmoid(x[:, t] @ W_T.T + b_in_T + y @ R_T1.T + b_T1)
        s1 = h1 * t1 + y * (1 - t1)
        h2 = torch.tanh(s1 @ R_H2.T + b_H2)
        t2 = torch.sigmoid(s1 @ R_T2.T + b_T2)
        y = h2 * t2 + s1 * (1 - t2)
        ys.append(y)
    torch.testing.assert_close(module.hidden_sequence(x)[:, :, 0], torch.stack(ys, 1))


def test_slstm_matches_xlstm_pointwise_code():
    """xLSTM's `slstm_forward_pointwise` (vanilla PyTorch backend), including its special case m = ĩ while
    n == 0, with two heads whose recurrent matrix is written out block-diagonally."""
    module, x = rnn("slstm", heads=2), sequence()
    d, H = 4, 2
    R = torch.block_diag(*module.recurrent)  # (H·d, H·4d), heads along the diagonal
    y = c = n = m = torch.zeros(2, H * d)
    ys = []
    for t in range(x.shape[1]):
        Wx = module.input(x[:, t]).view(2, H, 4 * d)
        Ry = (y @ R).view(2, H, 4 * d) + module.recurrent_bias
        raw = (Wx + Ry).view(2, H, 4, d)
        iraw, fraw, zraw, oraw = (raw[:, :, g].reshape(2, H * d) for g in range(4))
        logfplusm = m + F.logsigmoid(fraw)
        mnew = iraw if torch.all(n == 0.0) else torch.max(iraw, logfplusm)
        igate, fgate = torch.exp(iraw - mnew), torch.exp(logfplusm - mnew)
        c = fgate * c + igate * torch.tanh(zraw)
        n = fgate * n + igate
        y, m = torch.sigmoid(oraw) * c / n, mnew
        ys.append(y)
    torch.testing.assert_close(module.hidden_sequence(x).flatten(-2), torch.stack(ys, 1))


# ---------------------------------------------------------------- sparse wiring


GRAPHS = {
    "ws": lambda d: nx.watts_strogatz_graph(d, 4, 0.25, seed=0),
    "ba": lambda d: nx.barabasi_albert_graph(d, 2, seed=0),
    "er": lambda d: nx.erdos_renyi_graph(d, 4 / d, seed=0),
}


@pytest.mark.parametrize("wiring", ["ws", "ba", "er"])
def test_mask_is_the_graph_with_self_loops(wiring):
    module = rnn("gru", heads=2, wiring=wiring, d_model=32)  # d = 16
    graph = GRAPHS[wiring](16)
    expected = torch.eye(16)
    for i, j in graph.edges:
        expected[i, j] = expected[j, i] = 1
    assert torch.equal(module.mask, expected)
    assert torch.equal(rnn("gru", heads=2, wiring=wiring, d_model=32, seed=5).mask, module.mask)  # fixed seed
    assert module.mask_density() < 0.7


@pytest.mark.parametrize("cell, wiring", [("lstm", "ws"), ("gru", "ba"), ("rhn", "er"), ("slstm", "ws")])
def test_masked_cell_equals_dense_cell_with_zeroed_weights(cell, wiring):
    sparse = rnn(cell, heads=2, wiring=wiring, d_model=16)
    dense = rnn(cell, heads=2, wiring="none", d_model=16, seed=1)
    dense.load_state_dict({**sparse.state_dict(), "mask": dense.mask})
    gates = sparse.recurrent.shape[-1] // 8
    with torch.no_grad():
        dense.recurrent.mul_(sparse.mask.repeat(1, gates))
    x = sequence(d_model=16)
    torch.testing.assert_close(sparse(x), dense(x))
    assert not torch.allclose(sparse(x), rnn(cell, heads=2, wiring="none", d_model=16)(x))  # the mask matters


def test_small_heads_still_build():
    for wiring in ("ws", "ba", "er"):
        for d_model in (1, 2, 3):
            module = rnn("lstm", heads=1, wiring=wiring, d_model=d_model)
            assert torch.isfinite(module(sequence(d_model=d_model, seq_len=4))).all()


# ---------------------------------------------------------------- costs by hand


def test_flops_and_state_by_hand():
    D, H, d = 16, 2, 8
    dense = rnn("lstm", heads=H, d_model=D)
    per_token = 2 * D * 4 * D + 2 * H * 4 * d * d + 2 * D * D  # input gates, recurrent blocks, output
    assert dense.flops(10) == 10 * per_token
    sparse = rnn("lstm", heads=H, wiring="ws", d_model=D)
    nonzero = 2 * nx.watts_strogatz_graph(d, 4, 0.25, seed=0).number_of_edges() + d
    assert sparse.flops(10) == 10 * (2 * D * 4 * D + 2 * H * 4 * nonzero + 2 * D * D)
    rhn = rnn("rhn", heads=H, d_model=D)  # input: 2 gates; recurrence: 2 micro-layers × 2 gates
    assert rhn.flops(1) == 2 * D * 2 * D + 2 * H * 4 * d * d + 2 * D * D
    components = {"lstm": 2, "gru": 1, "rhn": 1, "slstm": 4, "elman": 1}
    for cell, count in components.items():
        assert rnn(cell, heads=H, d_model=D).state_size(10**6) == count * D


# ---------------------------------------------------------------- Newton (ParaRNN)


@pytest.mark.parametrize("seq_len", [1, 13, 63])
def test_linear_recurrence_scan_matches_loop(seq_len):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, seq_len, 3, 5, 5, generator=g) / 5**0.5
    b = torch.randn(2, seq_len, 3, 5, generator=g)
    torch.testing.assert_close(linear_recurrence(A, b), naive_linear_recurrence(A, b), atol=1e-5, rtol=1e-5)
    A_nan = A.clone()
    A_nan[:, 0] = float("nan")  # A_0 multiplies x_{-1} = 0 only: Newton's first Jacobian may be anything
    torch.testing.assert_close(linear_recurrence(A_nan, b), naive_linear_recurrence(A, b), atol=1e-5, rtol=1e-5)
    # the adjoint λ_t = g_t + A_{t+1}ᵀ λ_{t+1} is the gradient of <λ-weights, x> through the loop
    b.requires_grad_(True)
    weights = torch.randn(2, seq_len, 3, 5, generator=g)
    (grad,) = torch.autograd.grad((naive_linear_recurrence(A, b) * weights).sum(), b)
    torch.testing.assert_close(reverse_linear_recurrence(A, weights), grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell, wiring", [("gru", "none"), ("lstm", "ba"), ("elman", "ws")])
def test_newton_matches_sequential_at_63(cell, wiring):
    module = rnn(cell, heads=2, wiring=wiring, parallel="newton", d_model=16)
    x = sequence(seq_len=63, d_model=16).requires_grad_(True)
    weights = sequence(seq_len=63, d_model=16, seed=2)
    results = []
    for run in (module.forward, module.sequential_forward):
        y = run(x)
        grads = torch.autograd.grad((y * weights).sum(), [x, *module.parameters()])
        results.append((y, *grads))
    for newton, loop in zip(*results):
        torch.testing.assert_close(newton, loop, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cell", ["gru", "lstm", "elman", "rhn", "slstm"])
def test_newton_needs_few_iterations_on_a_contractive_cell(cell):
    module = rnn(cell, heads=2, parallel="newton", d_model=16)
    with torch.no_grad():  # every recurrent block scaled to spectral norm 1/2: a contractive recurrence
        module.recurrent.mul_(0.5 / torch.linalg.matrix_norm(module.recurrent, ord=2)[:, None, None])
    _, iterations = module.newton_states(sequence(seq_len=63, d_model=16))
    print(f"{cell}: {iterations} Newton iterations for T = 63")
    assert iterations <= 8


def test_newton_is_exact_on_an_expansive_cell():
    """A chaotic Elman cell (recurrent weights ×4): Newton may need many iterations but still
    reaches the sequential loop's states (at most T iterations)."""
    module = rnn("elman", heads=1, parallel="newton", d_model=8)
    with torch.no_grad():
        module.recurrent.mul_(4)
    x = sequence(seq_len=31)
    states, iterations = module.newton_states(x)
    print(f"expansive elman: {iterations} Newton iterations for T = 31")
    assert iterations <= 31
    torch.testing.assert_close(states[..., 0, :], module.naive_hidden_sequence(x)[..., 0, :], atol=1e-4, rtol=1e-4)


def test_slstm_newton_iterations_do_not_grow_with_length():
    """sLSTM is solved in its normalised form (ĉ = c/n, ℓ = m + log n): the iteration count stays flat in T."""
    module = rnn("slstm", heads=2, parallel="newton", d_model=16)
    counts = {T: module.newton_states(sequence(seq_len=T, d_model=16))[1] for T in (15, 255)}
    print(f"slstm: Newton iterations by length {counts}")
    assert max(counts.values()) <= 8
