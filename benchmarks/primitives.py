"""Forward+backward time of each primitive's parallel (chunked) form against its reference loop.

    python benchmarks/primitives.py [--lengths 256 1024 4096] [--batch 4] [--repeats 3]

Both forms run side by side in the same process, interleaved, one torch thread; the figure is
the best of `repeats` runs of each, and the ratio is loop / parallel (higher is better).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import einsearch  # noqa: E402

ARCHS = [
    "scan(diag, state=16, selective=true)",
    "scan(diag, state=16, selective=false)",
    "scan(ssd, heads=4, state=16)",
    "aaren(heads=4)",
    "mem(gla, heads=4)",
    "mem(retnet, heads=4)",
    "mem(delta, heads=4, gated=false)",
    "mem(delta, heads=4, gated=true)",
    "attn(linear, heads=4, phi=elu1)",
    "rat(heads=4, chunk=16)",
    "rnn(gru, heads=8, wiring=none, parallel=newton)",
]


def fwd_bwd_seconds(run, x: torch.Tensor) -> float:
    x = x.detach().requires_grad_(True)
    start = time.perf_counter()
    run(x).square().mean().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"d_model={args.d_model} batch={args.batch} threads=1, best of {args.repeats}, forward+backward")
    print(f"{'architecture':52s} {'T':>6s} {'parallel ms':>12s} {'loop ms':>10s} {'loop/parallel':>14s}")
    for text in args.archs:
        torch.manual_seed(0)
        module = einsearch.build(text, args.d_model)
        for T in args.lengths:
            x = torch.randn(args.batch, T, args.d_model)
            fwd_bwd_seconds(module.forward, x[:, :8])  # warm-up
            best = {"parallel": float("inf"), "loop": float("inf")}
            for _ in range(args.repeats):
                best["parallel"] = min(best["parallel"], fwd_bwd_seconds(module.forward, x))
                best["loop"] = min(best["loop"], fwd_bwd_seconds(module.reference, x))
            ratio = best["loop"] / best["parallel"]
            print(f"{text:52s} {T:6d} {best['parallel'] * 1e3:12.1f} {best['loop'] * 1e3:10.1f} {ratio:13.1f}x", flush=True)


if __name__ == "__main__":
    main()
