"""Softmax attention (Transformer; sliding-window and chunked variants) through torch SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.primitives.base import BuildError, Mixer, State, head_dim


def rope(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding (rotate-half form) of x: (B, H, T, d) at integer positions (T,)."""
    d = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)  # (d/2,)
    angles = positions.to(torch.float32)[:, None] * inv_freq  # (T, d/2)
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(x.dtype)  # (T, d)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def visible(query: Tensor, key: Tensor, window: int | None, chunk: int | None) -> Tensor:
    """Boolean mask: may the query at position `query` see the key at position `key`?"""
    mask = key <= query
    if window is not None:
        mask &= key > query - window
    if chunk is not None:
        mask &= key // chunk == query // chunk
    return mask


class SoftmaxAttention(Mixer):
    """softmax(q kᵀ / √d + mask) v per head; mask = causal ∧ window ∧ same-chunk."""

    def __init__(self, d_model: int, heads: int, pos: str, window: int | None = None, chunk: int | None = None):
        super().__init__()
        self.d_model, self.heads = d_model, heads
        self.d_head = head_dim(d_model, heads, "attn")
        if pos == "rope" and self.d_head % 2:
            raise BuildError(f"attn: pos=rope needs an even head size, got d_model/heads={self.d_head}")
        self.pos, self.window, self.chunk = pos, window, chunk
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        if self.pos == "rope":
            q, k = rope(q, positions), rope(k, positions)
        return q, k, v

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        positions = torch.arange(T, device=x.device)
        q, k, v = self._heads(x, positions)
        if self.window is None and self.chunk is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            mask = visible(positions[:, None], positions[None, :], self.window, self.chunk)  # (T, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def init_state(self, batch: int) -> State:
        empty = torch.zeros(batch, self.heads, 0, self.d_head, device=self._device, dtype=self._dtype)
        return (empty, empty, torch.zeros(0, dtype=torch.long, device=self._device))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        keys, values, positions = state  # (B, H, L, d), (B, H, L, d), (L,)
        t = positions[-1] + 1 if len(positions) else torch.zeros((), dtype=torch.long, device=x.device)
        q, k, v = self._heads(x[:, None], t[None])
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        positions = torch.cat([positions, t[None]])
        keep = visible(t, positions, self.window, self.chunk)  # the cache holds only what can be seen
        keys, values, positions = keys[:, :, keep], values[:, :, keep], positions[keep]
        y = F.scaled_dot_product_attention(q, keys, values)  # (B, H, 1, d)
        return self.out(y.reshape(x.shape[0], self.d_model)), (keys, values, positions)

    def _visible_keys(self, seq_len: int) -> Tensor:
        """Number of keys each query position sees, (seq_len,)."""
        positions = torch.arange(seq_len)
        return visible(positions[:, None], positions[None, :], self.window, self.chunk).sum(1)

    def flops(self, seq_len: int) -> float:
        projections = 2.0 * 4 * self.d_model**2 * seq_len
        scores_and_values = 2.0 * 2 * self.d_model * float(self._visible_keys(seq_len).sum())
        return projections + scores_and_values

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d_model * int(self._visible_keys(seq_len).max()) if seq_len else 0
