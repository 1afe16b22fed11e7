"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

Per head, with a feature map φ:

    S_t = S_{t-1} + φ(k_t) v_tᵀ,  z_t = z_{t-1} + φ(k_t),  y_t = φ(q_t)ᵀ S_t / (φ(q_t)ᵀ z_t + ε)

This is GLA without decay, so it runs on the GLA cores (`einsearch.ops.gla`) with
α = 1 (log_alpha=None): the normaliser z rides along as an extra value column of ones,
v' = [v, 1], whose output column is φ(q_t)ᵀ z_t.  The state carried is [S | z], dk × (dv + 1)
per head.

Feature maps: elu1 = elu(x) + 1 (the paper's; strictly positive) and relu (non-negative; a row
with φ(q)ᵀz = 0 also has φ(q)ᵀS = 0, and ε keeps it at 0).  For phi=identity the kernel q·k is
signed, so the denominator can vanish or change sign; there it is dropped: following TransNormer
(Qin et al. 2022, "The Devil in Linear Transformer"), which shows that the denominator makes
gradients unbounded, each head's output φ(q_t)ᵀ S_t is RMS-normalised instead (parameter-free;
the output projection learns the scale), and the state is S alone, dk × dv per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.ops.gla import LINEAR_CHUNK, gla, gla_step, naive_gla
from einsearch.primitives.base import Mixer, State, head_dim

FEATURE_MAPS = {
    "elu1": lambda x: F.elu(x) + 1,
    "relu": F.relu,
    "identity": lambda x: x,
}
EPS = 1e-6


class LinearAttention(Mixer):
    """attn(linear, heads=H, phi=elu1|relu|identity); see the module docstring for the equations."""

    def __init__(self, d_model: int, heads: int, phi: str, chunk: int = LINEAR_CHUNK):
        super().__init__()
        self.d_model, self.heads, self.phi, self.chunk = d_model, heads, phi, chunk
        self.d_head = head_dim(d_model, heads, "attn(linear)")
        self.feature_map = FEATURE_MAPS[phi]
        self.normalised = phi != "identity"  # carry the denominator z (else: RMS-normalise the output)
        self.value_columns = self.d_head + (1 if self.normalised else 0)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) -> φ(q), φ(k) (B, H, T, d) and the values (B, H, T, value_columns)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)
        if self.normalised:
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # [v, 1]
        return self.feature_map(q), self.feature_map(k), v

    def _read(self, o: Tensor) -> Tensor:
        """[φ(q)ᵀS, φ(q)ᵀz] -> the normalised head output (..., d)."""
        if self.normalised:
            return o[..., :-1] / (o[..., -1:] + EPS)
        return F.rms_norm(o, (self.d_head,), eps=EPS)

    def _mix(self, x: Tensor, core) -> Tensor:
        B, T, D = x.shape
        q, k, v = self._project(x)
        o, _ = core(q, k, v, None, chunk=self.chunk)  # (B, H, T, value_columns)
        return self.out(self._read(o).transpose(1, 2).reshape(B, T, D))

    def forward(self, x: Tensor) -> Tensor:
        return self._mix(x, gla)

    def reference(self, x: Tensor) -> Tensor:
        return self._mix(x, naive_gla)

    def init_state(self, batch: int) -> State:
        shape = (batch, self.heads, self.d_head, self.value_columns)
        return torch.zeros(shape, device=self._device, dtype=self._dtype)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        q, k, v = (t[:, :, 0] for t in self._project(x[:, None]))  # (B, H, d)
        o, state = gla_step(q, k, v, None, state)
        return self.out(self._read(o).reshape(x.shape[0], self.d_model)), state

    def flops(self, seq_len: int) -> float:
        """Recurrent-form count: projections (q, k, v, out) + per head the update φ(k)[v, 1]ᵀ and
        the read φ(q)ᵀ[S | z], dk·(dv + 1) multiply-accumulates each (dk·dv for identity)."""
        projections = 4 * self.d_model**2
        memory = 2 * self.heads * self.d_head * self.value_columns
        return 2.0 * (projections + memory) * seq_len

    def state_size(self, seq_len: int) -> int:
        return self.heads * self.d_head * self.value_columns
