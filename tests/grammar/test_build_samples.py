"""Samples of every space build at d_model 32, run forward and backward, and are causal.

Budget: the whole project's suite must stay fast on 2 cores, so each space checks 75 random
samples plus, for every primitive (op or op(variant)) the space can produce that those missed,
the first sample containing it; benchmarks/sampler.py checks hundreds per space.
"""

import sys

import numpy as np
import pytest
from torch import nn

from einsearch.grammar import load_space, parse, sample
from einsearch.grammar.stats import check_sample, family
from tests.grammar.test_space_files import SPACES

RANDOM_SAMPLES = 75


def primitives_of(space) -> set[str]:
    """Every op / op(variant) the space gives positive probability."""
    names = set()
    for op in space.language.ops:
        if space.module.prob(op) <= 0 and space.start.prob(op) <= 0:
            continue
        variant = space.ops[op].variant if op in space.ops else None
        names |= {f"{op}({w})" for w in variant.support} if variant is not None else {op}
    return names


def checked_samples(space) -> list:
    rng = np.random.default_rng(42)
    archs = [sample(space, rng) for _ in range(RANDOM_SAMPLES)]
    seen = {family(node) for arch in archs for node in arch.walk()}
    for _ in range(20000):
        missing = primitives_of(space) - seen
        if not missing:
            break
        arch = sample(space, rng)
        found = {family(node) for node in arch.walk()}
        if found & missing:
            archs.append(arch)
            seen |= found
    assert seen == primitives_of(space), f"never sampled: {primitives_of(space) - seen}"
    return archs


@pytest.mark.parametrize("name", SPACES)
def test_samples_build_and_are_causal(name):
    space = load_space(name)
    results = [(arch, check_sample(arch, d_model=32, seq_len=8, batch=1)) for arch in checked_samples(space)]
    invalid = [(arch.text, c.reason) for arch, c in results if not c.valid]
    assert not invalid, invalid
    non_finite = [arch.text for arch, c in results if not c.finite]
    assert not non_finite, non_finite


# ---------------------------------------------------------------- the check itself can fail
class Reversed(nn.Module):
    """A non-causal module: y_t = W x_{T-1-t} (optionally cubed, to overflow the probe)."""

    def __init__(self, cube: bool = False):
        super().__init__()
        self.proj, self.cube = nn.Linear(32, 32), cube

    def forward(self, x):
        y = self.proj(x.flip(1))
        return y * y.square().exp() if self.cube else y


@pytest.mark.parametrize("cube", [False, True])
def test_check_sample_catches_a_non_causal_module(monkeypatch, cube):
    monkeypatch.setattr(sys.modules["einsearch.build"], "build", lambda arch, d_model: Reversed(cube))
    result = check_sample(parse("linear()"))
    assert result.builds and not result.causal and not result.valid


def test_check_sample_reports_build_errors():
    result = check_sample(parse("attn(softmax, heads=3, pos=rope)"), d_model=32)
    assert not result.builds and "heads=3 does not divide d_model=32" in result.reason


def test_deep_unnormalised_chains_overflow_the_probe_but_are_causal():
    """x -> x⁴ five times over: overflows float32 in the probe; the float64 copy decides."""
    arch = parse("repeat(res(seq(conv(k=4), act(relu2), act(relu2))), n=5)")
    result = check_sample(arch)
    assert result.valid and "overflows float32" in result.reason
