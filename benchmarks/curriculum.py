"""Dataset decomposition against concat-and-chunk on byte-level LM (issue 15.4; Pouransari et al.
2024, "Dataset Decomposition: Faster LLM Training with Variable Sequence Length Curriculum").

    python benchmarks/curriculum.py --steps 200                   # the default corpus, seq_len 256
    python benchmarks/curriculum.py --steps 200 --archs transformer --short-files 4096 \
        --task lm:seq_len=1024,eval_bytes=32768 --batch-size 4          # documents near seq_len

Each architecture trains twice from the same seed, the same number of steps and the same tokens
per step (batch x seq_len): once on `lm:`'s default windows (``curriculum=concat``: random
windows of the concatenated files, across file boundaries) and once on ``curriculum=dd`` (each
file cut into power-of-two pieces, one length per batch; see `einsearch.tasks.lm`).  Both are
scored on the same validation bytes every `steps / evals` steps, and on the test bytes at the
end.  Printed, side by side: validation bits per byte against the process's CPU time spent
training (`time.process_time`, one torch thread, evaluations left out; after a few warm-up steps
of each architecture), so that the cheaper short batches of dd show as time saved, not as steps.

The standard library's files are mostly much longer than a CPU-sized seq_len (median 7.8 KB), so
there dd has little to cut; ``--short-files N`` trains instead on a folder of the default corpus's
files of at most N bytes (copied to a temporary folder, the task's path set to it), where
documents are about as long as the windows, as web documents are for the paper's 8k tokens.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from einsearch.tasks import Budget, get_task  # noqa: E402
from einsearch.tasks.lm import LM, stdlib_files  # noqa: E402
from einsearch.train import StepInfo, TrainConfig, train  # noqa: E402

TASK = "lm:eval_bytes=32768"  # the default corpus: Python's standard library source, one document a file


def run(arch: str, spec: str, steps: int, evals: int, d_model: int, layers: int, batch_size: int, seed: int) -> dict:
    """One training run: [(step, training CPU seconds, val bpb)], the test bpb and the run's CPU time."""
    task = get_task(spec)
    marks: dict[int, float] = {}  # step -> CPU time when it ended, evaluations included
    points: list[tuple[int, float, float]] = []
    evaluating = 0.0  # CPU time spent in evaluations so far

    def progress(info: StepInfo) -> None:
        marks[info.step] = time.process_time()

    def callback(step: int, metrics: dict[str, float]) -> bool:
        nonlocal evaluating
        points.append((step, marks[step] - begin - evaluating, metrics["bpb"]))
        evaluating += time.process_time() - marks[step]
        return False

    config = TrainConfig(d_model=d_model, layers=layers, batch_size=batch_size, budget=Budget(steps=steps), seed=seed,
                         eval_every=steps // evals)  # fmt: skip
    begin = time.process_time()
    result = train(arch, task, config, callback=callback, progress=progress)
    assert result.ok, result.detail
    points.append((steps, marks[steps] - begin - evaluating, result.metrics["val/bpb"]))
    return dict(points=points, test=result.metrics["test/bpb"], total=time.process_time() - begin)


def buckets(spec: str) -> str:
    """dd's buckets: the share of the training tokens at each length, and what the cut dropped."""
    train = get_task(spec).data().train
    held = {length: length * len(starts) for length, starts in train.starts.items()}
    predictions = len(train.data) - 1
    shares = ", ".join(f"{length}: {tokens / predictions:.1%}" for length, tokens in held.items())
    return f"tokens by piece length {shares}; dropped (remainders below min_len, file ends) {1 - sum(held.values()) / predictions:.1%}"


def short_files(root: Path, most: int) -> str:
    """Fill the folder `root` with copies of the default corpus's files of at most `most` bytes."""
    for number, file in enumerate(f for f in stdlib_files() if f.stat().st_size <= most):
        shutil.copyfile(file, root / f"{number:05d}_{file.name}")  # the corpus's order, flattened
    return str(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=TASK, help="an lm: task; curriculum=concat and =dd are added to it")
    parser.add_argument("--archs", default="transformer,gla")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--evals", type=int, default=5, help="validation evaluations before the final one")
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--short-files", type=int, default=None, help="train on the default corpus's files of at most this many bytes")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="short_files_") as scratch:
        task = get_task(args.task)
        if args.short_files is not None:
            task = replace(task, path=short_files(Path(scratch), args.short_files))
        compare(task, args)


def compare(task: LM, args: argparse.Namespace) -> None:
    curricula = {name: replace(task, curriculum=name).spec for name in ("concat", "dd")}
    prepare = {}
    for name, spec in curricula.items():  # read (concat), then decompose (dd), before any clock starts
        started = time.process_time()
        get_task(spec).data()
        prepare[name] = time.process_time() - started
    info = get_task(curricula["concat"]).info()
    print(f"{task.spec}: {info['files']} files, {info['bytes']:,} bytes; {args.steps} steps of {args.batch_size} x "
          f"{task.seq_len} bytes, d_model {args.d_model}, {args.layers} layers, seed {args.seed}\n"
          f"data, CPU s: concat {prepare['concat']:.1f} (reads the corpus), dd {prepare['dd']:.1f} (decomposes it)\n"
          f"dd: {buckets(curricula['dd'])}\n")  # fmt: skip
    for arch in args.archs.split(","):
        run(arch, curricula["concat"], 4, 1, args.d_model, args.layers, args.batch_size, args.seed)  # warm-up
        runs = {name: run(arch, spec, args.steps, args.evals, args.d_model, args.layers, args.batch_size, args.seed)
                for name, spec in curricula.items()}  # fmt: skip
        concat, dd = runs["concat"]["points"], runs["dd"]["points"]
        print(f"### {arch}\n\n| step | concat CPU s | concat val bpb | dd CPU s | dd val bpb |\n|---|---|---|---|---|")
        for (step, c_time, c_bpb), (_, d_time, d_bpb) in zip(concat, dd):
            print(f"| {step} | {c_time:.1f} | {c_bpb:.3f} | {d_time:.1f} | {d_bpb:.3f} |")
        print("| test bpb | | " + " | | ".join(f"{runs[name]['test']:.3f}" for name in curricula) + " |")
        print("\nwhole run with evaluations, CPU s: " + ", ".join(f"{name} {r['total']:.1f}" for name, r in runs.items()) + "\n", flush=True)


if __name__ == "__main__":
    main()
