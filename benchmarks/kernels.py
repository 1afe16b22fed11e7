"""Triton kernels against their PyTorch references (and flash-linear-attention where it has the op).

    python benchmarks/kernels.py [--ops gla,gla_head,linear,delta,gated_delta,scan,aaren,lstm,gru]
                                 [--lengths 1024,4096,16384] [--dtype bfloat16|float32] [--seconds 1.0]

For every op and sequence length T it times, in the same run, the forward pass (no autograd) and
the forward plus backward pass of: the PyTorch chunked form the kernel replaces (the step loop
for lstm/gru), the Triton kernel, and flash-linear-attention's corresponding op when `fla` is
importable (GLA: chunk_gla; one decay per head: chunk_simple_gla; linear attention:
chunk_linear_attn without normalisation; delta rule: chunk_delta_rule; gated delta rule:
chunk_gated_delta_rule).  It prints the median milliseconds and the ratios torch / triton
(> 1: the kernel is faster) and triton / fla (< 1.5 is the target).  Shapes: batch 4, 4 heads of
64 for the matrix memories and Aaren; 256 channels with state 16 for the diagonal scan; 32
sequences, 4 heads of 32 for lstm/gru.  Each median is taken within about ``--seconds`` (at least
3 timings after a warm-up; benchmarks/gpu_check.sh uses 0.2 to fit its 10 minutes).

Kernels need a CUDA GPU: on a machine without one (or with TRITON_INTERPRET=1, Triton's CPU
interpreter, which is for tests) the script says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def gpu_unavailable_reason() -> str | None:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "TRITON_INTERPRET=1 is set: the interpreter is for tests, not timing"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None


@dataclass(frozen=True)
class Case:
    """One op: its inputs at length T and the three implementations (fla may be None)."""

    name: str
    make_inputs: Callable[[int, torch.dtype], dict]
    torch_fn: Callable
    triton_fn: Callable
    fla_fn: Callable | None


B, H, D_HEAD = 4, 4, 64
DEVICE = "cuda"


def randn(*shape, dtype):
    return torch.randn(*shape, device=DEVICE, dtype=dtype)


def memory_inputs(T: int, dtype: torch.dtype, gate: str) -> dict:
    q = randn(B, H, T, D_HEAD, dtype=dtype) / D_HEAD**0.5
    k = randn(B, H, T, D_HEAD, dtype=dtype)
    v = randn(B, H, T, D_HEAD, dtype=dtype)
    log_alpha = None
    if gate == "channel":
        log_alpha = F.logsigmoid(randn(B, H, T, D_HEAD, dtype=dtype)) / 16
    elif gate == "head":
        log_alpha = F.logsigmoid(randn(B, H, T, 1, dtype=dtype)) / 16
    return {"q": q, "k": k, "v": v, "log_alpha": log_alpha}


def delta_inputs(T: int, dtype: torch.dtype, gated: bool) -> dict:
    inputs = memory_inputs(T, dtype, "none")
    inputs["q"] = F.normalize(inputs["q"].float(), dim=-1).to(dtype)
    inputs["k"] = F.normalize(inputs["k"].float(), dim=-1).to(dtype)
    inputs["beta"] = torch.rand(B, H, T, device=DEVICE, dtype=dtype)
    inputs["log_alpha"] = F.logsigmoid(randn(B, H, T, dtype=dtype)) if gated else None
    return inputs


def scan_inputs(T: int, dtype: torch.dtype) -> dict:
    D, N = 256, 16
    return {
        "x": randn(B, T, D, dtype=dtype),
        "log_a": -torch.rand(B, T, D, N, device=DEVICE, dtype=dtype),
        "b": randn(B, T, N, dtype=dtype),
        "c": randn(B, T, N, dtype=dtype),
    }


def aaren_inputs(T: int, dtype: torch.dtype) -> dict:
    return {"s": randn(B, H, T, dtype=dtype), "v": randn(B, H, T, D_HEAD, dtype=dtype)}


def rnn_inputs(T: int, dtype: torch.dtype, cell: str) -> dict:
    gates, d = {"lstm": 4, "gru": 3}[cell], 32
    return {
        "cell": cell,
        "u": randn(32, T, H, gates * d, dtype=dtype),
        "R": randn(H, d, gates * d, dtype=dtype) / d**0.5,
        "b": randn(H, gates * d, dtype=dtype),
    }


# ---------------------------------------------------------------- flash-linear-attention adapters
# fla takes (B, T, H, ·); the inputs are transposed before timing starts (see `prepare`).


def to_fla_layout(inputs: dict) -> dict:
    out = {}
    for name, t in inputs.items():
        if isinstance(t, torch.Tensor) and t.dim() >= 3:
            t = t.transpose(1, 2)
            if name == "log_alpha" and t.shape[-1] == 1:
                t = t[..., 0]  # one decay per head: (B, T, H)
        out[name] = t.contiguous() if isinstance(t, torch.Tensor) else t
    return out


def fla_ops() -> dict[str, Callable]:
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.gla import chunk_gla
        from fla.ops.linear_attn import chunk_linear_attn
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:
        return {}

    def gla(q, k, v, log_alpha):
        return chunk_gla(q, k, v, g=log_alpha, scale=1.0, output_final_state=True)

    def gla_head(q, k, v, log_alpha):
        return chunk_simple_gla(q, k, v, g=log_alpha, scale=1.0, output_final_state=True)

    def linear(q, k, v, log_alpha):
        return chunk_linear_attn(q, k, v, scale=1.0, normalize=False, output_final_state=True)

    def delta(q, k, v, beta, log_alpha):
        return chunk_delta_rule(q, k, v, beta, scale=1.0, output_final_state=True)

    def gated_delta(q, k, v, beta, log_alpha):
        return chunk_gated_delta_rule(q, k, v, log_alpha, beta, scale=1.0, output_final_state=True)

    return {"gla": gla, "gla_head": gla_head, "linear": linear, "delta": delta, "gated_delta": gated_delta}


def cases() -> list[Case]:
    from einsearch.kernels.aaren import aaren_triton
    from einsearch.kernels.delta import delta_rule_triton
    from einsearch.kernels.gla import gla_triton
    from einsearch.kernels.rnn import rnn_states_triton
    from einsearch.kernels.scan import scan_diag_triton
    from einsearch.ops.aaren import aaren_chunked
    from einsearch.ops.delta import delta_rule_chunked
    from einsearch.ops.gla import gla_chunked
    from einsearch.ops.rnn import naive_rnn_states
    from einsearch.ops.scan import scan_diag_chunked

    fla = fla_ops()
    return [
        Case("gla", lambda T, dt: memory_inputs(T, dt, "channel"), gla_chunked, gla_triton, fla.get("gla")),
        Case("gla_head", lambda T, dt: memory_inputs(T, dt, "head"), gla_chunked, gla_triton, fla.get("gla_head")),
        Case("linear", lambda T, dt: memory_inputs(T, dt, "none"), gla_chunked, gla_triton, fla.get("linear")),
        Case(
            "delta", lambda T, dt: delta_inputs(T, dt, False), delta_rule_chunked, delta_rule_triton, fla.get("delta")
        ),
        Case(
            "gated_delta",
            lambda T, dt: delta_inputs(T, dt, True),
            delta_rule_chunked,
            delta_rule_triton,
            fla.get("gated_delta"),
        ),
        Case("scan", scan_inputs, scan_diag_chunked, scan_diag_triton, None),
        Case("aaren", aaren_inputs, aaren_chunked, aaren_triton, None),
        Case("lstm", lambda T, dt: rnn_inputs(T, dt, "lstm"), naive_rnn_states, rnn_states_triton, None),
        Case("gru", lambda T, dt: rnn_inputs(T, dt, "gru"), naive_rnn_states, rnn_states_triton, None),
    ]


# ---------------------------------------------------------------- timing


def median_ms(fn: Callable[[], None], budget_s: float = 1.0, most: int = 20) -> float:
    """Median of CUDA-event timings of fn(), after one warm-up call, within about budget_s."""
    fn()
    torch.cuda.synchronize()
    times: list[float] = []
    while len(times) < most and (len(times) < 3 or sum(times) < budget_s * 1e3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def runner(fn: Callable, inputs: dict, backward: bool) -> Callable[[], None]:
    """A closure running fn on inputs: forward only (no autograd), or forward and backward."""
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                fn(**inputs)

        return forward
    leaves = {n: t.detach().requires_grad_(True) if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}

    def forward_backward() -> None:
        for t in leaves.values():
            if isinstance(t, torch.Tensor):
                t.grad = None
        outputs = fn(**leaves)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        sum(o.float().sum() for o in outputs if o is not None).backward()

    return forward_backward


def measure(fn: Callable | None, inputs: dict, backward: bool, seconds: float = 1.0) -> float | None:
    if fn is None:
        return None
    try:
        return median_ms(runner(fn, inputs, backward), budget_s=seconds)
    except Exception as error:  # a missing op or an API change in fla must not stop the table
        print(f"    ({getattr(fn, '__name__', fn)} failed: {type(error).__name__}: {str(error)[:120]})")
        return None


def as_float32(inputs: dict) -> dict:
    return {n: t.float() if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default="gla,gla_head,linear,delta,gated_delta,scan,aaren,lstm,gru")
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--seconds", type=float, default=1.0, help="about how long each median may take")
    args = parser.parse_args()

    reason = gpu_unavailable_reason()
    if reason is not None:
        print(f"The Triton kernels need a CUDA GPU ({reason}); nothing measured.")
        return 0
    dtype = getattr(torch, args.dtype)
    lengths = [int(t) for t in args.lengths.split(",")]
    wanted = set(args.ops.split(","))
    print(f"device: {torch.cuda.get_device_name()}, dtype {args.dtype}, torch {torch.__version__}")
    header = (
        f"{'op':<12}{'T':>7}  {'pass':<8}{'torch ms':>10}{'triton ms':>11}{'fla ms':>9}"
        f"{'torch/triton':>14}{'triton/fla':>12}"
    )
    print(header)
    print("-" * len(header))
    for case in cases():
        if case.name not in wanted:
            continue
        for T in lengths:
            torch.manual_seed(0)
            inputs = case.make_inputs(T, dtype)
            fla_inputs = to_fla_layout(inputs) if case.fla_fn is not None else {}
            for backward in (False, True):
                reference = measure(case.torch_fn, inputs, backward, args.seconds)
                if reference is None and dtype != torch.float32:  # e.g. solve_triangular has no bfloat16
                    print("    (the PyTorch form is timed in float32 instead)")
                    reference = measure(case.torch_fn, as_float32(inputs), backward, args.seconds)
                kernel = measure(case.triton_fn, inputs, backward, args.seconds)
                fla = measure(case.fla_fn, fla_inputs, backward, args.seconds)
                speedup = reference / kernel if reference and kernel else None
                versus_fla = kernel / fla if kernel and fla else None
                label = "fwd+bwd" if backward else "fwd"
                print(
                    f"{case.name:<12}{T:>7}  {label:<8}{fmt(reference):>10}{fmt(kernel):>11}{fmt(fla):>9}"
                    f"{fmt(speedup):>14}{fmt(versus_fla):>12}",
                    flush=True,
                )
            del inputs, fla_inputs
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
