"""Softmax attention (Transformer; sliding-window and chunked variants) through torch SDPA, and
recycled attention for stepping it at inference (`Recycle`, `recycle`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Recycle:
    """Recycled attention, an inference-time way to step softmax attention (Xu, Goyal & Choi 2024,
    "Recycled Attention: Efficient inference for long-context language models", §3).

    Every `stride` steps (S) a full step attends to the whole KV cache and remembers, per head, the
    `keep` (K) keys it attended to most; the steps in between attend only to those K keys plus the
    keys generated since the full step.  With the full step at time t₀, per head:

        full step t₀:           y = softmax(q kᵀ_{≤t₀} / √d) v_{≤t₀},   R = top-K_s  q·k_s   (s ≤ t₀)
        recycled t₀ < t < t₀+S:  y = softmax(q kᵀ_I / √d) v_I,           I = R ∪ {t₀+1, …, t}

    (softmax is monotone, so the top-K attention weights are the top-K scores).  Each head here has
    its own keys and one query per step, so each head keeps its own K keys and nothing is pooled
    (query heads that share a key head, as in the paper's GQA models, would pool their scores per
    group).  The full cache is still kept and still grows: it is what the next full step reads.
    With pos=rope the cache holds keys already rotated at their own positions, so a kept key keeps
    its true offset to every later query.

    choose="recent" is the baseline with the same mechanism and another index choice: R = the last
    K keys, which needs no scores, so its refreshing steps attend to R as well; with stride=1 it is
    a sliding window of K keys.
    """

    stride: int  # S: a full (refreshing) step every S steps
    keep: int  # K: keys remembered at each full step
    choose: str = "attention"  # "attention": top-K by the full step's weights; "recent": the last K keys

    def __post_init__(self) -> None:
        if self.stride < 1 or self.keep < 1:
            raise ValueError(f"recycle: stride and keep must be at least 1, got stride={self.stride}, keep={self.keep}")
        if self.choose not in ("attention", "recent"):
            raise ValueError(f"recycle: choose must be 'attention' or 'recent', got {self.choose!r}")


@contextmanager
def recycle(model: nn.Module, stride: int, keep: int, choose: str = "attention") -> Iterator[Recycle]:
    """Within the block, every full-context `SoftmaxAttention` in `model` steps with recycled
    attention (`Recycle`); `forward` (training) is unchanged.  Windowed or chunked attention already
    attends to a bounded set of keys and keeps doing so (recycling applies to full attention only).

        with einsearch.recycle(model, stride=16, keep=64):
            y, state = block.step(x, state)   # states from ordinary stepping carry on: a full step first
    """
    setting = Recycle(stride, keep, choose)
    targets = [m for m in model.modules() if isinstance(m, SoftmaxAttention) and m.window is None and m.chunk is None]
    if not targets:
        raise ValueError("recycle: the model has no full-context attention (attn(softmax) without window or chunk)")
    before = [m.recycling for m in targets]
    for m in targets:
        m.recycling = setting
    try:
        yield setting
    finally:
        for m, previous in zip(targets, before):
            m.recycling = previous


class SoftmaxAttention(Mixer):
    """softmax(q kᵀ / √d + mask) v per head; mask = causal ∧ window ∧ same-chunk.

    `recycling` (None, or a `Recycle` set by `recycle(...)`) changes how `step` attends; a recycled
    state carries two more entries than the ordinary (keys, values, positions): the kept cache
    indices (B, H, K) and the steps taken since the last full step."""

    def __init__(self, d_model: int, heads: int, pos: str, window: int | None = None, chunk: int | None = None):
        super().__init__()
        self.d_model, self.heads = d_model, heads
        self.d_head = head_dim(d_model, heads, "attn")
        if pos == "rope" and self.d_head % 2:
            raise BuildError(f"attn: pos=rope needs an even head size, got d_model/heads={self.d_head}")
        self.pos, self.window, self.chunk = pos, window, chunk
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.recycling: Recycle | None = None  # inference only: see `recycle`

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
        keys, values, positions = state[:3]  # (B, H, L, d), (B, H, L, d), (L,); recycling: + (kept, since)
        t = positions[-1] + 1 if len(positions) else torch.zeros((), dtype=torch.long, device=x.device)
        q, k, v = self._heads(x[:, None], t[None])
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        positions = torch.cat([positions, t[None]])
        if self.recycling is not None:
            y, recycled = self._recycled_step(q, keys, values, state[3:])
            return self.out(y.reshape(x.shape[0], self.d_model)), (keys, values, positions, *recycled)
        keep = visible(t, positions, self.window, self.chunk)  # the cache holds only what can be seen
        keys, values, positions = keys[:, :, keep], values[:, :, keep], positions[keep]
        y = F.scaled_dot_product_attention(q, keys, values)  # (B, H, 1, d)
        return self.out(y.reshape(x.shape[0], self.d_model)), (keys, values, positions)

    def _recycled_step(self, q: Tensor, keys: Tensor, values: Tensor, recycled: State) -> tuple[Tensor, State]:
        """One step of `Recycle` attention over the full cache `keys`, `values` (B, H, L, d), which
        already holds this step's key; `recycled` is (kept (B, H, K), since), or () when the state
        comes from ordinary stepping (then this step is a full one)."""
        r = self.recycling
        if self.window is not None or self.chunk is not None:
            raise ValueError("recycle: applies to full-context attention, not to attn(softmax) with window or chunk")
        B, H, L, d = keys.shape
        kept, since = recycled if recycled else (None, r.stride - 1)
        since = (since + 1) % r.stride  # steps since the last full step; 0: this is one
        if since == 0 and r.choose == "attention":
            scores = (q @ keys.transpose(-1, -2))[:, :, 0]  # (B, H, L)
            kept = scores.topk(min(r.keep, L), dim=-1).indices.sort(dim=-1).values  # (B, H, K), in cache order
            return F.scaled_dot_product_attention(q, keys, values), (kept, since)  # (B, H, 1, d)
        if since == 0:  # choose="recent": the last K keys, this step's included
            kept = torch.arange(max(L - r.keep, 0), L, device=keys.device).expand(B, H, -1)  # (B, H, K)
        index = kept[..., None].expand(-1, -1, -1, d)  # (B, H, K, d)
        new = L - since  # the keys generated since the full step: cache[new:]
        sub_keys = torch.cat([keys.gather(2, index), keys[:, :, new:]], 2)  # (B, H, K + since, d)
        sub_values = torch.cat([values.gather(2, index), values[:, :, new:]], 2)
        return F.scaled_dot_product_attention(q, sub_keys, sub_values), (kept, since)

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
