"""What a space looks like: sizes, depths, primitive frequencies, and how many samples build.

`einsearch space stats` prints `space_stats`; tests and benchmarks/sampler.py use
`check_sample`, the per-architecture check that a sample builds, is causal, and runs forward and
backward with finite values.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from einsearch.arch import Arch
from einsearch.grammar.sampler import SeedOrRng, rng_of, sample
from einsearch.grammar.space import Space, load_space


# Input scales of the finiteness probe: unit scale, and the spread of a residual stream a few
# blocks deep (an un-normalised primitive that overflows there fails in training at step 0).
PROBE_SCALES = (1.0, 3.0)


@dataclass(frozen=True)
class SampleCheck:
    """What `check_sample` found out about one architecture."""

    builds: bool
    causal: bool  # passes `check_causal` (on a float64 copy where float32 overflows in the probe)
    finite: bool  # forward and backward give finite values in float32 at every PROBE_SCALES
    reason: str | None  # the problems found, or None

    @property
    def valid(self) -> bool:
        """Buildable and causal: what the grammar guarantees for every sample."""
        return self.builds and self.causal


def check_sample(arch: Arch, d_model: int = 32, seq_len: int = 8, batch: int = 1) -> SampleCheck:
    """Build `arch` at `d_model`, run forward and backward on noise at PROBE_SCALES, and check causality.

    `einsearch.check_causal` perturbs the future with 3x-scale noise.  Deep chains of
    super-linear ops (selective scans, gated and squared activations, products) without a norm
    between them can overflow float32 there (NaN makes the probe fail while reporting zero
    change).  The verdict is then taken on a float64 copy of the module fed inputs / 3, which is
    causal exactly when the module is; `reason` records it, and `finite` whether the float32
    forward and backward were finite at every input scale of PROBE_SCALES.
    """
    import torch

    from einsearch.build import build
    from einsearch.causality import check_causal

    try:
        with torch.random.fork_rng(devices=[]):  # the same weights every time, the caller's RNG untouched
            torch.manual_seed(0)
            module = build(arch, d_model)
    except Exception as e:  # noqa: BLE001 - any failure to build is the answer
        return SampleCheck(False, False, False, f"build: {type(e).__name__}: {e}")
    problems = []
    noise = torch.randn(batch, seq_len, d_model, generator=torch.Generator().manual_seed(0))
    try:
        finite = True
        for scale in PROBE_SCALES:
            x = (scale * noise).requires_grad_()
            y = module(x)
            if y.shape != x.shape:
                return SampleCheck(True, False, False, f"forward: shape {tuple(y.shape)} for input {tuple(x.shape)}")
            module.zero_grad(set_to_none=True)
            y.square().mean().backward()
            grads = [x.grad] + [p.grad for p in module.parameters() if p.grad is not None]
            if not (bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(g).all()) for g in grads)):
                problems.append(f"non-finite forward or backward in float32 at input scale {scale:g}")
                finite = False
                break
        report = check_causal(module, d_model, seq_len=seq_len, batch=batch)
        if not report and not _finite_report(report):
            problems.append("the causality probe overflows float32; checked in float64 on inputs / 3")
            scaled = _InputScaled(copy.deepcopy(module).double(), 1 / 3)
            report = check_causal(scaled, d_model, seq_len=seq_len, batch=batch)
            if not report and not _finite_report(report):
                return SampleCheck(True, False, finite, "causality unverified: the probe overflows even in float64")
    except Exception as e:  # noqa: BLE001
        return SampleCheck(True, False, False, f"run: {type(e).__name__}: {e}")
    if not report:
        problems.insert(
            0, f"not causal: output change {report.max_output_change:.2e}, future gradient {report.max_future_grad:.2e}"
        )
    return SampleCheck(True, bool(report), finite, "; ".join(problems) or None)


class _InputScaled:
    """x -> module(scale * x): causal exactly when `module` is (the scaling is per position)."""

    def __init__(self, module, scale: float):
        self.module, self.scale = module, scale

    def __call__(self, x):
        return self.module(self.scale * x)

    def parameters(self):
        return self.module.parameters()


def _finite_report(report) -> bool:
    """False when the causality probe met non-finite numbers (NaN compares false, so the probe fails
    while reporting zero changes)."""
    return math.isfinite(report.max_output_change) and math.isfinite(report.max_future_grad) and (
        report.max_output_change > 0 or report.max_future_grad > 0
    )


def family(node: Arch) -> str:
    """A node's primitive as reported in statistics: op, or op(variant)."""
    return node.op if node.variant is None else f"{node.op}({node.variant})"


@dataclass(frozen=True)
class SpaceStats:
    space: Space
    samples: int
    mean_size: float
    max_size: int
    depths: dict[int, float]  # depth -> share of samples
    primitives: dict[str, float]  # primitive -> share of samples that contain it
    checks: list[SampleCheck] | None  # one per sample (None: not checked)
    d_model: int
    problems: list[tuple[str, str]]  # (arch text, reason) of the first few samples with a problem

    def lines(self) -> list[str]:
        s = self.space
        out = [
            f"space {s.name}: {s.description}",
            f"  source            {s.source}",
            f"  d_model           {', '.join(map(str, s.d_model))}",
            f"  limits            max_depth {s.max_depth}, max_nodes {s.max_nodes}",
            f"  mean offspring    {s.spectral_radius():.3f} (spectral radius of the mean matrix; must be < 1)",
            f"  expected size     {s.expected_size():.2f} nodes before limits; "
            f"{self.mean_size:.2f} in {self.samples} samples (largest {self.max_size})",
            "  depth             " + ", ".join(f"{d}: {share:.1%}" for d, share in sorted(self.depths.items())),
            "  primitives (share of samples containing each):",
        ]
        for name, share in sorted(self.primitives.items(), key=lambda item: (-item[1], item[0])):
            out.append(f"    {name:<22}{share:6.1%}")
        if self.checks is not None:
            valid = sum(c.valid for c in self.checks)
            finite = sum(c.finite for c in self.checks)
            out.append(
                f"  build + causal at d_model {self.d_model}:    {valid}/{self.samples} ({valid / self.samples:.1%})"
            )
            out.append(
                f"  finite forward + backward (float32): {finite}/{self.samples} ({finite / self.samples:.1%})"
            )
            for text, reason in self.problems:
                out.append(f"    {text}: {reason}")
        return out


def space_stats(
    space: Space | str, samples: int = 1000, seed: SeedOrRng = 0, check: bool = True, d_model: int = 32
) -> SpaceStats:
    space = load_space(space)
    rng = rng_of(seed)
    archs = [sample(space, rng) for _ in range(samples)]
    depths = Counter(a.depth for a in archs)
    primitives: Counter[str] = Counter()
    for arch in archs:
        primitives.update({family(node) for node in arch.walk()})
    checks = [check_sample(arch, d_model) for arch in archs] if check else None
    problems = [(a.text, c.reason) for a, c in zip(archs, checks or []) if c.reason is not None][:5]
    sizes = np.array([a.size for a in archs])
    return SpaceStats(
        space=space,
        samples=samples,
        mean_size=float(sizes.mean()),
        max_size=int(sizes.max()),
        depths={d: n / samples for d, n in depths.items()},
        primitives={name: n / samples for name, n in primitives.items()},
        checks=checks,
        d_model=d_model,
        problems=problems,
    )
