"""The search itself: what evolution buys over random sampling, and what the framework costs.

    python benchmarks/search.py                 # both parts, ~15 minutes on 2 cores
    python benchmarks/search.py quality --evaluations 16 --trial-budget 150steps
    python benchmarks/search.py overhead --trial-budget 300steps --trials 3

* ``quality``: random search and regularised evolution seeded with the ``lstm`` seed, each with
  the same number of evaluations and per-candidate budget on a small MQAR, in the ``full`` space,
  on Ray with two workers; prints the best validation accuracy after every evaluation.
* ``overhead``: per trial, the wall time the driver saw from proposing a candidate to recording
  it, minus the candidate's own time (building, training, evaluating, as the trainer measured
  it), for the Ray executor and the inline executor; plus the one-off start-up of the search.

Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from einsearch.search import RunConfig, RunFolder, start  # noqa: E402

TASK = "mqar:vocab=256,seq_len=64,pairs=8,train=20000"


def quality(evaluations: int, trial_budget: str, workers: int, root: Path) -> None:
    curves = {}
    for strategy, seeds in (("random", ()), ("evolution", ("lstm",))):
        config = RunConfig(
            task=TASK, space="full", strategy=strategy, seed_archs=seeds, trials=evaluations,
            trial_budget=trial_budget, workers=workers, executor="ray", seed=0, scheduler="fifo",
        )  # fmt: skip
        outcome = start(config, RunFolder(root / strategy), live=False)
        best, curve = 0.0, []
        for record in sorted(outcome.search.records, key=lambda r: r.finished_at):
            if record.status == "ok" and record.objectives:
                best = max(best, record.objectives[0])
            curve.append(best)
        curves[strategy] = curve
        failed = sum(r.status != "ok" for r in outcome.search.records)
        print(f"{strategy}: {len(curve)} evaluations, {failed} not scored, best {best:.4f}", flush=True)
    print(f"\n### Best validation accuracy vs evaluations: `{TASK}`, space full, {trial_budget} per candidate, {workers} Ray workers\n")
    print("| evaluations | random | evolution (seeded with lstm) |")
    print("|---|---|---|")
    for i in range(evaluations):
        row = [f"{curves[s][i]:.4f}" if i < len(curves[s]) else "" for s in ("random", "evolution")]
        print(f"| {i + 1} | {row[0]} | {row[1]} |")


def overhead(trials: int, trial_budget: str, root: Path) -> None:
    print(f"\n### Framework overhead per trial: {trials} trials of `{trial_budget}`, one worker, `{TASK}`\n")
    print("| executor | start-up s | candidate s (mean) | overhead s per trial (mean) | overhead / trial | trials |")
    print("|---|---|---|---|---|---|")
    for executor in ("ray", "inline"):
        config = RunConfig(
            task=TASK, space="full", strategy="evolution", seed_archs=("transformer",), trials=trials,
            trial_budget=trial_budget, workers=1, executor=executor, seed=0, scheduler="fifo",
        )  # fmt: skip
        began = time.monotonic()
        outcome = start(config, RunFolder(root / f"overhead-{executor}"), live=False)
        total = time.monotonic() - began
        trained = [r for r in outcome.search.records if r.reused_from is None and r.status != "rejected"]
        own = [r.seconds for r in trained]
        extra = [r.wall - r.seconds for r in trained]
        startup = total - sum(r.wall for r in trained)
        print(
            f"| {executor} | {startup:.1f} | {statistics.mean(own):.2f} | {statistics.mean(extra):.2f} "
            f"| {100 * statistics.mean(extra) / statistics.mean(own):.1f}% | {len(trained)} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["quality", "overhead"], choices=["quality", "overhead"])
    parser.add_argument("--evaluations", type=int, default=16)
    parser.add_argument("--trial-budget", default=None, help="steps; default: 150steps for quality, 300steps for overhead (about 15 s and 30 s of a transformer)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=3, help="trials per executor in the overhead part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="einsearch-bench-") as tmp:
        if "quality" in args.parts:
            quality(args.evaluations, args.trial_budget or "150steps", args.workers, Path(tmp))
        if "overhead" in args.parts:
            overhead(args.trials, args.trial_budget or "300steps", Path(tmp))


if __name__ == "__main__":
    main()
