"""Forecasting chaotic dynamical systems: Lorenz-96 and Kuramoto–Sivashinsky.

Data.  Independent trajectories are integrated from random initial conditions, a transient
(``spinup``) is discarded, and states are sampled every ``every`` time units; the trajectories
are split between train, validation and test (so the splits share no trajectory).  Everything is
determined by the task's options, including ``seed``; trajectories are cached on disk
(`einsearch.tasks.cache`).  States are standardised with one mean and standard deviation computed
over all training states (both systems are translation invariant in space, so every site gets
the same scale).

* Lorenz-96 (Lorenz 1996): dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F, i cyclic,
  N = 40, F = 8, classical RK4 with dt = 0.01, sampled every 0.05.
  Largest Lyapunov exponent ≈ 1.68 (Vlachas et al. 2020, "Backpropagation algorithms and
  Reservoir Computing in Recurrent Neural Networks for the forecasting of complex spatiotemporal
  dynamics", Neural Networks 126).
* Kuramoto–Sivashinsky: u_t = -u u_x - u_xx - u_xxxx on a periodic domain of length L = 22,
  64 Fourier modes (grid points), ETDRK4 time stepping with the contour-integral coefficients of
  Kassam & Trefethen 2005 ("Fourth-order time-stepping for stiff PDEs", SIAM J. Sci. Comput. 26),
  dt = 0.25, sampled every 0.25 as in Vlachas et al. 2020.  Largest Lyapunov exponent ≈ 0.043
  (Vlachas et al. 2020; Edson et al. 2019, "Lyapunov exponents of the Kuramoto–Sivashinsky PDE",
  ANZIAM J. 61).

Model and metrics.  The model (`shell.NextStepModel`) reads ``context`` consecutive states and
predicts each next state (teacher forcing, MSE on standardised states).  Evaluation runs
autoregressive rollouts of ``horizon`` samples from many starting points of the validation or
test trajectories, each fed its own predictions through a sliding window of ``context`` states:

* NRMSE(t) = sqrt(mean_i (ŷ_i(t) - y_i(t))²) / σ with σ the training standard deviation;
  ``nrmse`` is its mean over the rollouts and their first ``score_time`` Lyapunov times (one by
  default: a few Lyapunov times on, every forecast and the persistence baseline alike have
  decorrelated from the truth and their NRMSE saturates near √2, so averaging over a long
  horizon would mostly measure noise); ``nrmse_horizon`` is the mean over the whole rollout,
  which also exposes rollouts that drift away or blow up;
* ``vpt``, the valid prediction time: the first time NRMSE(t) exceeds ``threshold`` (0.5, as in
  Vlachas et al. 2020), in Lyapunov times (t·λ_max), averaged over rollouts (the whole horizon
  when it never does);
* ``persistence_nrmse``: ``nrmse`` of the persistence forecast ŷ(t) = y(0), as a baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from einsearch.arch import Arch
from einsearch.tasks.base import SEEDS, Budget, Splits, Task, TaskError, check_data_size, model_device, option
from einsearch.tasks.cache import cached_arrays
from einsearch.tasks.shell import NextStepModel, build_blocks

# ---------------------------------------------------------------------------------------------
# Lorenz-96


def lorenz96_rhs(x: np.ndarray, forcing: float) -> np.ndarray:
    """dx/dt of Lorenz-96 for states x (..., N)."""
    return (np.roll(x, -1, axis=-1) - np.roll(x, 2, axis=-1)) * np.roll(x, 1, axis=-1) - x + forcing


def rk4_step(x: np.ndarray, dt: float, forcing: float) -> np.ndarray:
    """One classical fourth-order Runge–Kutta step of Lorenz-96."""
    k1 = lorenz96_rhs(x, forcing)
    k2 = lorenz96_rhs(x + 0.5 * dt * k1, forcing)
    k3 = lorenz96_rhs(x + 0.5 * dt * k2, forcing)
    k4 = lorenz96_rhs(x + dt * k3, forcing)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def lorenz96(x0: np.ndarray, forcing: float, dt: float, every: int, samples: int) -> np.ndarray:
    """States (M, samples, N) every `every` RK4 steps of size dt, from x0 (M, N) (x0 excluded)."""
    out = np.empty((x0.shape[0], samples, x0.shape[1]))
    x = x0
    for s in range(samples):
        for _ in range(every):
            x = rk4_step(x, dt, forcing)
        out[:, s] = x
    return out


# ---------------------------------------------------------------------------------------------
# Kuramoto–Sivashinsky


class ETDRK4:
    """Kassam & Trefethen's ETDRK4 for u_t = -u u_x - u_xx - u_xxxx on [0, size), periodic, with
    `modes` grid points; the state is the real field u (..., modes).

    In Fourier space v̂_t = 𝓛 v̂ + 𝓝(v̂) with 𝓛 = k² - k⁴ and 𝓝(v̂) = -(i k / 2) FFT(u²); the
    φ-function coefficients are evaluated by the mean over 16 points of a circle in the complex
    plane around each h𝓛 (their contour integral), which avoids cancellation for small h𝓛.  As in
    their `kursiv.m`, the Nyquist wavenumber is set to zero."""

    def __init__(self, size: float, modes: int, h: float, contour_points: int = 16):
        k = 2 * np.pi / size * np.arange(modes // 2 + 1, dtype=np.float64)
        if modes % 2 == 0:
            k[-1] = 0.0  # the Nyquist mode
        self.modes, self.h = modes, h
        linear = k**2 - k**4
        self.E, self.E2 = np.exp(h * linear), np.exp(h * linear / 2)
        r = np.exp(1j * np.pi * (np.arange(1, contour_points + 1) - 0.5) / contour_points)
        LR = h * linear[:, None] + r[None, :]  # (K, contour points)
        self.Q = h * np.real(np.mean((np.exp(LR / 2) - 1) / LR, axis=1))
        self.f1 = h * np.real(np.mean((-4 - LR + np.exp(LR) * (4 - 3 * LR + LR**2)) / LR**3, axis=1))
        self.f2 = h * np.real(np.mean((2 + LR + np.exp(LR) * (-2 + LR)) / LR**3, axis=1))
        self.f3 = h * np.real(np.mean((-4 - 3 * LR - LR**2 + np.exp(LR) * (4 - LR)) / LR**3, axis=1))
        self.g = -0.5j * k

    def nonlinear(self, v: np.ndarray) -> np.ndarray:
        return self.g * np.fft.rfft(np.fft.irfft(v, n=self.modes) ** 2)

    def step(self, v: np.ndarray) -> np.ndarray:
        """One step of size h on Fourier coefficients v (..., modes//2 + 1)."""
        Nv = self.nonlinear(v)
        a = self.E2 * v + self.Q * Nv
        Na = self.nonlinear(a)
        b = self.E2 * v + self.Q * Na
        Nb = self.nonlinear(b)
        c = self.E2 * a + self.Q * (2 * Nb - Nv)
        Nc = self.nonlinear(c)
        return self.E * v + Nv * self.f1 + 2 * (Na + Nb) * self.f2 + Nc * self.f3

    def run(self, u0: np.ndarray, every: int, samples: int) -> np.ndarray:
        """Fields (M, samples, modes) every `every` steps from u0 (M, modes) (u0 excluded)."""
        out = np.empty((u0.shape[0], samples, self.modes))
        v = np.fft.rfft(u0)
        for s in range(samples):
            for _ in range(every):
                v = self.step(v)
            out[:, s] = np.fft.irfft(v, n=self.modes)
        return out


# ---------------------------------------------------------------------------------------------
# data and metrics


class Trajectories:
    """Standardised trajectories (M, S, C): random training windows of context+1 states, and the
    starting points of evaluation rollouts (every `horizon` samples, after a full context)."""

    def __init__(self, states: Tensor, context: int, horizon: int):
        self.states, self.context, self.horizon = states, context, horizon

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        M, S, _ = self.states.shape
        which = torch.randint(M, (batch_size,), generator=generator)
        starts = torch.randint(S - self.context, (batch_size,), generator=generator)
        window = self.states[which[:, None], starts[:, None] + torch.arange(self.context + 1)]  # (B, T+1, C)
        return window[:, :-1], window[:, 1:]

    def rollouts(self) -> tuple[Tensor, Tensor]:
        """Contexts (R, context, C) and the true continuations (R, horizon, C)."""
        S = self.states.shape[1]
        starts = range(self.context, S - self.horizon + 1, self.horizon)
        contexts = torch.cat([self.states[:, s - self.context : s] for s in starts])
        futures = torch.cat([self.states[:, s : s + self.horizon] for s in starts])
        return contexts, futures

    def batches(self, batch_size: int):
        contexts, futures = self.rollouts()
        for first in range(0, len(contexts), batch_size):
            yield contexts[first : first + batch_size], futures[first : first + batch_size]


@torch.no_grad()
def rollout(model: nn.Module, context: Tensor, horizon: int) -> Tensor:
    """Autoregressive forecast (B, horizon, C): each prediction joins a sliding window of the last
    `context.shape[1]` states that the next prediction reads."""
    window = context
    predictions = []
    for _ in range(horizon):
        nxt = model(window)[:, -1:]  # (B, 1, C)
        predictions.append(nxt)
        window = torch.cat([window[:, 1:], nxt], dim=1)
    return torch.cat(predictions, dim=1)


def nrmse_curve(prediction: Tensor, truth: Tensor) -> Tensor:
    """NRMSE(t) per rollout, (B, horizon), on standardised states (σ = 1)."""
    return (prediction - truth).pow(2).mean(-1).sqrt()


def valid_time(curve: Tensor, threshold: float) -> Tensor:
    """Samples before NRMSE first exceeds the threshold, per rollout (the horizon if never)."""
    exceeded = curve > threshold
    first = torch.where(exceeded.any(1), exceeded.float().argmax(1), torch.full_like(exceeded[:, 0], curve.shape[1], dtype=torch.long))
    return first.float()


class DynamicsTask(Task):
    """Shared by the dynamical systems: data layout, model, loss and rollout metrics."""

    metric: ClassVar[str] = "nrmse"
    mode: ClassVar[str] = "min"
    budget: ClassVar[Budget] = Budget(steps=2000)  # work, not time: the same result on any load
    batch_size: ClassVar[int] = 32
    lr: ClassVar[float] = 1e-3
    lyapunov: ClassVar[float]  # largest Lyapunov exponent, 1 / time unit
    channels: ClassVar[int]

    trajectories: int
    val: int
    test: int
    length: int
    context: int
    horizon: int
    threshold: float
    score_time: float
    seed: int
    every: float
    dt: float
    spinup: float

    def check(self) -> None:
        """Ranges of the options that relate to each other, and the ceilings on memory and work."""
        if min(self.trajectories, self.val, self.test) < 1:
            raise TaskError(f"{self.name}: trajectories, val and test must be at least 1")
        if not self.score_time > 0:
            raise TaskError(f"{self.name}: score_time must be positive, got {self.score_time}")
        if self.context < 1 or self.horizon < 1 or self.length < self.context + self.horizon:
            raise TaskError(
                f"{self.name}: need context >= 1, horizon >= 1 and length >= context + horizon, "
                f"got context={self.context}, horizon={self.horizon}, length={self.length}"
            )
        count = self.trajectories + self.val + self.test
        check_data_size(self.name, 16 * count * self.length * self.channels, f"{count:,} trajectories of {self.length:,} samples")
        steps = (self.spinup + self.length * self.every) / self.dt
        if steps > MAX_STEPS:
            raise TaskError(
                f"{self.name}: (spinup + length × every) / dt = {steps:,.0f} solver steps per trajectory; at most {MAX_STEPS:,}"
            )

    def simulate(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`count` trajectories (count, length, C) after the transient."""
        raise NotImplementedError

    @property
    def tokens(self) -> int:
        return self.context

    def make_data(self) -> Splits:
        count = self.trajectories + self.val + self.test
        raw = cached_arrays(self.name, repr(self), lambda: {"states": self.simulate(np.random.default_rng(self.seed), count)})
        states = raw["states"]
        train = states[: self.trajectories]
        mean, std = float(train.mean()), float(train.std())
        standard = torch.from_numpy((states - mean) / std).float()
        parts = np.cumsum([0, self.trajectories, self.val, self.test])
        return Splits(*(Trajectories(standard[a:b], self.context, self.horizon) for a, b in zip(parts[:-1], parts[1:])))

    def model(self, arch: Arch, d_model: int, layers: int) -> nn.Module:
        return NextStepModel(build_blocks(arch, d_model, layers), d_model, self.channels)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        inputs, targets = batch
        return (model(inputs) - targets).pow(2).mean()

    def evaluate(self, model: nn.Module, split: Trajectories) -> dict[str, float]:
        device = model_device(model)
        curves, persistence = [], []
        for contexts, futures in split.batches(256):
            contexts, futures = contexts.to(device), futures.to(device)
            curves.append(nrmse_curve(rollout(model, contexts, self.horizon).float(), futures))
            persistence.append(nrmse_curve(contexts[:, -1:].expand_as(futures), futures))
        curve, baseline = torch.cat(curves), torch.cat(persistence)  # (R, horizon)
        lyapunov_times = valid_time(curve, self.threshold) * self.every * self.lyapunov
        scored = self.score_steps
        return {
            "nrmse": curve[:, :scored].mean().item(),
            "vpt": lyapunov_times.mean().item(),
            "persistence_nrmse": baseline[:, :scored].mean().item(),
            "nrmse_horizon": curve.mean().item(),
        }

    @property
    def score_steps(self) -> int:
        """Samples in the first `score_time` Lyapunov times (at least one, at most the horizon)."""
        return min(self.horizon, max(1, round(self.score_time / (self.every * self.lyapunov))))


def steps_per_sample(every: float, dt: float, name: str) -> int:
    ratio = every / dt
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
        raise TaskError(f"{name}: every ({every}) must be a whole multiple of dt ({dt})")
    return round(ratio)


_COUNT = {"at_least": 1, "at_most": 10**5}  # trajectories per split
MAX_STEPS = 10**6  # solver steps per trajectory (transient and samples): the defaults take about 10^4
_TRAJ = "training trajectories"
_VAL = "validation trajectories"
_TEST = "test trajectories"
_LENGTH = "samples per trajectory (after the transient)"
_CONTEXT = "states the model reads (training window and rollout window)"
_THRESHOLD = "NRMSE threshold of the valid prediction time"
_SCORE = "Lyapunov times over which nrmse is averaged"


@dataclass(frozen=True)
class Lorenz96(DynamicsTask):
    name: ClassVar[str] = "lorenz96"
    summary: ClassVar[str] = "forecast Lorenz-96 (N=40, F=8): rollout NRMSE and valid prediction time"
    lyapunov: ClassVar[float] = 1.68  # Vlachas et al. 2020
    channels: ClassVar[int] = 40
    # 10 zoo seeds: the rung at 333 steps ranks them like 1000 (Spearman 0.93), 111 does not (0.33)
    search_budget: ClassVar[Budget] = Budget(steps=1000)

    trajectories: int = option(8, _TRAJ, **_COUNT)
    val: int = option(2, _VAL, **_COUNT)
    test: int = option(4, _TEST, **_COUNT)
    length: int = option(2_000, _LENGTH, at_least=2, at_most=10**7)
    context: int = option(32, _CONTEXT, at_least=1, at_most=2**16)
    horizon: int = option(60, "rollout length in samples (60 × 0.05 = 5 Lyapunov times)", at_least=1, at_most=2**16)
    threshold: float = option(0.5, _THRESHOLD, above=0, at_most=1e6)
    score_time: float = option(1.0, _SCORE, above=0, at_most=1e6)
    forcing: float = option(8.0, "forcing F", at_least=-1e3, at_most=1e3)
    dt: float = option(0.01, "RK4 step", above=0, at_most=1.0)
    every: float = option(0.05, "sampling interval (a multiple of dt)", above=0, at_most=1e3)
    spinup: float = option(20.0, "transient discarded, in time units", at_least=0, at_most=1e6)
    seed: int = option(0, "seed of the initial conditions", **SEEDS)

    def __post_init__(self) -> None:
        self.check()
        steps_per_sample(self.every, self.dt, self.name)
        if self.spinup:
            steps_per_sample(self.spinup, self.dt, self.name)

    def simulate(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Initial states F + N(0, 1) per site, then the transient, then the samples."""
        per_sample = steps_per_sample(self.every, self.dt, self.name)
        x0 = self.forcing + rng.standard_normal((count, self.channels))
        if self.spinup:
            x0 = lorenz96(x0, self.forcing, self.dt, steps_per_sample(self.spinup, self.dt, self.name), 1)[:, -1]
        return lorenz96(x0, self.forcing, self.dt, per_sample, self.length)


@dataclass(frozen=True)
class KuramotoSivashinsky(DynamicsTask):
    name: ClassVar[str] = "ks"
    summary: ClassVar[str] = "forecast Kuramoto–Sivashinsky (L=22, 64 modes): rollout NRMSE and valid prediction time"
    lyapunov: ClassVar[float] = 0.043  # Vlachas et al. 2020; Edson et al. 2019
    channels: ClassVar[int] = 64

    trajectories: int = option(8, _TRAJ, **_COUNT)
    val: int = option(2, _VAL, **_COUNT)
    test: int = option(4, _TEST, **_COUNT)
    length: int = option(2_000, _LENGTH, at_least=2, at_most=10**7)
    context: int = option(64, _CONTEXT, at_least=1, at_most=2**16)
    horizon: int = option(200, "rollout length in samples (200 × 0.25 = 2.2 Lyapunov times)", at_least=1, at_most=2**16)
    threshold: float = option(0.5, _THRESHOLD, above=0, at_most=1e6)
    score_time: float = option(1.0, _SCORE, above=0, at_most=1e6)
    size: float = option(22.0, "domain length L", above=0, at_most=1e4)
    dt: float = option(0.25, "ETDRK4 step", above=0, at_most=10.0)
    every: float = option(0.25, "sampling interval (a multiple of dt)", above=0, at_most=1e3)
    spinup: float = option(250.0, "transient discarded, in time units", at_least=0, at_most=1e6)
    seed: int = option(0, "seed of the initial conditions", **SEEDS)

    def __post_init__(self) -> None:
        self.check()
        steps_per_sample(self.every, self.dt, self.name)
        if not self.size > 0:
            raise TaskError(f"ks: size must be positive, got {self.size}")

    def simulate(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Initial fields of small zero-mean noise, then the transient, then the samples."""
        solver = ETDRK4(self.size, self.channels, self.dt)
        u0 = 0.1 * rng.standard_normal((count, self.channels))
        u0 -= u0.mean(axis=1, keepdims=True)  # the mean of u is conserved: keep it at zero
        spin = round(self.spinup / self.dt)
        if spin:
            u0 = solver.run(u0, spin, 1)[:, -1]
        return solver.run(u0, steps_per_sample(self.every, self.dt, self.name), self.length)
