"""The memory a candidate needs, estimated before any of it is built.

Training holds, besides the process itself:

* four numbers per parameter (fp32 weights, gradients, AdamW's two moments): 16 bytes each;
* the activations autograd saves for the backward pass, which grow with the batch, the sequence
  length, and how often a block's modules are applied (``repeat`` runs its child n times).

Parameters are counted exactly (`einsearch.costs.count_params`) on a model built on torch's
``meta`` device (tensors with shapes and no storage: nothing is allocated).  Activations are measured, not
modelled per primitive: a sub-tree without ``repeat`` or ``wired`` is built on ``meta`` and run
forward on a short meta sequence (`PROBE_TOKENS`) with a batch of one and of two, counting the
bytes of every tensor autograd saves; the difference is one sequence's worth, scaled linearly to
the task's length.  ``repeat`` multiplies its child's figure by n, ``wired`` by its node count (plus
the weighted sums between nodes), so a million applications cost one probe, not a million.
Quadratic terms in the length (attention scores) are underestimated by the linear scaling; the
shell's own activations (embedding, head, loss) are measured the same way with identity blocks.

The ceiling defaults to half the machine's physical memory (`default_memory_limit`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor

from einsearch.arch import Arch
from einsearch.build import build, check_size, module_count
from einsearch.costs import count_params
from einsearch.primitives.wired import wired_graph
from einsearch.tasks.base import Task

PROBE_TOKENS = 16  # length of the meta sequences that activations are measured on
BYTES_PER_PARAMETER = 16  # fp32 weight, gradient and AdamW's two moments
FLOAT_BYTES = 4
FALLBACK_FLOATS = 64  # per token and d_model, for a module that cannot run on meta
HEAVY = ("repeat", "wired")  # nodes whose children run many times: estimated, never probed whole
IDENTITY = Arch("identity")
UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
         "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training run needs beyond the process itself."""

    params: int  # the model's parameter count
    param_bytes: int  # weights, gradients and optimiser state
    activation_bytes: int  # saved for the backward pass of one training batch

    @property
    def total(self) -> int:
        return self.param_bytes + self.activation_bytes

    def describe(self) -> str:
        activations = f", activations {format_bytes(self.activation_bytes)}" if self.activation_bytes else ""
        return f"needs ~{format_bytes(self.total)} ({self.params:,} parameters: {format_bytes(self.param_bytes)}{activations})"


class OverCeiling(Exception):
    """A candidate's estimated memory is above the ceiling."""


def default_memory_limit() -> int:
    """Half the machine's physical memory: a candidate may use that much beyond its process."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def parse_bytes(text: str) -> int:
    """'512MB', '4GB', '2GiB', '1e9' or a bare number of bytes -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    try:
        value = float(match.group(1)) * UNITS[unit] if match else None
    except (KeyError, ValueError):
        value = None
    if value is None or not value > 0 or value > 2**62:
        raise ValueError(f"cannot read memory size {text[:40]!r}: use e.g. 512MB, 4GB, 2GiB")
    return int(value)


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def check_ceiling(estimate: MemoryEstimate, ceiling: int) -> None:
    """Raise OverCeiling (one line: what it needs, the ceiling) if `estimate` is above `ceiling`."""
    if estimate.total > ceiling:
        raise OverCeiling(f"refused before building: {estimate.describe()} > the memory ceiling {format_bytes(ceiling)} (max_memory)")


def model_on_meta(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`make()` with every tensor on the meta device: shapes only, no storage."""
    with torch.device("meta"):
        return make()


# ---------------------------------------------------------------------------------------------- activations


def block_activation(arch: Arch, d_model: int, seq_len: int) -> float:
    """Bytes that one block of `arch` saves for backward per sequence of `seq_len` tokens."""
    check_size(arch)
    return _activation(arch, d_model, seq_len)


def _activation(arch: Arch, d: int, seq_len: int) -> float:
    if arch.op == "repeat":
        return arch["n"] * _activation(arch.children[0], d, seq_len)
    if arch.op == "wired":
        graph = wired_graph(arch.variant, arch["nodes"], arch.get("k"), arch.get("p"), arch["seed"])
        sums = (expected_edges(graph.kind, graph.nodes, graph.k, graph.p) + graph.nodes) * seq_len * d * FLOAT_BYTES
        return graph.nodes * _activation(arch.children[0], d, seq_len) + sums
    heavy = [i for i, child in enumerate(arch.children) if any(n.op in HEAVY for n in child.walk())]
    if not heavy:
        return _probe(arch, d, seq_len)
    light = replace(arch, children=tuple(IDENTITY if i in heavy else c for i, c in enumerate(arch.children)))
    return _probe(light, d, seq_len) + sum(_activation(arch.children[i], d, seq_len) for i in heavy)


def expected_edges(kind: str, nodes: int, k: int | None, p: float | None) -> float:
    """Edges of the random graph `wired_graph` describes (its expectation for er)."""
    if kind == "ws":
        return nodes * (k // 2)
    if kind == "ba":
        return (nodes - k) * k
    return p * nodes * (nodes - 1) / 2


@lru_cache(maxsize=512)
def _probe(arch: Arch, d: int, seq_len: int) -> float:
    """Saved bytes per sequence of a sub-tree free of repeat/wired, measured on meta tensors and
    scaled to `seq_len`.  A module that cannot run on meta (it reads a value, e.g. a Newton
    solver's convergence test) is counted as FALLBACK_FLOATS per token per primitive."""
    tokens = min(seq_len, PROBE_TOKENS)
    module = model_on_meta(lambda: build(arch, d))
    try:
        one, two = (saved_bytes(module, torch.empty(b, tokens, d, device="meta", requires_grad=True)) for b in (1, 2))
    except (RuntimeError, NotImplementedError):
        return module_count(arch) * FALLBACK_FLOATS * d * seq_len * FLOAT_BYTES
    return max(two - one, 0) * seq_len / tokens


def saved_bytes(module: torch.nn.Module, x: Tensor) -> int:
    """Bytes of the tensors autograd saves for backward while `module` runs forward on `x`
    (views counted as separate tensors: an overestimate where a saved tensor is shared)."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return total


# ---------------------------------------------------------------------------------------------- whole models


def estimate_block(arch: Arch, d_model: int) -> MemoryEstimate:
    """One block's parameters (built on meta), for `einsearch show`: no activations."""
    check_size(arch)
    params = count_params(model_on_meta(lambda: build(arch, d_model)))
    return MemoryEstimate(params=params, param_bytes=params * FLOAT_BYTES, activation_bytes=0)


def estimate_training(task: Task, arch: Arch, d_model: int, layers: int, batch: tuple[Tensor, ...]) -> MemoryEstimate:
    """What training `arch` in `task`'s shell on batches like `batch` needs, without allocating
    the model."""
    check_size(arch)
    params = count_params(model_on_meta(lambda: task.model(arch, d_model, layers)))
    shell = model_on_meta(lambda: task.model(IDENTITY, d_model, layers))
    shapes: list[torch.Size] = []
    hook = shell.blocks[0].register_forward_pre_hook(lambda module, args: shapes.append(args[0].shape))
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            task.loss(shell, tuple(t.to("meta") for t in batch))
    finally:
        hook.remove()
    sequences, tokens = shapes[0][0], shapes[0][1]  # what each block sees: (B, T, D)
    blocks = len(shell.blocks) * _activation(arch, d_model, tokens) * sequences
    activations = int(total + blocks)
    return MemoryEstimate(params, params * BYTES_PER_PARAMETER, activations)
