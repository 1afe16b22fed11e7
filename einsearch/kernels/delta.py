"""The (gated) delta rule in Triton: forward and backward, beside the PyTorch reference it matches.

Reference: `einsearch.ops.delta.delta_rule_chunked` (chunkwise WY form, PyTorch) and
`naive_delta_rule` (the token loop); `delta_rule_triton` has their signature and semantics, on the
transposed state h = Sᵀ (dk × dv):

    h' = α_t h_{t-1};  u_t = β_t (v_t - h'ᵀ k_t);  h_t = h' + k_t u_tᵀ;  o_t = h_tᵀ q_t

q, k: (B, H, T, dk); v: (B, H, T, dv); beta: (B, H, T); log_alpha: (B, H, T) or None (α = 1);
h0: (B, H, dk, dv) or None.  Returns o (B, H, T, dv) and h_T (B, H, dk, dv) in the dtype of q.

Chunkwise through the WY/UT representation (Yang et al. 2024, "Parallelizing Linear Transformers
with the Delta Rule over Sequence Length"; gated: Yang et al. 2025, "Gated Delta Networks").  In a
chunk with g = cumulative log α from the chunk start, γ = exp(g), D_ij = exp(g_i - g_j) [j ≤ i]:

    A = strict_lower(diag(β) K Kᵀ ⊙ D),   T = (I + A)⁻¹ (forward substitution, in registers)
    W = T diag(βγ) K,   U₀ = T diag(β) V,   U = U₀ - W h
    O = diag(γ) Q h + (Q Kᵀ ⊙ D) U,   h' = γ_C h + (K ⊙ exp(g_C - g))ᵀ U

Every exponent is ≤ 0.  Kernels (float32 accumulation; `tl.dot` operands in the input dtype):
  `_wy_fwd`      parallel over (chunk, batch·head): W and U₀;
  `_states_fwd`  sequential over chunks, parallel over (batch·head, value block): the states
                 entering every chunk, U, h_T;
  `_output_fwd`  parallel over chunks: O;
  `_states_bwd`  sequential in reverse: dU = Mᵀ dO + K̃ dh' and dh = γ_C dh' + (γ⊙Q)ᵀ dO - Wᵀ dU
                 (M = QKᵀ ⊙ D, K̃ = K ⊙ exp(g_C - g), dh' the gradient of the state leaving the chunk);
  `_grads_bwd_paths`, `_grads_bwd_wy`  parallel over chunks: dq, dk, dv, dβ, dlog α from the
                 chain rule through the equations above, split in two so that neither kernel holds
                 every (BT, ·) tile at once (see their docstrings).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from einsearch.kernels.tiles import load_rows, load_state, store_rows, store_state

CHUNK = 64
MAX_VALUE_BLOCK = 32
NUM_WARPS = 8  # with 4, the backward kernels spill registers at dk = 64 (ptxas, sm_90)


# ---------------------------------------------------------------- shared pieces of the kernels


@triton.jit
def _chunk_gates(g_ptr, i_bh, t, mask_t, T, GATED: tl.constexpr):
    """Cumulative log decay g (BT,) from the chunk start and its total g_last (padding: log α = 0)."""
    if GATED:
        log_alpha = tl.load(g_ptr + i_bh * T + t, mask=mask_t, other=0.0).to(tl.float32)
    else:
        log_alpha = t * 0.0
    return tl.cumsum(log_alpha, 0), tl.sum(log_alpha, 0)


@triton.jit
def _inverse_unit_lower(a, BT: tl.constexpr):
    """(I + A)⁻¹ for a strictly lower-triangular (BT, BT) A, by forward substitution on rows:
    row i of the inverse is e_i - Σ_{j<i} A_ij row_j (rows ≥ i are still those of I, and A_ij = 0 there)."""
    rows = tl.arange(0, BT)
    inverse = (rows[:, None] == rows[None, :]).to(tl.float32)
    for i in range(1, BT):
        a_i = tl.sum(tl.where(rows[:, None] == i, a, 0.0), 0)  # (BT,): row i of A
        row = tl.where(rows == i, 1.0, 0.0) - tl.sum(a_i[:, None] * inverse, 0)
        inverse = tl.where(rows[:, None] == i, row[None, :], inverse)
    return inverse


@triton.jit
def _wy_pieces(k_ptr, beta_ptr, g_ptr, i_bh, t, mask_t, o_k, mask_k, T, K, GATED: tl.constexpr, BT: tl.constexpr):
    """Everything of a chunk that depends on keys, β and the gates only.

    Returns k (BT, BK) float32, β (BT,), g, g_last, D (BT, BT) = exp(g_i - g_j)[j ≤ i],
    K Kᵀ (BT, BT), A = strict_lower(β_i (k_i·k_j) D_ij) and T = (I + A)⁻¹.
    """
    o_t = tl.arange(0, BT)
    k = load_rows(k_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    beta = tl.load(beta_ptr + i_bh * T + t, mask=mask_t, other=0.0).to(tl.float32)
    g, g_last = _chunk_gates(g_ptr, i_bh, t, mask_t, T, GATED)
    lower = o_t[:, None] >= o_t[None, :]
    decay = tl.where(lower, tl.exp(tl.minimum(g[:, None] - g[None, :], 0.0)), 0.0)
    kk = tl.dot(k, tl.trans(k)).to(tl.float32)
    a = tl.where(o_t[:, None] > o_t[None, :], beta[:, None] * kk * decay, 0.0)
    return k.to(tl.float32), beta, g, g_last, decay, kk, a, _inverse_unit_lower(a, BT)


# ---------------------------------------------------------------- forward


@triton.jit
def _wy_fwd(
    k_ptr, v_ptr, beta_ptr, g_ptr, w_ptr, u0_ptr,
    T, K, V,
    GATED: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """W = T diag(βγ) K and U₀ = T diag(β) V for one chunk (float32, (BH, T, ·))."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    o_k = tl.arange(0, BK)
    t = i_t * BT + tl.arange(0, BT)
    mask_t, mask_k = t < T, o_k < K
    pieces = _wy_pieces(k_ptr, beta_ptr, g_ptr, i_bh, t, mask_t, o_k, mask_k, T, K, GATED, BT)
    k, beta, g, g_last, decay, kk, a, inverse = pieces
    w = tl.dot(inverse, k * (beta * tl.exp(g))[:, None])
    store_rows(w_ptr, w, i_bh, t, mask_t, o_k, mask_k, T, K)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        mask_v = o_v < V
        v = load_rows(v_ptr, i_bh, t, mask_t, o_v, mask_v, T, V).to(tl.float32)
        u0 = tl.dot(inverse, v * beta[:, None])
        store_rows(u0_ptr, u0, i_bh, t, mask_t, o_v, mask_v, T, V)


