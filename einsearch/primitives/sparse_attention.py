"""Content-based sparse attention: routing attention (Routing Transformer) and top-k block
attention (Landmark attention / DHSA / Combiner).

Both restrict causal softmax attention to a subset of the keys chosen from the content of the
query.  Both are computed here with a dense (T × T) boolean mask and torch SDPA: exact, and cheap
enough at search scale (T of a few hundred), but the memory and time of the forward pass are
those of dense attention, O(T²) per head.  `flops` reports the cost a sparse kernel would pay, so
that a search can rank candidates by the cost the architecture implies, not by this
implementation's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.primitives.attention import visible
from einsearch.primitives.base import Mixer, State, head_dim

# ---------------------------------------------------------------------------- routing attention


class RoutingAttention(Mixer):
    """Causal attention within online k-means clusters (Roy et al. 2021, Routing Transformer).

    Per head, queries and keys are one shared projection r_t = W_r x_t (as in the paper), and
    each position is routed to the nearest of K centroids μ_1..μ_K of the L2-normalised vector
    r̂_t = r_t / ‖r_t‖:

        c_t = argmin_k ‖r̂_t − μ_k‖ = argmax_k r̂_t · μ_k      (centroids are kept unit-norm)
        y_t = Σ_{s ≤ t, c_s = c_t} softmax_s(r_t · r_s / √d) v_s

    A position always sees itself: its query and its key are the same vector, so they fall in
    the same cluster; no row of the mask is empty.

    Centroids are buffers, not parameters.  A training pass (training mode with autograd
    recording), after computing its output with the current centroids, moves every centroid that
    received keys towards their mean (no gradient), as the paper's exponential moving average
    with decay λ = 0.999:

        μ_k ← normalise(λ μ_k + (1 − λ) mean{ r̂_s : c_s = k })

    In eval mode, under torch.no_grad(), and in `step` always, the centroids are frozen, so those
    calls are deterministic.  (A training pass changes the centroids the next call uses: to
    compare two calls, use eval mode or no_grad.)

    Cost: this implementation builds the dense (T × T) mask and runs SDPA over it, O(T²) per
    head.  `flops` reports the expected cost of routed attention with balanced clusters: each
    query sees itself plus, in expectation, 1/K of its earlier keys, T + T(T−1)/(2K) scores in
    all (≈ T²/(2K)); plus the routing itself, one score against each of the K centroids per
    position.  With K = 1 this is exactly dense causal attention.
    """

    decay = 0.999

    def __init__(self, d_model: int, heads: int, clusters: int):
        super().__init__()
        self.d_model, self.heads, self.clusters = d_model, heads, clusters
        self.d_head = head_dim(d_model, heads, "attn(routing)")
        self.rv = nn.Linear(d_model, 2 * d_model, bias=False)  # shared query/key r, value v
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.register_buffer("centroids", F.normalize(torch.randn(heads, clusters, self.d_head), dim=-1))  # (H, K, d)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, T, _ = x.shape
        r, v = self.rv(x).view(B, T, 2, self.heads, self.d_head).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        return r, v

    def assign(self, r: Tensor) -> Tensor:
        """Cluster of each position: nearest unit-norm centroid of r̂, (B, H, T) long."""
        similarity = torch.einsum("bhtd,hkd->bhtk", F.normalize(r, dim=-1), self.centroids)
        return similarity.argmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        r, v = self._heads(x)
        clusters = self.assign(r)  # (B, H, T)
        positions = torch.arange(T, device=x.device)
        causal = visible(positions[:, None], positions[None, :], None, None)  # (T, T)
        same_cluster = clusters[..., :, None] == clusters[..., None, :]  # (B, H, T, T)
        y = F.scaled_dot_product_attention(r, r, v, attn_mask=causal & same_cluster)  # (B, H, T, d)
        if self.training and torch.is_grad_enabled():
            self._update_centroids(r, clusters)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    @torch.no_grad()
    def _update_centroids(self, r: Tensor, clusters: Tensor) -> None:
        """μ_k ← normalise(λ μ_k + (1 − λ) mean of the r̂ routed to k), for clusters that got any."""
        members = F.one_hot(clusters, self.clusters).to(r.dtype)  # (B, H, T, K)
        sums = torch.einsum("bhtk,bhtd->hkd", members, F.normalize(r, dim=-1))  # (H, K, d)
        counts = members.sum((0, 2))[..., None]  # (H, K, 1)
        moved = self.decay * self.centroids + (1 - self.decay) * sums / counts.clamp(min=1)
        self.centroids.copy_(torch.where(counts > 0, F.normalize(moved, dim=-1), self.centroids))

    def init_state(self, batch: int) -> State:
        empty = torch.zeros(batch, self.heads, 0, self.d_head, device=self._device, dtype=self._dtype)
        no_clusters = torch.zeros(batch, self.heads, 0, dtype=torch.long, device=self._device)
        return (empty, empty, no_clusters)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        keys, values, clusters = state  # (B, H, L, d), (B, H, L, d), (B, H, L)
        r, v = self._heads(x[:, None])  # (B, H, 1, d)
        keys, values = torch.cat([keys, r], 2), torch.cat([values, v], 2)
        clusters = torch.cat([clusters, self.assign(r)], 2)  # (B, H, L + 1)
        same_cluster = clusters == clusters[..., -1:]  # (B, H, L + 1), the last entry is the query
        y = F.scaled_dot_product_attention(r, keys, values, attn_mask=same_cluster[:, :, None])  # (B, H, 1, d)
        return self.out(y.reshape(x.shape[0], self.d_model)), (keys, values, clusters)

    def expected_scores(self, seq_len: int) -> float:
        """Expected (query, key) pairs per head with balanced clusters: T + T(T−1)/(2K)."""
        return seq_len + seq_len * (seq_len - 1) / (2 * self.clusters)

    def flops(self, seq_len: int) -> float:
        projections = 2.0 * 3 * self.d_model**2 * seq_len  # r, v, out
        routing = 2.0 * self.d_model * self.clusters * seq_len  # r̂ · μ_k, per head d × K
        scores_and_values = 2.0 * 2 * self.d_model * self.expected_scores(seq_len)
        return projections + routing + scores_and_values

    def state_size(self, seq_len: int) -> int:
        """The full KV cache (any earlier key may share a later query's cluster); cluster ids are integers."""
        return 2 * self.d_model * seq_len


# ---------------------------------------------------------------------------- top-k block attention


def choose_blocks(q: Tensor, summaries: Tensor, query_block: Tensor, k: int) -> Tensor:
    """Which completed blocks each query attends to.

    q: (B, H, T, d) queries; summaries: (B, H, N, d), the mean key of each completed block;
    query_block: (T,) the block of each query.  A query may choose among the blocks before its
    own (j < query_block); it takes the k whose summary scores highest against it (all of them
    when fewer than k).  Returns (B, H, T, N) bool.  The choice is discrete: no gradient flows
    through it.
    """
    N = summaries.shape[2]
    with torch.no_grad():
        candidate = torch.arange(N, device=q.device)[None, :] < query_block[:, None]  # (T, N)
        scores = (q @ summaries.transpose(-1, -2)).masked_fill(~candidate, float("-inf"))  # (B, H, T, N)
        top = scores.topk(min(k, N), dim=-1).indices  # (B, H, T, min(k, N))
        chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)
    return chosen & candidate  # drop picks among the -inf (not yet completed) blocks


