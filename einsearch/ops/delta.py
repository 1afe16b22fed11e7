"""The delta rule (DeltaNet) and the gated delta rule (Gated DeltaNet): a matrix state per head
that each token first reads at its key and then corrects towards its value.

On the transposed state h = Sᵀ (dk × dv):

    S_t = α_t S_{t-1} (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ,  o_t = S_t q_t
    ⇔  h' = α_t h_{t-1};  u_t = β_t (v_t - h'ᵀ k_t);  h_t = h' + k_t u_tᵀ;  o_t = h_tᵀ q_t

q, k: (B, H, T, dk); v: (B, H, T, dv); beta: (B, H, T); log_alpha: (B, H, T), or None for α = 1
(the ungated rule); h: (B, H, dk, dv), zeros when `h0` is None.

Written three ways, with the same arguments and results: `delta_rule_step` (one token) and
`naive_delta_rule` (the loop), the spec; `delta_rule_chunked`, chunkwise through the WY/UT
representation; `delta_rule`, which runs the Triton kernel (`einsearch.kernels.delta`) on a GPU
and `delta_rule_chunked` elsewhere.  As in `einsearch.ops.gla`, decays enter as logarithms and
every exponent of the chunked form is ≤ 0; the padded tail has β = 0, which leaves the state
unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from einsearch.ops.chunks import causal_decay, initial_state, merge_chunks, split_chunks
from einsearch.ops.dispatch import use_triton

DELTA_CHUNK = 32  # tuned for forward + backward on one CPU thread at T = 1024, d_model = 64, 4 heads


# ---------------------------------------------------------------- the spec: one token, the loop


def delta_rule_step(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_alpha: Tensor | None, h: Tensor
) -> tuple[Tensor, Tensor]:
    """One token of the (gated) delta rule, on the transposed state h = Sᵀ (dk × dv):

        S_t = α_t S_{t-1} (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ,  o_t = S_t q_t
        ⇔  h' = α_t h_{t-1};  u_t = β_t (v_t - h'ᵀ k_t);  h_t = h' + k_t u_tᵀ;  o_t = h_tᵀ q_t

    q, k: (B, H, dk); v: (B, H, dv); beta, log_alpha: (B, H) (log_alpha None: α = 1).
    """
    if log_alpha is not None:
        h = log_alpha.exp()[..., None, None] * h
    u = beta[..., None] * (v - torch.einsum("bhkv,bhk->bhv", h, k))  # (B, H, dv)
    h = h + k[..., None] * u[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q, h), h


def naive_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_alpha: Tensor | None = None,
    h0: Tensor | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The delta rule as a plain loop over tokens (the reference for `delta_rule_chunked`;
    `chunk` is ignored).  beta, log_alpha: (B, H, T)."""
    h = initial_state(q, v, h0)
    outputs = []
    for t in range(q.shape[2]):
        gate = None if log_alpha is None else log_alpha[:, :, t]
        o, h = delta_rule_step(q[:, :, t], k[:, :, t], v[:, :, t], beta[:, :, t], gate, h)
        outputs.append(o)
    return torch.stack(outputs, dim=2), h


# ---------------------------------------------------------------- the chunked form


def delta_rule_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_alpha: Tensor | None = None,
    h0: Tensor | None = None,
    chunk: int = DELTA_CHUNK,
) -> tuple[Tensor, Tensor]:
    """The (gated) delta rule, chunkwise through the WY/UT representation (Yang et al. 2024,
    "Parallelizing Linear Transformers with the Delta Rule over Sequence Length"; the gated form
    of Yang et al. 2025, "Gated Delta Networks").

    In a chunk with g_i = Σ_{s≤i} log α_s (from the chunk start), γ_i = exp(g_i), and h the state
    entering the chunk, write the update as h_i = α_i h_{i-1} + k_i u_iᵀ.  The new values
    u_i = β_i (v_i - α_i h_{i-1}ᵀ k_i) solve the unit lower-triangular system

        (I + A) U = diag(β) V - diag(β γ) K h,   A_ij = β_i (k_i·k_j) exp(g_i - g_j) for j < i,

    so with T = (I + A)⁻¹ (a triangular solve): U = T diag(β) V - T diag(βγ) K h = U₀ - W h, and

        O  = diag(γ) Q h + (Q Kᵀ ⊙ exp(g_i - g_j) ⊙ [j ≤ i]) U
        h' = γ_C h + (K ⊙ exp(g_C - g))ᵀ U.

    Everything but h is computed for all chunks at once; substituting U leaves one matrix product
    per chunk in the loop over chunks: h' = (γ_C I - K̃ᵀ W) h + K̃ᵀ U₀ with K̃ = K ⊙ exp(g_C - g).
    Every exponent is ≤ 0.
    """
    B, H, T, dk = q.shape
    chunk = min(chunk, T)
    qc, kc, vc = split_chunks(q, chunk), split_chunks(k, chunk), split_chunks(v, chunk)  # (B, H, N, C, d)
    beta_c = split_chunks(beta[..., None], chunk)  # (B, H, N, C, 1)
    if log_alpha is None:
        g = torch.zeros_like(beta_c)
    else:
        g = split_chunks(log_alpha[..., None], chunk).cumsum(dim=3)  # (B, H, N, C, 1)
    g_last = g[:, :, :, -1:]  # (B, H, N, 1, 1)

    decay = causal_decay(g)[..., 0]  # (B, H, N, C, C): exp(g_i - g_j) for j ≤ i, else 0
    a = (beta_c * (kc @ kc.transpose(-1, -2)) * decay).tril(-1)  # strictly lower
    rhs = torch.cat([beta_c * vc, beta_c * g.exp() * kc], dim=-1)  # (B, H, N, C, dv + dk)
    eye = torch.eye(chunk, dtype=q.dtype, device=q.device)
    solved = torch.linalg.solve_triangular(eye + a, rhs, upper=False, unitriangular=True)
    u0, w = solved.split([v.shape[-1], dk], dim=-1)  # (B, H, N, C, dv), (B, H, N, C, dk)

    qk = (qc @ kc.transpose(-1, -2)) * decay  # (B, H, N, C, C), zero above the diagonal
    k_to_end = kc * (g_last - g).exp()  # (B, H, N, C, dk)
    transition = g_last.exp() * torch.eye(dk, dtype=q.dtype, device=q.device) - k_to_end.transpose(-1, -2) @ w
    written = k_to_end.transpose(-1, -2) @ u0  # (B, H, N, dk, dv)

    h = initial_state(q, v, h0)
    entering = []
    for step, write in zip(transition.unbind(2), written.unbind(2)):
        entering.append(h)
        h = step @ h + write
    entering = torch.stack(entering, dim=2)  # (B, H, N, dk, dv)
    o = qk @ u0 + (qc * g.exp() - qk @ w) @ entering
    return merge_chunks(o, T), h


# ---------------------------------------------------------------- the kernel where it can run


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_alpha: Tensor | None = None,
    h0: Tensor | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """`delta_rule_chunked` (chunk None: DELTA_CHUNK), or on CUDA tensors its Triton kernel
    `delta_rule_triton`.  Returns (o (B, H, T, dv), h_T (B, H, dk, dv))."""
    if use_triton(q, k, v, beta, log_alpha, h0):
        from einsearch.kernels.delta import delta_rule_triton

        return delta_rule_triton(q, k, v, beta, log_alpha, h0)
    return delta_rule_chunked(q, k, v, beta, log_alpha, h0, chunk=chunk or DELTA_CHUNK)


TORCH_FORMS = {delta_rule: delta_rule_chunked}  # op -> its PyTorch form, which an export runs
