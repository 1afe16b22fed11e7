"""Loads and stores of the tiles every kernel here uses (Triton helpers, inlined by the compiler).

Layouts: per-token rows of a contiguous (BH, T, D) tensor, and per-chunk states of a contiguous
(BH, N, K, V) tensor (N = 1 for a single state such as h0 or h_T).  Everything outside the masks
loads as zero and is not stored.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_rows(ptr, i_bh, t, mask_t, o_d, mask_d, T, D):
    """Rows t, columns o_d of the (BH, T, D) tensor at ptr, for batch·head i_bh: (BT, BD)."""
    return tl.load(ptr + (i_bh * T + t)[:, None] * D + o_d[None, :], mask=mask_t[:, None] & mask_d[None, :], other=0.0)


@triton.jit
def store_rows(ptr, value, i_bh, t, mask_t, o_d, mask_d, T, D):
    """Store a (BT, BD) tile into rows t, columns o_d of the (BH, T, D) tensor at ptr."""
    offsets = (i_bh * T + t)[:, None] * D + o_d[None, :]
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=mask_t[:, None] & mask_d[None, :])


@triton.jit
def load_state(ptr, index, o_k, mask_k, o_v, mask_v, K, V):
    """The (BK, BV) block of state number `index` of a (·, K, V) tensor, in float32."""
    offsets = index * K * V + o_k[:, None] * V + o_v[None, :]
    return tl.load(ptr + offsets, mask=mask_k[:, None] & mask_v[None, :], other=0.0).to(tl.float32)


@triton.jit
def store_state(ptr, value, index, o_k, mask_k, o_v, mask_v, K, V):
    """Store a (BK, BV) block as state number `index` of a (·, K, V) tensor."""
    offsets = index * K * V + o_k[:, None] * V + o_v[None, :]
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=mask_k[:, None] & mask_v[None, :])
