"""Gated linear attention in Triton: forward and backward, beside the PyTorch reference it matches.

Reference: `einsearch.ops.gla.gla_chunked` (chunkwise, PyTorch) and `naive_gla` (the token
loop); `gla_triton` has their signature and semantics:

    h_t = diag(α_t) h_{t-1} + k_t v_tᵀ,   o_t = h_tᵀ q_t,   α_t = exp(log_alpha_t)

q, k: (B, H, T, dk); v: (B, H, T, dv); log_alpha: (B, H, T, dk) (a decay per channel, GLA),
(B, H, T, 1) (one per head, RetNet) or None (α = 1, linear attention); h0: (B, H, dk, dv) or None.
Returns o (B, H, T, dv) and h_T (B, H, dk, dv), in the dtype of q.

Chunkwise form (Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient
Training", §4).  In a chunk of BT tokens with b_i = Σ_{s≤i} log α_s (cumulative from the chunk
start) and h the state entering the chunk:

    o_i = Σ_{j≤i} (Σ_d q_id k_jd exp(b_id - b_jd)) v_j + (q_i ⊙ exp(b_i))ᵀ h
    h'  = diag(exp(b_last)) h + Σ_j (k_j ⊙ exp(b_last - b_j)) v_jᵀ

Every exponent is ≤ 0 (differences of a falling cumulative sum, clamped at 0 against rounding).
With a decay per channel the intra-chunk scores need a (BT, BT, dk) tile, so that chunk is 16
tokens; with one decay per head (or none) they are one `tl.dot` and the chunk is 64.

Kernels (all accumulate in float32; `tl.dot` operands take the input dtype):
  `_states_fwd`  sequential over chunks, parallel over (batch·head, value block): the state
                 entering every chunk (stored, float32) and h_T;
  `_output_fwd`  parallel over (chunk, batch·head): o from the stored states;
  `_states_bwd`  sequential over chunks in reverse: dh, the gradient of the state leaving every
                 chunk (stored), and dh0;
  `_grads_bwd`   parallel over (chunk, batch·head): dq, dk, dv.

Gradients.  With dh_t the gradient of h_t through all later outputs and h_T:
    dq_t = h_t do_t,   dk_t = dh_t v_t,   dv_t = dh_tᵀ k_t,   dh0 = diag(α_1) dh_1.
For the decays, with G_t = Σ_{s≤t} log α_s (GLA paper §4.3):
    ∂L/∂G_t = q_t ⊙ dq_t - k_t ⊙ dk_t  (+ Σ_v h_T ⊙ dh_T at t = T),
and log α_s enters every G_t with t ≥ s, so dlog_alpha is the reverse cumulative sum of that
(summed over the channel for one decay per head), computed chunk by chunk in `_grads_bwd`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from einsearch.kernels.tiles import load_rows, load_state, store_rows, store_state

NO_GATE, HEAD_GATE, CHANNEL_GATE = 0, 1, 2
CHUNK_PER_CHANNEL = 16  # the intra-chunk tile is (BT, BT, dk)
CHUNK_PER_HEAD = 64
MAX_VALUE_BLOCK = 32
NUM_WARPS = 8  # with 4, the backward kernels spill registers at dk = 64 (ptxas, sm_90)


# ---------------------------------------------------------------- shared pieces of the kernels


@triton.jit
def _chunk_decays(g_ptr, i_bh, t, mask_t, o_k, mask_k, T, K, GATE: tl.constexpr):
    """Cumulative log decays b (from the chunk start) and their total b_last.

    Per channel: b (BT, BK), b_last (BK,).  Per head: b (BT,), b_last a scalar.  No gate: zeros.
    Padded tokens load log α = 0, so b_last is b at the last real token.
    """
    if GATE == 2:
        log_alpha = load_rows(g_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    elif GATE == 1:
        log_alpha = tl.load(g_ptr + i_bh * T + t, mask=mask_t, other=0.0)
    else:
        log_alpha = t * 0.0
    log_alpha = log_alpha.to(tl.float32)
    return tl.cumsum(log_alpha, 0), tl.sum(log_alpha, 0)


@triton.jit
def _to_chunk_end(b, b_last, GATE: tl.constexpr):
    """exp(b_last - b_j): the decay from token j to the chunk end, shaped to scale rows of (BT, BK)."""
    if GATE == 2:
        return tl.exp(tl.minimum(b_last[None, :] - b, 0.0))
    else:
        return tl.exp(tl.minimum(b_last - b, 0.0))[:, None]


@triton.jit
def _from_chunk_start(b, GATE: tl.constexpr):
    """exp(b_i): the decay from the chunk start to token i, shaped to scale rows of (BT, BK)."""
    if GATE == 2:
        return tl.exp(b)
    else:
        return tl.exp(b)[:, None]


@triton.jit
def _state_decay(b_last, GATE: tl.constexpr):
    """exp(b_last) shaped to scale the rows (key channels) of a (BK, BV) state."""
    if GATE == 2:
        return tl.exp(b_last)[:, None]
    else:
        return tl.exp(b_last)


@triton.jit
def _pair_decay(b, GATE: tl.constexpr):
    """E_ij = exp(min(b_i - b_j, 0)): (BT, BT, BK) per channel, (BT, BT) per head (unmasked)."""
    if GATE == 2:
        return tl.exp(tl.minimum(b[:, None, :] - b[None, :, :], 0.0))
    else:
        return tl.exp(tl.minimum(b[:, None] - b[None, :], 0.0))


@triton.jit
def _scores(q, k, decay, causal, GATE: tl.constexpr):
    """S_ij = Σ_d q_id k_jd E_ijd for j ≤ i, else 0: (BT, BT)."""
    if GATE == 2:
        s = tl.sum(q[:, None, :] * k[None, :, :] * decay, 2)
    else:
        s = tl.dot(q.to(k.dtype), tl.trans(k))
        if GATE == 1:
            s = s * decay
    return tl.where(causal, s, 0.0)


# ---------------------------------------------------------------- forward


@triton.jit
def _states_fwd(
    k_ptr, v_ptr, g_ptr, h0_ptr, hs_ptr, ht_ptr,
    T, K, V, N,
    GATE: tl.constexpr, HAS_H0: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """h entering every chunk (stored), then h ← diag(exp(b_last)) h + (K ⊙ exp(b_last - b))ᵀ V."""
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
        v = load_rows(v_ptr, i_bh, t, mask_t, o_v, mask_v, T, V)
        b, b_last = _chunk_decays(g_ptr, i_bh, t, mask_t, o_k, mask_k, T, K, GATE)
        k_to_end = k.to(tl.float32) * _to_chunk_end(b, b_last, GATE)  # (BT, BK)
        h = h * _state_decay(b_last, GATE) + tl.dot(tl.trans(k_to_end.to(k.dtype)), v)
    store_state(ht_ptr, h, i_bh, o_k, mask_k, o_v, mask_v, K, V)


@triton.jit
def _output_fwd(
    q_ptr, k_ptr, v_ptr, g_ptr, hs_ptr, o_ptr,
    T, K, V, N,
    GATE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """o = S V + (Q ⊙ exp(b)) h for one chunk, value block by value block."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    o_t, o_k = tl.arange(0, BT), tl.arange(0, BK)
    t = i_t * BT + o_t
    mask_t, mask_k = t < T, o_k < K
    q = load_rows(q_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    k = load_rows(k_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    dtype = k.dtype
    b, b_last = _chunk_decays(g_ptr, i_bh, t, mask_t, o_k, mask_k, T, K, GATE)
    causal = o_t[:, None] >= o_t[None, :]
    scores = _scores(q.to(tl.float32), k.to(tl.float32), _pair_decay(b, GATE), causal, GATE).to(dtype)  # (BT, BT)
    q_from_start = (q.to(tl.float32) * _from_chunk_start(b, GATE)).to(dtype)  # (BT, BK)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        mask_v = o_v < V
        v = load_rows(v_ptr, i_bh, t, mask_t, o_v, mask_v, T, V)
        h = load_state(hs_ptr, i_bh * N + i_t, o_k, mask_k, o_v, mask_v, K, V)
        o = tl.dot(scores, v) + tl.dot(q_from_start, h.to(dtype))
        store_rows(o_ptr, o, i_bh, t, mask_t, o_v, mask_v, T, V)


# ---------------------------------------------------------------- backward


@triton.jit
def _states_bwd(
    q_ptr, g_ptr, do_ptr, dht_ptr, dhs_ptr, dh0_ptr,
    T, K, V, N,
    GATE: tl.constexpr, HAS_DHT: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """In reverse over chunks: dh' leaving the chunk (stored), then
    dh ← diag(exp(b_last)) dh' + (Q ⊙ exp(b))ᵀ dO."""
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
        do = load_rows(do_ptr, i_bh, t, mask_t, o_v, mask_v, T, V).to(q.dtype)
        b, b_last = _chunk_decays(g_ptr, i_bh, t, mask_t, o_k, mask_k, T, K, GATE)
        q_from_start = q.to(tl.float32) * _from_chunk_start(b, GATE)
        dh = dh * _state_decay(b_last, GATE) + tl.dot(tl.trans(q_from_start.to(q.dtype)), do)
    store_state(dh0_ptr, dh, i_bh, o_k, mask_k, o_v, mask_v, K, V)


@triton.jit
def _grads_bwd(
    q_ptr, k_ptr, v_ptr, g_ptr, hs_ptr, dhs_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, dg_ptr,
    T, K, V, N,
    GATE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """Per chunk, with dP = dO Vᵀ (causal), h the state entering the chunk, h' and dh' the state
    leaving it and its gradient:
        dq = (dP ⊙ E) K + exp(b) ⊙ dO hᵀ,   dk = (dP ⊙ E)ᵀ Q + exp(b_last - b) ⊙ V dh'ᵀ,
        dv = Sᵀ dO + (K ⊙ exp(b_last - b)) dh'      (E per channel: contracted elementwise),
        dlog α = reverse cumsum within the chunk of (q ⊙ dq - k ⊙ dk) + Σ_v h' ⊙ dh'
    (the global formula of the module docstring regrouped by chunk: the later chunks' terms sum
    to Σ_v h' ⊙ dh', which avoids a long sum of cancelling terms)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    o_t, o_k = tl.arange(0, BT), tl.arange(0, BK)
    t = i_t * BT + o_t
    mask_t, mask_k = t < T, o_k < K
    q = load_rows(q_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    k = load_rows(k_ptr, i_bh, t, mask_t, o_k, mask_k, T, K)
    dtype = k.dtype
    q, k = q.to(tl.float32), k.to(tl.float32)
    b, b_last = _chunk_decays(g_ptr, i_bh, t, mask_t, o_k, mask_k, T, K, GATE)
    decay = _pair_decay(b, GATE)
    causal = o_t[:, None] >= o_t[None, :]
    scores_t = tl.trans(_scores(q, k, decay, causal, GATE)).to(dtype)  # (BT, BT): Sᵀ
    k_to_end = k * _to_chunk_end(b, b_last, GATE)

    d_scores = tl.zeros([BT, BT], dtype=tl.float32)  # dP = dO Vᵀ
    dq_inter = tl.zeros([BT, BK], dtype=tl.float32)  # dO hᵀ
    dk_inter = tl.zeros([BT, BK], dtype=tl.float32)  # V dh'ᵀ
    end_grad = tl.zeros([BK], dtype=tl.float32)  # Σ_v h' ⊙ dh'
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        mask_v = o_v < V
        v = load_rows(v_ptr, i_bh, t, mask_t, o_v, mask_v, T, V)
        do = load_rows(do_ptr, i_bh, t, mask_t, o_v, mask_v, T, V).to(dtype)
        h = load_state(hs_ptr, i_bh * N + i_t, o_k, mask_k, o_v, mask_v, K, V)
        dh = load_state(dhs_ptr, i_bh * N + i_t, o_k, mask_k, o_v, mask_v, K, V)
        d_scores += tl.dot(do, tl.trans(v))
        dq_inter += tl.dot(do, tl.trans(h.to(dtype)))
        dk_inter += tl.dot(v, tl.trans(dh.to(dtype)))
        dv = tl.dot(scores_t, do) + tl.dot(k_to_end.to(dtype), dh.to(dtype))
        store_rows(dv_ptr, dv, i_bh, t, mask_t, o_v, mask_v, T, V)
        if GATE != 0:
            h_out = h * _state_decay(b_last, GATE) + tl.dot(tl.trans(k_to_end.to(dtype)), v)
            end_grad += tl.sum(h_out * dh, 1)

    # The pairs j < i and the token's own term (j = i) apart: the latter is the same in q ⊙ dq and
    # k ⊙ dk and carries no decay, so it stays out of dlog α instead of cancelling in rounding.
    own = tl.sum(tl.where(o_t[:, None] == o_t[None, :], d_scores, 0.0), 1)[:, None]  # dP_ii
    d_scores = tl.where(o_t[:, None] > o_t[None, :], d_scores, 0.0)
    if GATE == 2:
        dq = tl.sum(d_scores[:, :, None] * k[None, :, :] * decay, 1)
        dk = tl.sum(d_scores[:, :, None] * q[:, None, :] * decay, 0)
    else:
        if GATE == 1:
            d_scores = d_scores * decay
        dq = tl.dot(d_scores.to(dtype), k.to(dtype))
        dk = tl.dot(tl.trans(d_scores).to(dtype), q.to(dtype))
    dq += dq_inter * _from_chunk_start(b, GATE)
    dk += dk_inter * _to_chunk_end(b, b_last, GATE)
    if GATE == 2:
        dg = tl.cumsum(q * dq - k * dk, 0, reverse=True) + end_grad[None, :]
        store_rows(dg_ptr, dg, i_bh, t, mask_t, o_k, mask_k, T, K)
    elif GATE == 1:
        dg = tl.cumsum(tl.sum(q * dq - k * dk, 1), 0, reverse=True) + tl.sum(end_grad, 0)
        tl.store(dg_ptr + i_bh * T + t, dg, mask=mask_t)
    store_rows(dq_ptr, dq + own * k, i_bh, t, mask_t, o_k, mask_k, T, K)
    store_rows(dk_ptr, dk + own * q, i_bh, t, mask_t, o_k, mask_k, T, K)


# ---------------------------------------------------------------- autograd wrapper


def _launch_options(T: int, K: int, V: int, gate: int, block_t: int | None) -> dict:
    """Block sizes (the key block holds all of dk) and warps: the constexpr arguments of every kernel."""
    BT = block_t or (CHUNK_PER_CHANNEL if gate == CHANNEL_GATE else CHUNK_PER_HEAD)
    BK = max(16, triton.next_power_of_2(K))
    BV = min(MAX_VALUE_BLOCK, max(16, triton.next_power_of_2(V)))
    return {"GATE": gate, "BT": BT, "BK": BK, "BV": BV, "num_warps": NUM_WARPS}


def _chunk_states(k, v, g, h0, options: dict) -> tuple[Tensor, Tensor]:
    """The state entering every chunk (BH, N, K, V) and h_T (BH, K, V), float32."""
    BH, T, K = k.shape
    V = v.shape[-1]
    N = triton.cdiv(T, options["BT"])
    hs = k.new_empty(BH, N, K, V, dtype=torch.float32)
    ht = k.new_empty(BH, K, V, dtype=torch.float32)
    grid = (triton.cdiv(V, options["BV"]), BH)
    g_arg, h0_arg = (k if g is None else g), (ht if h0 is None else h0)
    _states_fwd[grid](k, v, g_arg, h0_arg, hs, ht, T, K, V, N, HAS_H0=h0 is not None, **options)
    return hs, ht


class _GLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, h0, gate: int, block_t: int | None):
        BH, T, K = q.shape
        V = v.shape[-1]
        options = _launch_options(T, K, V, gate, block_t)
        hs, ht = _chunk_states(k, v, g, h0, options)
        N = hs.shape[1]
        o = torch.empty_like(v)
        _output_fwd[(N, BH)](q, k, v, q if g is None else g, hs, o, T, K, V, N, **options)
        ctx.save_for_backward(q, k, v, g, h0)
        ctx.options = options
        return o, ht.to(q.dtype)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0 = ctx.saved_tensors
        options = ctx.options
        BH, T, K = q.shape
        V = v.shape[-1]
        hs, _ = _chunk_states(k, v, g, h0, options)  # recomputed: cheaper than keeping them
        N = hs.shape[1]
        g_arg = q if g is None else g
        do = do.contiguous()
        dhs = torch.empty_like(hs)
        dh0 = q.new_empty(BH, K, V, dtype=torch.float32)
        dht_arg = dh0 if dht is None else dht.contiguous()
        grid = (triton.cdiv(V, options["BV"]), BH)
        _states_bwd[grid](q, g_arg, do, dht_arg, dhs, dh0, T, K, V, N, HAS_DHT=dht is not None, **options)
        dq = torch.empty(BH, T, K, device=q.device, dtype=torch.float32)
        dk = torch.empty_like(dq)
        dv = torch.empty(BH, T, V, device=q.device, dtype=torch.float32)
        dg = dq if g is None else torch.empty(g.shape, device=q.device, dtype=torch.float32)
        _grads_bwd[(N, BH)](q, k, v, g_arg, hs, dhs, do, dq, dk, dv, dg, T, K, V, N, **options)
        dh0_out = None if h0 is None else dh0.to(h0.dtype)
        dg_out = None if g is None else dg.to(g.dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg_out, dh0_out, None, None


def gla_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_alpha: Tensor | None,
    h0: Tensor | None = None,
    chunk: int | None = None,
    block_t: int | None = None,
) -> tuple[Tensor, Tensor]:
    """`gla_chunked` in Triton (same arguments and results; `chunk` is the PyTorch form's and is
    ignored here; `block_t`, a power of two ≥ 16, overrides the kernel's chunk)."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    if log_alpha is None:
        gate, g = NO_GATE, None
    elif log_alpha.shape[-1] == 1 and K != 1:
        gate, g = HEAD_GATE, log_alpha.reshape(B * H, T).contiguous()
    else:
        gate, g = CHANNEL_GATE, log_alpha.reshape(B * H, T, K).contiguous()
    flat = [t.reshape(B * H, T, -1).contiguous() for t in (q, k, v)]
    h0_flat = None if h0 is None else h0.reshape(B * H, K, V).contiguous()
    o, ht = _GLAFunction.apply(*flat, g, h0_flat, gate, block_t)
    return o.view(B, H, T, V), ht.view(B, H, K, V)
