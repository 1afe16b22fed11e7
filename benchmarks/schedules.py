"""Rung scores as proxies of the finished run (issue 11): cosine prefix vs warmup-stable-decay plus
a cool-down on a copy.

    python benchmarks/schedules.py                       # the table in BENCHMARKS.md
    python benchmarks/schedules.py --steps 600 --archs transformer,gla,mamba,lstm --seeds 0,1

Each architecture trains twice at the full budget, once per schedule, and is scored at the
intermediate rungs of successive halving's ladder (full/eta^2, full/eta) two ways in the same run:
the plain prefix (the model as it is at the rung: a validation evaluation every first-rung
steps) and a copy that first cools down for a fifth of the steps so far, the learning rate
falling linearly to zero (`TrainConfig.rungs`; the run itself goes on unchanged).  Printed:
Spearman's ρ between each kind of rung score and the finished run's validation score of the same
schedule, over the architectures, and whether the rung's top 1/eta holds the finished runs'
best (what successive halving needs).  Every run is a JSON line in --results, so an interrupted
benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from resumable import run_pending  # noqa: E402  (benchmarks/ is on the path of a script run from it)

TASK = "mqar:vocab=64,seq_len=32,pairs=4,train=20000,val=500,test=500"
ARCHS = "transformer,gla,mamba,lstm,retnet,deltanet,linear_attention,mambaout"


def run_one(job: dict) -> dict:
    import torch

    from einsearch.tasks import Budget
    from einsearch.train import TrainConfig, train

    torch.set_num_threads(1)
    first, second, full = job["ladder"]
    config = TrainConfig(
        d_model=job["d_model"], layers=2, batch_size=job["batch_size"], budget=Budget(steps=full), seed=job["seed"],
        schedule=job["schedule"], rungs=(first, second), rung_cooldown=0.2, eval_every=first,
    )  # fmt: skip
    result = train(job["arch"], job["task"], config)
    metric = result.metric
    prefix = {str(h["step"]): h[metric] for h in result.history if h["step"] in (first, second)}
    cooled = {str(r["step"]): r[metric] for r in result.rungs}
    return {**job, "status": result.status, "reason": result.reason, "metric": metric, "prefix": prefix, "cooled": cooled,
            "final": result.metrics.get(f"val/{metric}"), "seconds": result.seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=TASK)
    parser.add_argument("--archs", default=ARCHS)
    parser.add_argument("--steps", type=int, default=600, help="the full budget")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", default="runs/schedules.jsonl")
    args = parser.parse_args()

    first = args.steps // args.eta**2
    ladder = [first, first * args.eta, args.steps]  # as RunConfig.ladder
    archs, seeds = args.archs.split(","), [int(s) for s in args.seeds.split(",")]
    jobs = [dict(arch=a, task=args.task, ladder=ladder, d_model=args.d_model, batch_size=args.batch_size, seed=s, schedule=k)
            for s in seeds for k in ("wsd", "cosine") for a in archs]  # fmt: skip
    key = lambda j: json.dumps([j[k] for k in ("arch", "task", "ladder", "d_model", "batch_size", "seed", "schedule")])  # noqa: E731
    print(f"{args.task}: ladder {ladder}, {len(archs)} architectures x {len(seeds)} seeds x 2 schedules", flush=True)
    describe = lambda row: (f"{row['schedule']:6} {row['arch']} seed {row['seed']}: prefix {row['prefix']} "  # noqa: E731
                            f"cooled {row['cooled']} final {row['final']} ({row['seconds']:.0f}s)")
    done = run_pending(jobs, key, run_one, args.results, args.workers, describe)
    report([done[key(j)] for j in jobs if key(j) in done], ladder, archs, seeds, args.eta)


def report(rows: list[dict], ladder: list[int], archs: list[str], seeds: list[int], eta: int) -> None:
    from scipy.stats import spearmanr

    metric = rows[0]["metric"]
    keep = math.ceil(len(archs) / eta)
    print(f"\nval/{metric}; Spearman ρ with the finished run of the same schedule over {len(archs)} architectures "
          f"(mean over seeds {seeds}); 'best kept': runs where the rung's top {keep} holds the finished best\n")  # fmt: skip
    print("| schedule | rung score | " + " | ".join(f"ρ at {s} steps | best kept at {s}" for s in ladder[:-1]) + " |")
    print("|---|---|" + "---|---|" * (len(ladder) - 1))
    for schedule in ("cosine", "wsd"):
        for kind, label in (("prefix", "prefix"), ("cooled", "copy + cool-down")):
            cells = []
            for step in ladder[:-1]:
                rhos, kept = [], 0
                for seed in seeds:
                    mine = {r["arch"]: r for r in rows if r["schedule"] == schedule and r["seed"] == seed and r["status"] == "ok"}
                    names = [a for a in archs if a in mine]
                    scores = [mine[a][kind][str(step)] for a in names]
                    finals = [mine[a]["final"] for a in names]
                    rhos.append(spearmanr(scores, finals)[0])
                    top = sorted(names, key=lambda a: -mine[a][kind][str(step)])[:keep]
                    kept += max(names, key=lambda a: mine[a]["final"]) in top
                cells.append(f"{sum(rhos) / len(rhos):.2f} | {kept}/{len(seeds)}")
            print(f"| {schedule} | {label} | " + " | ".join(cells) + " |")
    print("\n| architecture | seed | " + " | ".join(f"{k} {s}" for k in ("cosine prefix", "wsd+cool") for s in ladder[:-1])
          + " | cosine final | wsd final |")  # fmt: skip
    print("|---|---|" + "---|" * (2 * (len(ladder) - 1) + 2))
    for seed in seeds:
        by = {(r["arch"], r["schedule"]): r for r in rows if r["seed"] == seed and r["status"] == "ok"}
        for a in archs:
            if (a, "cosine") in by and (a, "wsd") in by:
                c, w = by[a, "cosine"], by[a, "wsd"]
                cells = [f"{c['prefix'][str(s)]:.3f}" for s in ladder[:-1]] + [f"{w['cooled'][str(s)]:.3f}" for s in ladder[:-1]]
                print(f"| {a} | {seed} | " + " | ".join(cells) + f" | {c['final']:.3f} | {w['final']:.3f} |")


if __name__ == "__main__":
    main()
