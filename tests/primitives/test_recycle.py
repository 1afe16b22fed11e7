"""Recycled attention (Xu, Goyal & Choi 2024) when stepping softmax attention: against ordinary
stepping where they must agree, and against a naive loop written here (full softmax on full steps,
torch.topk of its weights, a masked softmax on the others)."""

import math

import pytest
import torch

import einsearch
from einsearch.primitives.attention import Recycle, SoftmaxAttention, recycle

B, T, D, HEADS = 2, 13, 8, 2


def attention(pos: str = "rope", window: int | None = None) -> SoftmaxAttention:
    torch.manual_seed(0)
    return SoftmaxAttention(D, HEADS, pos, window=window)


def inputs() -> torch.Tensor:
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def stepped(module: torch.nn.Module, x: torch.Tensor, state=None) -> tuple[torch.Tensor, list]:
    """Outputs (B, T, D) of stepping x through the module, and the state after each step."""
    state = module.init_state(x.shape[0]) if state is None else state
    ys, states = [], []
    for t in range(x.shape[1]):
        y, state = module.step(x[:, t], state)
        ys.append(y)
        states.append(state)
    return torch.stack(ys, 1), states


def rope_rotation(x: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, d) with each pair (x_i, x_{i+d/2}) at position t turned by the angle t·10000^(-2i/d)."""
    d = x.shape[-1]
    angle = torch.arange(x.shape[1])[:, None] * 10000.0 ** (-torch.arange(0, d, 2) / d)  # (T, d/2)
    z = torch.complex(x[..., : d // 2], x[..., d // 2 :]) * torch.polar(torch.ones_like(angle), angle)[:, None]
    return torch.cat([z.real, z.imag], -1)


def heads(module: SoftmaxAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = (x @ module.qkv.weight.T).view(B, T, 3, HEADS, D // HEADS).unbind(2)  # (B, T, H, d)
    if module.pos == "rope":
        q, k = rope_rotation(q), rope_rotation(k)
    return q, k, v


def naive_recycled(module: SoftmaxAttention, x: torch.Tensor, stride: int, keep: int) -> tuple[torch.Tensor, dict]:
    """The paper's schedule, one step at a time: outputs (B, T, D) and {full step: kept indices (B, H, K)}."""
    q, k, v = heads(module, x)
    ys, kept_at = [], {}
    for t in range(T):
        scores = torch.einsum("bhd,bshd->bhs", q[:, t], k[:, : t + 1]) / math.sqrt(D // HEADS)  # (B, H, t+1)
        if t % stride == 0:  # full step: attend to everything, remember the top-K weights
            visible = torch.ones_like(scores, dtype=torch.bool)
            kept_at[t] = torch.topk(scores.softmax(-1), min(keep, t + 1), dim=-1).indices
            last_full = t
        else:  # recycled step: the kept keys and those since the full step
            visible = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, kept_at[last_full], True)
            visible[..., last_full + 1 :] = True
        weights = scores.masked_fill(~visible, -math.inf).softmax(-1)
        ys.append(torch.einsum("bhs,bshd->bhd", weights, v[:, : t + 1]).reshape(B, D))
    return module.out(torch.stack(ys, 1)), kept_at


def test_keep_at_least_the_length_equals_ordinary_stepping():
    module, x = attention(), inputs()
    ordinary, _ = stepped(module, x)
    with recycle(module, stride=3, keep=T):
        recycled, _ = stepped(module, x)
    assert torch.equal(recycled, ordinary)


def test_stride_one_equals_ordinary_stepping():
    module, x = attention(), inputs()
    ordinary, _ = stepped(module, x)
    with recycle(module, stride=1, keep=2):
        recycled, _ = stepped(module, x)
    assert torch.equal(recycled, ordinary)


@pytest.mark.parametrize("pos", ["rope", "none"])
def test_equals_a_naive_loop(pos):
    module, x = attention(pos), inputs()
    with torch.no_grad():
        expected, _ = naive_recycled(module, x, stride=3, keep=4)
        with recycle(module, stride=3, keep=4):
            got, _ = stepped(module, x)
        ordinary, _ = stepped(module, x)
    assert close(got, expected)
    assert not torch.allclose(got, ordinary, atol=1e-3)  # recycling did change something


def test_kept_keys_are_the_top_k_of_the_full_steps_weights():
    module, x = attention(), inputs()
    with torch.no_grad():
        _, kept_at = naive_recycled(module, x, stride=3, keep=4)
        with recycle(module, stride=3, keep=4):
            _, states = stepped(module, x)
    assert sorted(kept_at) == [0, 3, 6, 9, 12]
    for t, topk in kept_at.items():
        kept, since = states[t][3:]
        assert since == 0
        assert torch.equal(kept, topk.sort(-1).values)


def test_recent_choice_with_stride_one_is_a_sliding_window():
    module, windowed, x = attention(), attention(window=4), inputs()
    windowed.load_state_dict(module.state_dict())
    with torch.no_grad(), recycle(module, stride=1, keep=4, choose="recent"):
        got, states = stepped(module, x)
    assert close(got, windowed(x))
    assert torch.equal(states[-1][3][0, 0], torch.arange(T - 4, T))


def test_a_state_from_ordinary_stepping_continues_with_a_full_step():
    module, x = attention(), inputs()
    with torch.no_grad():
        ordinary, states = stepped(module, x)
        with recycle(module, stride=4, keep=1):  # the paper's setting: prompt in full, then recycled generation
            first, _ = stepped(module, x[:, 5:6], states[4])
    assert close(first[:, 0], ordinary[:, 5])


def test_the_context_sets_full_attention_in_a_model_and_restores_it():
    text = "seq(attn(softmax, heads=2, pos=rope), attn(softmax, heads=2, window=3, pos=none))"
    block = einsearch.build(einsearch.parse(text), D)
    full, windowed = [m for m in block.modules() if isinstance(m, SoftmaxAttention)]
    x = inputs()
    with torch.no_grad():
        ordinary, _ = stepped(block, x)
        with einsearch.recycle(block, stride=1, keep=1) as setting:
            assert full.recycling == setting == Recycle(1, 1) and windowed.recycling is None
            recycled, _ = stepped(block, x)
            assert torch.equal(block(x), block(x))  # forward is untouched
    assert full.recycling is None
    assert close(recycled, ordinary)


def test_window_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="no full-context attention"):
        with recycle(attention(window=4), stride=2, keep=2):
            pass
    module = attention(window=4)
    module.recycling = Recycle(2, 2)
    with pytest.raises(ValueError, match="window or chunk"):
        module.step(inputs()[:, 0], module.init_state(B))
    with pytest.raises(ValueError, match="at least 1"):
        Recycle(0, 4)
    with pytest.raises(ValueError, match="choose"):
        Recycle(2, 4, choose="random")
