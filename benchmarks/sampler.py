"""Sampler throughput and validity per built-in space.

    python benchmarks/sampler.py [--samples 5000] [--builds 200] [--d-model 32]

For each space: samples drawn per second (`einsearch.sample`), scored per second
(`Space.log_prob`), built per second (`einsearch.build` at d_model), checked per second, and, of the checked samples
(`einsearch.grammar.stats.check_sample`, sequence length 8, batch 1): how many are valid (build
and pass the causality check) and how many run forward and backward with finite float32 values
at input scales 1 and 3 (`PROBE_SCALES`).  Notes list every sample with a problem.  Target: >= 2,000 samples/s and
100% valid.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from einsearch import build  # noqa: E402
from einsearch.grammar import builtin_spaces, load_space, sample  # noqa: E402
from einsearch.grammar.stats import check_sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--builds", type=int, default=200)
    parser.add_argument("--d-model", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(f"{'space':<14}{'samples/s':>11}{'log_prob/s':>12}{'builds/s':>10}{'checks/s':>10}{'valid':>9}{'finite':>9}")
    for name in builtin_spaces():
        space = load_space(name)
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        archs = [sample(space, rng) for _ in range(args.samples)]
        samples_per_s = args.samples / (time.perf_counter() - start)

        start = time.perf_counter()
        for arch in archs:
            space.log_prob(arch)
        scores_per_s = args.samples / (time.perf_counter() - start)

        checked = archs[: args.builds]
        start = time.perf_counter()
        for arch in checked:
            build(arch, args.d_model)
        builds_per_s = len(checked) / (time.perf_counter() - start)

        start = time.perf_counter()
        checks = [check_sample(arch, args.d_model) for arch in checked]
        checks_per_s = len(checked) / (time.perf_counter() - start)
        valid = sum(c.valid for c in checks)
        finite = sum(c.finite for c in checks)
        notes = [f"{a.text}: {c.reason}" for a, c in zip(checked, checks) if c.reason is not None]
        print(
            f"{name:<14}{samples_per_s:>11,.0f}{scores_per_s:>12,.0f}{builds_per_s:>10,.1f}{checks_per_s:>10,.1f}"
            f"{f'{valid}/{len(checked)}':>9}{f'{finite}/{len(checked)}':>9}",
            flush=True,
        )
        for note in notes:
            print(f"    {note}")


if __name__ == "__main__":
    main()
