"""Issue-2 primitives and combinators under the shared contract, plus their hand-checked costs."""

import torch

import einsearch
from tests.contract import PrimitiveContract


class TestMLP(PrimitiveContract):
    arch = "mlp(expand=2, act=gelu)"
    constant_state = True


class TestMLPSwiGLU(PrimitiveContract):
    arch = "mlp(expand=3, act=swiglu)"
    constant_state = True


class TestNormRMS(PrimitiveContract):
    arch = "norm(rms)"
    constant_state = True


class TestNormLayer(PrimitiveContract):
    arch = "norm(layer)"
    constant_state = True


class TestLinear(PrimitiveContract):
    arch = "linear()"
    constant_state = True


class TestActRelu2(PrimitiveContract):
    arch = "seq(linear(), act(relu2))"
    constant_state = True


class TestConv(PrimitiveContract):
    arch = "conv(k=4)"
    constant_state = True


class TestShift(PrimitiveContract):
    arch = "shift()"
    constant_state = True


class TestSoftmaxAttention(PrimitiveContract):
    arch = "attn(softmax, heads=2, pos=rope)"
    constant_state = False


class TestSoftmaxAttentionNoPos(PrimitiveContract):
    arch = "attn(softmax, heads=4, pos=none)"
    constant_state = False


class TestWindowAttention(PrimitiveContract):
    arch = "attn(softmax, heads=2, window=4, pos=rope)"
    constant_state = True


class TestChunkAttention(PrimitiveContract):
    arch = "attn(softmax, heads=2, chunk=5, pos=none)"
    constant_state = True


class TestWindowChunkAttention(PrimitiveContract):
    arch = "attn(softmax, heads=2, window=3, chunk=6, pos=rope)"
    constant_state = True


class TestSeqRes(PrimitiveContract):
    arch = "seq(res(conv(k=3)), res(mlp(expand=1, act=relu)))"
    constant_state = True


class TestParAdd(PrimitiveContract):
    arch = "par(conv(k=2), linear(), agg=add)"


class TestParMul(PrimitiveContract):
    arch = "par(shift(), linear(), agg=mul)"


class TestParCat(PrimitiveContract):
    arch = "par(attn(softmax, heads=2, pos=rope), conv(k=3), linear(), agg=cat)"


class TestGate(PrimitiveContract):
    arch = "gate(conv(k=3), linear(), fn=silu)"


class TestGateSigmoid(PrimitiveContract):
    arch = "gate(attn(softmax, heads=2, window=3, pos=none), shift(), fn=sigmoid)"


class TestRepeat(PrimitiveContract):
    arch = "repeat(res(seq(norm(rms), attn(softmax, heads=2, pos=rope))), n=3)"
    constant_state = False


class TestTransformerSeed(PrimitiveContract):
    arch = einsearch.seeds["transformer"].text
    constant_state = False


class TestMambaOutSeed(PrimitiveContract):
    arch = einsearch.seeds["mambaout"].text
    constant_state = True


# ---------------------------------------------------------------- references for the equations


def test_attention_matches_explicit_softmax():
    """SDPA with RoPE against softmax(q kᵀ/√d + causal mask) v written out by hand."""
    torch.manual_seed(0)
    module = einsearch.build("attn(softmax, heads=2, window=3, pos=none)", 8)
    x = torch.randn(1, 7, 8)
    q, k, v = module.qkv(x).view(1, 7, 3, 2, 4).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / 2.0  # √4
    t = torch.arange(7)
    allowed = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - 3)
    y = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v
    expected = module.out(y.transpose(1, 2).reshape(1, 7, 8))
    torch.testing.assert_close(module(x), expected)


def test_rope_is_relative():
    """RoPE: q(m)·k(n) depends only on m - n."""
    from einsearch.primitives.attention import rope

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    dot = lambda m, n: (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum()  # noqa: E731
    torch.testing.assert_close(dot(5, 2), dot(13, 10))
    assert not torch.allclose(dot(5, 2), dot(5, 4))


def test_conv_matches_explicit_sum():
    torch.manual_seed(0)
    module = einsearch.build("conv(k=3)", 4)
    x = torch.randn(1, 6, 4)
    w, b = module.conv.weight[:, 0], module.conv.bias  # (D, k), (D,)
    padded = torch.cat([torch.zeros(1, 2, 4), x], 1)
    expected = torch.stack([b + (padded[0, t : t + 3] * w.T).sum(0) for t in range(6)])[None]
    torch.testing.assert_close(module(x), expected)


def test_repeat_shares_weights():
    once = einsearch.build("res(mlp(expand=2, act=gelu))", 16)
    thrice = einsearch.build("repeat(res(mlp(expand=2, act=gelu)), n=3)", 16)
    assert einsearch.costs(thrice, 8).params == einsearch.costs(once, 8).params
    assert einsearch.costs(thrice, 8).flops_per_token == 3 * einsearch.costs(once, 8).flops_per_token
