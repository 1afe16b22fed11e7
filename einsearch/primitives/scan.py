"""Scans as token mixers: a diagonal linear recurrence (S4D, Mamba), its state-space dual with a
scalar decay per head (Mamba-2), and softmax attention as a prefix scan (Aaren).

The modules hold the parameters and the projections of x into the arguments of a functional core
in `einsearch.ops`; `forward` calls the op's function (the chunked PyTorch form, or on a GPU its
Triton kernel), `reference` the op's plain loop and `step` its one-token form:

* `ops.scan`: `scan_diag` / `naive_scan_diag` / `diag_step`,
  h_t = exp(log_a_t) ⊙ h_{t-1} + x_t b_tᵀ ; y_t = h_t c_t.
* `ops.ssd`: `ssd_chunked` / `naive_ssd` / `ssd_step`, per head H_t = exp(log_a_t) H_{t-1} + x_t b_tᵀ ;
  y_t = H_t c_t (no Triton kernel: the chunked form is matrix products).
* `ops.aaren`: `aaren` / `naive_aaren` / `aaren_combine`, o_t = Σ_{i≤t} exp(s_i) v_i / Σ_{i≤t} exp(s_i),
  kept as the running triple (m, u, w) of Feng et al. (2024).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.ops.aaren import AAREN_CHUNK, aaren, aaren_combine, aaren_empty, naive_aaren
from einsearch.ops.scan import DIAG_CHUNK, diag_step, naive_scan_diag, scan_diag
from einsearch.ops.ssd import SSD_CHUNK, naive_ssd, ssd_chunked, ssd_step
from einsearch.primitives.base import Mixer, State, head_dim

OUTPUT_NORM_EPS = 1e-5  # Mamba-2's RMSNorm default


# ---------------------------------------------------------------- diagonal recurrence


def inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y, for y > 0."""
    return y + torch.log(-torch.expm1(-y))


class DiagScan(Mixer):
    """Diagonal state-space scan: S4D (time-invariant) or Mamba's selective scan.

    Per channel d, with a state of size N (Gu et al. 2022, "On the Parameterization and
    Initialization of Diagonal State Space Models"; Gu & Dao 2023, "Mamba"):

        h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t-1}[d, n] + Δ_t[d] b_t[n] x_t[d]
        y_t[d]    = Σ_n c_t[n] h_t[d, n] + skip[d] x_t[d]

    with A = -exp(A_log) (S4D-real initialisation A[d, n] = -(n+1)) and Δ = softplus(·) so that
    0 < exp(Δ A) < 1.  Selective (Mamba): Δ_t = softplus(W_Δ x_t + bias), b_t = W_b x_t,
    c_t = W_c x_t.  Not selective (S4D): Δ, b and c are learned constants.  Δ starts
    log-uniform in [1e-3, 1e-1] as in Mamba, skip at 1.  A pure token mixer: input and output
    projections and gating are composed around it in the language.

    The selective output y_t + skip ⊙ x_t is RMS-normalised over the channels, the normalisation
    Mamba-2 (Dao & Gu 2024, §7) adds before the output projection: with b_t and c_t projections
    of x_t the readout grows as |x|³, so stacked scans overflow without it.  Parameter-free (a
    per-channel scale before the next linear map is absorbed by it).  S4D's scan is linear in x
    and keeps the paper's un-normalised output.
    """

    def __init__(self, d_model: int, state: int, selective: bool, chunk: int = DIAG_CHUNK):
        super().__init__()
        self.d_model, self.state, self.selective, self.chunk = d_model, state, selective, chunk
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(d_model, 1))
        self.skip = nn.Parameter(torch.ones(d_model))
        dt = torch.exp(torch.empty(d_model).uniform_(math.log(1e-3), math.log(1e-1)))
        if selective:
            self.delta = nn.Linear(d_model, d_model)
            with torch.no_grad():
                self.delta.bias.copy_(inverse_softplus(dt))
            self.bc = nn.Linear(d_model, 2 * state, bias=False)
        else:
            self.delta_bias = nn.Parameter(inverse_softplus(dt))
            self.b = nn.Parameter(torch.ones(state))
            self.c = nn.Parameter(torch.randn(state))

    def _coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (..., D) -> the core's inputs: Δ x (..., D), log_a = Δ A (..., D, N), b, c (..., N)."""
        if self.selective:
            delta = F.softplus(self.delta(x))
            b, c = self.bc(x).split(self.state, dim=-1)
        else:
            delta = F.softplus(self.delta_bias).expand_as(x)
            b = self.b.expand(*x.shape[:-1], self.state)
            c = self.c.expand(*x.shape[:-1], self.state)
        log_a = delta[..., None] * -torch.exp(self.A_log)
        return delta * x, log_a, b, c

    def _read(self, y: Tensor, x: Tensor) -> Tensor:
        """The scan's readout y (..., D) -> the output, with the skip and (selective) the norm."""
        y = y + self.skip * x
        return F.rms_norm(y, (self.d_model,), eps=OUTPUT_NORM_EPS) if self.selective else y

    def forward(self, x: Tensor) -> Tensor:
        y, _ = scan_diag(*self._coefficients(x), chunk=self.chunk)
        return self._read(y, x)

    def reference(self, x: Tensor) -> Tensor:
        y, _ = naive_scan_diag(*self._coefficients(x))
        return self._read(y, x)

    def init_state(self, batch: int) -> State:
        return torch.zeros(batch, self.d_model, self.state, device=self._device, dtype=self._dtype)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y, h = diag_step(*self._coefficients(x), state)
        return self._read(y, x), h

    def flops(self, seq_len: int) -> float:
        projections = 2.0 * (self.d_model * self.d_model + self.d_model * 2 * self.state) if self.selective else 0.0
        update_and_readout = 2.0 * 2 * self.d_model * self.state  # x bᵀ into h, then h c
        return seq_len * (projections + update_and_readout)

    def state_size(self, seq_len: int) -> int:
        return self.d_model * self.state


