"""Nonlinear recurrent cells (LSTM, GRU, RHN, sLSTM, Elman) and their loop over time.

Heads of size d are independent, as in FlashRNN (Pöppel et al. 2024): the input pre-activations of
every gate u_t = W x_t + b come in precomputed, and the recurrent weights are block-diagonal, one
(d, gates·d) matrix R per head with the recurrent bias b_r.  Per head:

* lstm (as torch.nn.LSTM, gates i, f, g, o):
      c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g);   h_t = σ(o) ⊙ tanh(c_t)
* gru (as torch.nn.GRU, gates r, z, n; the reset gate multiplies R_n h + b_rn):
      n = tanh(u_n + σ(r) ⊙ (R_n h_{t-1} + b_rn));   h_t = (1 - σ(z)) ⊙ n + σ(z) ⊙ h_{t-1}
* rhn (Recurrent Highway Network, Zilly et al. 2017; recurrence depth 2, coupled carry gate),
  s⁰ = h_{t-1}, and for micro-layers l = 1, 2 (x enters the first only):
      s^l = tanh(a_l) ⊙ σ(t_l) + s^{l-1} ⊙ (1 - σ(t_l)),  (a_l, t_l) = [l = 1] u_t + R_l s^{l-1} + b_l;
      h_t = s²
* slstm (xLSTM's sLSTM, Beck et al. 2024, gates i, f, z, o; exponential input gate, sigmoid
  forget gate, stabiliser m and normaliser n):
      m_t = max(log σ(f) + m_{t-1}, ĩ);   i' = exp(ĩ - m_t);   f' = exp(log σ(f) + m_{t-1} - m_t)
      c_t = f' c_{t-1} + i' tanh(z);   n_t = f' n_{t-1} + i';   h_t = σ(o) ⊙ c_t / n_t
  The state starts at zeros (c, n, m, h); since c_0 = n_0 = 0 the first step's h does not depend
  on m_0, so this equals the official code's special case m_1 = ĩ_1 without a data-dependent branch.
  Newton solves the equivalent normalised form (ĉ = c/n, ℓ = m + log n; see `slstm_normalised_cell`),
  whose iteration count does not grow with T as it does in (c, n, m).
* elman: h_t = tanh(u_t + R h_{t-1} + b_r)

`CELLS` describes each cell (its step, state layout, weight layout, initial gate-bias offsets).
`naive_rnn_states` is the loop over time (the spec); `rnn_states` runs the fused Triton step loop
(`einsearch.kernels.rnn`, lstm and gru) on a GPU and the loop elsewhere.  The parallel form, Newton's
method over the whole sequence, is `einsearch.ops.newton`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from einsearch.ops.dispatch import use_triton


# ---------------------------------------------------------------- cells
# Every cell maps (u, s, R, b) -> s_new for any leading dims:
#   u (..., H, input_gates·d)  input pre-activations, input bias included
#   s (..., H, S)              the state, its components concatenated (S = components·d)
#   R (H, d, recurrent_gates·d), b (H, recurrent_gates·d)  recurrent weights (masked) and bias
# Positions and heads are independent, which the Newton solver relies on.


def recur(h: Tensor, R: Tensor, b: Tensor) -> Tensor:
    """Block-diagonal recurrent pre-activation R h + b per head: (..., H, d) -> (..., H, gates·d)."""
    return torch.einsum("...hi,hij->...hj", h, R) + b


def lstm_cell(u: Tensor, s: Tensor, R: Tensor, b: Tensor) -> Tensor:
    h, c = s.chunk(2, -1)
    i, f, g, o = (u + recur(h, R, b)).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return torch.cat([h, c], -1)


def gru_cell(u: Tensor, h: Tensor, R: Tensor, b: Tensor) -> Tensor:
    r_x, z_x, n_x = u.chunk(3, -1)
    r_h, z_h, n_h = recur(h, R, b).chunk(3, -1)
    r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return (1 - z) * n + z * h


def rhn_cell(u: Tensor, s: Tensor, R: Tensor, b: Tensor) -> Tensor:
    for layer, (R_l, b_l) in enumerate(zip(R.chunk(RHN_DEPTH, -1), b.chunk(RHN_DEPTH, -1))):
        pre = recur(s, R_l, b_l) + (u if layer == 0 else 0)
        candidate, transform = pre.chunk(2, -1)
        t = torch.sigmoid(transform)
        s = torch.tanh(candidate) * t + s * (1 - t)
    return s


def slstm_cell(u: Tensor, s: Tensor, R: Tensor, b: Tensor) -> Tensor:
    c, n, m, h = s.chunk(4, -1)
    i_raw, f_raw, z_raw, o_raw = (u + recur(h, R, b)).chunk(4, -1)
    log_f_plus_m = F.logsigmoid(f_raw) + m
    m = torch.maximum(log_f_plus_m, i_raw)
    i, f = torch.exp(i_raw - m), torch.exp(log_f_plus_m - m)
    c = f * c + i * torch.tanh(z_raw)
    n = f * n + i
    h = torch.sigmoid(o_raw) * c / n
    return torch.cat([c, n, m, h], -1)


def slstm_normalised_cell(u: Tensor, s: Tensor, R: Tensor, b: Tensor) -> Tensor:
    """sLSTM in the coordinates ĉ = c/n and ℓ = m + log n (the log of the unstabilised normaliser):
        ℓ_t = logaddexp(log σ(f) + ℓ_{t-1}, ĩ)
        ĉ_t = e^{log σ(f) + ℓ_{t-1} - ℓ_t} ĉ_{t-1} + e^{ĩ - ℓ_t} tanh(z)
        h_t = σ(o) ⊙ ĉ_t,  from ℓ_{-1} = -∞ (n_0 = 0).
    The same h as `slstm_cell` (its stabiliser m cancels in c/n), but smooth and bounded (every exponent
    is ≤ 0, ĉ is a convex combination of tanh values): Newton converges in a few iterations here,
    while on (c, n, m) the max and the scale freedom of (c, n) make it crawl along the sequence."""
    c, l, h = s.chunk(3, -1)
    i_raw, f_raw, z_raw, o_raw = (u + recur(h, R, b)).chunk(4, -1)
    log_f_plus_l = F.logsigmoid(f_raw) + l
    l_new = torch.logaddexp(log_f_plus_l, i_raw)
    c = torch.exp(log_f_plus_l - l_new) * c + torch.exp(i_raw - l_new) * torch.tanh(z_raw)
    h = torch.sigmoid(o_raw) * c
    return torch.cat([c, l_new, h], -1)


def elman_cell(u: Tensor, h: Tensor, R: Tensor, b: Tensor) -> Tensor:
    return torch.tanh(u + recur(h, R, b))


RHN_DEPTH = 2  # micro-layers per time step

CellStep = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class NewtonForm:
    """The form of a cell that Newton's method solves: a step, its state components, their values at t = -1."""

    step: CellStep
    components: tuple[str, ...]  # includes "h"
    initial: tuple[float, ...]


