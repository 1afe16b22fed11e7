"""Fidelity ladder calibration (issue 11): does a candidate's score on a cheap rung rank the zoo
like its score at the full budget?

    python benchmarks/fidelity.py mqar                      # one task: the table in BENCHMARKS.md
    python benchmarks/fidelity.py mqar-small --steps 270 --rungs 3   # the main job's ladder
    python benchmarks/fidelity.py lorenz96 --steps 1500 --eta 3 --rungs 4
    python benchmarks/fidelity.py csv --archs linear,transformer,gla

For each zoo seed (>= 10, of different families) and each training seed, one run trains at the
full budget on the warmup-stable-decay schedule and is scored at every rung of the ladder
full/eta^(rungs-1), ..., full/eta, full the way a search scores it: a copy of the model cools
down for a fifth of the steps so far and is evaluated on the validation split
(`TrainConfig.rungs`), while the run itself goes on unchanged.  So the rungs of one run are
exactly the scores that successive halving would see, at a fraction of the cost of separate runs.

Printed per rung: its steps, the CPU-seconds a run spends to reach and score it (mean over the
runs), and Spearman's rank correlation between the architectures' rung scores (training seed 0)
and their full-budget validation scores (mean over the training seeds); the top row also gives
the correlation of two training seeds at the full budget (the noise ceiling).  Each run is kept
as a JSON line in --results, so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from resumable import run_pending  # noqa: E402  (benchmarks/ is on the path of a script run from it)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ETTh1.csv"
TASKS = {
    "mqar": "mqar",
    "mqar-small": "mqar:vocab=64,seq_len=32,pairs=4",  # the README's main job
    "lorenz96": "lorenz96",
    "csv": f"csv:{DATA},lookback=336,horizon=96",
}
MINIMISED = {"loss", "mse", "mae", "nrmse", "nrmse_horizon"}  # validation metrics where lower is better
ZOO = "transformer,gla,retnet,deltanet,linear_attention,mamba,mambaout,lstm,aaren,rat"


def ladder(full: int, eta: int, rungs: int) -> list[int]:
    """The search's ladder (`RunConfig.ladder`): r, r·eta, ..., full with r = full // eta^(rungs-1)."""
    first = max(1, full // eta ** (rungs - 1))
    return [first * eta**k for k in range(rungs - 1)] + [full]


def run_one(job: dict) -> dict:
    import torch

    from einsearch.tasks import Budget
    from einsearch.train import TrainConfig, train

    torch.set_num_threads(1)
    seconds: dict[int, float] = {}
    rung_steps = set(job["rungs"])
    start = time.process_time()

    def clock(step: int, metrics: dict[str, float]) -> bool:
        if step in rung_steps:
            seconds[step] = time.process_time() - start
        return job["upto"] is not None and step >= job["upto"]  # True stops the run

    config = TrainConfig(d_model=job["d_model"], layers=2, budget=Budget(steps=job["rungs"][-1]), seed=job["seed"],
                         rungs=tuple(job["rungs"][:-1]))  # fmt: skip
    result = train(job["arch"], job["task"], config, callback=clock)
    seconds[job["rungs"][-1]] = time.process_time() - start
    return {**job, "status": result.status, "reason": result.reason, "metric": result.metric, "mode": result.mode,
            "rung_scores": {str(r["step"]): r[result.metric] for r in result.rungs},
            "rung_metrics": {str(r["step"]): {k: v for k, v in r.items() if k not in ("step", "cooldown")} for r in result.rungs},
            "final": result.metrics.get(f"val/{result.metric}"), "seconds": {str(k): v for k, v in seconds.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--archs", default=None, help=f"zoo seeds (default: {ZOO}, plus linear for csv)")
    parser.add_argument("--steps", type=int, default=None, help="the full budget (default: the task's)")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--rungs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per architecture")
    parser.add_argument("--d-model", type=int, default=None, help="default: 64 (16 for csv, as PatchTST on ETTh1)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", default=None, help="default: runs/fidelity-<task>.jsonl")
    parser.add_argument("--upto", type=int, default=None,
                        help="train only this many steps of each full-budget run (same schedule, so the same rung "
                             "scores) and take the full scores from earlier full runs in --results")
    parser.add_argument("--score", default=None,
                        help="rank the rungs by this validation metric (e.g. loss, minimised) instead of the task's")
    args = parser.parse_args()

    from einsearch.tasks import get_task

    task = get_task(TASKS[args.task])
    full = args.steps or task.budget.steps
    rungs = ladder(full, args.eta, args.rungs)
    d_model = args.d_model or (16 if args.task == "csv" else 64)
    archs = (args.archs or ZOO + (",linear" if args.task == "csv" else "")).split(",")
    jobs = [dict(arch=a, task=TASKS[args.task], rungs=rungs, d_model=d_model, seed=s, upto=args.upto)
            for a in archs for s in range(args.seeds if args.upto is None else 1)]  # fmt: skip
    key = lambda j: (j["arch"], j["task"], tuple(j["rungs"]), j["d_model"], j["seed"], j.get("upto"))  # noqa: E731
    print(f"{args.task}: rungs {rungs}, {len(archs)} architectures x {args.seeds} seeds", flush=True)
    describe = lambda row: f"{row['arch']} seed {row['seed']}: {row['status']} rungs {row['rung_scores']} final {row['final']}"  # noqa: E731
    done = run_pending(jobs, key, run_one, args.results or f"runs/fidelity-{args.task}.jsonl", args.workers, describe)
    full = [done[k] for a in archs for s in range(args.seeds) if (k := key(dict(jobs[0], arch=a, seed=s, upto=None))) in done]
    partial = {done[key(j)]["arch"]: done[key(j)] for j in jobs if key(j) in done} if args.upto is not None else None
    shown = rungs if args.upto is None else [r for r in rungs[:-1] if r <= args.upto] + [rungs[-1]]
    report(full, shown, archs, args.seeds, partial, args.score)


def report(rows: list[dict], rungs: list[int], archs: list[str], seeds: int, partial: dict | None = None,
           score: str | None = None) -> None:  # fmt: skip
    """The rung table: `rows` are full runs; rung scores from `partial` runs (by architecture)
    where given, and by the validation metric `score` (minimised if it is a loss) where given."""
    from scipy.stats import spearmanr

    ok = [r for r in rows if r["status"] == "ok"]
    failed = sorted({f"{r['arch']} ({r['reason']})" for r in rows if r["status"] != "ok"})
    sign = 1.0 if ok and ok[0]["mode"] == "max" else -1.0
    rung_sign = sign if score is None else (-1.0 if score in MINIMISED else 1.0)
    by_arch = {a: {r["seed"]: r for r in ok if r["arch"] == a} for a in archs}
    complete = [a for a in archs if len(by_arch[a]) == seeds and (partial is None or a in partial)]
    target = [statistics.fmean(by_arch[a][s]["final"] for s in range(seeds)) for a in complete]
    metric = ok[0]["metric"] if ok else "?"
    ranked_by = f"val/{score}" if score else f"val/{metric}"

    def rung_score(arch: str, steps: int) -> float:
        source = partial[arch] if partial is not None else by_arch[arch][0]
        return source["rung_metrics"][str(steps)][score] if score else source["rung_scores"][str(steps)]

    def cpu(arch: str, steps: int) -> float:
        if partial is not None and steps != rungs[-1]:
            return partial[arch]["seconds"][str(steps)]
        return statistics.fmean(r["seconds"][str(steps)] for r in by_arch[arch].values())

    print(f"\n{len(complete)} architectures with all {seeds} seeds" + (f"; failed: {', '.join(failed)}" if failed else ""))
    print(f"\n| rung | steps | CPU-s to score (mean) | Spearman ρ of the rung's {ranked_by} with the full budget's val/{metric} |")
    print("|---|---|---|---|")
    for i, steps in enumerate(rungs):
        seconds = statistics.fmean(cpu(a, steps) for a in complete)
        if steps == rungs[-1]:
            scores, s_sign = [by_arch[a][0]["final"] for a in complete], sign
            note = "" if seeds < 2 else f" (seed 0 vs seed 1: ρ = {spearmanr([by_arch[a][0]['final'] for a in complete], [by_arch[a][1]['final'] for a in complete])[0]:.2f})"
        else:
            scores, s_sign, note = [rung_score(a, steps) for a in complete], rung_sign, ""
        rho = spearmanr([s_sign * s for s in scores], [sign * t for t in target])[0]
        print(f"| {i + 1} | {steps} | {seconds:.0f} | {rho:.2f}{note} |")
    print(f"\n| architecture | " + " | ".join(f"rung {s} {ranked_by}" for s in rungs[:-1]) + f" | full val/{metric} (mean of {seeds}) |")
    print("|---|" + "---|" * len(rungs))
    for a, t in sorted(zip(complete, target), key=lambda p: -sign * p[1]):
        cells = " | ".join(f"{rung_score(a, s):.4f}" for s in rungs[:-1])
        print(f"| {a} | {cells} | {t:.4f} |")


if __name__ == "__main__":
    main()
