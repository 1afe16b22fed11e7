"""Weight inheritance (issue 11, item 4): does evolution with `--inherit` reach a good mixer with
less training than evolution without it, random search and TPE?

    python benchmarks/inheritance.py                  # both tasks, 3 search seeds: the BENCHMARKS.md table
    python benchmarks/inheritance.py --tasks mqar --seeds 1 --trials 8

Every (task, method, search seed) is one `einsearch run` of --trials candidates on the inline
executor (one process, one thread), successive halving over
the default ladder, no finalists, a 60-second safety limit per candidate, seeded from the same zoo
architecture (TPE too, as its trial 0; random search only samples).  The tasks are small
versions of the search's defaults, so that 24 searches fit in about a CPU-hour.

Cost is counted in optimiser steps, summed over a search's trials (the project's unit of work: it
does not depend on what else runs on the machine); the training seconds are printed beside it
(one thread each, wall-clock, so inflated when the machine is shared).  Printed: per task and
method, the steps until a search first holds a full-budget candidate at the target (mean over the
searches that reached it, and how many did) and the best full-budget validation score at the end
(mean ± std over search seeds).  The target is 90% of the way from the seed architecture's own
full-budget score to the best score any search found.  The curves of best-so-far against
cumulative steps go to results/inheritance-<task>.png.  Each search's
folder is runs/inheritance/<task>-<method>-<seed>; running the command again skips finished ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from resumable import run_pending  # noqa: E402  (benchmarks/ is on the path of a script run from it)

TASKS = {  # name -> (task text, trial budget, the seed architecture every method starts from)
    "mqar": ("mqar:vocab=64,seq_len=32,pairs=4", "300steps", "gla"),
    "lorenz96": ("lorenz96", "300steps", "gru"),
}
METHODS = {  # name -> the `einsearch run` options that make it
    "random": ["--strategy", "random"],
    "tpe": ["--strategy", "tpe"],
    "evolution": ["--strategy", "evolution"],
    "evolution+inherit": ["--strategy", "evolution", "--inherit"],
}
ROOT = Path("runs/inheritance")
TIME_LIMIT = 60  # seconds: a candidate slower than ~5x the seed's pace is not worth its CPU here


def run_one(job: dict) -> dict:
    task, budget, seed_arch = TASKS[job["task"]]
    folder = ROOT / f"{job['task']}-{job['method']}-{job['seed']}"
    command = [sys.executable, "-m", "einsearch.cli", "run"]
    if (folder / "config.json").exists():
        command += ["--resume", str(folder), "--trials", str(job["trials"])]
    else:
        command += ["--task", task, "--trial-budget", budget, "--seed-arch", seed_arch, "--trials", str(job["trials"]),
                    "--d-model", "32", "--executor", "inline", "--finalists", "0", "--seed", str(job["seed"]),
                    "--time-limit", str(TIME_LIMIT),
                    "--output", str(folder), *METHODS[job["method"]]]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        return {**job, "error": done.stderr.strip().splitlines()[-1:] or ["?"]}
    records = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    records.sort(key=lambda r: r["number"])
    return {**job, "records": [{k: r.get(k) for k in ("number", "arch", "status", "objectives", "steps", "seconds", "origin", "inherited")}
                               for r in records]}  # fmt: skip


def curve(records: list[dict], sign: float) -> list[tuple[int, float | None]]:
    """(cumulative optimiser steps, best full-budget score so far) after each trial, in trial order."""
    spent, best, points = 0, None, []
    for r in records:
        spent += r["steps"] or 0
        if r["status"] == "ok" and r["objectives"]:
            score = r["objectives"][0]
            best = score if best is None or sign * score > sign * best else best
        points.append((spent, best))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="search seeds per method")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    tasks, methods = args.tasks.split(","), args.methods.split(",")
    jobs = [dict(task=t, method=m, seed=s, trials=args.trials) for t in tasks for m in methods for s in range(args.seeds)]
    key = lambda j: (j["task"], j["method"], j["seed"], j["trials"])  # noqa: E731
    describe = lambda row: f"{row['task']} {row['method']} seed {row['seed']}: " + (  # noqa: E731
        f"error {row['error']}" if "error" in row else f"{len(row['records'])} trials")
    done = run_pending(jobs, key, run_one, ROOT / "results.jsonl", args.workers, describe)
    for task in tasks:
        report(task, [done[key(j)] for j in jobs if j["task"] == task and key(j) in done], methods)


def report(task: str, rows: list[dict], methods: list[str]) -> None:
    from einsearch.tasks import get_task

    spec = get_task(TASKS[task][0])
    sign = 1.0 if spec.mode == "max" else -1.0
    rows = [r for r in rows if "records" in r]
    curves = {(r["method"], r["seed"]): curve(r["records"], sign) for r in rows}
    seed_scores = [r["records"][0]["objectives"][0] for r in rows if r["records"] and r["records"][0]["origin"] == "seed"
                   and r["records"][0]["status"] == "ok"]  # fmt: skip
    finals = [c[-1][1] for c in curves.values() if c and c[-1][1] is not None]
    if not finals or not seed_scores:
        print(f"\n{task}: no finished searches yet")
        return
    best = max(finals, key=lambda v: sign * v)
    seed_score = statistics.fmean(seed_scores)
    target = seed_score + 0.9 * (best - seed_score)
    print(f"\n{task} ({TASKS[task][0]}, {TASKS[task][1]} per trial, seeded from {TASKS[task][2]}): "
          f"{spec.metric} of the seed {seed_score:.4f}, best found {best:.4f}, target {target:.4f}")  # fmt: skip
    print(f"\n| method | searches reaching the target | steps to reach it (mean) | best val/{spec.metric} (mean ± std) "
          "| steps in all (mean) | training seconds in all (mean) |")
    print("|---|---|---|---|---|---|")
    for method in methods:
        mine = [c for (m, _), c in sorted(curves.items()) if m == method]
        if not mine:
            continue
        reached = [next((s for s, b in c if b is not None and sign * b >= sign * target), None) for c in mine]
        hits = [s for s in reached if s is not None]
        ends = [c[-1][1] for c in mine if c[-1][1] is not None]
        spread = f"{statistics.fmean(ends):.4f} ± {statistics.stdev(ends):.4f}" if len(ends) > 1 else f"{ends[0]:.4f}"
        seconds = statistics.fmean(sum(r["seconds"] or 0.0 for r in row["records"]) for row in rows if row["method"] == method)
        steps = statistics.fmean(c[-1][0] for c in mine)
        to_target = f"{statistics.fmean(hits):,.0f}" if hits else "-"
        print(f"| {method} | {len(hits)}/{len(mine)} | {to_target} | {spread} | {steps:,.0f} | {seconds:,.0f} |")
    plot(task, curves, methods, target, spec.metric)


def plot(task: str, curves: dict, methods: list[str], target: float, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for (method, seed), c in sorted(curves.items()):
        points = [(s, b) for s, b in c if b is not None]
        if points:
            ax.plot(*zip(*points), drawstyle="steps-post", color=colours[method], alpha=0.8,
                    label=method if seed == 0 else None)  # fmt: skip
    ax.axhline(target, color="grey", linestyle=":", label="target")
    ax.set_xlabel("optimiser steps (cumulative over the search's trials)")
    ax.set_ylabel(f"best full-budget val/{metric}")
    ax.set_title(f"{task}: best so far, one line per search seed")
    ax.legend()
    path = Path("results") / f"inheritance-{task}.png"
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
