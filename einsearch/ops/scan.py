"""The diagonal linear recurrence of S4D and Mamba's selective scan, for every channel d and state
index n:

    h_t[d, n] = exp(log_a_t[d, n]) · h_{t-1}[d, n] + x_t[d] · b_t[n] ;   y_t[d] = Σ_n c_t[n] · h_t[d, n]

x (B, T, D), log_a (B, T, D, N) with log_a ≤ 0, b, c (B, T, N), h0 (B, D, N) or None for zeros
-> y (B, T, D), h_T (B, D, N).

Written three ways: `diag_step` (one step) and `naive_scan_diag` (the loop), the spec;
`scan_diag_chunked`, chunk by chunk in parallel; `scan_diag`, which runs the Triton kernel
(`einsearch.kernels.scan`) on a GPU and `scan_diag_chunked` elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from einsearch.ops.dispatch import use_triton

DIAG_CHUNK = 2  # tuned for CPU: see `scan_diag_chunked`


# ---------------------------------------------------------------- the spec: one step, the loop


def diag_step(x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the diagonal recurrence, for every channel d and state index n:

        h[d, n] = exp(log_a[d, n]) · h[d, n] + x[d] · b[n] ;   y[d] = Σ_n c[n] · h[d, n]

    x (B, D), log_a (B, D, N), b (B, N), c (B, N), h (B, D, N) -> y (B, D), h (B, D, N).
    """
    h = log_a.exp() * h + x[:, :, None] * b[:, None, :]
    return torch.einsum("bdn,bn->bd", h, c), h


