"""Nonlinear recurrent cells (LSTM, GRU, RHN, sLSTM, Elman), run step by step or by Newton (ParaRNN).

`rnn(cell, heads=H, wiring=none|ws|ba|er, parallel=sequential|newton[, recode=l2])` splits the width
into H heads of size d = d_model / H.  As in FlashRNN (Pöppel et al. 2024) the input projections of
every gate are one matmul over the whole sequence, and the recurrent weights are block-diagonal: one
(d, gates·d) matrix per head.  The cells, their equations in u_t = W x_t + b (all gates) and the
recurrent pre-activation R h + b_r, and their loop over time are in `einsearch.ops.rnn`; Newton's
method over the sequence is in `einsearch.ops.newton`.

The output is y_t = W_o h_t (bias-free, d_model → d_model, heads concatenated).

Initialisation follows torch: recurrent weights and both biases uniform(-1/√d, 1/√d); the input
projection is nn.Linear's default, uniform(-1/√d_model, 1/√d_model), which equals torch's bound
when heads = 1 and keeps pre-activations O(1) for more heads.  Gate-bias offsets keep fresh cells
in a sane regime: forget gate +1 (lstm, slstm: remember by default), transform gates -1 (rhn:
carry by default, as Highway Networks do).

wiring (Sparse RNNs): `ws`, `ba` or `er` masks every d×d block of the recurrent weights by the
adjacency matrix, plus self loops, of a random graph on the d units of a head (Watts–Strogatz
k = the even part of min(4, d-1), p = 0.25; Barabási–Albert m = min(2, d-1); Erdős–Rényi
p = min(1, 4/d)), drawn by networkx with seed 0, so the same module is built every time; all heads
and gates share the mask.  Parameters are counted as stored (numel, masked entries included),
but FLOPs count only the unmasked recurrent weights (a sparse matmul).

parallel=newton (ParaRNN, Danieli et al. 2025): the whole state sequence solves s_t = F(s_{t-1}, u_t).
Each Newton iteration linearises F around the current guess, which leaves the linear recurrence
δ_t = J_t δ_{t-1} + r_t (J_t = ∂F/∂s_{t-1}, a full S×S matrix per head; r_t = F(s_{t-1}) - s_t),
solved in O(log T) steps of batched matmuls by an associative scan over affine maps.  Each
iteration makes at least one more leading position exact, so T iterations are exact; a contractive
cell needs a handful.  Gradients use the implicit function theorem at the solution: the adjoint
λ_t = g_t + J_{t+1}ᵀ λ_{t+1} is the same kind of linear recurrence backwards in time, and λ is
back-propagated through one evaluation of F, which gives the gradients of the sequential loop.
`reference` is then the sequential loop.  FLOPs count the recurrence as the sequential loop
computes it, not the solver's work.

recode=l2 (Ulmer 2019, "Recoding latent sentence representations – Dynamic gradient-based
activation modification in RNNs"): before each update the hidden state takes one gradient step
down a local error signal, and the cell runs from the corrected ("recoded") state.  The thesis
recodes an LSTM language model's h_t and c_t by  h_t ← h_t − α ∇_{h_t} δ_t,  δ_t the surprisal of
the next token under the prediction read from h_t (or an MC-dropout / ensemble uncertainty),
before that token is consumed.  A block has no vocabulary, so the error here is the squared error
of a linear prediction of the input the cell is about to consume, a predictive-coding error with
one matrix W_h (D, d) per head predicting x_t from the head's h_{t-1}:
      e_t = ½ Σ_heads ‖x_t − W_h h_{t-1}‖²
      h'_{t-1} = h_{t-1} − η_h ∇_{h_{t-1}} e_t = h_{t-1} + η_h W_hᵀ (x_t − W_h h_{t-1})
      s_t = cell(u_t, s_{t-1} with h_{t-1} replaced by h'_{t-1})
The gradient is exact and closed form (no autograd inside the forward) and linear in h:
h' = h − G_h h + p_t with G_h = η_h W_hᵀ W_h (d × d, formed once per call) and p_t = η_h W_hᵀ x_t
(one matmul over the whole sequence), so a step costs one more d × d product per head; `step`,
one token at a time, uses the residual form above instead of forming G.  It is causal: x_t is
the input the cell consumes at t anyway (the thesis' target is likewise the token its next step
consumes).  Every t is treated alike, t = 0 included (the zero initial state is recoded too,
h'_{-1} = p_0).  Heads and positions stay independent, so parallel=newton solves the recoded
recurrence as well (the correction is part of its F).  The step η_h = softplus(ρ_h) is learned,
one per head, starting at 0.5 (the step size in the thesis' configurations): the thesis learns
its step size too (a learned scalar, or an MLP), a learned step leaves the search no value to
tune, and softplus keeps it a step down the error (η = 0 would be the plain cell).  Differences
from the thesis: only h is recoded (e_t reads h alone; the thesis also moves c, through
h = o ⊙ tanh(c) within the step, which would need o_{t-1} carried), and training differentiates
through the correction (the thesis detaches the recoded state), so forward, step, Newton and the
plain loop share one exact gradient.  The state is unchanged: the correction reads x_t, h_{t-1}
and weights only.  The fused Triton step loops have no correction, so recode runs the PyTorch loop.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.ops.newton import ImplicitAdjoint, cell_jacobians, newton_solve, shift
from einsearch.ops.rnn import CELLS, NewtonForm, hidden_part, naive_rnn_states, recode_state, rnn_states
from einsearch.primitives.base import Mixer, State, head_dim
from einsearch.primitives.graphs import GraphArgs, random_graph


# ---------------------------------------------------------------- sparse wiring


def wiring_graph(wiring: str, d: int, seed: int = 0) -> GraphArgs | None:
    """The random graph on the d units of a head (None for dense wiring): ws with k = 4 (even,
    below d) and p = 0.25; ba with 2 edges per new node; er with p = 4/d (about 4 neighbours)."""
    if wiring == "none" or d == 1:
        return None
    if wiring == "ws":
        k = min(4, d - 1)
        return GraphArgs("ws", d, k - k % 2, 0.25, seed)
    if wiring == "ba":
        return GraphArgs("ba", d, min(2, d - 1), None, seed)
    if wiring == "er":
        return GraphArgs("er", d, None, min(1.0, 4 / d), seed)
    raise ValueError(f"rnn: unknown wiring {wiring!r}")


def wiring_mask(graph: GraphArgs | None, d: int) -> Tensor:
    """(d, d) 0/1 mask: the graph's adjacency plus self loops (all ones for dense wiring)."""
    mask = torch.eye(d) if graph is not None else torch.ones(d, d)
    for i, j in random_graph(graph) if graph is not None else ():
        mask[i, j] = mask[j, i] = 1.0
    return mask


