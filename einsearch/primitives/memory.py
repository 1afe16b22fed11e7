"""Linear-recurrent matrix memories: gated linear attention (GLA) and the (gated) delta rule.

Both keep, per head, a matrix state updated once per token.  Each has a plain step-by-step
reference loop (`naive_gla`, `naive_delta_rule`) beside its chunkwise-parallel form
(`gla_chunked`, `delta_rule_chunked`), in the manner of flash-linear-attention: the sequence is
cut into chunks of C tokens; inside a chunk the recurrence is unrolled into small matrix products,
and only the state at chunk boundaries is carried by a loop (T/C iterations instead of T).

Conventions shared by the functional cores:

* q, k: (B, H, T, dk); v: (B, H, T, dv); the state h: (B, H, dk, dv), zeros when `h0` is None.
* The cores apply no scaling or normalisation to q and k; the modules do.
* Decays enter as logarithms (≤ 0).  The chunked forms only ever exponentiate differences of
  cumulative log decays that are ≤ 0, so a strong decay (log α ≈ -30 per token) underflows to zero
  instead of overflowing.
* T need not be a multiple of the chunk: the tail is padded with tokens that leave the state
  unchanged (k = v = q = 0, log α = 0, β = 0) and the padded outputs are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.kernels import dispatch
from einsearch.primitives.attention import rope
from einsearch.primitives.base import BuildError, Mixer, State, head_dim

# Chunk sizes, tuned for forward + backward on one CPU thread at T = 1024, d_model = 64, 4 heads.
GLA_CHUNK = 8  # a decay per channel: the intra-chunk tensor is (C, C, dk), so C stays small
RETNET_CHUNK = 32  # one decay per head: the intra-chunk work is plain (C, C) matrix products
DELTA_CHUNK = 32
HEAD_NORM_EPS = 1e-5  # flash-linear-attention's RMSNorm default


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
    B, H, _, dk = q.shape
    return h0 if h0 is not None else q.new_zeros(B, H, dk, v.shape[-1])


# ================================================================ gated linear attention


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


def causal_decay(b: Tensor) -> Tensor:
    """E_ijd = exp(b_id - b_jd) for j ≤ i and 0 above the diagonal: b (..., C, d) -> (..., C, C, d).

    b is a cumulative log decay, so it only falls: b_i - b_j ≤ 0 for j ≤ i and ≥ 0 above the
    diagonal, where it is clamped to 0 before the exponential and zeroed after.  No exponent is
    ever positive.  (Masking with -inf instead is as exact but several times slower on CPU.)
    """
    C = b.shape[-2]
    above = torch.ones(C, C, dtype=torch.bool, device=b.device).triu(1)[:, :, None]  # j > i
    return (b[..., :, None, :] - b[..., None, :, :]).clamp_max(0).exp().masked_fill(above, 0)


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


class MatrixMemory(Mixer):
    """What the matrix memories (GLA, RetNet, DeltaNet) share: a d×d state per head, computed over
    the whole sequence by `fast` (the chunked form, or its Triton kernel) in `forward` and by the
    plain loop `naive` in `reference`, then each head's output RMS-normalised and one output
    projection.  Subclasses give `_project`, which turns x (B, T, D) into the core's arguments,
    and the two cores.

    The head norm is the papers' (RetNet's GroupNorm, GLA's and Gated DeltaNet's per-head RMSNorm,
    as in flash-linear-attention's layers): the cores return un-normalised sums over the history,
    which grow with the decay's horizon and compound when memories are stacked.  It is
    parameter-free, because a per-channel scale right before `out` is absorbed by `out`."""

    fast: Callable
    naive: Callable

    def _mix(self, x: Tensor, core: Callable) -> Tensor:
        B, T, D = x.shape
        o, _ = core(*self._project(x), chunk=self.chunk)  # (B, H, T, d)
        return self._read(o.transpose(1, 2))

    def _read(self, o: Tensor) -> Tensor:
        """Head outputs (..., H, d) -> normalised per head and projected (..., D)."""
        o = F.rms_norm(o, (self.d_head,), eps=HEAD_NORM_EPS)
        return self.out(o.flatten(-2))

    def forward(self, x: Tensor) -> Tensor:
        return self._mix(x, self.fast)

    def reference(self, x: Tensor) -> Tensor:
        return self._mix(x, self.naive)

    def init_state(self, batch: int) -> State:
        return torch.zeros(batch, self.heads, self.d_head, self.d_head, device=self._device, dtype=self._dtype)


class GLA(MatrixMemory):
    """Gated linear attention (Yang et al. 2024; RetNet is the case of a fixed scalar decay).

    Per head: S_t = diag(α_t) S_{t-1} + k_t v_tᵀ, y_t = q_tᵀ S_t / √dk, with the input-dependent
    decay log α_t = logsigmoid(W₂ W₁ x_t + b) / τ, a rank-16 projection and τ = 16 as in the paper
    (α ≈ 0.96 at initialisation).  q, k, v and the output are bias-free projections, the head
    outputs RMS-normalised before the output one (`MatrixMemory`); the paper's output gate is left
    to the grammar (`gate`).
    """

    fast = staticmethod(dispatch.gla)
    naive = staticmethod(naive_gla)

    gate_rank = 16
    gate_temperature = 16.0

    def __init__(self, d_model: int, heads: int, chunk: int = GLA_CHUNK):
        super().__init__()
        self.d_model, self.heads, self.chunk = d_model, heads, chunk
        self.d_head = head_dim(d_model, heads, "mem(gla)")
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.gate_down = nn.Linear(d_model, self.gate_rank, bias=False)
        self.gate_up = nn.Linear(self.gate_rank, d_model, bias=True)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, T, D) -> q, k, v, log_alpha, each (B, H, T, d)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)
        log_alpha = F.logsigmoid(self.gate_up(self.gate_down(x))) / self.gate_temperature
        log_alpha = log_alpha.view(B, T, self.heads, self.d_head).transpose(1, 2)
        return q / math.sqrt(self.d_head), k, v, log_alpha

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        q, k, v, log_alpha = (t[:, :, 0] for t in self._project(x[:, None]))  # (B, H, d)
        o, state = gla_step(q, k, v, log_alpha, state)
        return self._read(o), state

    def flops(self, seq_len: int) -> float:
        """Recurrent-form count: projections (q, k, v, out, the rank-16 gate) + per head the
        update k vᵀ and the read qᵀS, dk·dv multiply-accumulates each."""
        projections = 4 * self.d_model**2 + 2 * self.gate_rank * self.d_model
        memory = 2 * self.heads * self.d_head * self.d_head
        return 2.0 * (projections + memory) * seq_len

    def state_size(self, seq_len: int) -> int:
        return self.heads * self.d_head * self.d_head


class RetNet(MatrixMemory):
    """Retention (Sun et al. 2023, "Retentive Network"): GLA with a fixed decay per head.

    Per head h: S_t = γ_h S_{t-1} + k_t v_tᵀ, y_t = q_tᵀ S_t / √dk, with γ_h = 1 - 2^(-5-h) (the
    paper's multi-scale decays) and q, k rotated by their position (the paper's Θ; here the
    rotate-half RoPE of `attention.rope`, so the head size must be even).  The state carries the
    position as an integer.  The paper's group norm is the head norm of `MatrixMemory`; its swish
    gate is left to the grammar.
    """

    fast = staticmethod(dispatch.gla)
    naive = staticmethod(naive_gla)

    def __init__(self, d_model: int, heads: int, chunk: int = RETNET_CHUNK):
        super().__init__()
        self.d_model, self.heads, self.chunk = d_model, heads, chunk
        self.d_head = head_dim(d_model, heads, "mem(retnet)")
        if self.d_head % 2:
            raise BuildError(f"mem(retnet): needs an even head size, got d_model/heads={self.d_head}")
        self.register_buffer("log_gamma", torch.log1p(-(2.0 ** (-5.0 - torch.arange(heads)))), persistent=False)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _project(self, x: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, T, D), positions (T,) (default 0..T-1) -> q, k, v (B, H, T, d) and log_alpha (B, H, T, 1)."""
        B, T, _ = x.shape
        positions = torch.arange(T, device=x.device) if positions is None else positions
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)
        q, k = rope(q, positions) / math.sqrt(self.d_head), rope(k, positions)
        log_alpha = self.log_gamma.to(x.dtype)[:, None, None].expand(B, self.heads, T, 1)
        return q, k, v, log_alpha

    def init_state(self, batch: int) -> State:
        return super().init_state(batch), torch.zeros((), dtype=torch.long, device=self._device)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, position = state
        q, k, v, log_alpha = (t[:, :, 0] for t in self._project(x[:, None], position[None]))  # (B, H, d)
        o, h = gla_step(q, k, v, log_alpha, h)
        return self._read(o), (h, position + 1)

    def flops(self, seq_len: int) -> float:
        """Recurrent-form count: projections (q, k, v, out) + per head the update and the read."""
        memory = 2 * self.heads * self.d_head * self.d_head
        return 2.0 * (4 * self.d_model**2 + memory) * seq_len

    def state_size(self, seq_len: int) -> int:
        return self.heads * self.d_head * self.d_head


