"""The diagonal linear recurrence (`scan(diag)`) in Triton: forward and backward.

Reference: `einsearch.ops.scan.scan_diag_chunked` (PyTorch, chunked) and
`naive_scan_diag` (the loop); `scan_diag_triton` has their signature and semantics:

    h_t[d, n] = exp(log_a_t[d, n]) · h_{t-1}[d, n] + x_t[d] · b_t[n] ;   y_t[d] = Σ_n c_t[n] · h_t[d, n]

x (B, T, D), log_a (B, T, D, N) with log_a ≤ 0, b, c (B, T, N), h0 (B, D, N) or None
-> y (B, T, D), h_T (B, D, N), in the dtype of x.

One program per (batch, block of channels) runs over time in chunks of BT steps, the state
(BD, N) carried in registers.  Inside a chunk the recurrence is an associative scan over time of
the affine maps h ↦ a_t h + x_t b_t with a_t = exp(log_a_t) ≤ 1, combined as
(a₁, u₁) ∘ (a₂, u₂) = (a₁a₂, a₂u₁ + u₂): only exponentials of log_a ≤ 0 and products of numbers
in [0, 1], so a strong decay underflows to 0 and nothing overflows (Blelloch 1990; Martin & Cundy
2018, "Parallelizing Linear Recurrent Neural Nets Over Sequence Length").  The forward stores the
state entering every chunk (float32, (B, chunks, D, N)) for the backward.

Backward, with dh_t the gradient of h_t through y_{≥t} and h_T:
    dh_t = c_t dy_t + a_{t+1} dh_{t+1}   (dh_{T-1} = c dy + dh_T)
    dx_t = Σ_n dh_t b_t,  db_t = Σ_d dh_t x_t,  dc_t = Σ_d h_t dy_t,
    dlog_a_t = dh_t ⊙ a_t h_{t-1} = dh_t ⊙ (h_t - x_t b_tᵀ),  dh0 = a_0 dh_0.
The reverse recurrence is the same scan run over rows loaded in reverse time order (the scan's
own `reverse=True` is not used: Triton's reverse scan has mis-ordered non-commutative combines,
triton-lang/triton#4362), and the result is put back in time order with `tl.gather`.
db and dc are summed over channel blocks in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from einsearch.kernels.tiles import load_rows, load_state, store_rows, store_state

CHUNK = 16
MAX_CHANNEL_BLOCK = 16
NUM_WARPS = 8  # with 4 the backward spills registers (ptxas, sm_90)


@triton.jit
def _compose(a_first, u_first, a_second, u_second):
    """Affine maps h ↦ a h + u, the earlier one first: the map of applying both."""
    return a_first * a_second, a_second * u_first + u_second


@triton.jit
def _row(x, rows, i):
    """Row i of a (BT, ...) tile as a (...) tile."""
    return tl.sum(tl.where(rows[:, None, None] == i, x, 0.0), 0)


@triton.jit
def _chunk_states(la, inputs, h_in):
    """h_t for every t of the chunk, (BT, BD, BN), from the state entering it (BD, BN)."""
    decay, local = tl.associative_scan((tl.exp(la), inputs), 0, _compose)
    return decay * h_in[None, :, :] + local


@triton.jit
def _load_decays(la_ptr, i_b, t, mask_t, o_d, mask_d, o_n, mask_n, T, D, N):
    """log_a[i_b, t, o_d, o_n] as a (BT, BD, BN) float32 tile (0 outside the masks: no decay)."""
    offsets = ((i_b * T + t)[:, None, None] * D + o_d[None, :, None]) * N + o_n[None, None, :]
    mask = mask_t[:, None, None] & mask_d[None, :, None] & mask_n[None, None, :]
    return tl.load(la_ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _scan_fwd(
    x_ptr, la_ptr, b_ptr, c_ptr, h0_ptr, hs_ptr, y_ptr, ht_ptr,
    T, D, N, NT,
    HAS_H0: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    i_d, i_b = tl.program_id(0), tl.program_id(1)
    o_t, o_d, o_n = tl.arange(0, BT), i_d * BD + tl.arange(0, BD), tl.arange(0, BN)
    mask_d, mask_n = o_d < D, o_n < N

    h = tl.zeros([BD, BN], dtype=tl.float32)
    if HAS_H0:
        h += load_state(h0_ptr, i_b, o_d, mask_d, o_n, mask_n, D, N)
    for i_t in range(NT):
        store_state(hs_ptr, h, i_b * NT + i_t, o_d, mask_d, o_n, mask_n, D, N)
        t = i_t * BT + o_t
        mask_t = t < T
        la = _load_decays(la_ptr, i_b, t, mask_t, o_d, mask_d, o_n, mask_n, T, D, N)
        x = load_rows(x_ptr, i_b, t, mask_t, o_d, mask_d, T, D).to(tl.float32)
        b = load_rows(b_ptr, i_b, t, mask_t, o_n, mask_n, T, N).to(tl.float32)
        c = load_rows(c_ptr, i_b, t, mask_t, o_n, mask_n, T, N).to(tl.float32)
        states = _chunk_states(la, x[:, :, None] * b[:, None, :], h)  # (BT, BD, BN)
        store_rows(y_ptr, tl.sum(states * c[:, None, :], 2), i_b, t, mask_t, o_d, mask_d, T, D)
        h = _row(states, o_t, BT - 1)  # padded steps (log_a = 0, x = 0) keep the last real state
    store_state(ht_ptr, h, i_b, o_d, mask_d, o_n, mask_n, D, N)


@triton.jit
def _scan_bwd(
    x_ptr, la_ptr, b_ptr, c_ptr, hs_ptr, dy_ptr, dht_ptr,
    dx_ptr, dla_ptr, db_ptr, dc_ptr, dh0_ptr,
    T, D, N, NT,
    HAS_DHT: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    """db, dc are written per channel block: (blocks, B, T, N), summed afterwards."""
    i_d, i_b = tl.program_id(0), tl.program_id(1)
    o_t, o_d, o_n = tl.arange(0, BT), i_d * BD + tl.arange(0, BD), tl.arange(0, BN)
    mask_d, mask_n = o_d < D, o_n < N
    flip = tl.broadcast_to((BT - 1 - o_t)[:, None, None], [BT, BD, BN])
    i_part = i_d * tl.num_programs(1) + i_b  # the (block, batch) row of the partial sums

    dh_after = tl.zeros([BD, BN], dtype=tl.float32)  # ∂L/∂h at the chunk's last step, through later steps
    if HAS_DHT:
        dh_after += load_state(dht_ptr, i_b, o_d, mask_d, o_n, mask_n, D, N)
    for i_rev in range(NT):
        i_t = NT - 1 - i_rev
        t = i_t * BT + o_t
        mask_t = t < T
        la = _load_decays(la_ptr, i_b, t, mask_t, o_d, mask_d, o_n, mask_n, T, D, N)
        x = load_rows(x_ptr, i_b, t, mask_t, o_d, mask_d, T, D).to(tl.float32)
        b = load_rows(b_ptr, i_b, t, mask_t, o_n, mask_n, T, N).to(tl.float32)
        dy = load_rows(dy_ptr, i_b, t, mask_t, o_d, mask_d, T, D).to(tl.float32)
        h_in = load_state(hs_ptr, i_b * NT + i_t, o_d, mask_d, o_n, mask_n, D, N)
        inputs = x[:, :, None] * b[:, None, :]
        states = _chunk_states(la, inputs, h_in)

        # dh_t = c_t dy_t + a_{t+1} dh_{t+1}, scanned over reversed rows r = BT-1-t: row r's map is
        # dh ↦ a_{t+1} dh + c_t dy_t (a_{t+1} of the next chunk's first step is already in dh_after).
        t_rev = i_t * BT + BT - 1 - o_t
        mask_rev = t_rev < T
        next_in_chunk = (o_t > 0) & (t_rev + 1 < T)
        la_next = _load_decays(la_ptr, i_b, t_rev + 1, next_in_chunk, o_d, mask_d, o_n, mask_n, T, D, N)
        c_rev = load_rows(c_ptr, i_b, t_rev, mask_rev, o_n, mask_n, T, N).to(tl.float32)
        dy_rev = load_rows(dy_ptr, i_b, t_rev, mask_rev, o_d, mask_d, T, D).to(tl.float32)
        decay, local = tl.associative_scan((tl.exp(la_next), dy_rev[:, :, None] * c_rev[:, None, :]), 0, _compose)
        dh = tl.gather(decay * dh_after[None, :, :] + local, flip, 0)  # back in time order

        store_rows(dx_ptr, tl.sum(dh * b[:, None, :], 2), i_b, t, mask_t, o_d, mask_d, T, D)
        store_rows(db_ptr, tl.sum(dh * x[:, :, None], 1), i_part, t, mask_t, o_n, mask_n, T, N)
        store_rows(dc_ptr, tl.sum(states * dy[:, :, None], 1), i_part, t, mask_t, o_n, mask_n, T, N)
        dla_offsets = ((i_b * T + t)[:, None, None] * D + o_d[None, :, None]) * N + o_n[None, None, :]
        dla_mask = mask_t[:, None, None] & mask_d[None, :, None] & mask_n[None, None, :]
        tl.store(dla_ptr + dla_offsets, dh * (states - inputs), mask=dla_mask)
        dh_after = _row(tl.exp(la) * dh, o_t, 0)  # ∂L/∂h entering the chunk
    store_state(dh0_ptr, dh_after, i_b, o_d, mask_d, o_n, mask_n, D, N)


def _blocks(T: int, D: int, N: int, block_t: int | None, block_d: int | None) -> tuple[int, int, int, int]:
    BT = block_t or CHUNK
    BD = block_d or min(MAX_CHANNEL_BLOCK, triton.next_power_of_2(D))
    BN = triton.next_power_of_2(N)
    return BT, BD, BN, triton.cdiv(T, BT)


class _ScanDiagFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, log_a, b, c, h0, block_t: int | None, block_d: int | None):
        B, T, D = x.shape
        N = b.shape[-1]
        BT, BD, BN, NT = _blocks(T, D, N, block_t, block_d)
        hs = x.new_empty(B, NT, D, N, dtype=torch.float32)
        ht = x.new_empty(B, D, N, dtype=torch.float32)
        y = torch.empty_like(x)
        h0_arg = ht if h0 is None else h0
        _scan_fwd[(triton.cdiv(D, BD), B)](
            x, log_a, b, c, h0_arg, hs, y, ht, T, D, N, NT,
            HAS_H0=h0 is not None, BT=BT, BD=BD, BN=BN, num_warps=NUM_WARPS,
        )  # fmt: skip
        ctx.save_for_backward(x, log_a, b, c, hs)
        ctx.has_h0, ctx.blocks = h0 is not None, (block_t, block_d)
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return y, ht.to(x.dtype)

    @staticmethod
    def backward(ctx, dy, dht):
        x, log_a, b, c, hs = ctx.saved_tensors
        B, T, D = x.shape
        N = b.shape[-1]
        BT, BD, BN, NT = _blocks(T, D, N, *ctx.blocks)
        blocks = triton.cdiv(D, BD)
        dx = torch.empty(B, T, D, device=x.device, dtype=torch.float32)
        dla = torch.empty(B, T, D, N, device=x.device, dtype=torch.float32)
        db = torch.empty(blocks, B, T, N, device=x.device, dtype=torch.float32)
        dc = torch.empty_like(db)
        dh0 = torch.empty(B, D, N, device=x.device, dtype=torch.float32)
        dht_arg = dh0 if dht is None else dht.contiguous()
        _scan_bwd[(blocks, B)](
            x, log_a, b, c, hs, dy.contiguous(), dht_arg, dx, dla, db, dc, dh0, T, D, N, NT,
            HAS_DHT=dht is not None, BT=BT, BD=BD, BN=BN, num_warps=NUM_WARPS,
        )  # fmt: skip
        return (
            dx.to(x.dtype),
            dla.to(log_a.dtype),
            db.sum(0).to(b.dtype),
            dc.sum(0).to(c.dtype),
            dh0.to(ctx.h0_dtype) if ctx.has_h0 else None,
            None,
            None,
        )


def scan_diag_triton(
    x: Tensor,
    log_a: Tensor,
    b: Tensor,
    c: Tensor,
    h0: Tensor | None = None,
    chunk: int | None = None,
    block_t: int | None = None,
    block_d: int | None = None,
) -> tuple[Tensor, Tensor]:
    """`scan_diag_chunked` in Triton (same arguments and results; `chunk` is the PyTorch form's
    and is ignored here; `block_t` and `block_d`, powers of two, override the kernel's chunk of
    time steps and its block of channels)."""
    inputs = [t.contiguous() for t in (x, log_a, b, c)]
    return _ScanDiagFunction.apply(*inputs, None if h0 is None else h0.contiguous(), block_t, block_d)
