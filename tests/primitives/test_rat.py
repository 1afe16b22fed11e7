"""RAT: the shared contract, plus hand-written truths (token loop, chunk=1, chunk ≥ T)."""

import math

import pytest
import torch
import torch.nn.functional as F

import einsearch
from einsearch.primitives.attention import rope
from einsearch.primitives.base import BuildError
from tests.contract import PrimitiveContract


class TestRAT(PrimitiveContract):
    arch = "rat(heads=2, chunk=4)"
    constant_state = False


class TestRATLong(PrimitiveContract):
    arch = "rat(heads=2, chunk=8)"
    seq_len = 63
    constant_state = False


class TestRATChunkOne(PrimitiveContract):
    arch = "rat(heads=4, chunk=1)"
    constant_state = False


class TestRATChunkAboveLength(PrimitiveContract):
    arch = "rat(heads=2, chunk=32)"
    constant_state = False


def project(module, x):
    """z, g, q, k, v by hand from the module's weights; gates and heads (B, H, T, d)."""
    B, T, D = x.shape
    H = module.heads
    z, g, q, k, v = (x @ w.T for w in module.in_proj.weight.split(D, 0))
    g = torch.sigmoid(g + module.gate_bias)
    g, q, k, v = (u.view(B, T, H, D // H).transpose(1, 2) for u in (g, q, k, v))
    return torch.sigmoid(z), g, q, k, v


def finish(module, z, y):
    B, H, T, d = y.shape
    return module.out(z * y.transpose(1, 2).reshape(B, T, H * d))


def hand_rat(module, x):
    """The paper's equations, one (batch, head, token) at a time."""
    z, g, q, k, v = project(module, x)
    B, H, T, d = q.shape
    C = module.chunk
    y = torch.zeros(B, H, T, d)
    for b in range(B):
        for h in range(H):
            k_state, v_state = torch.zeros(T, d), torch.zeros(T, d)  # running state at each t
            for t in range(T):
                previous = (k_state[t - 1], v_state[t - 1]) if t % C else (torch.zeros(d), torch.zeros(d))
                k_state[t] = g[b, h, t] * previous[0] + (1 - g[b, h, t]) * k[b, h, t]
                v_state[t] = g[b, h, t] * previous[1] + (1 - g[b, h, t]) * v[b, h, t]
            for t in range(T):
                c = t // C
                sources = [(c2 * C + C - 1, c2) for c2 in range(c)] + [(t, c)]  # (state position, chunk)
                at = lambda u, p: rope(u[None, None, None], torch.tensor([p]))[0, 0, 0]  # noqa: E731
                scores = torch.stack([at(q[b, h, t], c) @ at(k_state[s], p) for s, p in sources]) / math.sqrt(d)
                w = torch.softmax(scores, 0)
                y[b, h, t] = sum(w_i * v_state[s] for w_i, (s, _) in zip(w, sources))
    return finish(module, z, y)


@pytest.mark.parametrize("chunk", [3, 5])
def test_rat_equals_the_equations_token_by_token(chunk):
    torch.manual_seed(0)
    module = einsearch.build(f"rat(heads=2, chunk={chunk})", 8)
    x = torch.randn(2, 13, 8)
    with torch.no_grad():
        torch.testing.assert_close(module(x), hand_rat(module, x))


def test_rat_chunk_one_is_softmax_attention_over_gated_tokens():
    """chunk = 1: each chunk state is the one token's ((1 − g) k, (1 − g) v), at its own position."""
    torch.manual_seed(0)
    module = einsearch.build("rat(heads=2, chunk=1)", 8)
    x = torch.randn(2, 10, 8)
    z, g, q, k, v = project(module, x)
    t = torch.arange(10)
    y = F.scaled_dot_product_attention(rope(q, t), rope((1 - g) * k, t), (1 - g) * v, is_causal=True)
    torch.testing.assert_close(module(x), finish(module, z, y))


def test_rat_single_chunk_is_a_gated_linear_recurrence():
    """chunk ≥ T: the only state a query sees is its own running value, y_t = ṽ_t."""
    torch.manual_seed(0)
    module = einsearch.build("rat(heads=2, chunk=16)", 8)
    x = torch.randn(2, 9, 8)
    z, g, q, k, v = project(module, x)
    h, states = torch.zeros_like(v[:, :, 0]), []
    for t in range(9):
        h = g[:, :, t] * h + (1 - g[:, :, t]) * v[:, :, t]
        states.append(h)
    torch.testing.assert_close(module(x), finish(module, z, torch.stack(states, 2)))


def test_rat_gate_starts_in_the_paper_range():
    chunk = 8
    module = einsearch.build(f"rat(heads=2, chunk={chunk})", 64)
    g = torch.sigmoid(module.gate_bias)  # gate at zero input
    assert g.min() >= 0.5 and g.max() <= (chunk - 1) / chunk
    assert g.std() > 0  # spread over the range, not one value


def test_rat_costs_by_hand():
    D, T, C = 8, 10, 3
    module = einsearch.build(f"rat(heads=2, chunk={C})", D)
    states_seen = sum(t // C + 1 for t in range(T))
    assert module.flops(T) == 2 * 6 * D * D * T + 4 * D * states_seen
    assert module.state_size(T) == 2 * D * (T // C + 1)
    one = einsearch.build("rat(heads=2, chunk=1)", D)  # scores and values of full causal attention
    assert one.flops(T) == 2 * 6 * D * D * T + 4 * D * T * (T + 1) / 2


def test_rat_rejects_odd_head_size():
    with pytest.raises(BuildError, match="even head size"):
        einsearch.build("rat(heads=2, chunk=4)", 6)
