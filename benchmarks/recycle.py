"""Recycled attention (Xu, Goyal & Choi 2024) on passkey: accuracy and CPU time per step of a
trained transformer stepped with full attention, recycled attention and a sliding window.

    python benchmarks/recycle.py [--train-len 320] [--steps 800] [--factors 1 4] [--stride 8] [--keep 32]

1. The `transformer` seed (d_model 64, 2 layers) is trained on `passkey` at `--train-len` bytes for
   `--steps` steps (the weights are kept in `--weights` and reused when that file exists).
2. At each length factor, `--examples` fresh passkey examples are stepped token by token (the
   prompt teacher-forced, then the pass key's digits greedily, each fed back), all examples in one
   batch, with:
   * full: ordinary stepping, every step attends to the whole KV cache;
   * recycled: `einsearch.recycle(model, stride=S, keep=K)` on every step, prompt included;
   * window: the same mechanism choosing the last K keys on every step (stride 1, choose="recent"):
     a sliding window of K keys;
   * recycled / window, answer only (the paper's setting): the prompt stepped with full attention,
     the digits with recycling (the first digit's step is a full one) or with the window.
   Exact = every digit of the key right; digits = fraction of digits right (then per digit).  CPU time is the
   thread's own time (one torch thread) per token step of the whole batch, measured over the
   prompt and digits, beside the wall time; the ratio is full's CPU time per step over the row's.
3. The attention module alone (d_model 64, 4 heads, batch 1) stepped through `--alone-len`
   positions with each setting: the mechanism's cost without the rest of the model.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import einsearch  # noqa: E402
from einsearch.primitives.attention import Recycle, SoftmaxAttention  # noqa: E402
from einsearch.tasks.base import Budget  # noqa: E402
from einsearch.tasks.passkey import Passkey, passkey_instance  # noqa: E402
from einsearch.train import TrainConfig, train  # noqa: E402

DIGITS = 5


def trained_model(train_len: int, steps: int, lr: float, weights: Path) -> torch.nn.Module:
    task = Passkey(seq_len=train_len, train=8000, val=100, test=100)
    arch = einsearch.seeds["transformer"]
    if not weights.exists():
        weights.parent.mkdir(parents=True, exist_ok=True)
        start = time.process_time()
        config = TrainConfig(budget=Budget(steps=steps), lr=lr, weights_path=str(weights), eval_lengths=(1, 2, 4))
        result = train(arch, task, config)
        cpu = time.process_time() - start
        print(f"trained {steps} steps at {train_len} bytes in {cpu:.0f} CPU s ({result.status})")
        for row in result.lengths:  # the trainer's teacher-forced forward test at each length
            digits, exact = row.get("accuracy", float("nan")), row.get("exact", float("nan"))
            print(f"  forward test x{row['factor']} ({row['tokens']} bytes): digits {digits:.3f}  exact {exact:.3f}")
    from safetensors.torch import load_file

    model = task.model(arch, 64, 2)
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


def examples(length: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (count, length - DIGITS + 1) ending in "The pass key is " and their keys (count, DIGITS)."""
    rng = np.random.default_rng(seed)
    prompts, keys = [], []
    for _ in range(count):
        inputs, targets = passkey_instance(rng, length, DIGITS)
        prompts.append(inputs[: length - DIGITS + 1])
        keys.append(targets[length - DIGITS :])
    return torch.from_numpy(np.stack(prompts)), torch.from_numpy(np.stack(keys))


def setting(model: torch.nn.Module, recycle: Recycle | None) -> contextlib.AbstractContextManager:
    if recycle is None:
        return contextlib.nullcontext()
    return einsearch.recycle(model, recycle.stride, recycle.keep, recycle.choose)


