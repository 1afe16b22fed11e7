"""Choose, per call, between a Triton kernel and its PyTorch reference.

Each function here has the signature and results of the PyTorch chunked form it stands for, so a
primitive calls it in place of that form:

    gla(q, k, v, log_alpha, h0=None, chunk=None) -> (o, h_T)          memory.gla_chunked
    delta_rule(q, k, v, beta, log_alpha=None, h0=None, chunk=None)     memory.delta_rule_chunked
    scan_diag(x, log_a, b, c, h0=None, chunk=None) -> (y, h_T)        scan.scan_diag_chunked
    aaren(s, v, chunk=None) -> o                                       scan.aaren_chunked
    rnn_states(cell, u, R, b, s0=None) -> states                       recurrent.naive_rnn_states

The Triton kernel is used when every tensor argument is on a CUDA device in float32, bfloat16 or
float16 and Triton imports; otherwise the PyTorch form runs (`chunk` is passed to it; the kernels
pick their own blocks).  The environment variable EINSEARCH_KERNELS overrides the choice:
`torch` always runs PyTorch; `triton` always runs the kernel, and fails loudly where it cannot
(CPU tensors are accepted only under TRITON_INTERPRET=1, Triton's interpreter, which is how the
tests run the kernels).  Anything else is an error.

The references are imported when called, not at import time, so that the primitive modules can
import this one without a cycle.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: Tensor | None) -> bool:
    """Whether a call on these tensors (None entries ignored) runs the Triton kernel."""
    tensors = tuple(t for t in tensors if t is not None)
    forced = os.environ.get("EINSEARCH_KERNELS", "").strip().lower()
    if forced == "torch":
        return False
    if forced == "triton":
        if not triton_available():
            raise RuntimeError("EINSEARCH_KERNELS=triton, but triton cannot be imported")
        if not interpreting() and not all(t.is_cuda for t in tensors):
            raise RuntimeError("EINSEARCH_KERNELS=triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
        if not all(t.dtype in KERNEL_DTYPES for t in tensors):
            dtypes = [t.dtype for t in tensors]
            raise RuntimeError(f"EINSEARCH_KERNELS=triton: the kernels take {KERNEL_DTYPES}, got {dtypes}")
        return True
    if forced:
        raise ValueError(f"EINSEARCH_KERNELS must be 'torch' or 'triton', got {forced!r}")
    return (
        all(t.is_cuda and t.dtype in KERNEL_DTYPES for t in tensors)
        and triton_available()
        and not interpreting()
    )


# ---------------------------------------------------------------- the ops


def gla(
    q: Tensor, k: Tensor, v: Tensor, log_alpha: Tensor | None, h0: Tensor | None = None, chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """Gated linear attention: `einsearch.primitives.memory.gla_chunked` or `kernels.gla.gla_triton`."""
    if use_triton(q, k, v, log_alpha, h0):
        from einsearch.kernels.gla import gla_triton

        return gla_triton(q, k, v, log_alpha, h0)
    from einsearch.primitives.memory import GLA_CHUNK, gla_chunked

    return gla_chunked(q, k, v, log_alpha, h0, chunk=chunk or GLA_CHUNK)


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_alpha: Tensor | None = None,
    h0: Tensor | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The (gated) delta rule: `memory.delta_rule_chunked` or `kernels.delta.delta_rule_triton`."""
    if use_triton(q, k, v, beta, log_alpha, h0):
        from einsearch.kernels.delta import delta_rule_triton

        return delta_rule_triton(q, k, v, beta, log_alpha, h0)
    from einsearch.primitives.memory import DELTA_CHUNK, delta_rule_chunked

    return delta_rule_chunked(q, k, v, beta, log_alpha, h0, chunk=chunk or DELTA_CHUNK)


def scan_diag(
    x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h0: Tensor | None = None, chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """The diagonal recurrence: `scan.scan_diag_chunked` or `kernels.scan.scan_diag_triton`."""
    if use_triton(x, log_a, b, c, h0):
        from einsearch.kernels.scan import scan_diag_triton

        return scan_diag_triton(x, log_a, b, c, h0)
    from einsearch.primitives.scan import DIAG_CHUNK, scan_diag_chunked

    return scan_diag_chunked(x, log_a, b, c, h0, chunk=chunk or DIAG_CHUNK)


def aaren(s: Tensor, v: Tensor, chunk: int | None = None) -> Tensor:
    """Aaren's prefix softmax: `scan.aaren_chunked` or `kernels.aaren.aaren_triton`."""
    if use_triton(s, v):
        from einsearch.kernels.aaren import aaren_triton

        return aaren_triton(s, v)
    from einsearch.primitives.scan import AAREN_CHUNK, aaren_chunked

    return aaren_chunked(s, v, chunk=chunk or AAREN_CHUNK)


FUSED_CELLS = ("lstm", "gru")


def rnn_states(cell: str, u: Tensor, R: Tensor, b: Tensor, s0: Tensor | None = None) -> Tensor:
    """Every state of an rnn(cell) head stack: the fused Triton step loop for lstm and gru, else the loop."""
    if cell in FUSED_CELLS and u.shape[1] > 0 and use_triton(u, R, b, s0):
        from einsearch.kernels.rnn import rnn_states_triton

        return rnn_states_triton(cell, u, R, b, s0)
    from einsearch.primitives.recurrent import naive_rnn_states

    return naive_rnn_states(cell, u, R, b, s0)
