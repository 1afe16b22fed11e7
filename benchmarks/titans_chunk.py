"""Titans/Miras memories in chunks (`mem(titans, ..., chunk=C)`): training speed beside gla and
deltanet, and what the faster form learns.

    python benchmarks/titans_chunk.py [--chunks 1 8 16 64] [--rounds 5] [--accuracy-steps 270]

Speed: one training step (forward, backward, AdamW) of each model on one `mqar` batch (the task's
shapes: batch 64 × T 64, d_model 64, 2 layers), every model built first and then stepped in turn,
round after round, in one process on one torch thread, so that the machine's load falls on all of
them alike; the figure is the median of `rounds` timed rounds (after one warm-up round) of the
process's own CPU time (so that a shared machine's load counts less), and the ratio is gla's
steps/s over the model's (the issue's target: at most 1.5 for titans at chunk 16).
The seeds are written with `chunk=C` added to their `mem(titans, ...)` node (chunk 1 is the seed
itself).

Accuracy (skipped with --accuracy-steps 0): the titans seed at chunk 1 and 16, and gla, trained by
`einsearch.train.train` for a fixed number of steps on the main job's small MQAR (vocab 64, length
32, 4 pairs), same training seed; test accuracy and the whole run's steps/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import einsearch  # noqa: E402
from einsearch.tasks.base import Budget  # noqa: E402
from einsearch.tasks.registry import get_task  # noqa: E402
from einsearch.train import TrainConfig, train  # noqa: E402

MEMORIES = ("titans", "moneta", "yaad", "memora")
BASELINES = ("gla", "deltanet")
SMALL_MQAR = "mqar:vocab=64,seq_len=32,pairs=4"


def chunked(name: str, chunk: int) -> str:
    """The seed's text with chunk=C added to its mem(titans, ...) node (chunk 1: the seed as is)."""
    text = einsearch.seeds[name].text
    if chunk == 1:
        return text
    marker = "mem(titans,"
    start = text.index(marker)
    end = text.index(")", start)
    return text[:end] + f", chunk={chunk}" + text[end:]


def speed(chunks: list[int], rounds: int) -> None:
    task = get_task("mqar")
    batch = task.data().train.sample(64, torch.Generator().manual_seed(0))
    texts = {name: einsearch.seeds[name].text for name in BASELINES}
    for name in MEMORIES:
        for chunk in chunks:
            texts[f"{name} chunk={chunk}"] = chunked(name, chunk)
    models = {}
    for label, text in texts.items():
        torch.manual_seed(0)
        model = task.model(einsearch.parse(text), 64, 2)
        models[label] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    seconds: dict[str, list[float]] = {label: [] for label in models}
    for r in range(rounds + 1):
        for label, (model, optimiser) in models.items():
            start = time.process_time()  # CPU time of this one-thread process: another job's load waits outside it
            loss = task.loss(model, batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if r:  # round 0 warms up
                seconds[label].append(time.process_time() - start)
    rate = {label: 1 / statistics.median(s) for label, s in seconds.items()}
    print(f"mqar (batch 64 x T 64, d_model 64, 2 layers), one thread, CPU time, median of {rounds} rounds, interleaved")
    print(f"{'model':24s} {'steps/s':>8s} {'gla / model':>12s}")
    for label in models:
        print(f"{label:24s} {rate[label]:8.2f} {rate['gla'] / rate[label]:12.2f}")
    print()
    header = "".join(f"{f'chunk {c}':>10s}" for c in chunks)
    print(f"{'steps/s':10s}{header}")
    for name in MEMORIES:
        print(f"{name:10s}" + "".join(f"{rate[f'{name} chunk={c}']:10.2f}" for c in chunks))
    for name in BASELINES:
        print(f"{name:10s}{rate[name]:10.2f}")
    print()


def accuracy(steps: int) -> None:
    print(f"{SMALL_MQAR}, {steps} steps, einsearch.train defaults (seed 0)")
    print(f"{'model':20s} {'test acc':>9s} {'steps/s':>8s}")
    for label, text in (("titans chunk=1", chunked("titans", 1)), ("titans chunk=16", chunked("titans", 16)),
                        ("gla", einsearch.seeds["gla"].text)):
        start = time.perf_counter()
        result = train(text, SMALL_MQAR, TrainConfig(budget=Budget.parse(f"{steps}steps")))
        elapsed = time.perf_counter() - start
        acc = result.metrics.get("test/accuracy", float("nan"))
        print(f"{label:20s} {acc:9.3f} {steps / elapsed:8.2f}  ({result.status}{', ' + result.reason if result.reason else ''})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 8, 16, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--accuracy-steps", type=int, default=270)
    args = parser.parse_args()
    torch.set_num_threads(1)
    speed(args.chunks, args.rounds)
    if args.accuracy_steps:
        accuracy(args.accuracy_steps)


if __name__ == "__main__":
    main()