@dataclass(frozen=True)
class CellSpec:
    """A cell: its step, the layout of its state and of its weights, and its initial gate-bias offsets."""

    step: CellStep
    components: tuple[str, ...]  # the state's parts, each d per head, in their order in s
    input_gates: int  # gate blocks of u
    recurrent_gates: int  # d×d blocks of R per head
    bias_offsets: tuple[float, ...]  # added to the recurrent bias of each gate block at init
    newton: NewtonForm | None = None  # an equivalent form for Newton's method; None: the cell itself

    def newton_form(self) -> NewtonForm:
        return self.newton or NewtonForm(self.step, self.components, (0.0,) * len(self.components))


CELLS = {
    "lstm": CellSpec(lstm_cell, ("h", "c"), 4, 4, (0.0, 1.0, 0.0, 0.0)),
    "gru": CellSpec(gru_cell, ("h",), 3, 3, (0.0, 0.0, 0.0)),
    "rhn": CellSpec(rhn_cell, ("h",), 2, 2 * RHN_DEPTH, (0.0, -1.0) * RHN_DEPTH),
    "slstm": CellSpec(
        slstm_cell,
        ("c", "n", "m", "h"),
        4,
        4,
        (0.0, 1.0, 0.0, 0.0),
        newton=NewtonForm(slstm_normalised_cell, ("c/n", "m+log n", "h"), (0.0, -math.inf, 0.0)),
    ),
    "elman": CellSpec(elman_cell, ("h",), 1, 1, (0.0,)),
}


