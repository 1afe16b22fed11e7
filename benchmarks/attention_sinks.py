"""Attention sinks and ACT (Yu et al. 2024) on a trained transformer seed.

Trains the transformer seed on a task for each budget in --steps (one run each, weights saved),
then prints per head the share of attention on the first token and on other sink tokens (keys
whose mean received attention exceeds alpha/T), ACT's head search (each head calibrated alone on
validation examples) and the test metric without and with the chosen heads calibrated.  The
cost of inspecting is measured side by side in the same run: the test evaluation through
explicitly computed attention (every head hooked, beta=1: the same numbers) against the plain
SDPA forward, process CPU time beside wall time.

    python benchmarks/attention_sinks.py --steps 300,600 --task mqar --out /tmp/bench16
    einsearch inspect transformer --weights /tmp/bench16/transformer_600.safetensors --task mqar --calibrate
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from einsearch.grammar.seeds import resolve
from einsearch.inspect import ActConfig, attention_modules, calibrate, calibrated, capture, evaluate, load_arch, plot_attention, sink_scores
from einsearch.tasks import Budget, get_task
from einsearch.train import TrainConfig, train


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="transformer")
    parser.add_argument("--task", default="mqar")
    parser.add_argument("--steps", default="300,600", help="training budgets, comma-separated")
    parser.add_argument("--out", default="/tmp/bench16")
    parser.add_argument("--examples", type=int, default=64, help="test examples whose attention is captured")
    parser.add_argument("--samples", type=int, default=256, help="validation examples ACT chooses heads on")
    parser.add_argument("--alpha", type=float, default=ActConfig.alpha)
    parser.add_argument("--beta", type=float, default=ActConfig.beta)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arch, task, config = resolve(args.arch), get_task(args.task), ActConfig(args.alpha, args.beta)
    print(f"{args.arch} on {task.spec}, d_model=64, layers=2; alpha={config.alpha:g}, beta={config.beta:g}")
    for steps in (int(s) for s in args.steps.split(",")):
        weights = out / f"{args.arch}_{steps}.safetensors"
        result, wall, cpu = timed(lambda: train(arch, task, TrainConfig(budget=Budget(steps=steps), weights_path=str(weights))))
        print(f"\n== {steps} steps: status {result.status}, val/{task.metric} {result.metrics.get(f'val/{task.metric}', float('nan')):.4f}, "
              f"test/{task.metric} {result.metrics.get(f'test/{task.metric}', float('nan')):.4f} (training: {cpu:.0f} s CPU, {wall:.0f} s wall)")  # fmt: skip
        model = load_arch(arch, task, weights).model
        batch = next(iter(task.data().test.batches(args.examples)))
        maps = capture(model, task, batch)
        plot_attention(maps, out / f"attention_{steps}.png", alpha=config.alpha)
        print(f"per head on {args.examples} test examples: first-token share, other-sink share, other sinks per example")
        for s in sink_scores(maps, config.alpha):
            print(f"  {s.site} h{s.head}:  first {s.first:.3f}  other {s.other:.3f}  sinks {s.sinks:.2f}")
        cal, wall, cpu = timed(lambda: calibrate(model, task, config, args.samples))
        print(f"ACT head search on {cal.samples} validation examples (uncalibrated {cal.baseline:.4f}), {cpu:.1f} s CPU, {wall:.1f} s wall:")
        for t in cal.trials:
            print(f"  {t.site} h{t.head}: {t.metric:.4f} ({t.gain:+.4f}){'  chosen' if (t.site, t.head) in cal.heads else ''}")
        metric = cal.metric
        print(f"test {metric}: {cal.before[metric]:.4f} without, {cal.after[metric]:.4f} with ACT on {len(cal.heads)} head(s); "
              f"test loss {cal.before['loss']:.4f} -> {cal.after['loss']:.4f}")  # fmt: skip
        every = [(label, h) for label, module in attention_modules(model).items() for h in range(module.heads)]
        plain, plain_wall, plain_cpu = timed(lambda: evaluate(model, task, task.data().test))

        def explicit():
            with calibrated(model, every, ActConfig(config.alpha, beta=1.0)):
                return evaluate(model, task, task.data().test)

        same, hooked_wall, hooked_cpu = timed(explicit)
        print(f"test evaluation, explicit attention (all heads hooked, beta=1) / SDPA: {hooked_cpu / plain_cpu:.2f}x CPU "
              f"({hooked_cpu:.2f} / {plain_cpu:.2f} s), {hooked_wall / plain_wall:.2f}x wall; "
              f"|Δ{metric}| = {abs(same[metric] - plain[metric]):.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
