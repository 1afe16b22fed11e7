"""What the chunkwise forms of the matrix memories (GLA, the delta rule) share.

They cut time into chunks of C tokens, (B, H, T, ...) -> (B, H, N, C, ...), padding the tail with
zeros that leave the state unchanged, and weigh token pairs inside a chunk by the causal decay
exp(b_i - b_j), b a cumulative log decay, so that no exponent is ever positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def split_chunks(x: Tensor, chunk: int) -> Tensor:
    """(B, H, T, ...) -> (B, H, N, C, ...), zero-padding T up to N*C."""
    B, H, T = x.shape[:3]
    n = -(-T // chunk)
    pad = n * chunk - T
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.reshape(B, H, n, chunk, *x.shape[3:])


def merge_chunks(x: Tensor, length: int) -> Tensor:
    """(B, H, N, C, ...) -> (B, H, T, ...), dropping the padding."""
    B, H, n, c = x.shape[:4]
    return x.reshape(B, H, n * c, *x.shape[4:])[:, :, :length]


def initial_state(q: Tensor, v: Tensor, h0: Tensor | None) -> Tensor:
    """The state entering the sequence: h0, or zeros (B, H, dk, dv) shaped by q (B, H, T, dk) and v (..., dv)."""
    B, H, _, dk = q.shape
    return h0 if h0 is not None else q.new_zeros(B, H, dk, v.shape[-1])


def causal_decay(b: Tensor) -> Tensor:
    """E_ijd = exp(b_id - b_jd) for j ≤ i and 0 above the diagonal: b (..., C, d) -> (..., C, C, d).

    b is a cumulative log decay, so it only falls: b_i - b_j ≤ 0 for j ≤ i and ≥ 0 above the
    diagonal, where it is clamped to 0 before the exponential and zeroed after.  No exponent is
    ever positive.  (Masking with -inf instead is as exact but several times slower on CPU.)
    """
    C = b.shape[-2]
    above = torch.ones(C, C, dtype=torch.bool, device=b.device).triu(1)[:, :, None]  # j > i
    return (b[..., :, None, :] - b[..., None, :, :]).clamp_max(0).exp().masked_fill(above, 0)

