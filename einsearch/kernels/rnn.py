"""A fused step loop for `rnn(lstm|gru)` in Triton (FlashRNN-style): forward and backward.

Reference: `einsearch.ops.rnn.naive_rnn_states`, the loop over time of the cell functions
(`einsearch.ops.rnn.lstm_cell` / `gru_cell`); `rnn_states_triton` has its signature and semantics:

    u (B, T, H, G·d)   input pre-activations of every gate (input bias included)
    R (H, d, G·d)      recurrent weights per head (already masked by the wiring), b (H, G·d)
    s0 (B, H, S)       the initial state (S = 2d for lstm: [h, c]; d for gru: h), or None for zeros
    -> states (B, T, H, S), the state after every step, in the dtype of u.

lstm (torch.nn.LSTM, gates i, f, g, o):  c_t = σ(f) c_{t-1} + σ(i) tanh(g),  h_t = σ(o) tanh(c_t)
gru (torch.nn.GRU, gates r, z, n):  n = tanh(u_n + σ(r) ⊙ (R_n h + b_n)),  h_t = (1 - σ(z)) n + σ(z) h_{t-1}
with every gate pre-activation u + R h + b.

As in FlashRNN (Pöppel et al. 2024, "FlashRNN: Optimizing Traditional RNNs on Modern Hardware")
one program owns one head and a block of 16 sequences for the whole loop over time: the head's
recurrent weights, one (d, d) tile per gate, are loaded once and stay on-chip, and each step is
G small matrix products (16, d) × (d, d) plus the pointwise cell.  This pays for small heads
(d ≤ 64); float32 products are exact ("ieee"), not TF32, since errors compound over the steps.

Backward (back-propagation through time, one program per head and sequence block, in reverse):
the gradient of every gate pre-activation at t is formed from the stored states and the
recomputed gates; the recurrent chain takes dh_{t-1} = Σ_gates dpre_gate R_gateᵀ (+ the direct
paths through c or z).  The kernel returns the gradient of u and of the recurrent pre-activation
(R h + b, which differs from u's for gru's n gate: σ(r) ⊙ dpre_n); dR = Σ_{b,t} h_{t-1}ᵀ drec_t
and db = Σ_{b,t} drec_t are then single PyTorch matrix products over the whole sequence.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

LSTM, GRU = 0, 1
CELLS = {"lstm": LSTM, "gru": GRU}
GATES = {LSTM: 4, GRU: 3}
COMPONENTS = {LSTM: 2, GRU: 1}
SEQUENCE_BLOCK = 16  # rows of one tl.dot: the sequences a program steps together


@triton.jit
def _tanh(x):
    """tanh without overflow: sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) ≤ 1."""
    e = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, y, -y)


@triton.jit
def _gate_tile(r_ptr, i_h, gate, o_d, mask_dd, D, G):
    """R[h, :, gate·d : (gate+1)·d] as a (BD, BD) tile."""
    return tl.load(r_ptr + i_h * D * G * D + o_d[:, None] * G * D + gate * D + o_d[None, :], mask=mask_dd, other=0.0)


@triton.jit
def _gate_in(u_ptr, row, gate, o_d, mask_bd, D, G):
    """u[row, gate·d : (gate+1)·d] for a block of rows: (BB, BD) float32."""
    return tl.load(u_ptr + row[:, None] * G * D + gate * D + o_d[None, :], mask=mask_bd, other=0.0).to(tl.float32)


@triton.jit
def _bias(b_ptr, i_h, gate, o_d, mask_d, D, G):
    return tl.load(b_ptr + i_h * G * D + gate * D + o_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _recur(h, r_tile, PRECISION: tl.constexpr):
    """h R_gate: (BB, BD) float32 × (BD, BD) -> (BB, BD) float32."""
    return tl.dot(h.to(r_tile.dtype), r_tile, input_precision=PRECISION)


@triton.jit
def _back(g, r_tile, PRECISION: tl.constexpr):
    """dpre R_gateᵀ: the gradient a gate's pre-activation sends to h_{t-1}."""
    return tl.dot(g.to(r_tile.dtype), tl.trans(r_tile), input_precision=PRECISION)