def block_mask(chosen: Tensor, positions: Tensor, query_positions: Tensor, block: int) -> Tensor:
    """Keys visible to each query: those of its chosen blocks, and its own block's up to itself.

    chosen: (B, H, Tq, N) from `choose_blocks`; positions: (Tk,) key positions;
    query_positions: (Tq,).  Returns (B, H, Tq, Tk) bool.
    """
    key_block = positions // block  # (Tk,); a key in an unfinished block gets index N, never chosen
    in_chosen_block = F.pad(chosen, (0, 1))[..., key_block]  # (B, H, Tq, Tk)
    own_block = visible(query_positions[:, None], positions[None, :], None, block)  # (Tq, Tk)
    return in_chosen_block | own_block


class TopkBlockAttention(Mixer):
    """Causal attention over the top-k earlier blocks plus the query's own block (Landmark
    attention, Mohtashami & Jaggi 2023; DHSA; Combiner).

    The sequence is cut into blocks of B positions.  Each completed block j is summarised by the
    mean of its keys, s_j = mean_{s ∈ block j} k_s.  The query at t (in block b = ⌊t/B⌋) scores
    the summaries of the blocks before its own, keeps the k highest,

        S_t = top-k_{j < b} q_t · s_j          (all j < b when b ≤ k)

    and attends over the keys of those blocks and of its own block up to t:

        y_t = Σ_{s : ⌊s/B⌋ ∈ S_t  or  bB ≤ s ≤ t} softmax_s(q_t · k_s / √d) v_s

    The selection is not differentiable: gradients flow through the attention over the chosen
    keys only, never through the summaries' scores.

    Cost: computed with a dense (T × T) mask and SDPA, O(T²) per head.  `flops` counts the
    sparse cost exactly: per query, a score against each candidate summary, and scores and
    values over min(k, b)·B + (t − bB + 1) keys.  State: `step` keeps the full KV cache (any
    earlier block may be chosen later) plus one summary per completed block, 2·D·T + D·⌊T/B⌋
    numbers: it grows with T.
    """

    def __init__(self, d_model: int, heads: int, block: int, k: int):
        super().__init__()
        self.d_model, self.heads, self.block, self.k = d_model, heads, block, k
        self.d_head = head_dim(d_model, heads, "attn(topk_blocks)")
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        return q, k, v

    def _summaries(self, k: Tensor) -> Tensor:
        """Mean key of each completed block: (B, H, T, d) -> (B, H, ⌊T/B⌋, d)."""
        B, H, T, d = k.shape
        done = T // self.block
        return k[:, :, : done * self.block].reshape(B, H, done, self.block, d).mean(3)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self._heads(x)
        positions = torch.arange(T, device=x.device)
        chosen = choose_blocks(q, self._summaries(k), positions // self.block, self.k)  # (B, H, T, N)
        mask = block_mask(chosen, positions, positions, self.block)  # (B, H, T, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def reference(self, x: Tensor) -> Tensor:
        """The same module computed one query at a time (`naive_topk_block_attention`)."""
        B, T, D = x.shape
        y = naive_topk_block_attention(*self._heads(x), block=self.block, k_blocks=self.k)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def init_state(self, batch: int) -> State:
        empty = torch.zeros(batch, self.heads, 0, self.d_head, device=self._device, dtype=self._dtype)
        return (empty, empty, empty, 0)  # keys, values, block summaries, position

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        keys, values, summaries, t = state  # (B, H, t, d), (B, H, t, d), (B, H, ⌊t/B⌋, d), int
        q, k, v = self._heads(x[:, None])  # (B, H, 1, d)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        positions = torch.arange(t + 1, device=x.device)
        query = positions[-1:]
        chosen = choose_blocks(q, summaries, query // self.block, self.k)  # (B, H, 1, N)
        mask = block_mask(chosen, positions, query, self.block)  # (B, H, 1, t + 1)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, H, 1, d)
        if (t + 1) % self.block == 0:  # this token completes a block: summarise it
            summaries = torch.cat([summaries, keys[:, :, -self.block :].mean(2, keepdim=True)], 2)
        return self.out(y.reshape(x.shape[0], self.d_model)), (keys, values, summaries, t + 1)

    def _keys_seen(self, seq_len: int) -> Tensor:
        """Keys each query attends to, (seq_len,): min(k, b)·B earlier + its own block up to t."""
        t = torch.arange(seq_len)
        b = t // self.block
        return b.clamp(max=self.k) * self.block + (t - b * self.block + 1)

    def flops(self, seq_len: int) -> float:
        t = torch.arange(seq_len)
        projections = 2.0 * 4 * self.d_model**2 * seq_len
        block_scores = 2.0 * self.d_model * float((t // self.block).sum())  # q · s_j for every j < b
        scores_and_values = 2.0 * 2 * self.d_model * float(self._keys_seen(seq_len).sum())
        return projections + block_scores + scores_and_values

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d_model * seq_len + self.d_model * (seq_len // self.block)


def naive_topk_block_attention(q: Tensor, k: Tensor, v: Tensor, block: int, k_blocks: int) -> Tensor:
    """Plain per-query loop of top-k block attention on (B, H, T, d) heads; returns (B, H, T, d)."""
    B, H, T, d = q.shape
    outputs = []
    for t in range(T):
        own = t // block
        start = own * block
        visible_keys = [torch.arange(start, t + 1, device=q.device).expand(B, H, -1)]  # (B, H, ·)
        if own > 0:
            summaries = k[:, :, : own * block].reshape(B, H, own, block, d).mean(3)  # (B, H, own, d)
            scores = (summaries @ q[:, :, t, :, None])[..., 0]  # (B, H, own)
            picked = scores.topk(min(k_blocks, own), dim=-1).indices  # (B, H, m)
            offsets = torch.arange(block, device=q.device)
            visible_keys.insert(0, (picked[..., None] * block + offsets).flatten(2))  # (B, H, m·block)
        index = torch.cat(visible_keys, -1)[..., None].expand(-1, -1, -1, d)  # (B, H, n, d)
        keys, values = k.gather(2, index), v.gather(2, index)
        weights = torch.softmax((keys @ q[:, :, t, :, None])[..., 0] / d**0.5, -1)  # (B, H, n)
        outputs.append((weights[..., None] * values).sum(2))
    return torch.stack(outputs, 2)
