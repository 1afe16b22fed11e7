"""Every seed's numbers are pinned: output and input gradient at d_model 32 from a seeded init.

The fixture (tests/data/outputs/seed_outputs.pt, written by make.py beside it) was saved before the
ops layer moved the math out of the modules; moving code must not change a single output.  Float64
on one thread, so the only tolerance is for another CPU's summation order.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from einsearch.grammar.seeds import seeds

FOLDER = Path(__file__).parent / "data" / "outputs"
_spec = importlib.util.spec_from_file_location("make_seed_outputs", FOLDER / "make.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)
SAVED = torch.load(FOLDER / "seed_outputs.pt")


def test_the_fixture_covers_every_seed() -> None:
    assert set(SAVED) == set(seeds)


@pytest.mark.parametrize("name", sorted(SAVED))
def test_seed_output_and_gradient_unchanged(name: str) -> None:
    output, grad = make.outputs(name)
    saved_output, saved_grad = SAVED[name]
    torch.testing.assert_close(output, saved_output, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, saved_grad, rtol=1e-10, atol=1e-12)
