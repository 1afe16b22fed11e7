"""`PrimitiveContract`: the tests every primitive (and combinator) inherits.

A test class sets `arch` (architecture text) and, where needed, the sizes below; it gets:
shape preservation at several widths, causality, step-by-step == forward, the parallel form
against its reference loop (outputs and gradients, where the module has `reference`), finite
gradients,
float64 gradcheck on a tiny shape, and costs checked against the module itself (parameter count
is positive where weights exist; the state the module actually carries while stepping equals its
reported `state_size`; FLOPs are non-negative and scale as declared).
"""

from __future__ import annotations

import math

import pytest
import torch

import einsearch
from einsearch.causality import check_causal


def state_numbers(state) -> int:
    """Floating-point numbers held in a (nested tuple) state, per the whole batch."""
    if isinstance(state, torch.Tensor):
        return state.numel() if state.is_floating_point() else 0
    if isinstance(state, (tuple, list)):
        return sum(state_numbers(s) for s in state)
    return 0


def run_steps(module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Run `step` over x (B, T, D); return the outputs (B, T, D) and the largest state held."""
    state = module.init_state(x.shape[0])
    outputs, largest = [], state_numbers(state)
    for t in range(x.shape[1]):
        y, state = module.step(x[:, t], state)
        outputs.append(y)
        largest = max(largest, state_numbers(state))
    return torch.stack(outputs, dim=1), largest


class PrimitiveContract:
    arch: str
    d_model: int = 16
    widths: tuple[int, ...] = (8, 24)
    seq_len: int = 13  # odd on purpose
    batch: int = 2
    atol: float = 1e-4
    gradcheck_len: int = 5
    gradcheck_d: int = 8
    constant_state: bool | None = None  # True: state does not grow with length; None: not asserted

    def build(self, d_model: int | None = None, seed: int = 0):
        torch.manual_seed(seed)
        return einsearch.build(self.arch, d_model or self.d_model)

    def inputs(self, d_model: int | None = None, seq_len: int | None = None, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.batch, seq_len or self.seq_len, d_model or self.d_model, generator=g)

    def test_parses_and_round_trips(self):
        arch = einsearch.parse(self.arch)
        assert einsearch.parse(arch.text) == arch

    @pytest.mark.parametrize("which", [0, 1])
    def test_shape_is_preserved(self, which):
        d = self.widths[which]
        y = self.build(d)(self.inputs(d))
        assert y.shape == (self.batch, self.seq_len, d)
        assert torch.isfinite(y).all()

    def test_causal(self):
        report = check_causal(self.build(), self.d_model, seq_len=self.seq_len, atol=self.atol)
        assert report.causal, report

    def test_step_matches_forward(self):
        module = self.build()
        x = self.inputs()
        with torch.no_grad():
            expected = module(x)
            stepped, _ = run_steps(module, x)
        torch.testing.assert_close(stepped, expected, atol=self.atol, rtol=self.atol)

    def test_backward_reaches_every_parameter(self):
        module = self.build()
        module(self.inputs()).square().mean().backward()
        for name, p in module.named_parameters():
            assert p.grad is not None, f"{name} gets no gradient"
            assert torch.isfinite(p.grad).all(), name

    def test_gradcheck_float64(self):
        module = self.build(self.gradcheck_d).double()
        x = self.inputs(self.gradcheck_d, self.gradcheck_len).double()[:1].requires_grad_(True)
        assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5, rtol=1e-3)

    def test_parallel_form_matches_reference_loop(self):
        """Where a module has a separate parallel (chunked) form, `reference` is its plain loop:
        outputs and the gradients of the input and of every parameter must agree."""
        module = self.build()
        if not hasattr(module, "reference"):
            pytest.skip("no separate parallel form")
        x = self.inputs().requires_grad_(True)
        weights = torch.randn(self.batch, self.seq_len, self.d_model, generator=torch.Generator().manual_seed(2))
        results = []
        for run in (module.forward, module.reference):
            module.zero_grad()
            x.grad = None
            y = run(x)
            (y * weights).sum().backward()
            results.append((y.detach(), x.grad.clone(), [p.grad.clone() for p in module.parameters()]))
        (y, gx, gp), (y_ref, gx_ref, gp_ref) = results
        torch.testing.assert_close(y, y_ref, atol=self.atol, rtol=self.atol)
        torch.testing.assert_close(gx, gx_ref, atol=self.atol, rtol=self.atol)
        for g, g_ref in zip(gp, gp_ref):
            torch.testing.assert_close(g, g_ref, atol=self.atol, rtol=self.atol)

    def test_reported_state_size_is_the_state_carried(self):
        module = self.build()
        with torch.no_grad():
            _, largest = run_steps(module, self.inputs(seq_len=self.seq_len))
        assert largest == self.batch * module.state_size(self.seq_len)

    def test_costs_are_consistent(self):
        module = self.build()
        c = einsearch.costs(module, 64)
        assert c.params == sum(p.numel() for p in module.parameters())
        assert c.flops_per_token >= 0 and math.isfinite(c.flops_per_token)
        if self.constant_state is True:
            assert module.state_size(64) == module.state_size(4096)
        elif self.constant_state is False:
            assert module.state_size(4096) > module.state_size(64)