def step(model: torch.nn.Module, tokens: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
    """One token (B,) through the language model's blocks: next-token logits (B, vocab)."""
    h = model.embed(tokens)  # (B, D)
    new = []
    for block, state in zip(model.blocks, states):
        h, state = block.step(h, state)
        new.append(state)
    return model.head(model.norm(h)), new


def prompt_pass(model, prompts: torch.Tensor, recycle: Recycle | None) -> tuple[torch.Tensor, list, float, float]:
    """Step the prompt: last logits, states, CPU and wall seconds."""
    states = [block.init_state(prompts.shape[0]) for block in model.blocks]
    cpu, wall = time.thread_time(), time.perf_counter()
    with setting(model, recycle):
        for t in range(prompts.shape[1]):
            logits, states = step(model, prompts[:, t], states)
    return logits, states, time.thread_time() - cpu, time.perf_counter() - wall


def answer(model, logits: torch.Tensor, states: list, recycle: Recycle | None) -> tuple[torch.Tensor, float, float]:
    """Greedy digits (B, DIGITS), each fed back; CPU and wall seconds."""
    digits = []
    cpu, wall = time.thread_time(), time.perf_counter()
    with setting(model, recycle):
        for i in range(DIGITS):
            digits.append(logits.argmax(-1))
            if i + 1 < DIGITS:
                logits, states = step(model, digits[-1], states)
    return torch.stack(digits, 1), time.thread_time() - cpu, time.perf_counter() - wall


@torch.no_grad()
def passkey_table(model, factors: list[int], train_len: int, count: int, recycled: Recycle, window: Recycle) -> None:
    print("\n| length | method | exact | digits | digit 1..5 | CPU ms/step | wall ms/step | full / row (CPU) |")
    print("|---:|---|---:|---:|---|---:|---:|---:|")
    for factor in factors:
        length = factor * train_len
        prompts, keys = examples(length, count, seed=1000 + factor)
        steps = prompts.shape[1] + DIGITS - 1
        rows, full_states = {}, None
        for name, r in (("full", None), (f"recycled S={recycled.stride} K={recycled.keep}", recycled),
                        (f"window K={window.keep}", window)):  # fmt: skip
            logits, states, cpu, wall = prompt_pass(model, prompts, r)
            digits, cpu2, wall2 = answer(model, logits, states, r)
            rows[name] = (digits, (cpu + cpu2) / steps, (wall + wall2) / steps)
            if r is None:
                full_states = (logits, states)
        for name, r in ((f"recycled S={recycled.stride} K={recycled.keep}, answer only", recycled),
                        (f"window K={window.keep}, answer only", window)):  # fmt: skip
            digits, _, _ = answer(model, *full_states, r)
            rows[name] = (digits, None, None)
        full_cpu = rows["full"][1]
        for name, (digits, cpu, wall) in rows.items():
            right = digits == keys
            timing = f"{1e3 * cpu:.2f} | {1e3 * wall:.2f} | {full_cpu / cpu:.2f}" if cpu else "– | – | –"
            each = " ".join(f"{a:.2f}" for a in right.float().mean(0).tolist())
            exact, digit = right.all(1).float().mean(), right.float().mean()
            print(f"| {length} (x{factor}) | {name} | {exact:.2f} | {digit:.2f} | {each} | {timing} |")


@torch.no_grad()
def alone_table(length: int, recycled: Recycle, window: Recycle) -> None:
    torch.manual_seed(0)
    module = SoftmaxAttention(64, 4, "rope").eval()
    x = torch.randn(1, length, 64)
    print(f"\nattention alone (d_model 64, 4 heads, batch 1), {length} steps:")
    print("| method | CPU µs/step | wall µs/step | full / row (CPU) |\n|---|---:|---:|---:|")
    results = {}
    for name, r in (("full", None), ("recycled", recycled), ("window", window)):
        state = module.init_state(1)
        cpu, wall = time.thread_time(), time.perf_counter()
        with setting(module, r):
            for t in range(length):
                _, state = module.step(x[:, t], state)
        results[name] = ((time.thread_time() - cpu) / length, (time.perf_counter() - wall) / length)
    for name, (cpu, wall) in results.items():
        print(f"| {name} | {1e6 * cpu:.0f} | {1e6 * wall:.0f} | {results['full'][0] / cpu:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-len", type=int, default=320)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weights", type=Path, default=Path("runs/recycle-passkey.safetensors"))
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--keep", type=int, default=32)
    parser.add_argument("--alone-len", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.process_time()
    recycled, window = Recycle(args.stride, args.keep), Recycle(1, args.keep, "recent")
    model = trained_model(args.train_len, args.steps, args.lr, args.weights)
    passkey_table(model, args.factors, args.train_len, args.examples, recycled, window)
    if args.alone_len:
        alone_table(args.alone_len, recycled, window)
    print(f"\n{time.process_time() - start:.0f} CPU s in all (training included when it ran)")


if __name__ == "__main__":
    main()
