"""Helpers shared by the kernel tests.

The interpreter tests run every kernel on CPU tensors under TRITON_INTERPRET=1 (set by
tests/conftest.py before anything imports Triton), in float32, on tiny shapes, against the float64
reference loop.  The GPU tests need real kernels, so they run only with a CUDA device and the
interpreter off:  TRITON_INTERPRET=0 python -m pytest tests/kernels -m gpu
"""

from __future__ import annotations

import time

import pytest
import torch

from einsearch.ops.dispatch import interpreting, triton_available

needs_interpreter = pytest.mark.skipif(
    not (triton_available() and interpreting()), reason="needs triton and TRITON_INTERPRET=1"
)
needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and triton_available() and not interpreting()),
    reason="needs a CUDA GPU, triton, and TRITON_INTERPRET=0",
)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖a - b‖ / ‖b‖ in float64 (flash-linear-attention's `get_err_ratio`, without the sqrt of means)."""
    a, b = actual.detach().double(), expected.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    error = relative_error(actual, expected)
    assert error <= tol, f"{name}: relative error {error:.2e} > {tol:.0e}"


def outputs_and_grads(fn, inputs: dict, seed: int = 0) -> tuple[list[torch.Tensor], dict]:
    """Run fn(**inputs), back-propagate fixed random cotangents of every output, and return the
    outputs and the gradients of every floating input that is not None (by name)."""
    leaves = {
        name: t.detach().clone().requires_grad_(True) if isinstance(t, torch.Tensor) else t
        for name, t in inputs.items()
    }
    outputs = fn(**leaves)
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    g = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outputs]
    loss = sum((o * c).sum() for o, c in zip(outputs, cotangents))
    differentiable = {n: t for n, t in leaves.items() if isinstance(t, torch.Tensor)}
    grads = torch.autograd.grad(loss, list(differentiable.values()))
    return [o.detach() for o in outputs], dict(zip(differentiable, grads))


def compare(kernel, reference, inputs: dict, tol: float, **kernel_options) -> None:
    """The kernel in float32 against the reference in float64: every output and every gradient."""
    as32 = {n: t.float() if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}
    as64 = {n: t.double() if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}
    got, got_grads = outputs_and_grads(lambda **kw: kernel(**kw, **kernel_options), as32)
    want, want_grads = outputs_and_grads(reference, as64)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(f"output {i}", a, b, tol)
    for name in want_grads:
        assert_close(f"d{name}", got_grads[name], want_grads[name], tol)


def cuda_time(fn, repeats: int = 10) -> float:
    """Median seconds of fn() on the GPU, after a warm-up call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def assert_backends_agree(fn, inputs: dict, monkeypatch, tol: float = 1e-5) -> None:
    """A dispatch function gives the same outputs and gradients with EINSEARCH_KERNELS=torch and =triton."""
    inputs = {n: t.float() if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}
    monkeypatch.setenv("EINSEARCH_KERNELS", "torch")
    want, want_grads = outputs_and_grads(fn, inputs)
    monkeypatch.setenv("EINSEARCH_KERNELS", "triton")
    got, got_grads = outputs_and_grads(fn, inputs)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(f"output {i}", a, b, tol)
    for name in want_grads:
        assert_close(f"d{name}", got_grads[name], want_grads[name], tol)


def assert_gpu_matches(kernel, reference, inputs: dict, dtype: torch.dtype, tol: float) -> None:
    """On the GPU: the kernel in `dtype` against the reference in float32, outputs and gradients."""
    as32 = {n: t.float() if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}
    cast = {n: t.to(dtype) if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}
    want, want_grads = outputs_and_grads(reference, as32)
    got, got_grads = outputs_and_grads(kernel, cast)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == dtype
        assert_close(f"output {i}", a, b, tol)
    for name in want_grads:
        assert_close(f"d{name}", got_grads[name], want_grads[name], tol)


def forward_backward_seconds(fn, inputs: dict) -> float:
    """GPU time of fn(**inputs) and the backward of the sum of its outputs."""
    leaves = {
        n: t.detach().float().requires_grad_(True) if isinstance(t, torch.Tensor) else t for n, t in inputs.items()
    }

    def run():
        outputs = fn(**leaves)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        sum(o.sum() for o in outputs).backward()

    return cuda_time(run)