@triton.jit
def _rnn_fwd(
    u_ptr, r_ptr, b_ptr, s0_ptr, states_ptr,
    B, T, H, D,
    CELL: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_S0: tl.constexpr, PRECISION: tl.constexpr,
    BB: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    o_b, o_d = i_b * BB + tl.arange(0, BB), tl.arange(0, BD)
    mask_b, mask_d = o_b < B, o_d < D
    mask_bd = mask_b[:, None] & mask_d[None, :]
    mask_dd = mask_d[:, None] & mask_d[None, :]
    # The head's recurrent weights and biases, one (d, d) tile and one row per gate, for the whole loop.
    r0, b0 = _gate_tile(r_ptr, i_h, 0, o_d, mask_dd, D, G), _bias(b_ptr, i_h, 0, o_d, mask_d, D, G)
    r1, b1 = _gate_tile(r_ptr, i_h, 1, o_d, mask_dd, D, G), _bias(b_ptr, i_h, 1, o_d, mask_d, D, G)
    r2, b2 = _gate_tile(r_ptr, i_h, 2, o_d, mask_dd, D, G), _bias(b_ptr, i_h, 2, o_d, mask_d, D, G)
    if CELL == 0:
        r3, b3 = _gate_tile(r_ptr, i_h, 3, o_d, mask_dd, D, G), _bias(b_ptr, i_h, 3, o_d, mask_d, D, G)

    state_row = (o_b * H + i_h)[:, None] * S * D + o_d[None, :]  # component 0 of s0[b, h]
    h = tl.zeros([BB, BD], dtype=tl.float32)
    c = tl.zeros([BB, BD], dtype=tl.float32)
    if HAS_S0:
        h += tl.load(s0_ptr + state_row, mask=mask_bd, other=0.0).to(tl.float32)
        if CELL == 0:
            c += tl.load(s0_ptr + state_row + D, mask=mask_bd, other=0.0).to(tl.float32)
    for t in range(T):
        row = (o_b * T + t) * H + i_h  # (BB,): the (b, t, h) row of u and of the states
        if CELL == 0:
            i = tl.sigmoid(_gate_in(u_ptr, row, 0, o_d, mask_bd, D, G) + _recur(h, r0, PRECISION) + b0)
            f = tl.sigmoid(_gate_in(u_ptr, row, 1, o_d, mask_bd, D, G) + _recur(h, r1, PRECISION) + b1)
            g = _tanh(_gate_in(u_ptr, row, 2, o_d, mask_bd, D, G) + _recur(h, r2, PRECISION) + b2)
            o = tl.sigmoid(_gate_in(u_ptr, row, 3, o_d, mask_bd, D, G) + _recur(h, r3, PRECISION) + b3)
            c = f * c + i * g
            h = o * _tanh(c)
            tl.store(states_ptr + row[:, None] * S * D + D + o_d[None, :], c, mask=mask_bd)
        else:
            r = tl.sigmoid(_gate_in(u_ptr, row, 0, o_d, mask_bd, D, G) + _recur(h, r0, PRECISION) + b0)
            z = tl.sigmoid(_gate_in(u_ptr, row, 1, o_d, mask_bd, D, G) + _recur(h, r1, PRECISION) + b1)
            n = _tanh(_gate_in(u_ptr, row, 2, o_d, mask_bd, D, G) + r * (_recur(h, r2, PRECISION) + b2))
            h = (1.0 - z) * n + z * h
        tl.store(states_ptr + row[:, None] * S * D + o_d[None, :], h, mask=mask_bd)


@triton.jit
def _rnn_bwd(
    u_ptr, r_ptr, b_ptr, s0_ptr, states_ptr, dstates_ptr, du_ptr, drec_ptr, ds0_ptr,
    B, T, H, D,
    CELL: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_S0: tl.constexpr, PRECISION: tl.constexpr,
    BB: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    o_b, o_d = i_b * BB + tl.arange(0, BB), tl.arange(0, BD)
    mask_b, mask_d = o_b < B, o_d < D
    mask_bd = mask_b[:, None] & mask_d[None, :]
    mask_dd = mask_d[:, None] & mask_d[None, :]
    # The head's recurrent weights and biases, one (d, d) tile and one row per gate, for the whole loop.
    r0, b0 = _gate_tile(r_ptr, i_h, 0, o_d, mask_dd, D, G), _bias(b_ptr, i_h, 0, o_d, mask_d, D, G)
    r1, b1 = _gate_tile(r_ptr, i_h, 1, o_d, mask_dd, D, G), _bias(b_ptr, i_h, 1, o_d, mask_d, D, G)
    r2, b2 = _gate_tile(r_ptr, i_h, 2, o_d, mask_dd, D, G), _bias(b_ptr, i_h, 2, o_d, mask_d, D, G)
    if CELL == 0:
        r3, b3 = _gate_tile(r_ptr, i_h, 3, o_d, mask_dd, D, G), _bias(b_ptr, i_h, 3, o_d, mask_d, D, G)
    s0_row = (o_b * H + i_h)[:, None] * S * D + o_d[None, :]

    dh = tl.zeros([BB, BD], dtype=tl.float32)  # ∂L/∂h_t through steps after t
    dc = tl.zeros([BB, BD], dtype=tl.float32)  # ∂L/∂c_t through steps after t
    for t_rev in range(T):
        t = T - 1 - t_rev
        row = (o_b * T + t) * H + i_h
        offsets = row[:, None] * S * D + o_d[None, :]
        previous = offsets - H * S * D  # the same (b, h) one step earlier
        if t > 0:
            h_prev = tl.load(states_ptr + previous, mask=mask_bd, other=0.0)
        elif HAS_S0:
            h_prev = tl.load(s0_ptr + s0_row, mask=mask_bd, other=0.0).to(tl.float32)
        else:
            h_prev = tl.zeros([BB, BD], dtype=tl.float32)
        dh += tl.load(dstates_ptr + offsets, mask=mask_bd, other=0.0).to(tl.float32)
        gate_offsets = row[:, None] * G * D + o_d[None, :]
        if CELL == 0:
            if t > 0:
                c_prev = tl.load(states_ptr + previous + D, mask=mask_bd, other=0.0)
            elif HAS_S0:
                c_prev = tl.load(s0_ptr + s0_row + D, mask=mask_bd, other=0.0).to(tl.float32)
            else:
                c_prev = tl.zeros([BB, BD], dtype=tl.float32)
            dc += tl.load(dstates_ptr + offsets + D, mask=mask_bd, other=0.0).to(tl.float32)
            i = tl.sigmoid(_gate_in(u_ptr, row, 0, o_d, mask_bd, D, G) + _recur(h_prev, r0, PRECISION) + b0)
            f = tl.sigmoid(_gate_in(u_ptr, row, 1, o_d, mask_bd, D, G) + _recur(h_prev, r1, PRECISION) + b1)
            g = _tanh(_gate_in(u_ptr, row, 2, o_d, mask_bd, D, G) + _recur(h_prev, r2, PRECISION) + b2)
            o = tl.sigmoid(_gate_in(u_ptr, row, 3, o_d, mask_bd, D, G) + _recur(h_prev, r3, PRECISION) + b3)
            tanh_c = _tanh(f * c_prev + i * g)
            dc += dh * o * (1.0 - tanh_c * tanh_c)
            d_i = dc * g * i * (1.0 - i)
            d_f = dc * c_prev * f * (1.0 - f)
            d_g = dc * i * (1.0 - g * g)
            d_o = dh * tanh_c * o * (1.0 - o)
            tl.store(du_ptr + gate_offsets, d_i, mask=mask_bd)
            tl.store(du_ptr + gate_offsets + D, d_f, mask=mask_bd)
            tl.store(du_ptr + gate_offsets + 2 * D, d_g, mask=mask_bd)
            tl.store(du_ptr + gate_offsets + 3 * D, d_o, mask=mask_bd)
            dc = dc * f
            dh = _back(d_i, r0, PRECISION) + _back(d_f, r1, PRECISION)
            dh += _back(d_g, r2, PRECISION) + _back(d_o, r3, PRECISION)
        else:
            r = tl.sigmoid(_gate_in(u_ptr, row, 0, o_d, mask_bd, D, G) + _recur(h_prev, r0, PRECISION) + b0)
            z = tl.sigmoid(_gate_in(u_ptr, row, 1, o_d, mask_bd, D, G) + _recur(h_prev, r1, PRECISION) + b1)
            n_rec = _recur(h_prev, r2, PRECISION) + b2  # R_n h + b_n
            n = _tanh(_gate_in(u_ptr, row, 2, o_d, mask_bd, D, G) + r * n_rec)
            d_n = dh * (1.0 - z) * (1.0 - n * n)
            d_r = d_n * n_rec * r * (1.0 - r)
            d_z = dh * (h_prev - n) * z * (1.0 - z)
            tl.store(du_ptr + gate_offsets, d_r, mask=mask_bd)
            tl.store(du_ptr + gate_offsets + D, d_z, mask=mask_bd)
            tl.store(du_ptr + gate_offsets + 2 * D, d_n, mask=mask_bd)
            tl.store(drec_ptr + row[:, None] * D + o_d[None, :], d_n * r, mask=mask_bd)  # the n gate's R h + b
            dh = dh * z + _back(d_r, r0, PRECISION) + _back(d_z, r1, PRECISION) + _back(d_n * r, r2, PRECISION)
    tl.store(ds0_ptr + s0_row, dh, mask=mask_bd)
    if CELL == 0:
        tl.store(ds0_ptr + s0_row + D, dc, mask=mask_bd)


def _launch_options(cell: int, R: Tensor) -> dict:
    D = R.shape[1]
    return {
        "CELL": cell,
        "G": GATES[cell],
        "S": COMPONENTS[cell],
        "PRECISION": "ieee" if R.dtype == torch.float32 else "tf32",
        "BB": SEQUENCE_BLOCK,
        "BD": max(16, triton.next_power_of_2(D)),
    }


class _RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, R, b, s0, cell: int):
        B, T, H, _ = u.shape
        D = R.shape[1]
        options = _launch_options(cell, R)
        states = torch.empty(B, T, H, COMPONENTS[cell] * D, device=u.device, dtype=torch.float32)
        grid = (triton.cdiv(B, SEQUENCE_BLOCK), H)
        s0_arg = states if s0 is None else s0
        _rnn_fwd[grid](u, R, b, s0_arg, states, B, T, H, D, HAS_S0=s0 is not None, **options)
        ctx.save_for_backward(u, R, b, s0, states)
        ctx.cell = cell
        return states.to(u.dtype)

    @staticmethod
    def backward(ctx, dstates):
        u, R, b, s0, states = ctx.saved_tensors
        cell = ctx.cell
        B, T, H, _ = u.shape
        D = R.shape[1]
        options = _launch_options(cell, R)
        du = torch.empty(B, T, H, GATES[cell] * D, device=u.device, dtype=torch.float32)
        drec_n = torch.empty(B, T, H, D, device=u.device, dtype=torch.float32) if cell == GRU else du
        ds0 = torch.empty(B, H, COMPONENTS[cell] * D, device=u.device, dtype=torch.float32)
        grid = (triton.cdiv(B, SEQUENCE_BLOCK), H)
        s0_arg = states if s0 is None else s0
        dstates = dstates.contiguous()
        _rnn_bwd[grid](u, R, b, s0_arg, states, dstates, du, drec_n, ds0, B, T, H, D, HAS_S0=s0 is not None, **options)
        # The gradient of the recurrent pre-activation R h_{t-1} + b: u's, except gru's n gate.
        drec = torch.cat([du[..., : 2 * D], drec_n], -1) if cell == GRU else du
        h_all = states[..., :D]  # (B, T, H, d)
        h0 = torch.zeros_like(h_all[:, 0]) if s0 is None else s0[..., :D].float()
        h_prev = torch.cat([h0[:, None], h_all[:, :-1]], 1)  # (B, T, H, d)
        dR = torch.einsum("bthi,bthj->hij", h_prev, drec)
        db = drec.sum((0, 1))
        ds0_out = None if s0 is None else ds0.to(s0.dtype)
        return du.to(u.dtype), dR.to(R.dtype), db.to(b.dtype), ds0_out, None


def rnn_states_triton(cell: str, u: Tensor, R: Tensor, b: Tensor, s0: Tensor | None = None) -> Tensor:
    """`naive_rnn_states` in Triton for cell = lstm or gru (same arguments and result)."""
    if cell not in CELLS:
        raise ValueError(f"rnn kernel: no fused step loop for cell {cell!r} (only lstm, gru)")
    s0 = None if s0 is None else s0.contiguous()
    return _RNNFunction.apply(u.contiguous(), R.contiguous(), b.contiguous(), s0, CELLS[cell])