def naive_scan_diag(
    x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The diagonal recurrence as a plain loop over time (the reference for `scan_diag_chunked`).

    x (B, T, D), log_a (B, T, D, N), b (B, T, N), c (B, T, N), h0 (B, D, N) or None for zeros
    -> y (B, T, D), h_T (B, D, N).
    """
    batch, _, d = x.shape
    h = x.new_zeros(batch, d, b.shape[-1]) if h0 is None else h0
    ys = []
    for x_t, log_a_t, b_t, c_t in zip(x.unbind(1), log_a.unbind(1), b.unbind(1), c.unbind(1)):
        y_t, h = diag_step(x_t, log_a_t, b_t, c_t, h)
        ys.append(y_t)
    return torch.stack(ys, dim=1), h


# ---------------------------------------------------------------- the chunked form


def scan_diag_chunked(
    x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h0: Tensor | None = None, chunk: int = DIAG_CHUNK
) -> tuple[Tensor, Tensor]:
    """The diagonal recurrence of `naive_scan_diag`, computed chunk by chunk in parallel.

        h_t[d, n] = exp(log_a_t[d, n]) · h_{t-1}[d, n] + x_t[d] · b_t[n] ;   y_t[d] = Σ_n c_t[n] · h_t[d, n]

    x (B, T, D), log_a (B, T, D, N) with log_a ≤ 0, b (B, T, N), c (B, T, N), h0 (B, D, N) or
    None for zeros -> y (B, T, D), h_T (B, D, N).  Any T ≥ 1 and chunk ≥ 1.

    Time is cut into chunks of L = chunk steps (the last one padded with x = 0 and log_a = 0,
    which leaves the state unchanged).  With Λ(i, t] = Σ_{i<r≤t} log_a_r = cumsum_t - cumsum_i,
    the log decay from just after step i to step t, inside one chunk (positions 0..L-1,
    incoming state h_in):

        y_t[d] = Σ_n c_t[n] exp(Λ(-1, t][d, n]) h_in[d, n]           (the incoming state)
               + x_t[d] Σ_n c_t[n] b_t[n]                               (the token itself)
               + Σ_{i<t} x_i[d] Σ_n c_t[n] b_i[n] exp(Λ(i, t][d, n])   (earlier tokens of the chunk)

    Λ is formed for the causal pairs (i < t) only, directly as the sum of log_a over each
    interval (one matrix product with a 0/1 interval matrix; no masking needed, no cancellation
    between two large cumulative sums), so every exponent is ≤ 0: a strong decay underflows to
    0 and nothing can overflow.  Each chunk hands on h_out = exp(Λ(-1, L-1]) ⊙ h_in + h_local,
    h_local being its end state from a zero incoming state; this carry is the only loop, one
    step per chunk.

    Cost: the pairs make the work per token about (L+1)/2 times the loop's, done in a few large
    operations instead of T small ones.  On one CPU thread, forward + backward at T = 1024,
    D = 64, N = 16, L = 2 was fastest (L = 4 close, L = 8 slower than the loop): about 1.5× the
    loop at batch 4, but 0.4× at batch 16, where the loop's per-step tensors stay in cache and
    these stream from memory.  The chunked form is the layout for a GPU kernel, not a CPU win.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    batch, T, d = x.shape
    n = b.shape[-1]
    if h0 is None:
        h0 = x.new_zeros(batch, d, n)
    L = min(chunk, T)
    pad = -T % L
    if pad:  # F.pad copies even when there is nothing to add
        x, b, c = (F.pad(z, (0, 0, 0, pad)) for z in (x, b, c))
        log_a = F.pad(log_a, (0, 0, 0, 0, 0, pad))
    K = (T + pad) // L
    x, b, c = x.reshape(batch, K, L, d), b.reshape(batch, K, L, n), c.reshape(batch, K, L, n)
    log_a = log_a.reshape(batch, K, L, d * n)

    # Interval matrices: row t of `from_start` selects (-1, t]; row p of `between` selects
    # (i_p, t_p] for the pairs i_p < t_p, listed row-major (by t, then i), so the last L-1 rows
    # are the pairs (L-1, i) ending the chunk.
    r = torch.arange(L, device=x.device)
    t_idx, i_idx = torch.tril_indices(L, L, -1, device=x.device)
    from_start = (r[None, :] <= r[:, None]).to(x.dtype)  # (L, L)
    between = ((r[None, :] > i_idx[:, None]) & (r[None, :] <= t_idx[:, None])).to(x.dtype)  # (P, L)
    decay_in = torch.matmul(from_start, log_a).exp().view(batch, K, L, d, n)  # (B, K, L, D, N): exp Λ(-1, t]
    decay_pair = torch.matmul(between, log_a).exp().view(batch, K, -1, d, n)  # (B, K, P, D, N): exp Λ(i, t]

    # Contributions of the chunk's own tokens.
    y = x * (c * b).sum(-1, keepdim=True)  # (B, K, L, D)
    cb = c[:, :, t_idx] * b[:, :, i_idx]  # (B, K, P, N)
    weight = (decay_pair * cb[:, :, :, None, :]).sum(-1) * x[:, :, i_idx]  # (B, K, P, D)
    to_t = F.one_hot(t_idx, L).to(x.dtype).T  # (L, P): pair p contributes to y_{t_p}
    y = y + torch.matmul(to_t, weight)
    ending = decay_pair[:, :, decay_pair.shape[2] - (L - 1) :]  # (B, K, L-1, D, N): exp Λ(i, L-1], i < L-1
    inputs = x[..., None] * b[:, :, :, None, :]  # (B, K, L, D, N): x_i b_iᵀ
    h_local = (ending * inputs[:, :, :-1]).sum(2) + inputs[:, :, -1]  # (B, K, D, N)

    # Carry the state across chunks: h_out = exp(Λ(-1, L-1]) ⊙ h_in + h_local, one step per chunk.
    h, h_in = h0, []
    for decay_k, h_local_k in zip(decay_in[:, :, -1].unbind(1), h_local.unbind(1)):
        h_in.append(h)
        h = torch.addcmul(h_local_k, decay_k, h)
    h_in = torch.stack(h_in, dim=1)  # (B, K, D, N): the state entering each chunk
    y = y + torch.einsum("bkldn,bkln->bkld", decay_in * h_in[:, :, None], c)
    return y.reshape(batch, K * L, d)[:, :T], h


# ---------------------------------------------------------------- the kernel where it can run


def scan_diag(
    x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h0: Tensor | None = None, chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """`scan_diag_chunked` (chunk None: DIAG_CHUNK), or on CUDA tensors its Triton kernel
    `scan_diag_triton`.  Returns (y (B, T, D), h_T (B, D, N))."""
    if use_triton(x, log_a, b, c, h0):
        from einsearch.kernels.scan import scan_diag_triton

        return scan_diag_triton(x, log_a, b, c, h0)
    return scan_diag_chunked(x, log_a, b, c, h0, chunk=chunk or DIAG_CHUNK)


TORCH_FORMS = {scan_diag: scan_diag_chunked}  # op -> its PyTorch form, which an export runs
