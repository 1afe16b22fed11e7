"""RAT: gated recurrence within chunks, softmax attention across chunks (Wei, Yadav, Pascanu and
Gulcehre 2025, "RAT: Bridging RNN Efficiency and Attention Accuracy in Language Modeling").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.primitives.attention import rope
from einsearch.primitives.base import BuildError, Mixer, State, head_dim


class RAT(Mixer):
    """RAT layer with chunk length C (paper eqs.; position t re-indexed as (c, l), chunk c, offset l).

    From x_t, one projection gives the output gate z, forget gate g, query q, key k and value v
    (per channel; the gate has a learned bias):

        z_t = σ(W_z x_t),  g_t = σ(W_g x_t + b_g),  q_t = W_q x_t,  k_t = W_k x_t,  v_t = W_v x_t

    Intra-chunk recurrence over keys and values, restarted at each chunk start (h_{c,−1} = 0):

        k̃_{c,l} = g_{c,l} ⊙ k̃_{c,l−1} + (1 − g_{c,l}) ⊙ k_{c,l}      (ṽ likewise)

    Inter-chunk attention, per head: the query attends over the final states of all earlier
    chunks and its own chunk's running state,

        y_{c,l} = softmax([q k̃_{c',C−1}ᵀ for c' < c ; q k̃_{c,l}ᵀ] / √d) [ṽ_{c',C−1} ; ṽ_{c,l}]

    with rotary embeddings over chunk indices (the paper's "inter-RoPE": q and the states of
    chunk c' sit at positions c and c'), then the output gate and projection: out = W_o (z ⊙ y).
    The paper's input RMSNorm and residual are separate nodes here (`norm`, `res`), and q and k
    have a full head each (the paper's shared key/query groups are not used).

    chunk = 1 is softmax attention over the per-token states ((1 − g) ⊙ k, (1 − g) ⊙ v);
    chunk ≥ T is a gated linear recurrence.  The gate bias starts at log u, u ~ U(1, C − 1)
    (the paper's initialisation), so g starts in [1/2, (C−1)/C]: each channel remembers between
    one and C − 1 tokens of its chunk.

    Parallel form (`forward`): the recurrence runs as a loop over the C offsets of a chunk,
    every chunk at once; the attention is an explicit masked softmax over the T/C chunk states
    plus each query's own running state (T × (T/C + 1) scores).  `reference` is a plain token
    loop.  `step` carries the running (k̃, ṽ) and the cache of finished chunk states,
    2·D·(⌊T/C⌋ + 1) numbers: the state grows as T/C.
    """

    def __init__(self, d_model: int, heads: int, chunk: int):
        super().__init__()
        self.d_model, self.heads, self.chunk = d_model, heads, chunk
        self.d_head = head_dim(d_model, heads, "rat")
        if self.d_head % 2:
            raise BuildError(f"rat: rotary positions need an even head size, got d_model/heads={self.d_head}")
        self.in_proj = nn.Linear(d_model, 5 * d_model, bias=False)  # z, g, q, k, v
        self.gate_bias = nn.Parameter(torch.empty(d_model).uniform_(1, max(chunk - 1, 1)).log())
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x (B, T, D) -> output gate z (B, T, D); forget gate g, q, k, v (B, H, T, d)."""
        B, T, D = x.shape
        z, g, q, k, v = self.in_proj(x).split(D, dim=-1)
        g = torch.sigmoid(g + self.gate_bias)
        g, q, k, v = (u.view(B, T, self.heads, self.d_head).transpose(1, 2) for u in (g, q, k, v))
        return torch.sigmoid(z), g, q, k, v

    def _output(self, z: Tensor, y: Tensor) -> Tensor:
        """Output gate and projection; y (B, H, T, d) -> (B, T, D)."""
        B, H, T, d = y.shape
        return self.out(z * y.transpose(1, 2).reshape(B, T, H * d))

    def forward(self, x: Tensor) -> Tensor:
        z, g, q, k, v = self._project(x)
        T = x.shape[1]
        k_run, v_run = chunk_recurrence(g, k, v, self.chunk)  # (B, H, T, d)
        chunk_of = torch.arange(T, device=x.device) // self.chunk  # (T,)
        q, k_run = rope(q, chunk_of), rope(k_run, chunk_of)
        last = slice(self.chunk - 1, None, self.chunk)  # the final position of each completed chunk
        y = inter_chunk_attention(q, k_run, v_run, k_run[:, :, last], v_run[:, :, last], chunk_of)
        return self._output(z, y)

    def reference(self, x: Tensor) -> Tensor:
        """The same module computed by the plain token loop `naive_rat`."""
        z, g, q, k, v = self._project(x)
        return self._output(z, naive_rat(q, k, v, g, self.chunk))

    def init_state(self, batch: int) -> State:
        running = torch.zeros(batch, self.heads, self.d_head, device=self._device, dtype=self._dtype)
        finished = torch.zeros(batch, self.heads, 0, self.d_head, device=self._device, dtype=self._dtype)
        return (running, running, finished, finished, 0)  # k̃, ṽ, finished k̃ (roped), finished ṽ, t

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        k_run, v_run, k_done, v_done, t = state  # (B, H, d) ×2, (B, H, c, d) ×2, int
        z, g, q, k, v = self._project(x[:, None])  # gates and heads (B, H, 1, d)
        k_run = g[:, :, 0] * k_run + (1 - g[:, :, 0]) * k[:, :, 0]
        v_run = g[:, :, 0] * v_run + (1 - g[:, :, 0]) * v[:, :, 0]
        c = torch.tensor([t // self.chunk], device=x.device)
        q, k_now = rope(q, c), rope(k_run[:, :, None], c)  # (B, H, 1, d)
        keys, values = torch.cat([k_done, k_now], 2), torch.cat([v_done, v_run[:, :, None]], 2)
        weights = torch.softmax(q @ keys.transpose(-1, -2) / math.sqrt(self.d_head), -1)  # (B, H, 1, c + 1)
        y = self._output(z, weights @ values)[:, 0]
        if (t + 1) % self.chunk == 0:  # the chunk is complete: cache its final state, restart
            k_done, v_done = keys, values
            k_run, v_run = torch.zeros_like(k_run), torch.zeros_like(v_run)
        return y, (k_run, v_run, k_done, v_done, t + 1)

    def flops(self, seq_len: int) -> float:
        projections = 2.0 * 6 * self.d_model**2 * seq_len  # in_proj (5D) and out
        states_seen = (torch.arange(seq_len) // self.chunk + 1).sum()  # earlier chunks + own running state
        return projections + 2.0 * 2 * self.d_model * float(states_seen)

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d_model * (seq_len // self.chunk + 1)


def chunk_recurrence(g: Tensor, k: Tensor, v: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """Running states k̃, ṽ of h_t = g_t ⊙ h_{t−1} + (1 − g_t) ⊙ u_t, restarted every `chunk` steps.

    All (B, H, T, d).  A loop over the offsets within a chunk, every chunk at once (T is padded
    to a multiple of the chunk; the padding comes after every real position, so it is causal
    and cut off).
    """
    B, H, T, d = k.shape
    pad = (-T) % chunk
    n = (T + pad) // chunk
    g, k, v = (F.pad(u, (0, 0, 0, pad)).view(B, H, n, chunk, d) for u in (g, k, v))
    u = torch.stack([k, v])  # (2, B, H, n, C, d)
    h = torch.zeros_like(u[..., 0, :])  # (2, B, H, n, d)
    states = []
    for offset in range(chunk):
        h = g[..., offset, :] * h + (1 - g[..., offset, :]) * u[..., offset, :]
        states.append(h)
    k_run, v_run = torch.stack(states, -2).view(2, B, H, n * chunk, d)[:, :, :, :T]
    return k_run, v_run


def inter_chunk_attention(
    q: Tensor, k_run: Tensor, v_run: Tensor, k_final: Tensor, v_final: Tensor, chunk_of: Tensor
) -> Tensor:
    """softmax over [earlier chunks' final states ; own running state], per query.

    q, k_run, v_run: (B, H, T, d); k_final, v_final: (B, H, N, d), the final state of each
    completed chunk; chunk_of: (T,) the chunk of each position.  Returns (B, H, T, d).  The own
    state differs per query, so it is scored separately (one dot product) and joined to the
    chunk-state scores before the softmax; every row has it, so no row is empty.
    """
    scale = q.shape[-1] ** -0.5
    N = k_final.shape[2]
    earlier = torch.arange(N, device=q.device)[None, :] < chunk_of[:, None]  # (T, N)
    past = (q @ k_final.transpose(-1, -2) * scale).masked_fill(~earlier, float("-inf"))  # (B, H, T, N)
    own = (q * k_run).sum(-1, keepdim=True) * scale  # (B, H, T, 1)
    weights = torch.softmax(torch.cat([past, own], -1), -1)
    return weights[..., :N] @ v_final + weights[..., N:] * v_run


def naive_rat(q: Tensor, k: Tensor, v: Tensor, g: Tensor, chunk: int) -> Tensor:
    """Plain token loop of RAT's mixing on (B, H, T, d) heads (before the output gate)."""
    B, H, T, d = q.shape
    finished_k, finished_v, outputs = [], [], []
    for t in range(T):
        if t % chunk == 0:
            k_run = torch.zeros_like(k[:, :, 0])
            v_run = torch.zeros_like(v[:, :, 0])
        k_run = g[:, :, t] * k_run + (1 - g[:, :, t]) * k[:, :, t]
        v_run = g[:, :, t] * v_run + (1 - g[:, :, t]) * v[:, :, t]
        c = torch.tensor([t // chunk], device=q.device)
        k_now = rope(k_run[:, :, None], c)[:, :, 0]
        q_now = rope(q[:, :, t : t + 1], c)[:, :, 0]
        keys = torch.stack(finished_k + [k_now], 2)  # (B, H, c + 1, d)
        values = torch.stack(finished_v + [v_run], 2)
        weights = torch.softmax((keys @ q_now[..., None])[..., 0] / math.sqrt(d), -1)  # (B, H, c + 1)
        outputs.append((weights[..., None] * values).sum(2))
        if (t + 1) % chunk == 0:
            finished_k.append(k_now)
            finished_v.append(v_run)
    return torch.stack(outputs, 2)
