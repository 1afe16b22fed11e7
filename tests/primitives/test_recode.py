"""Recoding (Ulmer 2019): `rnn(..., recode=l2)` moves h_{t-1} one gradient step down the error of
its prediction of x_t before each update.  Checked against a loop written here from the equations
(the gradient taken by autograd, not the closed form the module uses), against the plain cell at
η = 0, and by the shared contract (with Newton's method against the recoded sequential loop)."""

import pytest
import torch
import torch.nn.functional as F

import einsearch
from einsearch.grammar.parser import ArchSyntaxError
from tests.contract import PrimitiveContract


class TestRecodingLSTM(PrimitiveContract):
    arch = "rnn(lstm, heads=2, wiring=none, parallel=sequential, recode=l2)"
    constant_state = True


class TestRecodingSLSTMNewton(PrimitiveContract):  # h is not the first component of the state here
    arch = "rnn(slstm, heads=2, wiring=ws, parallel=newton, recode=l2)"
    constant_state = True


def rnn(cell: str = "lstm", heads: int = 2, parallel: str = "sequential", recode: bool = True, d_model: int = 8):
    torch.manual_seed(0)
    text = f"rnn({cell}, heads={heads}, wiring=none, parallel={parallel}{', recode=l2' if recode else ''})"
    return einsearch.build(text, d_model)


def recoded_lstm_loop(module, x: torch.Tensor) -> torch.Tensor:
    """The paper's step h ← h − η ∇_h e with e_t = ½‖x_t − W_k h_{t-1}‖² per head k, the gradient taken
    by autograd, then an LSTM step (gates i, f, g, o) from the recoded h; y_t = W_o h_t.  Only the
    module's weights are read."""
    B, T, D = x.shape
    H, d = module.heads, D // module.heads
    eta = F.softplus(module.recode_rate)  # (H,)
    h = [x.new_zeros(B, d) for _ in range(H)]
    c = [x.new_zeros(B, d) for _ in range(H)]
    ys = []
    for t in range(T):
        u = module.input(x[:, t]).view(B, H, 4 * d)
        for k in range(H):
            error = 0.5 * (x[:, t] - h[k] @ module.predict[k].T).square().sum()
            (grad,) = torch.autograd.grad(error, h[k], create_graph=True) if h[k].requires_grad else (None,)
            if grad is None:  # h_{-1} = 0 is a constant: ∇_h e = -Wᵀ(x - W·0)
                grad = -(x[:, t] @ module.predict[k])
            recoded = h[k] - eta[k] * grad
            i, f, g, o = (u[:, k] + recoded @ module.recurrent[k] + module.recurrent_bias[k]).chunk(4, -1)
            c[k] = torch.sigmoid(f) * c[k] + torch.sigmoid(i) * torch.tanh(g)
            h[k] = torch.sigmoid(o) * torch.tanh(c[k])
        ys.append(module.out(torch.cat(h, -1)))
    return torch.stack(ys, 1)


def test_recoded_lstm_matches_the_equations_outputs_and_gradients():
    module = rnn().double()
    x = torch.randn(2, 13, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    weights = torch.randn(2, 13, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = []
    for run in (module, lambda inputs: recoded_lstm_loop(module, inputs)):
        module.zero_grad()
        x.grad = None
        y = run(x)
        (y * weights).sum().backward()
        results.append((y.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in module.named_parameters()}))
    (y, gx, gp), (y_ref, gx_ref, gp_ref) = results
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    assert gp.keys() == gp_ref.keys() and {"predict", "recode_rate"} <= gp.keys()
    for name in gp:
        torch.testing.assert_close(gp[name], gp_ref[name], msg=name)


@pytest.mark.parametrize("cell, parallel", [("lstm", "sequential"), ("gru", "newton")])
def test_zero_step_is_the_plain_cell_exactly(cell, parallel):
    plain, recoding = rnn(cell, parallel=parallel, recode=False), rnn(cell, parallel=parallel)
    shared = plain.state_dict()
    assert all(torch.equal(value, recoding.state_dict()[name]) for name, value in shared.items())  # same init
    with torch.no_grad():
        recoding.recode_rate.fill_(-float("inf"))  # η = softplus(-inf) = 0
    x = torch.randn(2, 13, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(recoding(x), plain(x))
        assert not torch.allclose(rnn(cell, parallel=parallel)(x), plain(x))  # with η > 0 it differs


def test_the_step_lowers_the_prediction_error():
    """With the initial weights (W_kᵀW_k ≈ I/3, η = 0.5) the recoded state predicts x_t better."""
    module = rnn(heads=1)
    x = torch.randn(2, 13, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = module.naive_hidden_sequence(x)[:, :-1, 0]  # h_0 .. h_{T-2}, (B, T-1, d)
        targets, gram = module._recoding(x)
        after = before - before @ gram[0] + targets[:, 1:, 0]
        error = lambda h: (x[:, 1:] - h @ module.predict[0].T).square().sum(-1)  # noqa: E731
    assert (error(after) < error(before)).all()


def test_recoding_does_not_take_the_fused_kernel(monkeypatch):
    from einsearch.primitives import recurrent

    def refuse(*args, **kwargs):
        raise AssertionError("the fused step loop has no recoding")

    monkeypatch.setattr(recurrent, "rnn_states", refuse)
    module = rnn()
    assert torch.isfinite(module(torch.randn(1, 5, 8))).all()


def test_costs_by_hand():
    D, H, d = 16, 2, 8
    plain, recoding = rnn(heads=H, recode=False, d_model=D), rnn(heads=H, d_model=D)
    extra = 2 * D * D + 2 * H * d * d  # p_t = η Wᵀ x_t, and G h per head
    assert recoding.flops(10) == plain.flops(10) + 10 * extra + 2 * H * d * d * D  # + G = η WᵀW once
    assert recoding.state_size(10) == plain.state_size(10)  # the state is unchanged
    assert einsearch.costs(recoding, 10).params == einsearch.costs(plain, 10).params + D * D + H


def test_text_round_trips_and_bad_values_name_the_allowed_one():
    arch = einsearch.parse("rnn(lstm, heads=1, wiring=none, parallel=sequential, recode=l2)")
    assert arch["recode"] == "l2" and einsearch.parse(arch.text) == arch
    with pytest.raises(ArchSyntaxError, match="l2"):
        einsearch.parse("rnn(lstm, heads=1, wiring=none, parallel=sequential, recode=true)")
