"""The state-space dual (SSD) scan of Mamba-2 (Dao & Gu 2024): one scalar decay per head.

For every head h, with its state H (P × N):

    H_t = exp(log_a_t[h]) · H_{t-1} + x_t[h] b_tᵀ ;   y_t[h] = H_t c_t

x (B, T, H, P) the heads' inputs (Δ already multiplied in), log_a (B, T, H) ≤ 0, b and c (B, T, N)
shared by the heads (Mamba-2's single group), h0 (B, H, P, N) or None for zeros
-> y (B, T, H, P), h_T (B, H, P, N).

Unlike `scan.py`'s diagonal recurrence, whose decay differs per (channel, state) pair, the decay
here is one number per head and step, so token i reaches step t of the same chunk with the weight
(c_t · b_i) exp(Σ_{i<r≤t} log_a_r): one causal L × L matrix per head, times the chunk's inputs.
A chunk is matrix products (the "dual" form); the loop carries the state from chunk to chunk.

The GLA op with one decay per head (`einsearch.ops.gla`, RetNet's form) computes the same
recurrence, but with keys and queries of its own per head; here b and c are shared by the heads,
so a chunk's scores c_t · b_i are formed once for all heads (routed through `gla_chunked` with b
and c copied to every head, this scan ran 1.3× slower: forward + backward, T = 1024, 4 heads,
batch 4, one CPU thread).

Written two ways: `ssd_step` (one step) and `naive_ssd` (the loop), the spec; `ssd_chunked`, chunk
by chunk.  No Triton kernel: the chunked form is matrix products, which a GPU runs as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from einsearch.ops.chunks import causal_decay

# Chunk length, tuned on one CPU thread: scan(ssd, heads=4, state=16) at d_model 64, T = 1024,
# batch 4, forward + backward: 16 and 32 tie (about 14x the loop), 64 about 10x, 128 about 4x.
SSD_CHUNK = 32


# ---------------------------------------------------------------- the spec: one step, the loop


def ssd_step(x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """One step: x (B, H, P), log_a (B, H), b, c (B, N), h (B, H, P, N) -> y (B, H, P), h (B, H, P, N)."""
    h = log_a.exp()[:, :, None, None] * h + x[:, :, :, None] * b[:, None, None, :]
    y = (h @ c[:, None, :, None])[..., 0]  # (B, H, P)
    return y, h


def naive_ssd(x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence as a plain loop over time (the spec of `ssd_chunked`)."""
    batch, _, heads, p = x.shape
    h = x.new_zeros(batch, heads, p, b.shape[-1]) if h0 is None else h0
    ys = []
    for x_t, log_a_t, b_t, c_t in zip(x.unbind(1), log_a.unbind(1), b.unbind(1), c.unbind(1)):
        y_t, h = ssd_step(x_t, log_a_t, b_t, c_t, h)
        ys.append(y_t)
    return torch.stack(ys, dim=1), h


# ---------------------------------------------------------------- chunk by chunk


def ssd_chunked(
    x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h0: Tensor | None = None, chunk: int = SSD_CHUNK
) -> tuple[Tensor, Tensor]:
    """The recurrence of `naive_ssd`, chunk by chunk (Mamba-2's chunked SSD algorithm, §6).

    Same arguments and results as `naive_ssd`; any T ≥ 1 and chunk ≥ 1.  Time is cut into K
    chunks of L steps (the last padded with x = 0 and log_a = 0, which leave the state alone).
    With a_t = Σ_{r≤t} log_a_r the cumulative log decay inside a chunk (from its start) and H_in
    the state entering it:

        y_t   = Σ_{i≤t} (c_t · b_i) exp(a_t - a_i) x_i      (the chunk's tokens: (L × L) @ (L × P))
              + exp(a_t) H_in c_t                            (the state entering the chunk)
        H_out = exp(a_{L-1}) H_in + Σ_i exp(a_{L-1} - a_i) x_i b_iᵀ

    Every exponent is ≤ 0 (`causal_decay` clamps the pairs above the diagonal before the
    exponential), so a strong decay underflows to 0 and nothing overflows.

    Cost: about L·P multiply-adds per token and head for the chunk matrix times the inputs, plus
    L·N per token for the scores the heads share, against 2·N·P per token and head for the loop's
    update and readout, in a few large products instead of T small ones: at T = 1024
    on one CPU thread, forward + backward, the mixer runs about 14× faster than with the loop at
    batch 4 and 5.6× at batch 16, where the loop's small per-step products amortise better
    (BENCHMARKS.md).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    batch, T, heads, p = x.shape
    n = b.shape[-1]
    if h0 is None:
        h0 = x.new_zeros(batch, heads, p, n)
    L = min(chunk, T)
    pad = -T % L
    if pad:  # F.pad copies even when there is nothing to add
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        log_a, b, c = (F.pad(z, (0, 0, 0, pad)) for z in (log_a, b, c))
    K = (T + pad) // L
    x = x.reshape(batch, K, L, heads, p).transpose(2, 3)  # (B, K, H, L, P)
    b, c = b.reshape(batch, K, 1, L, n), c.reshape(batch, K, 1, L, n)  # one group: shared by the heads
    a = log_a.reshape(batch, K, L, heads).transpose(2, 3).cumsum(-1)  # (B, K, H, L)

    # The chunk's own tokens: a causal L × L matrix per head.
    weights = causal_decay(a[..., None])[..., 0] * (c @ b.transpose(-1, -2))  # (B, K, H, L, L)
    y = weights @ x  # (B, K, H, L, P)

    # Each chunk's end state from a zero incoming state, then the carry: one step per chunk.
    to_end = (a[..., -1:] - a).exp()  # (B, K, H, L): exp(a_{L-1} - a_i)
    h_local = (x * to_end[..., None]).transpose(-1, -2) @ b  # (B, K, H, P, N)
    h, h_in = h0, []
    for decay_k, h_local_k in zip(a[..., -1].exp().unbind(1), h_local.unbind(1)):
        h_in.append(h)
        h = decay_k[:, :, None, None] * h + h_local_k
    h_in = torch.stack(h_in, dim=1)  # (B, K, H, P, N): the state entering each chunk

    y = y + a.exp()[..., None] * (c @ h_in.transpose(-1, -2))  # (B, K, H, L, P)
    return y.transpose(2, 3).reshape(batch, K * L, heads, p)[:, :T], h
