"""Do sampled candidates overflow at initialisation?  (issue 12, item 11)

    python benchmarks/stability.py                      # the Reliability table's row in BENCHMARKS.md
    python benchmarks/stability.py --spaces hybrid --samples 500

For each space, samples 0..n-1 (`einsearch.sample(space, i)`) are built at d_model 32 (weights
from torch seed 0) and run forward in float32 on noise (batch 2, T 32) of standard deviation 1
and 3, the spread of a residual stream a few blocks deep.  Printed per space: how many samples
failed to build and how many gave inf/NaN at each scale, with the first few of them.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spaces", default="full,recurrent,subquadratic,hybrid")
    parser.add_argument("--samples", type=int, default=150)
    args = parser.parse_args()

    import torch

    from einsearch import build, sample

    torch.set_num_threads(1)
    for space in args.spaces.split(","):
        counts: Counter[str] = Counter()
        examples: list[str] = []
        for i in range(args.samples):
            arch = sample(space, i)
            try:
                torch.manual_seed(0)
                module = build(arch, 32)
            except Exception:  # noqa: BLE001 - counted, not a crash of the benchmark
                counts["build fails"] += 1
                continue
            noise = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(i))
            for scale in (1, 3):
                with torch.no_grad():
                    finite = bool(torch.isfinite(module(scale * noise)).all())
                if not finite:
                    counts[f"inf/NaN at scale {scale}"] += 1
                    examples.append(f"    scale {scale}: {str(arch)[:120]}")
        print(f"{space}: {args.samples} samples; " + (", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "all finite"))
        if examples:
            print("\n".join(examples[:4]))


if __name__ == "__main__":
    main()
