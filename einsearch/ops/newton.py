"""Newton's method over the whole sequence (ParaRNN, Danieli et al. 2025): the parallel form of a
nonlinear recurrence s_t = F(s_{t-1}, u_t), such as the cells of `einsearch.ops.rnn`.

Each Newton iteration linearises F around the current guess, which leaves the linear recurrence
δ_t = J_t δ_{t-1} + r_t (J_t = ∂F/∂s_{t-1}, a full S×S matrix per head; r_t = F(s_{t-1}) - s_t),
solved in O(log T) steps of batched matmuls by an associative scan over affine maps
(`linear_recurrence`; its spec is the loop `naive_linear_recurrence`).  Each iteration makes at
least one more leading position exact, so T iterations are exact; a contractive cell needs a
handful.  Gradients use the implicit function theorem at the solution (`ImplicitAdjoint`): the
adjoint λ_t = g_t + J_{t+1}ᵀ λ_{t+1} is the same kind of linear recurrence backwards in time.

States are (B, T, H, S): positions and heads independent, S the state of one head.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


# ---------------------------------------------------------------- linear recurrence (the Newton step)


def naive_linear_recurrence(A: Tensor, b: Tensor) -> Tensor:
    """x_t = A_t x_{t-1} + b_t with x_{-1} = 0, step by step.  A (B, T, ..., S, S), b (B, T, ..., S)."""
    x, xs = torch.zeros_like(b[:, 0]), []
    for t in range(b.shape[1]):
        x = (A[:, t] @ x[..., None])[..., 0] + b[:, t]
        xs.append(x)
    return torch.stack(xs, 1)


def linear_recurrence(A: Tensor, b: Tensor) -> Tensor:
    """The same as `naive_linear_recurrence` by a log-depth (Hillis–Steele) scan over affine maps.

    Position t holds the map x ↦ A_t x + b_t.  At each level every position composes itself with the
    map `offset` positions earlier, (A, b)_t ← (A_t A_{t-o}, A_t b_{t-o} + b_t); after ⌈log₂ T⌉
    levels position t holds the composition of maps 0..t applied to x_{-1} = 0, i.e. b_t = x_t.
    A_0 only ever multiplies x_{-1} = 0, so it never reaches the result (it may even be non-finite).
    """
    T, offset = b.shape[1], 1
    while offset < T:
        carried = (A[:, offset:] @ b[:, :-offset, ..., None])[..., 0]  # (B, T - o, ..., S)
        b = torch.cat([b[:, :offset], b[:, offset:] + carried], 1)
        if 2 * offset < T:
            A = torch.cat([A[:, :offset], A[:, offset:] @ A[:, :-offset]], 1)
        offset *= 2
    return b


def reverse_linear_recurrence(J: Tensor, g: Tensor) -> Tensor:
    """The adjoint λ_t = g_t + J_{t+1}ᵀ λ_{t+1} (λ_{T-1} = g_{T-1}), by the same scan run backwards in time."""
    J_next = torch.cat([J[:, 1:], torch.zeros_like(J[:, :1])], 1)  # J_{t+1}, zero past the end
    return linear_recurrence(J_next.flip(1).mT, g.flip(1)).flip(1)


# ---------------------------------------------------------------- Newton's method over the sequence


def shift(states: Tensor, initial: Tensor) -> Tensor:
    """s_{t-1} for every t: (B, T, H, S) with the initial state (B, H, S) in front."""
    return torch.cat([initial[:, None], states[:, :-1]], 1)


def cell_jacobians(cell: Callable[[Tensor], Tensor], previous: Tensor) -> Tensor:
    """J_t = ∂cell(previous)_t / ∂previous_t, (B, T, H, S, S), one vector-Jacobian product per state coordinate.

    Positions and heads are independent, so a cotangent along coordinate i in every head and position
    at once returns row i of every block.
    """
    basis = torch.eye(previous.shape[-1], dtype=previous.dtype, device=previous.device)  # (S, S)
    _, pullback = torch.func.vjp(cell, previous)

    def row(direction: Tensor) -> Tensor:  # (S,) -> (B, T, H, S)
        return pullback(direction.expand_as(previous))[0]

    return torch.func.vmap(row)(basis).permute(1, 2, 3, 0, 4)  # (S_out, B, T, H, S_in) -> (B, T, H, S_out, S_in)


def newton_solve(cell: Callable[[Tensor], Tensor], initial: Tensor, seq_len: int) -> tuple[Tensor, int]:
    """Solve s_t = cell(s_{t-1})_t for t < T from s_{-1} = initial (B, H, S); returns (states, iterations).

    `cell` maps the sequence of previous states (B, T, H, S) to the next states position by position.
    Starting from zeros, each iteration solves δ_t = J_t δ_{t-1} + r_t with r_t = cell(s_{t-1}) - s_t
    by `linear_recurrence`.  It stops when the residual (relative to 1 + |s|) reaches rounding level,
    or one iteration after it fell below √eps (Newton's quadratic convergence then leaves rounding
    error only), or after T iterations (exact: iteration k fixes at least positions < k).
    Positions past the exact prefix may blow up on the way; non-finite values restart from zero.
    """
    eps = torch.finfo(initial.dtype).eps
    states = torch.zeros(initial.shape[0], seq_len, *initial.shape[1:], dtype=initial.dtype, device=initial.device)
    iterations, previous_error = 0, math.inf
    while iterations < seq_len:
        previous = shift(states, initial)
        residual = cell(previous) - states
        error = torch.nan_to_num((residual.abs() / (1 + states.abs())).max(), nan=math.inf).item()
        if error <= 16 * eps or previous_error <= math.sqrt(eps):
            break
        states = states + linear_recurrence(cell_jacobians(cell, previous), residual)
        states = torch.where(torch.isfinite(states), states, torch.zeros_like(states))
        iterations, previous_error = iterations + 1, error
    return states, iterations


class ImplicitAdjoint(torch.autograd.Function):
    """Identity forward; backward replaces the incoming gradient g of the states by the adjoint λ.

    Applied to states = F(shift(s*), u) with s* the (detached) solution, back-propagating λ through
    that single evaluation of F gives Σ_t (∂F_t/∂θ)ᵀ λ_t: the implicit-function-theorem gradient,
    equal to back-propagation through the sequential loop.
    """

    @staticmethod
    def forward(ctx, states: Tensor, jacobians: Tensor) -> Tensor:
        ctx.save_for_backward(jacobians)
        return states.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (jacobians,) = ctx.saved_tensors
        return reverse_linear_recurrence(jacobians, grad), None

