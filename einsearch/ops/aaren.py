"""Softmax attention over the prefix as a scan (Aaren: Feng et al. 2024, "Attention as an RNN"):

    o_t = Σ_{i≤t} exp(s_i) v_i / Σ_{i≤t} exp(s_i)

s (B, H, T) scores, v (B, H, T, E) values -> o (B, H, T, E), kept as the running summary (m, u, w)
of Feng et al.: the largest score so far, and the sums of exp(s_i - m) v_i and exp(s_i - m).

`aaren_combine` merges two summaries; `naive_aaren` applies it one token at a time (the spec; a
module's step does the same to its state).  `aaren_chunked` computes the same chunk by chunk, and
`aaren` runs the Triton kernel (`einsearch.kernels.aaren`) on a GPU and `aaren_chunked` elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from einsearch.ops.dispatch import use_triton

AAREN_CHUNK = 32  # tuned for CPU: see `aaren_chunked`

Triple = tuple[Tensor, Tensor, Tensor]


# ---------------------------------------------------------------- the spec: the combine, the loop


def aaren_combine(first: Triple, second: Triple) -> Triple:
    """Feng et al. (2024) combine of two (m, u, w) summaries, the earlier one first:

        m = max(m_A, m_B),  u = u_A e^(m_A - m) + u_B e^(m_B - m),  w = w_A e^(m_A - m) + w_B e^(m_B - m)

    m, w (...), u (..., E).  The empty summary (-inf, 0, 0) is its identity.
    """
    (m_a, u_a, w_a), (m_b, u_b, w_b) = first, second
    m = torch.maximum(m_a, m_b)
    scale_a, scale_b = torch.exp(m_a - m), torch.exp(m_b - m)
    return m, u_a * scale_a[..., None] + u_b * scale_b[..., None], w_a * scale_a + w_b * scale_b


def aaren_empty(shape: tuple[int, ...], value_dim: int, dtype: torch.dtype, device: torch.device) -> Triple:
    """The identity summary (m, u, w) = (-inf, 0, 0): m, w of `shape`, u of (*shape, value_dim)."""
    m = torch.full(shape, float("-inf"), dtype=dtype, device=device)
    return m, torch.zeros(*shape, value_dim, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)


def naive_aaren(s: Tensor, v: Tensor) -> Tensor:
    """Prefix softmax by applying `aaren_combine` one token at a time (the reference for `aaren_chunked`).

    s (B, H, T) scores, v (B, H, T, E) values -> o (B, H, T, E), o_t = u_t / w_t.
    """
    batch, heads, _, e = v.shape
    summary = aaren_empty((batch, heads), e, v.dtype, v.device)
    outputs = []
    for s_t, v_t in zip(s.unbind(2), v.unbind(2)):
        summary = aaren_combine(summary, (s_t, v_t, torch.ones_like(s_t)))
        _, u, w = summary
        outputs.append(u / w[..., None])
    return torch.stack(outputs, dim=2)


# ---------------------------------------------------------------- the chunked form


def aaren_chunked(s: Tensor, v: Tensor, chunk: int = AAREN_CHUNK) -> Tensor:
    """The prefix softmax of `naive_aaren`, computed chunk by chunk:

        o_t = Σ_{i≤t} exp(s_i - m_t) v_i / Σ_{i≤t} exp(s_i - m_t),   m_t = max_{i≤t} s_i

    s (B, H, T), v (B, H, T, E) -> o (B, H, T, E).  Any T ≥ 1.

    Within a chunk of L = chunk tokens, with the chunk's own running max m'_t = max of s_i over
    the chunk up to t (torch.cummax), the chunk's summary at t is an L × L causal matrix product:
    u'_t = Σ_{i≤t} exp(s_i - m'_t) v_i, w'_t = Σ_{i≤t} exp(s_i - m'_t); masked entries are
    exp(-inf) = 0 and all others exp(≤ 0), so large scores cannot overflow and the token's own
    term keeps w'_t ≥ 1.  The summaries of whole chunks are then combined left to right with
    `aaren_combine` (one step per chunk), and each position's summary is the combine of its
    chunk's incoming summary with (m'_t, u'_t, w'_t).  The reference maxima cancel between u and
    w, so they carry no gradient and are detached.  A plain cumsum of exp(s_i - m_t) over the
    whole sequence is not used: it needs one reference for all t, which either overflows or
    underflows when scores differ by more than ~88.

    Cost: L·E per token for the chunk matrix, K = T/L combine steps.  On one CPU thread at
    T = 1024, forward + backward, L = 32 was fastest: about 20× the loop at batch 4 with 2
    heads of 32, 4.5× at batch 16 with 4 heads of 16.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    batch, heads, T, e = v.shape
    L = min(chunk, T)
    pad = -T % L
    if pad:  # padded positions come after every real one, so they change no real output
        s, v = F.pad(s, (0, pad)), F.pad(v, (0, 0, 0, pad))
    K = (T + pad) // L
    s, v = s.reshape(batch, heads, K, L), v.reshape(batch, heads, K, L, e)

    m_local = s.detach().cummax(dim=-1).values  # (B, H, K, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=s.device).tril()
    logits = s[..., None, :] - m_local[..., :, None]  # (B, H, K, L_t, L_i): s_i - m'_t
    p = logits.masked_fill(~causal, float("-inf")).exp()
    local = (m_local, p @ v, p.sum(-1))  # (B, H, K, L), (B, H, K, L, E), (B, H, K, L)

    chunk_summaries = zip(*(z[:, :, :, -1].unbind(2) for z in local))  # each chunk's summary at its end
    summary = aaren_empty((batch, heads), e, v.dtype, v.device)
    incoming = []
    for chunk_summary in chunk_summaries:
        incoming.append(summary)
        summary = aaren_combine(summary, chunk_summary)
    m_in, u_in, w_in = (torch.stack(z, dim=2) for z in zip(*incoming))  # (B, H, K), (B, H, K, E), (B, H, K)
    _, u, w = aaren_combine((m_in[..., None], u_in[..., None, :], w_in[..., None]), local)
    return (u / w[..., None]).reshape(batch, heads, K * L, e)[:, :, :T]


# ---------------------------------------------------------------- the kernel where it can run


def aaren(s: Tensor, v: Tensor, chunk: int | None = None) -> Tensor:
    """`aaren_chunked` (chunk None: AAREN_CHUNK), or on CUDA tensors its Triton kernel
    `aaren_triton`.  Returns o (B, H, T, E)."""
    if use_triton(s, v):
        from einsearch.kernels.aaren import aaren_triton

        return aaren_triton(s, v)
    return aaren_chunked(s, v, chunk=chunk or AAREN_CHUNK)


TORCH_FORMS = {aaren: aaren_chunked}  # op -> its PyTorch form, which an export runs
