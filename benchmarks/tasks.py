"""Reference runs of the tasks and the trainer (issue 5), printed as Markdown for BENCHMARKS.md.

    python benchmarks/tasks.py                       # everything, ~20 minutes on one core
    python benchmarks/tasks.py mqar --seeds transformer lstm --budget 5m
    python benchmarks/tasks.py lorenz96 --budget 3m
    python benchmarks/tasks.py speed

* ``mqar``: each named seed (a name of the seed zoo or architecture text) trained on
  ``mqar:vocab=256,seq_len=64,pairs=8`` with the task's default recipe, d_model 64, 2 layers;
  the claim is that the transformer reaches >= 0.95 test accuracy within 5 minutes on one core,
  and that the LSTM, on the same budget, stays clearly below.  The validation accuracy is also
  sampled every 150 steps, giving the time to first reach 0.95.
* ``lorenz96``: a 2-layer transformer and a 2-layer GRU (the ``gru`` seed, a pre-norm residual
  GRU block) against the persistence forecast: rollout NRMSE over the first Lyapunov time (the
  task's ``nrmse``), NRMSE over the whole 5-Lyapunov-time rollout, valid prediction time.
* ``speed``: training steps per second of the transformer seed at d_model 64, T 256, batch 16
  (byte-level LM on the default corpus).

Every run uses one torch thread (`TrainConfig.threads`), as candidates in a search do; timings
depend on what else the machine is doing, so compare figures from one run.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import einsearch  # noqa: E402
from einsearch.tasks import Budget, get_task  # noqa: E402
from einsearch.train import TrainConfig, train  # noqa: E402

MQAR = "mqar:vocab=256,seq_len=64,pairs=8"
GRU_BLOCK = "res(seq(norm(rms), rnn(gru, heads=1, wiring=none, parallel=sequential)))"  # if the zoo has no gru


def arch_of(name: str) -> str | None:
    """A seed name or architecture text; None for a seed name the zoo does not have (yet)."""
    if "(" in name or name in einsearch.seeds:
        return name
    return None


def mqar(seeds: list[str], budget: Budget) -> None:
    print(f"\n### MQAR `{MQAR}`, budget {budget}, d_model 64, 2 layers, one thread\n")
    print("| seed | status | test accuracy | steps | seconds | time to val acc ≥ 0.95 |")
    print("|---|---|---|---|---|---|")
    for seed in seeds:
        arch = arch_of(seed)
        if arch is None:
            print(f"| {seed} | not in the seed zoo | | | | |", flush=True)
            continue
        started, reached = time.perf_counter(), None

        def watch(step: int, metrics: dict[str, float]) -> bool:
            nonlocal reached
            if reached is None and metrics["accuracy"] >= 0.95:
                reached = time.perf_counter() - started
            return False

        result = train(arch, MQAR, TrainConfig(budget=budget, eval_every=150), callback=watch)
        accuracy = result.metrics.get("test/accuracy", float("nan"))
        first = f"{reached:.0f} s" if reached is not None else "not reached"
        status = result.status + (f" ({result.reason}: {result.detail})" if result.reason else "")
        print(f"| {seed} | {status} | {accuracy:.4f} | {result.steps} | {result.seconds:.0f} | {first} |", flush=True)


def lorenz96(budget: Budget) -> None:
    nan = float("nan")
    print(f"\n### Lorenz-96 (`lorenz96`, defaults), budget {budget}, d_model 64, 2 layers, one thread\n")
    print("| model | status | test NRMSE, 1st Lyapunov time | persistence | NRMSE over the horizon | VPT (Lyapunov times) | steps |")
    print("|---|---|---|---|---|---|---|")
    for name, arch in (("transformer", "transformer"), ("gru", arch_of("gru") or GRU_BLOCK)):
        result = train(arch, "lorenz96", TrainConfig(budget=budget))
        m = result.metrics
        status = result.status + (f" ({result.reason}: {result.detail})" if result.reason else "")
        print(
            f"| {name} | {status} | {m.get('test/nrmse', nan):.4f} | {m.get('test/persistence_nrmse', nan):.4f} "
            f"| {m.get('test/nrmse_horizon', nan):.4f} | {m.get('test/vpt', nan):.3f} | {result.steps} |",
            flush=True,
        )


def speed(steps: int = 60, warmup: int = 5) -> None:
    torch.set_num_threads(1)
    task = get_task("lm:seq_len=256")
    split = task.data().train
    torch.manual_seed(0)
    model = task.model(einsearch.seeds["transformer"], 64, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for i in range(warmup + steps):
        if i == warmup:
            started = time.perf_counter()
        loss = task.loss(model, split.sample(16, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rate = steps / (time.perf_counter() - started)
    print("\n### Training speed, transformer seed, d_model 64, 2 layers, T 256, batch 16, one thread\n")
    print(f"{rate:.2f} steps/s ({rate * 16 * 256:,.0f} tokens/s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help="any of mqar, lorenz96, speed (default: all three)")
    parser.add_argument("--seeds", nargs="+", default=["transformer", "lstm"], help="seed names or architecture texts for mqar")
    parser.add_argument("--budget", default=None, help="training budget per run (default: 5m for mqar, 3m for lorenz96)")
    args = parser.parse_args()
    parts = args.parts or ["speed", "mqar", "lorenz96"]
    unknown = set(parts) - {"speed", "mqar", "lorenz96"}
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}: choose from mqar, lorenz96, speed")
    torch.set_num_threads(1)
    if "speed" in parts:
        speed()
    if "mqar" in parts:
        mqar(args.seeds, Budget.parse(args.budget or "5m"))
    if "lorenz96" in parts:
        lorenz96(Budget.parse(args.budget or "3m"))


if __name__ == "__main__":
    main()