# ================================================================ the delta rule


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


class DeltaNet(MatrixMemory):
    """DeltaNet (Schlag et al. 2021; Yang et al. 2024) and Gated DeltaNet (Yang et al. 2025).

    Per head: S_t = α_t S_{t-1} (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ, y_t = S_t q_t, with
    k_t and q_t L2-normalised per head (q then scaled by 1/√dk, flash-linear-attention's default),
    β_t = sigmoid(w_β·x_t) per head, and α_t = 1 (gated=false) or, per head (gated=true),
    log α_t = -exp(A_log) · softplus(w_a·x_t + dt_bias) (Mamba2's parameterisation, initialised as
    Mamba2: A ∈ [1, 16], dt ∈ [0.001, 0.1] log-uniform).  The head outputs are RMS-normalised
    (`MatrixMemory`); the short convolution and output gate of the reference layers are left to
    the grammar (`conv`, `gate`).
    """

    fast = staticmethod(dispatch.delta_rule)
    naive = staticmethod(naive_delta_rule)

    def __init__(self, d_model: int, heads: int, gated: bool, chunk: int = DELTA_CHUNK):
        super().__init__()
        self.d_model, self.heads, self.gated, self.chunk = d_model, heads, gated, chunk
        self.d_head = head_dim(d_model, heads, "mem(delta)")
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.beta = nn.Linear(d_model, heads, bias=False)
        if gated:
            self.decay = nn.Linear(d_model, heads, bias=False)
            self.A_log = nn.Parameter(torch.empty(heads).uniform_(1, 16).log())
            dt = torch.empty(heads).uniform_(math.log(1e-3), math.log(0.1)).exp()
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """x (B, T, D) -> q, k, v (B, H, T, d), beta, log_alpha (B, H, T)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)
        q = F.normalize(q, dim=-1) / math.sqrt(self.d_head)
        k = F.normalize(k, dim=-1)
        beta = self.beta(x).sigmoid().transpose(1, 2)
        log_alpha = None
        if self.gated:
            log_alpha = (-self.A_log.exp() * F.softplus(self.decay(x) + self.dt_bias)).transpose(1, 2)
        return q, k, v, beta, log_alpha

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        q, k, v, beta, log_alpha = self._project(x[:, None])
        gate = None if log_alpha is None else log_alpha[:, :, 0]
        o, state = delta_rule_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], beta[:, :, 0], gate, state)
        return self._read(o), state

    def flops(self, seq_len: int) -> float:
        """Recurrent-form count: projections (q, k, v, out, β and the decay per head) + per head
        the removal read Sk, the rank-1 write and the read Sq, dk·dv multiply-accumulates each."""
        projections = 4 * self.d_model**2 + self.heads * self.d_model * (2 if self.gated else 1)
        memory = 3 * self.heads * self.d_head * self.d_head
        return 2.0 * (projections + memory) * seq_len

    def state_size(self, seq_len: int) -> int:
        return self.heads * self.d_head * self.d_head
