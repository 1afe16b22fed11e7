"""Does the search find better mixers?  The three experiments behind RESULTS.md (issue 11).

    python benchmarks/discovery.py mqar        # subquadratic, inference state <= 2,432 floats (mamba's)
    python benchmarks/discovery.py lorenz96    # hybrid space, valid prediction time
    python benchmarks/discovery.py etth1       # ETTh1 horizon 96, the forecasting protocol

Each is one `einsearch run` (evolution on Ray, successive halving over the rung ladder, then the
finalists: the top 3 architectures and the comparison seeds retrained with 3 training seeds at the
full budget, Welch's test against the best seed), followed by `einsearch report`, which prints the
leaderboard, the finalists table with mean ± std, the verdict line, and writes the best-so-far
plot.  The run folder is runs/discovery-<name>; running the command again resumes it.  Printed
last: the CPU time spent, as the sum of the trainings' own seconds (each on one thread).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ETTh1.csv"

EXPERIMENTS: dict[str, list[str]] = {
    # The main job's MQAR (vocab 64, length 32, 4 pairs), where 600 steps separate the memories
    # (BENCHMARKS.md: the default mqar leaves every 2,048-float memory near 13% at 600 steps).
    # State cap 2,432 floats: mamba's own state at d_model 64 (the 2,048 is gla's and
    # deltanet's exactly, so it would reject mamba, one of the seeds, and every addition to gla).
    "mqar": [
        "--task", "mqar:vocab=64,seq_len=32,pairs=4", "--space", "subquadratic", "--max-state", "2432",
        "--seed-arch", "gla", "--seed-arch", "deltanet", "--seed-arch", "mamba",  # rat is not in subquadratic
        "--trials", "30", "--trial-budget", "600steps", "--rungs", "2",  # rungs 200 / 600
    ],
    "lorenz96": [
        "--task", "lorenz96", "--space", "hybrid", "--seed-arch", "transformer", "--seed-arch", "gru",
        "--trials", "30", "--trial-budget", "1000steps", "--rungs", "2",  # rungs 333 / 1000 (fidelity: rho 0.93 at 333)
    ],
    "etth1": [
        "--task", f"csv:{DATA},lookback=336,horizon=96", "--space", "full", "--d-model", "16",
        "--seed-arch", "linear", "--seed-arch", "transformer",
        "--trials", "40", "--trial-budget", "500steps",
    ],
}  # fmt: skip


def cpu_seconds(folder: Path) -> tuple[float, float]:
    """Seconds of training in the search and in the final (each training runs on one thread)."""
    search = sum(json.loads(line).get("seconds", 0.0) for line in (folder / "trials.jsonl").read_text().splitlines())
    final_path = folder / "finalists.jsonl"
    final = 0.0
    if final_path.exists():
        final = sum(
            r.get("seconds", 0.0)
            for r in map(json.loads, final_path.read_text().splitlines())
            if not r.get("detail", "").startswith("the search's training")  # counted in the search
        )
    return search, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--seed", type=int, default=0, help="the search's seed")
    parser.add_argument("--executor", default="ray")
    args, extra = parser.parse_known_args()
    folder = Path("runs") / (f"discovery-{args.experiment}" + ("" if args.seed == 0 else f"-{args.seed}"))
    einsearch = [sys.executable, "-m", "einsearch.cli"]
    if (folder / "config.json").exists():
        command = [*einsearch, "run", "--resume", str(folder)]
    else:
        command = [*einsearch, "run", *EXPERIMENTS[args.experiment], "--seed", str(args.seed),
                   "--executor", args.executor, "--output", str(folder), *extra]  # fmt: skip
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    subprocess.run([*einsearch, "report", str(folder)], check=True)
    search, final = cpu_seconds(folder)
    print(f"\nCPU time: search {search / 60:.1f} min + final {final / 60:.1f} min = {(search + final) / 60:.1f} CPU-minutes")


if __name__ == "__main__":
    main()
