"""Gated linear attention (GLA) and its special cases, RetNet (one decay per head) and linear
attention (no decay): a matrix state per head, updated once per token.

    h_t = diag(α_t) h_{t-1} + k_t v_tᵀ,   o_t = h_tᵀ q_t,   α_t = exp(log_alpha_t)

q, k: (B, H, T, dk); v: (B, H, T, dv); log_alpha: (B, H, T, dk) (GLA), (B, H, T, 1) (RetNet) or
None (α = 1: linear attention); the state h: (B, H, dk, dv), zeros when `h0` is None.  No scaling
or normalisation of q and k here; the modules (`einsearch.primitives.memory`, `.linear_attention`)
do that.

Written three ways, with the same arguments and results:

* `gla_step`, one token, and `naive_gla`, the plain loop over tokens: the spec;
* `gla_chunked`, chunkwise parallel in the manner of flash-linear-attention: the sequence is cut
  into chunks of C tokens; inside a chunk the recurrence is unrolled into small matrix products,
  and only the state at chunk boundaries is carried by a loop (T/C iterations instead of T);
* `gla`, which runs the Triton kernel (`einsearch.kernels.gla`) on a GPU and `gla_chunked`
  elsewhere (`einsearch.ops.dispatch`).

Decays enter as logarithms (≤ 0).  The chunked form only ever exponentiates differences of
cumulative log decays that are ≤ 0, so a strong decay (log α ≈ -30 per token) underflows to zero
instead of overflowing.  T need not be a multiple of the chunk: the tail is padded with tokens
that leave the state unchanged (k = v = q = 0, log α = 0) and the padded outputs are dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from einsearch.ops.chunks import causal_decay, initial_state, merge_chunks, split_chunks
from einsearch.ops.dispatch import use_triton

# Chunk sizes, tuned for forward + backward on one CPU thread at T = 1024, d_model = 64, 4 heads.
GLA_CHUNK = 8  # a decay per channel: the intra-chunk tensor is (C, C, dk), so C stays small
RETNET_CHUNK = 32  # one decay per head: the intra-chunk work is plain (C, C) matrix products
LINEAR_CHUNK = 32  # no decay: plain (C, C) matrix products inside a chunk


# ---------------------------------------------------------------- the spec: one token, the loop


def gla_step(q: Tensor, k: Tensor, v: Tensor, log_alpha: Tensor | None, h: Tensor) -> tuple[Tensor, Tensor]:
    """One token of GLA: h_t = diag(α_t) h_{t-1} + k_t v_tᵀ ; o_t = h_tᵀ q_t.

    q, k: (B, H, dk); v: (B, H, dv); h: (B, H, dk, dv); log_alpha: (B, H, dk), (B, H, 1) for one
    decay per head, or None for α = 1.  Returns (o_t (B, H, dv), h_t).
    """
    if log_alpha is not None:
        h = log_alpha.exp()[..., None] * h
    h = h + k[..., None] * v[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q, h), h


def naive_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_alpha: Tensor | None,
    h0: Tensor | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """GLA as a plain loop over tokens (the reference for `gla_chunked`; `chunk` is ignored)."""
    h = initial_state(q, v, h0)
    outputs = []
    for t in range(q.shape[2]):
        gate = None if log_alpha is None else log_alpha[:, :, t]
        o, h = gla_step(q[:, :, t], k[:, :, t], v[:, :, t], gate, h)
        outputs.append(o)
    return torch.stack(outputs, dim=2), h


# ---------------------------------------------------------------- the chunked form


def gla_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_alpha: Tensor | None,
    h0: Tensor | None = None,
    chunk: int = GLA_CHUNK,
) -> tuple[Tensor, Tensor]:
    """Gated linear attention, chunkwise (Yang et al. 2024, "Gated Linear Attention Transformers
    with Hardware-Efficient Training", §4), in log space without secondary chunking.

    Recurrence: h_t = diag(α_t) h_{t-1} + k_t v_tᵀ, o_t = h_tᵀ q_t, α_t = exp(log_alpha_t), where
    log_alpha is (B, H, T, dk) (GLA), (B, H, T, 1) (one decay per head: RetNet) or None (α = 1:
    linear attention).  Inside a chunk, with b_i = Σ_{s≤i} log α_s (cumulative from the chunk
    start, per channel) and h the state entering the chunk:

        o_i = Σ_{j≤i} (Σ_d q_id k_jd exp(b_id - b_jd)) v_j  +  (q_i ⊙ exp(b_i))ᵀ h
        h'  = diag(exp(b_C)) h + Σ_j (k_j ⊙ exp(b_C - b_j)) v_jᵀ

    Every exponent is ≤ 0.  With a decay per channel the intra-chunk scores need a (C, C, dk)
    tensor (`gated_scores`), which is why that chunk is kept small.
    """
    B, H, T, dk = q.shape
    chunk = min(chunk, T)
    qc, kc, vc = split_chunks(q, chunk), split_chunks(k, chunk), split_chunks(v, chunk)  # (B, H, N, C, d)
    if log_alpha is None:
        b = qc.new_zeros(*qc.shape[:3], 1, 1)  # (B, H, N, 1, 1): a zero log decay
        scores = (qc @ kc.transpose(-1, -2)).tril()  # (B, H, N, C, C)
    else:
        b = split_chunks(log_alpha, chunk).cumsum(dim=3)  # (B, H, N, C, dk) or (B, H, N, C, 1)
        if b.shape[-1] == 1:
            scores = (qc @ kc.transpose(-1, -2)) * causal_decay(b)[..., 0]
        else:
            scores = gated_scores(qc, kc, b)
    o = scores @ vc  # (B, H, N, C, dv)

    b_last = b[..., -1:, :]  # (B, H, N, 1, dk)
    to_end = (kc * (b_last - b).exp()).transpose(-1, -2) @ vc  # (B, H, N, dk, dv)
    chunk_decay = b_last.exp().transpose(-1, -2)  # (B, H, N, dk, 1)
    h = initial_state(q, v, h0)
    entering = []
    for decay, written in zip(chunk_decay.unbind(2), to_end.unbind(2)):
        entering.append(h)
        h = decay * h + written
    entering = torch.stack(entering, dim=2)  # (B, H, N, dk, dv)
    o = o + (qc * b.exp()) @ entering
    return merge_chunks(o, T), h


def gated_scores(q: Tensor, k: Tensor, b: Tensor) -> Tensor:
    """S_ij = Σ_d q_id k_jd exp(b_id - b_jd) for j ≤ i, else 0.  q, k, b: (..., C, dk) -> (..., C, C)."""
    return _GatedScores.apply(q, k, b)


class _GatedScores(torch.autograd.Function):
    """`gated_scores` with a hand-written backward that recomputes the (C, C, dk) decay instead of
    letting autograd store it and its intermediates (this part dominates GLA's cost on CPU).

    With G = ∂L/∂S and E_ijd = exp(b_id - b_jd)[j ≤ i]:
        dq_id = Σ_j G_ij E_ijd k_jd,   dk_jd = Σ_i G_ij E_ijd q_id,   db = q ⊙ dq - k ⊙ dk,
    the last because ∂S_ij/∂b_id = -∂S_ij/∂b_jd = q_id k_jd E_ijd (GLA paper, §4.3).
    The causal mask is applied to the (C, C) scores and their gradient, not to the large tensor.
    """

    @staticmethod
    def unmasked_decay(b: Tensor) -> Tensor:
        """exp(min(b_id - b_jd, 0)): E_ijd on and below the diagonal, 1 above it (masked later)."""
        return (b[..., :, None, :] - b[..., None, :, :]).clamp_max_(0).exp_()  # (..., C, C, dk)

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(q, k, b)
        weighted_keys = _GatedScores.unmasked_decay(b).mul_(k[..., None, :, :])  # (..., C, C, dk)
        return torch.einsum("...ijd,...id->...ij", weighted_keys, q).tril()  # (..., C, C)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, b = ctx.saved_tensors
        weighted = _GatedScores.unmasked_decay(b).mul_(grad.tril()[..., None])  # (..., C, C, dk): G_ij E_ijd
        dq = (weighted * k[..., None, :, :]).sum(-2)  # (elementwise then sum: einsum would transpose)
        dk = weighted.mul_(q[..., :, None, :]).sum(-3)
        return dq, dk, q * dq - k * dk


# ---------------------------------------------------------------- the kernel where it can run


def gla(
    q: Tensor, k: Tensor, v: Tensor, log_alpha: Tensor | None, h0: Tensor | None = None, chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """`gla_chunked` (chunk None: GLA_CHUNK), or on CUDA tensors its Triton kernel `gla_triton`
    (which picks its own chunk).  Returns (o (B, H, T, dv), h_T (B, H, dk, dv))."""
    if use_triton(q, k, v, log_alpha, h0):
        from einsearch.kernels.gla import gla_triton

        return gla_triton(q, k, v, log_alpha, h0)
    return gla_chunked(q, k, v, log_alpha, h0, chunk=chunk or GLA_CHUNK)


TORCH_FORMS = {gla: gla_chunked}  # op -> its PyTorch form, which an export runs
