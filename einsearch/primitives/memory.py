"""Linear-recurrent matrix memories as token mixers: GLA, RetNet and (Gated) DeltaNet.

Each keeps, per head, a matrix state updated once per token.  The modules here hold the
parameters, the projections of x into the arguments of a functional core and the head norm; the
cores are in `einsearch.ops`: `ops.gla` (GLA and RetNet) and `ops.delta` (the delta rule), each
with a plain step-by-step loop (`naive_gla`, `naive_delta_rule`), its one-token step, and the
function `forward` calls (`gla`, `delta_rule`: the chunkwise-parallel PyTorch form, or its Triton
kernel on a GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.ops.delta import DELTA_CHUNK, delta_rule, delta_rule_step, naive_delta_rule
from einsearch.ops.gla import GLA_CHUNK, RETNET_CHUNK, gla, gla_step, naive_gla
from einsearch.primitives.attention import rope
from einsearch.primitives.base import BuildError, Mixer, State, head_dim

HEAD_NORM_EPS = 1e-5  # flash-linear-attention's RMSNorm default


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


# ================================================================ gated linear attention


class GLA(MatrixMemory):
    """Gated linear attention (Yang et al. 2024; RetNet is the case of a fixed scalar decay).

    Per head: S_t = diag(α_t) S_{t-1} + k_t v_tᵀ, y_t = q_tᵀ S_t / √dk, with the input-dependent
    decay log α_t = logsigmoid(W₂ W₁ x_t + b) / τ, a rank-16 projection and τ = 16 as in the paper
    (α ≈ 0.96 at initialisation).  q, k, v and the output are bias-free projections, the head
    outputs RMS-normalised before the output one (`MatrixMemory`); the paper's output gate is left
    to the grammar (`gate`).
    """

    fast = staticmethod(gla)
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

    fast = staticmethod(gla)
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

    fast = staticmethod(delta_rule)
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
