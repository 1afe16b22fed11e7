"""The mask builders of benchmarks/attention_masks.py against hand-written loops, and FlexAttention's
block masks against the dense masks (tiny T)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest
import torch

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "attention_masks.py"
spec = importlib.util.spec_from_file_location("attention_masks", PATH)
am = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = am  # dataclasses look their module up there
spec.loader.exec_module(am)


def loop_mask(T: int, sees) -> torch.Tensor:
    return torch.tensor([[bool(sees(i, j)) for j in range(T)] for i in range(T)])


def test_causal_and_window_masks_match_loops():
    T, W = 11, 3
    assert torch.equal(am.causal_mask(T), loop_mask(T, lambda i, j: j <= i))
    assert torch.equal(am.window_mask(T, W), loop_mask(T, lambda i, j: i - W < j <= i))


def test_document_mask_matches_loop():
    lengths = [3, 1, 5, 2]
    doc = [d for d, n in enumerate(lengths) for _ in range(n)]  # [0,0,0,1,2,2,2,2,2,3,3]
    expected = loop_mask(sum(lengths), lambda i, j: doc[i] == doc[j] and j <= i)
    assert torch.equal(am.document_mask(lengths), expected)
    assert am.document_ids(lengths).tolist() == doc


def test_document_lengths_fill_the_sequence():
    lengths = am.document_lengths(100, 4, seed=3)
    assert len(lengths) == 4 and sum(lengths) == 100 and min(lengths) >= 1
    assert lengths == am.document_lengths(100, 4, seed=3)


def test_topk_mask_matches_loop():
    """A query sees the blocks it chose and its own block up to itself; chosen by hand here."""
    T, block = 10, 3  # blocks {0,1,2} {3,4,5} {6,7,8}, and 9 in an unfinished block
    chosen = torch.zeros(1, 1, T, T // block, dtype=torch.bool)
    chosen[0, 0, 4, 0] = True  # query 4 (block 1) chose block 0
    chosen[0, 0, 7, 1] = True  # query 7 (block 2) chose block 1
    chosen[0, 0, 9, 0] = chosen[0, 0, 9, 2] = True  # query 9 (block 3) chose blocks 0 and 2
    picks = {4: {0}, 7: {1}, 9: {0, 2}}
    expected = loop_mask(T, lambda i, j: j // block in picks.get(i, set()) or (j // block == i // block and j <= i))
    assert torch.equal(am.topk_mask(chosen, block)[0, 0], expected)


def test_topk_mask_is_einsearch_module_mask():
    """The benchmark's topk_blocks mask is the one TopkBlockAttention builds (its own functions)."""
    from einsearch.primitives.sparse_attention import block_mask

    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 2, 20, 4)
    chosen = am.topk_chosen(q, k, block=4, topk=2)
    positions = torch.arange(20)
    assert torch.equal(am.topk_mask(chosen, 4), block_mask(chosen, positions, positions, 4))
    assert chosen.sum(-1).max() == 2  # at most k earlier blocks per query


@pytest.mark.parametrize("name", ["causal", "window", "topk_blocks", "document"])
def test_flex_block_mask_agrees_with_dense_mask(name, monkeypatch):
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    monkeypatch.setattr(am, "WINDOW", 20)
    monkeypatch.setattr(am, "BLOCK", 16)
    B, H, T, d, tile = 2, 2, 128, 4, 32
    torch.manual_seed(0)
    q, k = torch.randn(2, B, H, T, d)
    case = am.make_case(name, q, k)
    dense = case.dense.expand(B, H, T, T)
    b, h = (B, H) if case.per_head else (None, None)
    # the mask_mod, evaluated everywhere, is the dense mask
    elementwise = flex.create_mask(case.mod, b, h, T, T, device="cpu").expand(B, H, T, T)
    assert torch.equal(elementwise, dense)
    # the block mask: a tile is computed iff the dense mask has any True in it, and is "full"
    # (mask_mod skipped) only if all of it is True
    block_mask = flex.create_block_mask(case.mod, b, h, T, T, device="cpu", BLOCK_SIZE=tile)
    tiles = dense.reshape(B, H, T // tile, tile, T // tile, tile)
    any_, all_ = tiles.any(dim=(3, 5)), tiles.all(dim=(3, 5))  # (B, H, T/tile, T/tile)
    computed = block_mask.to_dense().bool().expand_as(any_)  # partial or full tiles
    assert torch.equal(computed, any_)
    n, index = block_mask.full_kv_num_blocks, block_mask.full_kv_indices
    full = torch.zeros_like(any_)
    for bi in range(B):
        for hi in range(H):
            for row in range(T // tile):
                for c in index[bi % n.shape[0], hi % n.shape[1], row, : n[bi % n.shape[0], hi % n.shape[1], row]]:
                    full[bi, hi, row, c] = True
    assert torch.equal(full, all_)