# ---------------------------------------------------------------- the module


RECODE_STEP = 0.5  # η at initialisation: the thesis' step size


class RNN(Mixer):
    """rnn(cell, heads, wiring, parallel[, recode]): a multi-head nonlinear RNN; y_t = W_o h_t (see module doc)."""

    def __init__(self, d_model: int, cell: str, heads: int, wiring: str, parallel: str, recode: str | None = None):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"rnn: unknown cell {cell!r}")
        if parallel not in ("sequential", "newton"):
            raise ValueError(f"rnn: unknown parallel form {parallel!r}")
        if recode not in (None, "l2"):
            raise ValueError(f"rnn: unknown recoding error {recode!r}; the grammar has l2")
        self.d_model, self.heads, self.cell, self.wiring, self.parallel = d_model, heads, cell, wiring, parallel
        self.recode = recode
        self.d = head_dim(d_model, heads, "rnn")
        self.spec = CELLS[cell]
        d, gates = self.d, self.spec.recurrent_gates
        self.input = nn.Linear(d_model, heads * self.spec.input_gates * d)  # all gates, bias = b_ih
        self.recurrent = nn.Parameter(torch.empty(heads, d, gates * d))  # R per head, gate blocks side by side
        self.recurrent_bias = nn.Parameter(torch.empty(heads, gates * d))  # b_hh
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.graph = wiring_graph(wiring, d)
        self.register_buffer("mask", wiring_mask(self.graph, d))  # (d, d)
        bound = 1 / math.sqrt(d)
        with torch.no_grad():
            nn.init.uniform_(self.recurrent, -bound, bound)
            nn.init.uniform_(self.recurrent_bias, -bound, bound)
            nn.init.uniform_(self.input.bias, -bound, bound)
            offsets = torch.tensor(self.spec.bias_offsets).repeat_interleave(d)  # (gates·d,)
            self.recurrent_bias.add_(offsets)
        if recode is not None:  # created last, so the weights above are those of the plain cell at the same seed
            self.predict = nn.Parameter(torch.empty(heads, d_model, d))  # W_h: x̂_t = W_h h_{t-1}, per head
            rate = math.log(math.expm1(RECODE_STEP))  # ρ with softplus(ρ) = η
            self.recode_rate = nn.Parameter(torch.full((heads,), rate))  # ρ_h, η_h = softplus(ρ_h)
            nn.init.uniform_(self.predict, -1 / math.sqrt(d_model), 1 / math.sqrt(d_model))  # W_hᵀW_h ≈ I/3
        if parallel == "newton":
            self.reference = self.sequential_forward  # the contract compares forward with the plain loop

    # ---- pieces shared by every form
    def _input_preactivations(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return self.input(x).view(B, T, self.heads, -1)  # (B, T, H, input_gates·d)

    def _masked_recurrent(self) -> Tensor:
        return self.recurrent * self.mask.repeat(1, self.spec.recurrent_gates)  # (H, d, gates·d)

    def _initial_state(self, batch: int, values: tuple[float, ...] | None = None) -> Tensor:
        """(B, H, S): zeros, or each component filled with its value."""
        values = values or (0.0,) * len(self.spec.components)
        state = torch.tensor(values, device=self._device, dtype=self._dtype).repeat_interleave(self.d)  # (S,)
        return state.expand(batch, self.heads, -1).clone()

    def _output(self, hidden: Tensor) -> Tensor:
        return self.out(hidden.flatten(-2))  # (..., H, d) -> (..., D)

    def _recoding(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """(targets p_t = η_h W_hᵀ x_t (B, T, H, d), gram G_h = η_h W_hᵀ W_h (H, d, d)); None without recode."""
        if self.recode is None:
            return None
        eta = F.softplus(self.recode_rate)  # (H,)
        targets = torch.einsum("btD,hDd->bthd", x, self.predict) * eta[:, None]
        gram = torch.einsum("hDi,hDj->hij", self.predict, self.predict) * eta[:, None, None]
        return targets, gram

    def _newton_cell(self, x: Tensor, form: NewtonForm) -> Callable[[Tensor], Tensor]:
        """Newton's F: the sequence of previous states (B, T, H, S) -> the next states, position by position."""
        u, R, recoding = self._input_preactivations(x), self._masked_recurrent(), self._recoding(x)

        def cell(previous: Tensor) -> Tensor:
            if recoding is not None:
                previous = recode_state(previous, *recoding, form.components)
            return form.step(u, previous, R, self.recurrent_bias)

        return cell

    # ---- the hidden sequence h (B, T, H, d), before the output projection
    def naive_hidden_sequence(self, x: Tensor) -> Tensor:
        """The plain loop over t."""
        u, R = self._input_preactivations(x), self._masked_recurrent()
        s0 = self._initial_state(x.shape[0])
        states = naive_rnn_states(self.cell, u, R, self.recurrent_bias, s0, recode=self._recoding(x))
        return hidden_part(states, self.spec.components)

    def newton_states(self, x: Tensor) -> tuple[Tensor, int]:
        """The state sequence (B, T, H, S) of the cell's Newton form, without gradients, and the iterations used."""
        form = self.spec.newton_form()
        with torch.no_grad():
            return newton_solve(self._newton_cell(x, form), self._initial_state(x.shape[0], form.initial), x.shape[1])

    def newton_hidden_sequence(self, x: Tensor) -> Tensor:
        """Newton's solution, made differentiable by one evaluation of the cell and the implicit adjoint."""
        form = self.spec.newton_form()
        solution, _ = self.newton_states(x)
        previous = shift(solution, self._initial_state(x.shape[0], form.initial))
        cell = self._newton_cell(x, form)
        states = cell(previous)  # (B, T, H, S), equal to `solution`
        if states.requires_grad:
            with torch.no_grad():
                jacobians = cell_jacobians(cell, previous)
            states = ImplicitAdjoint.apply(states, jacobians)
        return hidden_part(states, form.components)

    def hidden_sequence(self, x: Tensor) -> Tensor:
        if self.parallel == "newton":
            return self.newton_hidden_sequence(x)
        if self.recode is not None:  # the fused step loops have no recoding: the PyTorch loop
            return self.naive_hidden_sequence(x)
        states = rnn_states(self.cell, self._input_preactivations(x), self._masked_recurrent(), self.recurrent_bias)
        return hidden_part(states, self.spec.components)

    # ---- the Mixer contract
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 0:  # nothing to loop over or solve
            return x.new_zeros(x.shape)
        return self._output(self.hidden_sequence(x))

    def sequential_forward(self, x: Tensor) -> Tensor:
        return self._output(self.naive_hidden_sequence(x))

    def init_state(self, batch: int) -> State:
        return tuple(self._initial_state(batch).split(self.d, -1))  # each (B, H, d), in `spec.components` order

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        u = self._input_preactivations(x[:, None])[:, 0]  # (B, H, input_gates·d)
        if self.recode is not None:  # h' = h + η Wᵀ(x − W h): per token cheaper than forming G = η WᵀW
            h = state[self.spec.components.index("h")]  # (B, H, d)
            residual = x[:, None] - torch.einsum("hDd,bhd->bhD", self.predict, h)  # (B, H, D)
            h = h + F.softplus(self.recode_rate)[:, None] * torch.einsum("hDd,bhD->bhd", self.predict, residual)
            state = tuple(h if name == "h" else part for name, part in zip(self.spec.components, state))
        s = self.spec.step(u, torch.cat(state, -1), self._masked_recurrent(), self.recurrent_bias)
        return self._output(hidden_part(s, self.spec.components)), tuple(s.split(self.d, -1))

    def mask_density(self) -> float:
        return float(self.mask.sum()) / self.mask.numel()

    def flops(self, seq_len: int) -> float:
        inputs = 2.0 * self.input.weight.numel()
        recurrent = 2.0 * self.heads * self.spec.recurrent_gates * float(self.mask.sum())
        output = 2.0 * self.out.weight.numel()
        if self.recode is None:
            return (inputs + recurrent + output) * seq_len
        d = self.d
        targets, correction = 2.0 * self.predict.numel(), 2.0 * self.heads * d * d  # p_t = η Wᵀx_t; G h
        gram = 2.0 * self.heads * d * d * self.d_model  # G = η WᵀW, once per sequence
        return (inputs + recurrent + output + targets + correction) * seq_len + gram

    def state_size(self, seq_len: int) -> int:
        return len(self.spec.components) * self.d_model
