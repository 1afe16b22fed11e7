"""Cost formulas against hand counts."""

import pytest
import torch

import einsearch


@pytest.mark.parametrize("d", [32, 64, 96])
def test_transformer_seed_parameter_count(d):
    # pre-norm block: 2 RMSNorm scales (d each), attention q,k,v,o (4 d²), SwiGLU with expand 4:
    # gate+up (d × 2·4d) and down (4d × d) = 12 d².  No biases.
    module = einsearch.build(einsearch.seeds["transformer"], d)
    assert einsearch.costs(module, 16).params == 16 * d * d + 2 * d


def test_mambaout_seed_parameter_count():
    d = 64
    # two linears into the gate (2 d²), depthwise conv k=4 with bias (4d + d), output linear (d²), RMSNorm (d)
    module = einsearch.build(einsearch.seeds["mambaout"], d)
    assert einsearch.costs(module, 16).params == 3 * d * d + 5 * d + d


def test_attention_flops_by_hand():
    d, T = 8, 5
    module = einsearch.build("attn(softmax, heads=2, pos=rope)", d)
    # projections 4 d² MACs per token; token t (0-based) attends to t+1 keys: q·k and p·v each d MACs per key
    keys = sum(t + 1 for t in range(T))
    assert module.flops(T) == 2 * (4 * d * d * T + 2 * d * keys)


def test_window_and_chunk_bound_the_keys():
    d = 8
    window = einsearch.build("attn(softmax, heads=2, window=3, pos=none)", d)
    chunk = einsearch.build("attn(softmax, heads=2, chunk=4, pos=none)", d)
    # keys seen per position, T = 6: window 3 -> 1,2,3,3,3,3 ; chunk 4 -> 1,2,3,4,1,2
    assert window.flops(6) == 2 * (4 * d * d * 6 + 2 * d * 15)
    assert chunk.flops(6) == 2 * (4 * d * d * 6 + 2 * d * 13)
    assert window.state_size(1000) == 2 * d * 3
    assert chunk.state_size(1000) == 2 * d * 4


def test_state_grows_for_full_attention_and_not_for_conv():
    full = einsearch.build("attn(softmax, heads=2, pos=rope)", 16)
    conv = einsearch.build("conv(k=4)", 16)
    assert full.state_size(100) == 2 * 16 * 100 and full.state_size(200) == 2 * full.state_size(100)
    assert conv.state_size(100) == conv.state_size(10_000) == 3 * 16


def test_mlp_and_par_cat_flops_by_hand():
    d = 16
    assert einsearch.build("mlp(expand=2, act=gelu)", d).flops(10) == 2 * (2 * 2 * d * d) * 10
    assert einsearch.build("mlp(expand=2, act=geglu)", d).flops(10) == 2 * (3 * 2 * d * d) * 10
    par = einsearch.build("par(linear(), linear(), linear(), agg=cat)", d)
    assert par.flops(10) == 2 * (3 * d * d + 3 * d * d) * 10
    assert einsearch.costs(par, 10).params == 3 * d * d + 3 * d * d


@pytest.mark.parametrize("d", [8, 24, 40])
def test_shapes_are_preserved_for_several_widths(d):
    arch = "seq(res(seq(norm(layer), attn(softmax, heads=2, chunk=4, pos=rope))), par(conv(k=3), shift(), agg=mul))"
    x = torch.randn(3, 11, d)
    assert einsearch.build(arch, d)(x).shape == x.shape


def test_heads_must_divide_width():
    with pytest.raises(einsearch.BuildError, match="heads=3 does not divide d_model=64"):
        einsearch.build("attn(softmax, heads=3, pos=rope)", 64)
    with pytest.raises(einsearch.BuildError, match="even head size"):
        einsearch.build("attn(softmax, heads=2, pos=rope)", 10)

