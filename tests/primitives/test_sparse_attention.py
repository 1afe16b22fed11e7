"""Routing attention and top-k block attention: the shared contract, plus hand-written truths."""

import math

import pytest
import torch
import torch.nn.functional as F

import einsearch
from tests.contract import PrimitiveContract


class _Eval:
    """Routing attention moves its centroids in training mode; the contract compares calls, so
    it runs in eval mode (frozen centroids)."""

    def build(self, d_model=None, seed=0):
        return super().build(d_model, seed).eval()


class TestRouting(_Eval, PrimitiveContract):
    arch = "attn(routing, heads=2, clusters=3)"
    constant_state = False


class TestRoutingManyClusters(_Eval, PrimitiveContract):
    arch = "attn(routing, heads=4, clusters=16)"
    constant_state = False


class TestTopkBlocks(PrimitiveContract):
    arch = "attn(topk_blocks, heads=2, block=3, k=2)"
    constant_state = False


class TestTopkBlocksLong(PrimitiveContract):
    arch = "attn(topk_blocks, heads=2, block=5, k=3)"
    seq_len = 63
    constant_state = False


class TestTopkBlocksOne(PrimitiveContract):
    arch = "attn(topk_blocks, heads=4, block=1, k=1)"
    constant_state = False


# ---------------------------------------------------------------------------- routing attention


def heads(t, B, T, H):
    return t.view(B, T, H, -1).transpose(1, 2)  # (B, H, T, d)


