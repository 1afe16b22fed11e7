"""Whether a call runs a Triton kernel or the PyTorch form it stands for.

Each op with a kernel (`einsearch.ops.gla.gla`, `delta.delta_rule`, `scan.scan_diag`,
`aaren.aaren`, `rnn.rnn_states`) asks `use_triton` with its tensor arguments.  The kernel is used
when every tensor is on a CUDA device in float32, bfloat16 or float16 and Triton imports;
otherwise the PyTorch form runs.  The environment variable EINSEARCH_KERNELS overrides the
choice: `torch` always runs PyTorch; `triton` always runs the kernel, and fails loudly where it
cannot (CPU tensors are accepted only under TRITON_INTERPRET=1, Triton's interpreter, which is how
the tests run the kernels).  Anything else is an error.
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
        import triton  # noqa: F401  (only whether it imports)
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