# ---------------------------------------------------------------- the state-space dual (Mamba-2)


class SSDScan(Mixer):
    """Mamba-2's selective scan in its state-space dual form (Dao & Gu 2024, "Transformers are
    SSMs"): the channels split into H heads of P = D / H, each head with one scalar decay.

    Per head h, with a state H_t of P × N:

        H_t = exp(Δ_t[h] A[h]) H_{t-1} + Δ_t[h] x_t[h] b_tᵀ
        y_t[h] = H_t c_t + skip[h] x_t[h]

    with Δ_t = softplus(W_Δ x_t + bias) (one per head), b_t = W_b x_t and c_t = W_c x_t (N each,
    shared by the heads: one group), A = -exp(A_log) < 0 per head.  Initialised as Mamba-2: A
    uniform in [1, 16], Δ log-uniform in [1e-3, 1e-1], skip at 1.  The output is RMS-normalised
    over the channels, as `DiagScan`'s selective output (Mamba-2's norm before the output
    projection).  `scan(diag)` keeps a decay per (channel, state) pair; the scalar decay here is
    what lets a chunk be computed with matrix products (`einsearch.ops.ssd`).
    """

    def __init__(self, d_model: int, heads: int, state: int, chunk: int = SSD_CHUNK):
        super().__init__()
        self.d_model, self.heads, self.state, self.chunk = d_model, heads, state, chunk
        self.d_head = head_dim(d_model, heads, "scan(ssd)")
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))
        self.skip = nn.Parameter(torch.ones(heads))
        dt = torch.exp(torch.empty(heads).uniform_(math.log(1e-3), math.log(1e-1)))
        self.delta = nn.Linear(d_model, heads)
        with torch.no_grad():
            self.delta.bias.copy_(inverse_softplus(dt))
        self.bc = nn.Linear(d_model, 2 * state, bias=False)

    def _coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (..., D) -> the core's inputs: Δ x (..., H, P), log_a = Δ A (..., H), b, c (..., N)."""
        delta = F.softplus(self.delta(x))  # (..., H)
        b, c = self.bc(x).split(self.state, dim=-1)
        heads = x.unflatten(-1, (self.heads, self.d_head))  # (..., H, P)
        return delta[..., None] * heads, delta * -torch.exp(self.A_log), b, c

    def _read(self, y: Tensor, x: Tensor) -> Tensor:
        """The heads' readout y (..., H, P) -> the output (..., D), with the skip and the norm."""
        y = y + self.skip[:, None] * x.unflatten(-1, (self.heads, self.d_head))
        return F.rms_norm(y.flatten(-2), (self.d_model,), eps=OUTPUT_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = ssd_chunked(*self._coefficients(x), chunk=self.chunk)  # (B, T, H, P)
        return self._read(y, x)

    def reference(self, x: Tensor) -> Tensor:
        y, _ = naive_ssd(*self._coefficients(x))
        return self._read(y, x)

    def init_state(self, batch: int) -> State:
        return torch.zeros(batch, self.heads, self.d_head, self.state, device=self._device, dtype=self._dtype)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y, h = ssd_step(*self._coefficients(x), state)
        return self._read(y, x), h

    def flops(self, seq_len: int) -> float:
        projections = 2.0 * self.d_model * (self.heads + 2 * self.state)  # Δ, then b and c
        update_and_readout = 2.0 * 2 * self.d_model * self.state  # x bᵀ into H, then H c
        return seq_len * (projections + update_and_readout)

    def state_size(self, seq_len: int) -> int:
        return self.d_model * self.state


# ---------------------------------------------------------------- attention as a prefix scan


class Aaren(Mixer):
    """Aaren (Feng et al. 2024, "Attention as an RNN").

    Per head h, a learned query q_h (a parameter, not a function of the input) attends over
    keys k_i = W_k x_i and values v_i = W_v x_i at positions i ≤ t:

        s_i = q_h · k_i / √d_head,   o_t = Σ_{i≤t} softmax_i(s) v_i,   y_t = W_o [o_t over heads]

    computed as a prefix scan of (m, u, w) (see `aaren_combine`), so stepping carries a state of
    constant size: m, w per head and u of the value size.
    """

    def __init__(self, d_model: int, heads: int, chunk: int = AAREN_CHUNK):
        super().__init__()
        self.d_model, self.heads, self.chunk = d_model, heads, chunk
        self.d_head = head_dim(d_model, heads, "aaren")
        self.query = nn.Parameter(torch.randn(heads, self.d_head))  # scores start O(1)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _scores_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> scores s (B, H, T), values v (B, H, T, d_head)."""
        B, T, _ = x.shape
        k, v = self.kv(x).view(B, T, 2, self.heads, self.d_head).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        s = torch.einsum("bhtd,hd->bht", k, self.query) / math.sqrt(self.d_head)
        return s, v

    def _output(self, o: Tensor) -> Tensor:
        """o (B, H, T, d_head) -> y (B, T, D)."""
        B, _, T, _ = o.shape
        return self.out(o.transpose(1, 2).reshape(B, T, self.d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self._output(aaren(*self._scores_values(x), chunk=self.chunk))

    def reference(self, x: Tensor) -> Tensor:
        return self._output(naive_aaren(*self._scores_values(x)))

    def init_state(self, batch: int) -> State:
        return aaren_empty((batch, self.heads), self.d_head, self._dtype, self._device)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        s, v = self._scores_values(x[:, None])  # (B, H, 1), (B, H, 1, d)
        state = aaren_combine(state, (s[:, :, 0], v[:, :, 0], torch.ones_like(s[:, :, 0])))
        _, u, w = state
        return self._output((u / w[..., None])[:, :, None])[:, 0], state

    def flops(self, seq_len: int) -> float:
        projections = 2.0 * 3 * self.d_model**2  # keys and values, output
        scores_and_values = 2.0 * 2 * self.d_model  # q · k_t, then v_t into u
        return seq_len * (projections + scores_and_values)

    def state_size(self, seq_len: int) -> int:
        return self.d_model + 2 * self.heads  # u, and m, w per head