@triton.jit
def _states_fwd(
    k_ptr, g_ptr, w_ptr, u0_ptr, h0_ptr, hs_ptr, u_ptr, ht_ptr,
    T, K, V, N,
    GATED: tl.constexpr, HAS_H0: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """Per chunk: store h (entering), U = U₀ - W h, then h ← γ_C h + (K ⊙ exp(g_C - g))ᵀ U."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = o_k < K, o_v < V

    h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        h += load_state(h0_ptr, i_bh, o_k, mask_k, o_v, mask_v, K, V)
    for i_t in range(N):
        store_state(hs_ptr, h, i_bh * N + i_t, o_k, mask_k, o_v, mask_v, K, V)
        t = i_t * BT + o_t
        mask_t = t < T
        k = load_rows(k_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
        w = load_rows(w_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
        u0 = load_rows(u0_ptr, i_bh, t, mask_t, o_v, mask_v, T, V)
        g, g_last = _chunk_gates(g_ptr, i_bh, t, mask_t, T, GATED)
        u = u0 - tl.dot(w.to(k.dtype), h.to(k.dtype))
        store_rows(u_ptr, u, i_bh, t, mask_t, o_v, mask_v, T, V)
        k_to_end = k.to(tl.float32) * tl.exp(tl.minimum(g_last - g, 0.0))[:, None]
        h = h * tl.exp(g_last) + tl.dot(tl.trans(k_to_end.to(k.dtype)), u.to(k.dtype))
    store_state(ht_ptr, h, i_bh, o_k, mask_k, o_v, mask_v, K, V)


@triton.jit
def _output_fwd(
    q_ptr, k_ptr, g_ptr, hs_ptr, u_ptr, o_ptr,
    T, K, V, N,
    GATED: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """O = diag(γ) Q h + (Q Kᵀ ⊙ D) U for one chunk."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    o_t, o_k = tl.arange(0, BT), tl.arange(0, BK)
    t = i_t * BT + o_t
    mask_t, mask_k = t < T, o_k < K
    q = load_rows(q_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    k = load_rows(k_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    g, g_last = _chunk_gates(g_ptr, i_bh, t, mask_t, T, GATED)
    decay = tl.where(o_t[:, None] >= o_t[None, :], tl.exp(tl.minimum(g[:, None] - g[None, :], 0.0)), 0.0)
    mixing = (tl.dot(q, tl.trans(k)) * decay).to(k.dtype)  # M = Q Kᵀ ⊙ D
    q_from_start = (q.to(tl.float32) * tl.exp(g)[:, None]).to(k.dtype)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        mask_v = o_v < V
        u = load_rows(u_ptr, i_bh, t, mask_t, o_v, mask_v, T, V).to(k.dtype)
        h = load_state(hs_ptr, i_bh * N + i_t, o_k, mask_k, o_v, mask_v, K, V)
        o = tl.dot(q_from_start, h.to(k.dtype)) + tl.dot(mixing, u)
        store_rows(o_ptr, o, i_bh, t, mask_t, o_v, mask_v, T, V)


# ---------------------------------------------------------------- backward


@triton.jit
def _states_bwd(
    q_ptr, k_ptr, g_ptr, w_ptr, do_ptr, dht_ptr, dhs_ptr, du_ptr, dh0_ptr,
    T, K, V, N,
    GATED: tl.constexpr, HAS_DHT: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """In reverse over chunks, with dh' the gradient of the state leaving the chunk (stored):
        dU = Mᵀ dO + K̃ dh',   dh = γ_C dh' + (γ ⊙ Q)ᵀ dO - Wᵀ dU."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = o_k < K, o_v < V

    dh = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dh += load_state(dht_ptr, i_bh, o_k, mask_k, o_v, mask_v, K, V)
    for i_rev in range(N):
        i_t = N - 1 - i_rev
        store_state(dhs_ptr, dh, i_bh * N + i_t, o_k, mask_k, o_v, mask_v, K, V)
        t = i_t * BT + o_t
        mask_t = t < T
        q = load_rows(q_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
        k = load_rows(k_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
        dtype = k.dtype
        w = load_rows(w_ptr, i_bh, t, mask_t, o_k, mask_k, T, K).to(dtype)
        do = load_rows(do_ptr, i_bh, t, mask_t, o_v, mask_v, T, V).to(dtype)
        g, g_last = _chunk_gates(g_ptr, i_bh, t, mask_t, T, GATED)
        decay = tl.where(o_t[:, None] >= o_t[None, :], tl.exp(tl.minimum(g[:, None] - g[None, :], 0.0)), 0.0)
        mixing_t = tl.trans(tl.dot(q, tl.trans(k)) * decay).to(dtype)  # Mᵀ
        k_to_end = (k.to(tl.float32) * tl.exp(tl.minimum(g_last - g, 0.0))[:, None]).to(dtype)
        du = tl.dot(mixing_t, do) + tl.dot(k_to_end, dh.to(dtype))
        store_rows(du_ptr, du, i_bh, t, mask_t, o_v, mask_v, T, V)
        q_from_start = (q.to(tl.float32) * tl.exp(g)[:, None]).to(dtype)
        dh = dh * tl.exp(g_last) + tl.dot(tl.trans(q_from_start), do) - tl.dot(tl.trans(w), du.to(dtype))
    store_state(dh0_ptr, dh, i_bh, o_k, mask_k, o_v, mask_v, K, V)


@triton.jit
def _grads_bwd_paths(
    q_ptr, k_ptr, g_ptr, hs_ptr, dhs_ptr, u_ptr, du_ptr, do_ptr, dq_ptr, dk_ptr, dw_ptr, dg_ptr,
    T, K, V, N,
    GATED: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """The gradients of one chunk through the output and the state, given h (entering), dh'
    (leaving), U and dU (the WY part is `_grads_bwd_wy`):

        dM = dO Uᵀ (lower),  dQ = γ ⊙ dO hᵀ + (dM ⊙ D) K,  dK = exp(g_C - g) ⊙ U dh'ᵀ + (dM ⊙ D)ᵀ Q,
        dW = -dU hᵀ,
        ∂L/∂g_i = q_i·(γ_i dO_i hᵀ) + Σ_j (dM ⊙ M)_ij - Σ_j (dM ⊙ M)_ji - k_i·(exp(g_C - g_i) dh' u_i)
                  + [i = last] (Σ_j k_j·(exp(g_C - g_j) dh' u_j) + γ_C Σ h ⊙ dh').
    Stores dq, dW and the partial dk and ∂L/∂g (float32).
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    o_t, o_k = tl.arange(0, BT), tl.arange(0, BK)
    t = i_t * BT + o_t
    mask_t, mask_k = t < T, o_k < K
    dtype = k_ptr.dtype.element_ty
    q = load_rows(q_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    k = load_rows(k_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    g, g_last = _chunk_gates(g_ptr, i_bh, t, mask_t, T, GATED)
    decay = tl.where(o_t[:, None] >= o_t[None, :], tl.exp(tl.minimum(g[:, None] - g[None, :], 0.0)), 0.0)

    d_mixing = tl.zeros([BT, BT], dtype=tl.float32)  # dO Uᵀ
    dq_inter = tl.zeros([BT, BK], dtype=tl.float32)  # dO hᵀ
    dk_state = tl.zeros([BT, BK], dtype=tl.float32)  # U dh'ᵀ
    dw = tl.zeros([BT, BK], dtype=tl.float32)  # -dU hᵀ
    state_decay_grad = tl.zeros([BK], dtype=tl.float32)  # Σ_v h ⊙ dh'
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        mask_v = o_v < V
        u = load_rows(u_ptr, i_bh, t, mask_t, o_v, mask_v, T, V).to(dtype)
        du = load_rows(du_ptr, i_bh, t, mask_t, o_v, mask_v, T, V).to(dtype)
        do = load_rows(do_ptr, i_bh, t, mask_t, o_v, mask_v, T, V).to(dtype)
        h = load_state(hs_ptr, i_bh * N + i_t, o_k, mask_k, o_v, mask_v, K, V)
        dh = load_state(dhs_ptr, i_bh * N + i_t, o_k, mask_k, o_v, mask_v, K, V)
        d_mixing += tl.dot(do, tl.trans(u))
        dq_inter += tl.dot(do, tl.trans(h.to(dtype)))
        dk_state += tl.dot(u, tl.trans(dh.to(dtype)))
        dw -= tl.dot(du, tl.trans(h.to(dtype)))
        if GATED:
            state_decay_grad += tl.sum(h * dh, 1)

    d_scores = tl.where(o_t[:, None] >= o_t[None, :], d_mixing, 0.0) * decay
    dq_inter = dq_inter * tl.exp(g)[:, None]
    dk_state = dk_state * tl.exp(tl.minimum(g_last - g, 0.0))[:, None]
    dq = dq_inter + tl.dot(d_scores.to(dtype), k)
    dk = dk_state + tl.dot(tl.trans(d_scores).to(dtype), q)
    store_rows(dq_ptr, dq, i_bh, t, mask_t, o_k, mask_k, T, K)
    store_rows(dk_ptr, dk, i_bh, t, mask_t, o_k, mask_k, T, K)
    store_rows(dw_ptr, dw, i_bh, t, mask_t, o_k, mask_k, T, K)
    if GATED:
        q, k = q.to(tl.float32), k.to(tl.float32)
        mixing = tl.dot(q, tl.trans(k)) * decay
        pair = tl.where(o_t[:, None] > o_t[None, :], d_mixing * mixing, 0.0)  # D_ii = 1: no diagonal
        k_state = tl.sum(k * dk_state, 1)
        state_end = tl.sum(k_state, 0) + tl.exp(g_last) * tl.sum(state_decay_grad, 0)
        last = tl.minimum(T - 1 - i_t * BT, BT - 1)  # the chunk's last real token holds g_C
        dg = tl.sum(q * dq_inter, 1) - k_state + tl.sum(pair, 1) - tl.sum(pair, 0)
        dg += tl.where(o_t == last, state_end, 0.0)
        tl.store(dg_ptr + i_bh * T + t, dg, mask=mask_t)


@triton.jit
def _grads_bwd_wy(
    k_ptr, v_ptr, beta_ptr, g_ptr, du_ptr, dw_ptr, dk_ptr, dv_ptr, dbeta_ptr, dg_ptr,
    T, K, V,
    GATED: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """The gradients of one chunk through W = T R_w and U₀ = T R_u (dU₀ = dU), T = (I + A)⁻¹,
    R_w = diag(βγ) K, R_u = diag(β) V, added to the partial dk and ∂L/∂g of `_grads_bwd_paths`:

        dT = dW R_wᵀ + dU₀ R_uᵀ,  dR_w = Tᵀ dW,  dR_u = Tᵀ dU₀,  dA = strict_lower(-Tᵀ dT Tᵀ)
        dV = β ⊙ dR_u,  dK += βγ ⊙ dR_w + dK̂ K + dK̂ᵀ K with dK̂ = dA ⊙ β_i D,
        dβ = γ (K·dR_w) + (V·dR_u) + Σ_j dA_ij (K Kᵀ)_ij D_ij,
        ∂L/∂g_i += β_i γ_i (k_i·dR_w,i) + Σ_j (dA ⊙ A)_ij - Σ_j (dA ⊙ A)_ji,
    then dlog α is the reverse cumulative sum of ∂L/∂g within the chunk.
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    o_t, o_k = tl.arange(0, BT), tl.arange(0, BK)
    t = i_t * BT + o_t
    mask_t, mask_k = t < T, o_k < K
    dtype = k_ptr.dtype.element_ty
    pieces = _wy_pieces(k_ptr, beta_ptr, g_ptr, i_bh, t, mask_t, o_k, mask_k, T, K, GATED, BT)
    k, beta, g, g_last, decay, kk, a, inverse = pieces
    inverse_t = tl.trans(inverse).to(dtype)

    d_inverse = tl.zeros([BT, BT], dtype=tl.float32)  # dU₀ R_uᵀ (+ dW R_wᵀ below)
    dbeta = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        mask_v = o_v < V
        v = load_rows(v_ptr, i_bh, t, mask_t, o_v, mask_v, T, V).to(tl.float32)
        du = load_rows(du_ptr, i_bh, t, mask_t, o_v, mask_v, T, V).to(dtype)
        d_inverse += tl.dot(du, tl.trans((v * beta[:, None]).to(dtype)))
        d_ru = tl.dot(inverse_t, du)  # (BT, BV)
        dbeta += tl.sum(v * d_ru, 1)
        store_rows(dv_ptr, d_ru * beta[:, None], i_bh, t, mask_t, o_v, mask_v, T, V)

    gamma = tl.exp(g)
    dw = load_rows(dw_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    d_inverse += tl.dot(dw.to(dtype), tl.trans((k * (beta * gamma)[:, None]).to(dtype)))
    d_rw = tl.dot(inverse_t, dw.to(dtype))  # (BT, BK)
    da = -tl.dot(tl.dot(tl.trans(inverse), d_inverse), tl.trans(inverse))
    da = tl.where(o_t[:, None] > o_t[None, :], da, 0.0)
    d_kk = da * beta[:, None] * decay
    dk = load_rows(dk_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    k_low = k.to(dtype)
    dk += d_rw * (beta * gamma)[:, None] + tl.dot(d_kk.to(dtype), k_low) + tl.dot(tl.trans(d_kk).to(dtype), k_low)
    store_rows(dk_ptr, dk, i_bh, t, mask_t, o_k, mask_k, T, K)
    k_dot_drw = tl.sum(k * d_rw, 1)
    dbeta += gamma * k_dot_drw + tl.sum(da * kk * decay, 1)
    tl.store(dbeta_ptr + i_bh * T + t, dbeta, mask=mask_t)
    if GATED:
        pair = da * a
        dg = tl.load(dg_ptr + i_bh * T + t, mask=mask_t, other=0.0)
        dg += beta * gamma * k_dot_drw + tl.sum(pair, 1) - tl.sum(pair, 0)
        tl.store(dg_ptr + i_bh * T + t, tl.cumsum(dg, 0, reverse=True), mask=mask_t)


# ---------------------------------------------------------------- autograd wrapper


def _launch_options(T: int, K: int, V: int, gated: bool, block_t: int | None) -> dict:
    """Block sizes (the key block holds all of dk) and warps: the constexpr arguments of every kernel."""
    BK = max(16, triton.next_power_of_2(K))
    BV = min(MAX_VALUE_BLOCK, max(16, triton.next_power_of_2(V)))
    return {"GATED": gated, "BT": block_t or CHUNK, "BK": BK, "BV": BV, "num_warps": NUM_WARPS}


def _chunk_states(k, v, beta, g, h0, options: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """W (by `_wy_fwd`), then the states entering each chunk, U and h_T (by `_states_fwd`), float32."""
    BH, T, K = k.shape
    V = v.shape[-1]
    N = triton.cdiv(T, options["BT"])
    g_arg = beta if g is None else g
    w = torch.empty(BH, T, K, device=k.device, dtype=torch.float32)
    u0 = torch.empty(BH, T, V, device=k.device, dtype=torch.float32)
    _wy_fwd[(N, BH)](k, v, beta, g_arg, w, u0, T, K, V, **options)
    hs = torch.empty(BH, N, K, V, device=k.device, dtype=torch.float32)
    u = torch.empty_like(u0)
    ht = torch.empty(BH, K, V, device=k.device, dtype=torch.float32)
    h0_arg = ht if h0 is None else h0
    grid = (triton.cdiv(V, options["BV"]), BH)
    _states_fwd[grid](k, g_arg, w, u0, h0_arg, hs, u, ht, T, K, V, N, HAS_H0=h0 is not None, **options)
    return w, hs, u, ht


class _DeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, block_t: int | None):
        BH, T, K = q.shape
        V = v.shape[-1]
        options = _launch_options(T, K, V, g is not None, block_t)
        _, hs, u, ht = _chunk_states(k, v, beta, g, h0, options)
        N = hs.shape[1]
        o = torch.empty_like(v)
        _output_fwd[(N, BH)](q, k, beta if g is None else g, hs, u, o, T, K, V, N, **options)
        ctx.save_for_backward(q, k, v, beta, g, h0)
        ctx.options = options
        return o, ht.to(q.dtype)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, g, h0 = ctx.saved_tensors
        options = ctx.options
        BH, T, K = q.shape
        V = v.shape[-1]
        w, hs, u, _ = _chunk_states(k, v, beta, g, h0, options)  # recomputed, not kept
        N = hs.shape[1]
        g_arg = beta if g is None else g
        do = do.contiguous()
        dhs = torch.empty_like(hs)
        du = torch.empty_like(u)
        dh0 = torch.empty(BH, K, V, device=q.device, dtype=torch.float32)
        dht_arg = dh0 if dht is None else dht.contiguous()
        grid = (triton.cdiv(V, options["BV"]), BH)
        _states_bwd[grid](q, k, g_arg, w, do, dht_arg, dhs, du, dh0, T, K, V, N, HAS_DHT=dht is not None, **options)
        dq = torch.empty(BH, T, K, device=q.device, dtype=torch.float32)
        dk, dw = torch.empty_like(dq), torch.empty_like(dq)
        dv = torch.empty(BH, T, V, device=q.device, dtype=torch.float32)
        dbeta = torch.empty(BH, T, device=q.device, dtype=torch.float32)
        dg = dbeta if g is None else torch.empty_like(dbeta)
        _grads_bwd_paths[(N, BH)](q, k, g_arg, hs, dhs, u, du, do, dq, dk, dw, dg, T, K, V, N, **options)
        _grads_bwd_wy[(N, BH)](k, v, beta, g_arg, du, dw, dk, dv, dbeta, dg, T, K, V, **options)
        return (
            dq.to(q.dtype),
            dk.to(k.dtype),
            dv.to(v.dtype),
            dbeta.to(beta.dtype),
            None if g is None else dg.to(g.dtype),
            None if h0 is None else dh0.to(h0.dtype),
            None,
        )


def delta_rule_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_alpha: Tensor | None = None,
    h0: Tensor | None = None,
    chunk: int | None = None,
    block_t: int | None = None,
) -> tuple[Tensor, Tensor]:
    """`delta_rule_chunked` in Triton (same arguments and results; `chunk` is the PyTorch form's
    and is ignored here; `block_t`, a power of two ≥ 16, overrides the kernel's chunk)."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    q, k, v = (t.reshape(B * H, T, -1).contiguous() for t in (q, k, v))
    beta = beta.reshape(B * H, T).contiguous()
    g = None if log_alpha is None else log_alpha.reshape(B * H, T).contiguous()
    h0_flat = None if h0 is None else h0.reshape(B * H, K, V).contiguous()
    o, ht = _DeltaRuleFunction.apply(q, k, v, beta, g, h0_flat, block_t)
    return o.view(B, H, T, V), ht.view(B, H, K, V)
