"""Write seed_outputs.pt: every seed's output and input gradient at d_model 32 (float64).

    python tests/data/outputs/make.py           # write it
    python tests/data/outputs/make.py --check   # bit-identical to the saved one? (same machine)

The fixture pins the primitives' numbers: a refactor that moves code must leave them unchanged
(tests/test_seed_outputs.py).  Rerun this only when a change is meant to alter the math, and say so
in the commit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from einsearch import build
from einsearch.grammar.seeds import seeds

D_MODEL, BATCH, LENGTH = 32, 2, 13


def outputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, gradient of sum(output * w) w.r.t. the input) of seed `name` from a seeded init."""
    torch.manual_seed(0)
    model = build(seeds[name], D_MODEL).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, LENGTH, D_MODEL, dtype=torch.float64, generator=generator, requires_grad=True)
    w = torch.randn(BATCH, LENGTH, D_MODEL, dtype=torch.float64, generator=generator)
    y = model(x)  # (B, T, D)
    (grad,) = torch.autograd.grad((y * w).sum(), x)
    return y.detach(), grad


if __name__ == "__main__":
    import sys

    torch.set_num_threads(1)
    table = {name: outputs(name) for name in seeds}
    path = Path(__file__).with_name("seed_outputs.pt")
    if "--check" in sys.argv:
        saved = torch.load(path)
        changed = [n for n in table if n not in saved or not all(map(torch.equal, table[n], saved[n]))]
        print(f"{len(table) - len(changed)} of {len(table)} seeds bit-identical; changed: {changed or 'none'}")
        sys.exit(1 if changed else 0)
    torch.save(table, path)
    print(f"wrote {path}: {len(table)} seeds")
