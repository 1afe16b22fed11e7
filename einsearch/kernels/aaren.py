"""Aaren's prefix softmax (the (m, u, w) scan) in Triton: forward and backward.

Reference: `einsearch.ops.aaren.aaren_chunked` (PyTorch, chunked) and `naive_aaren` (the
combine applied token by token); `aaren_triton` has their signature and semantics:

    o_t = Σ_{i≤t} exp(s_i - m_t) v_i / Σ_{i≤t} exp(s_i - m_t),   m_t = max_{i≤t} s_i

s (B, H, T), v (B, H, T, E) -> o (B, H, T, E) in the dtype of v (Feng et al. 2024, "Attention as
a Recurrent Neural Network").

Forward: one program per batch·head runs over chunks of BT tokens carrying the summary (m, u, w)
of everything before the chunk.  Inside the chunk the running maximum m_t (over the carried m
and the chunk's scores up to t) comes from a masked (BT, BT) max, P_ti = exp(s_i - m_t) [i ≤ t],
u_t = P V + exp(m - m_t) u, w_t = Σ_i P_ti + exp(m - m_t) w: every exponent ≤ 0.  It also stores
the log-normaliser L_t = m_t + log w_t, so that the attention weight of i at t is exp(s_i - L_t).

Backward, with a_ti = exp(s_i - L_t) (i ≤ t) and δ_t = do_t · o_t:
    dv_i = Σ_{t≥i} a_ti do_t,   ds_i = v_i · dv_i - Σ_{t≥i} a_ti δ_t.
One program per batch·head runs over chunks in reverse, carrying Z = Σ_{t later} exp(L_ref - L_t) do_t
and ζ = Σ_{t later} exp(L_ref - L_t) δ_t with L_ref the L of the first later token.  L only grows
with t and s_i ≤ L_i, so for i in the current chunk exp(s_i - L_ref) ≤ 1 and exp(L_ref - L_t) ≤ 1:
the split a_ti = exp(s_i - L_ref) exp(L_ref - L_t) never overflows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from einsearch.kernels.tiles import load_rows, store_rows

CHUNK = 64
NUM_WARPS = 8  # with 4 the backward spills registers (ptxas, sm_90)


@triton.jit
def _aaren_fwd(
    s_ptr, v_ptr, o_ptr, lse_ptr,
    T, E, NT,
    BT: tl.constexpr, BE: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    o_t, o_e = tl.arange(0, BT), tl.arange(0, BE)
    mask_e = o_e < E
    causal = o_t[:, None] >= o_t[None, :]

    m = tl.full([1], float("-inf"), dtype=tl.float32)  # the summary of the tokens before the chunk
    u = tl.zeros([1, BE], dtype=tl.float32)
    w = tl.zeros([1], dtype=tl.float32)
    for i_t in range(NT):
        t = i_t * BT + o_t
        mask_t = t < T
        s = tl.load(s_ptr + i_bh * T + t, mask=mask_t, other=float("-inf")).to(tl.float32)
        v = load_rows(v_ptr, i_bh, t, mask_t, o_e, mask_e, T, E)
        running_max = tl.maximum(tl.max(tl.where(causal, s[None, :], float("-inf")), 1), m)  # (BT,)
        p = tl.where(causal, tl.exp(tl.minimum(s[None, :] - running_max[:, None], 0.0)), 0.0)  # (BT, BT)
        carried = tl.exp(m - running_max)  # (BT,); 0 while m = -inf
        u_t = tl.dot(p.to(v.dtype), v) + carried[:, None] * u
        w_t = tl.sum(p, 1) + carried * w
        o = u_t / w_t[:, None]
        store_rows(o_ptr, o, i_bh, t, mask_t, o_e, mask_e, T, E)
        tl.store(lse_ptr + i_bh * T + t, running_max + tl.log(w_t), mask=mask_t)
        last = o_t[:, None] == BT - 1  # padded tokens (s = -inf) leave the summary unchanged
        m = tl.sum(tl.where(last, running_max[:, None], 0.0), 0)
        u = tl.sum(tl.where(last, u_t, 0.0), 0)[None, :]
        w = tl.sum(tl.where(last, w_t[:, None], 0.0), 0)


@triton.jit
def _aaren_bwd(
    s_ptr, v_ptr, o_ptr, lse_ptr, do_ptr, ds_ptr, dv_ptr,
    T, E, NT,
    BT: tl.constexpr, BE: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    o_t, o_e = tl.arange(0, BT), tl.arange(0, BE)
    mask_e = o_e < E
    causal = o_t[:, None] >= o_t[None, :]  # (t, i): i ≤ t

    lse_ref = tl.full([1], float("inf"), dtype=tl.float32)  # exp(· - inf) = 0 while nothing is carried
    z = tl.zeros([1, BE], dtype=tl.float32)
    zeta = tl.zeros([1], dtype=tl.float32)
    for i_rev in range(NT):
        i_t = NT - 1 - i_rev
        t = i_t * BT + o_t
        mask_t = t < T
        s = tl.load(s_ptr + i_bh * T + t, mask=mask_t, other=float("-inf")).to(tl.float32)
        lse = tl.load(lse_ptr + i_bh * T + t, mask=mask_t, other=float("inf"))
        v = load_rows(v_ptr, i_bh, t, mask_t, o_e, mask_e, T, E).to(tl.float32)
        o = load_rows(o_ptr, i_bh, t, mask_t, o_e, mask_e, T, E).to(tl.float32)
        do = load_rows(do_ptr, i_bh, t, mask_t, o_e, mask_e, T, E)
        delta = tl.sum(do.to(tl.float32) * o, 1)  # (BT,)

        weights = tl.where(causal, tl.exp(tl.minimum(s[None, :] - lse[:, None], 0.0)), 0.0)  # a_ti, (t, i)
        to_later = tl.exp(tl.minimum(s - lse_ref, 0.0))  # (BT,): exp(s_i - L_ref)
        dv = tl.dot(tl.trans(weights).to(do.dtype), do) + to_later[:, None] * z
        ds = tl.sum(v * dv, 1) - tl.sum(weights * delta[:, None], 0) - to_later * zeta
        store_rows(dv_ptr, dv, i_bh, t, mask_t, o_e, mask_e, T, E)
        tl.store(ds_ptr + i_bh * T + t, ds, mask=mask_t)

        new_ref = tl.sum(tl.where(o_t == 0, lse, 0.0), 0)  # L of the chunk's first token
        rescale = tl.exp(tl.minimum(new_ref - lse, 0.0))  # (BT,); 0 for padded tokens (L = inf)
        carried = tl.exp(new_ref - lse_ref)
        z = carried * z + tl.sum(rescale[:, None] * do.to(tl.float32), 0)[None, :]
        zeta = carried * zeta + tl.sum(rescale * delta, 0)
        lse_ref = tl.zeros([1], dtype=tl.float32) + new_ref


def _blocks(T: int, E: int, block_t: int | None) -> tuple[int, int, int]:
    BT = block_t or CHUNK
    return BT, max(16, triton.next_power_of_2(E)), triton.cdiv(T, BT)


class _AarenFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, v, block_t: int | None):
        BH, T, E = v.shape
        BT, BE, NT = _blocks(T, E, block_t)
        o = torch.empty_like(v)
        lse = torch.empty(BH, T, device=v.device, dtype=torch.float32)
        _aaren_fwd[(BH,)](s, v, o, lse, T, E, NT, BT=BT, BE=BE, num_warps=NUM_WARPS)
        ctx.save_for_backward(s, v, o, lse)
        ctx.block_t = block_t
        return o

    @staticmethod
    def backward(ctx, do):
        s, v, o, lse = ctx.saved_tensors
        BH, T, E = v.shape
        BT, BE, NT = _blocks(T, E, ctx.block_t)
        ds = torch.empty(BH, T, device=v.device, dtype=torch.float32)
        dv = torch.empty(BH, T, E, device=v.device, dtype=torch.float32)
        _aaren_bwd[(BH,)](s, v, o, lse, do.contiguous(), ds, dv, T, E, NT, BT=BT, BE=BE, num_warps=NUM_WARPS)
        return ds.to(s.dtype), dv.to(v.dtype), None


def aaren_triton(s: Tensor, v: Tensor, chunk: int | None = None, block_t: int | None = None) -> Tensor:
    """`aaren_chunked` in Triton (same arguments and result; `chunk` is the PyTorch form's and is
    ignored here; `block_t`, a power of two ≥ 16, overrides the kernel's chunk)."""
    B, H, T, E = v.shape
    o = _AarenFunction.apply(s.reshape(B * H, T).contiguous(), v.reshape(B * H, T, E).contiguous(), block_t)
    return o.view(B, H, T, E)
