"""ETTh1 next to the published tables (issue 10): test MSE / MAE of zoo seeds in the forecasting
shell, over horizons and lookbacks, several training seeds each, beside the published figures.

    python benchmarks/forecast.py                                   # the table in BENCHMARKS.md
    python benchmarks/forecast.py --archs linear --lookbacks 336 --horizons 96 --seeds 3
    python benchmarks/forecast.py --results runs/forecast.jsonl    # where each training is kept

Each training runs in its own process with one torch thread (`--workers` at once) and is appended
to `--results` as one JSON line as soon as it ends, so an interrupted benchmark continues where it
stopped; the table is printed from that file.  Budgets are optimiser steps; the CPU seconds of
each training (its process's user+system time, data loading excluded) are reported beside them.
The data file is the real ETTh1 from ../shared/data (the tests never read it).
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

# Published test MSE / MAE on ETTh1, multivariate, standardised, by (lookback, horizon).
# Lookback 336: DLinear (Zeng et al. 2023, Table 2) and PatchTST/42 (Nie et al. 2023, Table 3).
# Lookback 96: DLinear, PatchTST and iTransformer as re-run by Liu et al. 2024 (iTransformer, Table 10).
PUBLISHED: dict[str, dict[tuple[int, int], tuple[float, float]]] = {
    "DLinear": {
        (336, 96): (0.375, 0.399), (336, 192): (0.405, 0.416), (336, 336): (0.439, 0.443), (336, 720): (0.472, 0.490),
        (96, 96): (0.386, 0.400), (96, 192): (0.437, 0.432), (96, 336): (0.481, 0.459), (96, 720): (0.519, 0.516),
    },
    "PatchTST": {
        (336, 96): (0.375, 0.399), (336, 192): (0.414, 0.421), (336, 336): (0.431, 0.436), (336, 720): (0.449, 0.466),
        (96, 96): (0.414, 0.419), (96, 192): (0.460, 0.445), (96, 336): (0.501, 0.466), (96, 720): (0.500, 0.488),
    },
    "iTransformer": {
        (96, 96): (0.386, 0.405), (96, 192): (0.441, 0.436), (96, 336): (0.487, 0.458), (96, 720): (0.503, 0.491),
    },
}  # fmt: skip


def run_one(job: dict) -> dict:
    """One training in a worker process: the result as a JSON-ready dict."""
    import torch

    from einsearch.tasks import Budget
    from einsearch.train import TrainConfig, train

    torch.set_num_threads(1)
    started = time.process_time()
    config = TrainConfig(d_model=job["d_model"], layers=job["layers"], budget=Budget(steps=job["steps"]), seed=job["seed"], lr=job.get("lr"))
    result = train(job["arch"], job["task"], config)
    return {**job, "status": result.status, "reason": result.reason, "metrics": result.metrics,
            "selected_step": result.selected_step, "cpu_seconds": time.process_time() - started,
            "params": (result.costs or {}).get("params")}  # fmt: skip


def key(row: dict) -> tuple:
    return (row["arch"], row["lookback"], row["horizon"], row["steps"], row["d_model"], row["layers"], row.get("lr"), row["seed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--archs", default="linear,transformer", help="zoo seed names, comma-separated")
    parser.add_argument("--lookbacks", default="336,96")
    parser.add_argument("--horizons", default="96,192,336,720")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per cell")
    parser.add_argument("--steps", default="linear=1000,*=1500", help="optimiser steps per arch (name=steps, * for the rest)")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the task's, 1e-3)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", default="runs/forecast.jsonl")
    parser.add_argument("--table-only", action="store_true", help="print the table of what --results holds")
    args = parser.parse_args()

    steps = dict(item.split("=") for item in args.steps.split(","))
    archs = args.archs.split(",")
    jobs = [
        dict(arch=arch, lookback=lookback, horizon=horizon, steps=int(steps.get(arch, steps["*"])), d_model=args.d_model,
             layers=args.layers, lr=args.lr, seed=seed, task=f"csv:{args.data},lookback={lookback},horizon={horizon}")
        for lookback in map(int, args.lookbacks.split(",")) for horizon in map(int, args.horizons.split(","))
        for arch in archs for seed in range(args.seeds)
    ]  # fmt: skip
    describe = lambda row: (f"{row['arch']} L={row['lookback']} H={row['horizon']} seed {row['seed']}: "  # noqa: E731
                            f"test mse {row['metrics'].get('test/mse', float('nan')):.4f} ({row['cpu_seconds']:.0f} CPU-s)")
    done = run_pending([] if args.table_only else jobs, key, run_one, args.results, args.workers, describe)
    print_table(list(done.values()) if args.table_only else [done[key(job)] for job in jobs if key(job) in done], archs)


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def print_table(rows: list[dict], archs: list[str]) -> None:
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault((row["lookback"], row["horizon"], row["arch"], row["d_model"], row.get("lr")), []).append(row)
    print("\n| lookback | horizon | model | d_model, lr | test MSE | test MAE | seeds | steps | CPU-s per training | published MSE / MAE |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for lookback, horizon in sorted({(c[0], c[1]) for c in cells}, key=lambda c: (-c[0], c[1])):
        published = "; ".join(f"{name} {table[(lookback, horizon)][0]:.3f} / {table[(lookback, horizon)][1]:.3f}"
                              for name, table in PUBLISHED.items() if (lookback, horizon) in table)  # fmt: skip
        mine = sorted((c for c in cells if c[:2] == (lookback, horizon)), key=lambda c: (archs.index(c[2]) if c[2] in archs else 99, c[3], c[4] or 0))
        for cell in mine:
            group = [r for r in cells[cell] if r["status"] == "ok"]
            failed = len(cells[cell]) - len(group)
            mse = mean_std([r["metrics"]["test/mse"] for r in group])
            mae = mean_std([r["metrics"]["test/mae"] for r in group])
            cpu = statistics.fmean(r["cpu_seconds"] for r in group) if group else float("nan")
            note = f" ({failed} failed)" if failed else ""
            lr = "task's (1e-3)" if cell[4] is None else f"{cell[4]:g}"
            print(f"| {lookback} | {horizon} | {cell[2]} | {cell[3]}, {lr} | {mse} | {mae} | {len(group)}{note} | {cells[cell][0]['steps']} | {cpu:.0f} | {published} |")
            published = ""


if __name__ == "__main__":
    main()
