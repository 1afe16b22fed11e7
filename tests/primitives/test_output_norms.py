"""The matrix memories and the selective scan normalise their outputs as their papers do (issue 12).

Without it, stacked memories and scans overflow float32 at initialisation on inputs of a residual
stream's scale; these candidates were the 1-3% of samples that produced inf/NaN at step 0.
"""

import sys

import pytest
import torch

from einsearch import build
from einsearch.grammar.stats import PROBE_SCALES, check_sample

MEMORIES = ["mem(gla, heads=4)", "mem(retnet, heads=4)", "mem(delta, heads=4, gated=false)", "mem(delta, heads=4, gated=true)"]


@pytest.mark.parametrize("text", MEMORIES)
def test_each_heads_output_is_rms_normalised_before_the_projection(text):
    """The projection sees o / sqrt(mean_d(o²) + 1e-5) per head, o from the reference loop."""
    torch.manual_seed(0)
    memory = build(text, 32)
    seen = []
    memory.out.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = 5 * torch.randn(2, 21, 32)
    memory(x)
    o, _ = memory.naive(*memory._project(x))  # (B, H, T, d), un-normalised
    o = o.transpose(1, 2)  # (B, T, H, d)
    expected = o / (o.square().mean(-1, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(seen[0].reshape(2, 21, 4, 8), expected, atol=1e-5, rtol=1e-4)
    assert seen[0].square().mean() > 0.5  # most heads' outputs are well above the epsilon


def test_the_selective_scan_output_has_unit_rms_and_s4d_keeps_its_scale():
    torch.manual_seed(0)
    x = 5 * torch.randn(2, 21, 16)
    selective = build("scan(diag, state=8, selective=true)", 16)(x)
    torch.testing.assert_close(selective.square().mean(-1).sqrt(), torch.ones(2, 21), atol=1e-3, rtol=0)
    s4d = build("scan(diag, state=8, selective=false)", 16)
    s4d.skip.data.zero_()
    s4d.c.data.fill_(1.0)
    impulse = torch.zeros(1, 4, 16)
    impulse[0, 0] = 7.0  # linear in x: the first output is Δ·(Σ_n b_n c_n)·x_0 = Δ·8·7, no norm
    delta = torch.nn.functional.softplus(s4d.delta_bias)
    torch.testing.assert_close(s4d(impulse)[0, 0], delta * 8 * 7.0)


@pytest.mark.parametrize(
    "text",
    [
        "repeat(mem(retnet, heads=4), n=4)",
        "res(repeat(wired(er, gate(mlp(expand=2, act=geglu), mem(retnet, heads=4), fn=silu), nodes=8, seed=0), n=2))",
        "res(repeat(repeat(scan(diag, state=8, selective=true), n=4), n=2))",
        "wired(er, gate(scan(diag, state=16, selective=true), act(gelu), fn=sigmoid), nodes=6, seed=3)",
    ],
)
def test_stacks_that_overflowed_at_initialisation_are_finite(text):
    """Samples of the built-in spaces that gave inf/NaN at input scale 3 (one already at scale 1)."""
    assert check_sample(text, d_model=32, seq_len=32).finite


class Overflowing(torch.nn.Module):
    """y = x·exp(x²): finite for |x| ≲ 9 in float32, inf beyond."""

    def forward(self, x):
        return x * x.square().exp()


def test_the_check_flags_what_overflows_only_at_a_residual_streams_scale(monkeypatch):
    """On unit noise (|x| < 4 here) y stays finite; at the probe's scale 3 it overflows."""
    monkeypatch.setattr(sys.modules["einsearch.build"], "build", lambda arch, d_model: Overflowing())
    check = check_sample("identity()", d_model=32, seq_len=8)
    assert PROBE_SCALES == (1.0, 3.0)
    assert not check.finite
    assert "at input scale 3" in check.reason