def hand_routing(module, x):
    """softmax(r rᵀ/√d + mask) v with clusters from the L2 distance to each centroid."""
    B, T, D = x.shape
    H = module.heads
    r, v = (heads(t, B, T, H) for t in module.rv(x).split(D, -1))
    r_unit = r / r.norm(dim=-1, keepdim=True)
    distance = ((r_unit[..., None, :] - module.centroids[None, :, None]) ** 2).sum(-1)  # (B, H, T, K)
    cluster = distance.argmin(-1)  # (B, H, T)
    t = torch.arange(T)
    allowed = (t[None, :] <= t[:, None]) & (cluster[..., :, None] == cluster[..., None, :])
    scores = (r @ r.transpose(-1, -2) / math.sqrt(D // H)).masked_fill(~allowed, float("-inf"))
    y = torch.softmax(scores, -1) @ v
    return module.out(y.transpose(1, 2).reshape(B, T, D)), allowed


def test_routing_equals_hand_masked_softmax():
    torch.manual_seed(0)
    module = einsearch.build("attn(routing, heads=2, clusters=3)", 8).eval()
    x = torch.randn(2, 11, 8)
    expected, allowed = hand_routing(module, x)
    causal = torch.ones(11, 11).tril().bool()
    # the mask really is sparse (some earlier keys are cut) and not only the diagonal
    assert (allowed.sum(-1) < causal.sum(-1)).any()
    assert (allowed.sum(-1) > 1).any()
    torch.testing.assert_close(module(x), expected)


def test_routing_lone_queries_see_only_themselves():
    """Centroids placed on each position's own r̂: every position is alone in its cluster, so it
    attends only to itself (the diagonal) and the output is out(v_t)."""
    torch.manual_seed(0)
    T, D, H = 6, 8, 2
    module = einsearch.build(f"attn(routing, heads={H}, clusters={T})", D).eval()
    x = torch.randn(1, T, D)
    r, v = (heads(t, 1, T, H) for t in module.rv(x).split(D, -1))
    module.centroids.copy_(F.normalize(r[0], dim=-1).detach())  # (H, T, d)
    expected = module.out(v.transpose(1, 2).reshape(1, T, D))
    torch.testing.assert_close(module(x), expected)


def test_routing_one_cluster_is_causal_attention_with_shared_query_key():
    torch.manual_seed(0)
    module = einsearch.build("attn(routing, heads=2, clusters=1)", 8)
    x = torch.randn(2, 9, 8)
    r, v = (heads(t, 2, 9, 2) for t in module.rv(x).split(8, -1))
    y = F.scaled_dot_product_attention(r, r, v, is_causal=True)
    torch.testing.assert_close(module.eval()(x), module.out(y.transpose(1, 2).reshape(2, 9, 8)))


def test_routing_centroids_follow_ema_in_training_and_freeze_in_eval():
    torch.manual_seed(0)
    module = einsearch.build("attn(routing, heads=2, clusters=3)", 8)
    x = torch.randn(2, 10, 8)
    before = module.centroids.clone()
    with torch.no_grad():
        expected_y, _ = hand_routing(module, x)  # with the centroids before the update
        r = heads(module.rv(x)[..., :8], 2, 10, 2)
        r_unit = F.normalize(r, dim=-1)
        cluster = module.assign(r)
        expected = before.clone()
        for h in range(2):
            for k in range(3):
                members = r_unit[:, h][cluster[:, h] == k]  # (n, d)
                if len(members):
                    moved = 0.999 * before[h, k] + 0.001 * members.mean(0)
                    expected[h, k] = moved / moved.norm()
        module.train()(x)  # training mode under no_grad (e.g. validation): centroids stay
    assert torch.equal(module.centroids, before)
    y = module.train()(x)  # a training pass: output with the old centroids, then the update
    torch.testing.assert_close(y, expected_y)
    torch.testing.assert_close(module.centroids, expected)
    assert not torch.equal(module.centroids, before)
    trained = module.centroids.clone()
    module.eval()(x)  # eval mode, autograd on: centroids stay
    module.train().step(x[:, 0], module.init_state(2))  # step never moves centroids
    assert torch.equal(module.centroids, trained)


def test_routing_training_passes_are_causal():
    """Training-mode passes move the centroids between calls, but each output only uses the
    centroids from before the call: the causality probe still passes in training mode."""
    torch.manual_seed(0)
    module = einsearch.build("attn(routing, heads=2, clusters=2)", 8).train()
    before = module.centroids.clone()
    assert einsearch.check_causal(module, 8, seq_len=12).causal
    assert not torch.equal(module.centroids, before)  # the probe's gradient passes did train them


def test_routing_flops_are_the_expected_sparse_count():
    D, T, K = 16, 32, 4
    module = einsearch.build(f"attn(routing, heads=2, clusters={K})", D)
    pairs = T + T * (T - 1) / (2 * K)  # self + 1/K of the earlier keys, in expectation
    assert module.flops(T) == 2 * 3 * D * D * T + 2 * D * K * T + 4 * D * pairs
    dense = einsearch.build("attn(routing, heads=2, clusters=1)", D)
    assert dense.flops(T) == 2 * 3 * D * D * T + 2 * D * T + 4 * D * T * (T + 1) / 2


# ---------------------------------------------------------------------------- top-k block attention


def hand_topk_blocks(module, x):
    """Per query, in plain Python: score each earlier block's mean key, sort, keep the top k."""
    B, T, D = x.shape
    H, Bk, k = module.heads, module.block, module.k
    d = D // H
    q, kk, v = (heads(t, B, T, H) for t in module.qkv(x).split(D, -1))
    y = torch.zeros(B, H, T, d)
    chose_fewer_than_all = False
    for b in range(B):
        for h in range(H):
            for t in range(T):
                own = t // Bk
                scores = []
                for j in range(own):
                    summary = kk[b, h, j * Bk : (j + 1) * Bk].mean(0)
                    scores.append((float(q[b, h, t] @ summary), j))
                picked = [j for _, j in sorted(scores, reverse=True)[:k]]
                chose_fewer_than_all |= len(picked) < own
                keys = [s for j in picked for s in range(j * Bk, (j + 1) * Bk)] + list(range(own * Bk, t + 1))
                w = torch.softmax(torch.stack([q[b, h, t] @ kk[b, h, s] for s in keys]) / math.sqrt(d), 0)
                y[b, h, t] = sum(w_i * v[b, h, s] for w_i, s in zip(w, keys))
    assert chose_fewer_than_all  # the selection really discards blocks
    return module.out(y.transpose(1, 2).reshape(B, T, D))


@pytest.mark.parametrize("arch", ["attn(topk_blocks, heads=2, block=3, k=2)", "attn(topk_blocks, heads=1, block=2, k=1)"])
def test_topk_blocks_equals_explicit_per_query_loop(arch):
    torch.manual_seed(0)
    module = einsearch.build(arch, 8)
    x = torch.randn(2, 14, 8)
    with torch.no_grad():
        torch.testing.assert_close(module(x), hand_topk_blocks(module, x))


def test_topk_blocks_with_k_above_the_block_count_is_causal_attention():
    torch.manual_seed(0)
    module = einsearch.build("attn(topk_blocks, heads=2, block=3, k=9)", 8)
    x = torch.randn(2, 13, 8)  # 4 completed blocks < k
    q, k, v = (heads(t, 2, 13, 2) for t in module.qkv(x).split(8, -1))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(module(x), module.out(y.transpose(1, 2).reshape(2, 13, 8)))


def test_topk_blocks_flops_and_state_by_hand():
    D, T, B, k = 8, 11, 3, 2
    module = einsearch.build(f"attn(topk_blocks, heads=2, block={B}, k={k})", D)
    keys_seen = candidates = 0
    for t in range(T):
        own = t // B
        candidates += own
        keys_seen += min(k, own) * B + (t - own * B + 1)
    assert module.flops(T) == 2 * 4 * D * D * T + 2 * D * candidates + 4 * D * keys_seen
    assert module.state_size(T) == 2 * D * T + D * (T // B)