# ---------------------------------------------------------------- the spec: the loop over time


def hidden_part(states: Tensor, components: tuple[str, ...]) -> Tensor:
    """The h component of concatenated states: (..., H, S) -> (..., H, d)."""
    d = states.shape[-1] // len(components)
    start = components.index("h") * d
    return states[..., start : start + d]


def recode_state(s: Tensor, target: Tensor, gram: Tensor, components: tuple[str, ...]) -> Tensor:
    """The recoding step on the h component of a state: h' = h − G h + p, one gradient step down
    a prediction error (rnn's recode=l2: G and p are described in `einsearch.primitives.recurrent`).

    s (..., H, S), target p (..., H, d), gram G (H, d, d) symmetric -> s with h replaced by h'.
    """
    d = s.shape[-1] // len(components)
    start = components.index("h") * d
    h = s[..., start : start + d]  # (..., H, d)
    h = h - torch.einsum("...hi,hij->...hj", h, gram) + target
    return torch.cat([s[..., :start], h, s[..., start + d :]], -1)


def naive_rnn_states(
    cell: str, u: Tensor, R: Tensor, b: Tensor, s0: Tensor | None = None, recode: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """The plain loop over t of a cell, returning every state (the reference of the fused kernel).

    u (B, T, H, input_gates·d), R (H, d, recurrent_gates·d), b (H, recurrent_gates·d),
    s0 (B, H, S) or None for zeros -> states (B, T, H, S), S = components·d, each step
    `CELLS[cell].step(u_t, s, R, b)`.  With recode = (targets (B, T, H, d), gram (H, d, d))
    the state is first recoded, `recode_state(s, targets_t, gram)`.
    """
    spec = CELLS[cell]
    B, T, H, _ = u.shape
    if s0 is None:
        s0 = u.new_zeros(B, H, len(spec.components) * R.shape[1])
    s, states = s0, []
    for t in range(T):
        if recode is not None:
            s = recode_state(s, recode[0][:, t], recode[1], spec.components)
        s = spec.step(u[:, t], s, R, b)
        states.append(s)
    return torch.stack(states, 1) if states else u.new_zeros(B, 0, H, s0.shape[-1])


# ---------------------------------------------------------------- the kernel where it can run

FUSED_CELLS = ("lstm", "gru")  # the cells with a fused Triton step loop


def rnn_states(cell: str, u: Tensor, R: Tensor, b: Tensor, s0: Tensor | None = None) -> Tensor:
    """Every state of an rnn(cell) head stack, (B, T, H, S): the fused Triton step loop
    `rnn_states_triton` for lstm and gru on CUDA tensors, else `naive_rnn_states`."""
    if cell in FUSED_CELLS and u.shape[1] > 0 and use_triton(u, R, b, s0):
        from einsearch.kernels.rnn import rnn_states_triton

        return rnn_states_triton(cell, u, R, b, s0)
    return naive_rnn_states(cell, u, R, b, s0)


TORCH_FORMS = {rnn_states: naive_rnn_states}  # op -> its PyTorch form, which an export runs
