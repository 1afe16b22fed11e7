"""Train one architecture on one task within a budget, and report honest metrics or a clear failure.

    result = train("transformer", "mqar:vocab=256,seq_len=64,pairs=8", TrainConfig(budget=Budget.parse("1500steps")))
    result.status, result.reason, result.metrics["test/accuracy"], result.costs

Budgets count optimiser steps: the same (architecture, task, budget, seed) gives the same metrics
on the same machine whatever else runs on it.  A budget in seconds is still accepted (it makes the
result depend on the machine's load); ``time_limit`` is only a safety limit that ends a runaway
candidate as ``timeout``.

Recipe: AdamW (decoupled weight decay on matrices only), a learning rate that warms up linearly
over the first ``warmup`` fraction of the budget, then (``schedule="wsd"``, the default) stays at
its peak and decays linearly to zero over the last ``cooldown`` fraction (warmup-stable-decay), or
(``schedule="cosine"``) follows a cosine down to ``min_lr_ratio`` of its peak (the budget fraction
is the larger of the step and the time fraction, so the schedule also fits a budget in seconds),
gradient-norm clipping, and fixed seeds: the task's ``seed`` option fixes the data,
``TrainConfig.seed`` the initialisation and the order of training batches.  Torch runs on ``threads`` threads (one by default: parallel
candidates run as processes).  With ``init_from`` (a parent's weights) and ``init_arch`` (the
parent's architecture), the freshly built model starts from the parent's tensors wherever the two
trees agree (`einsearch.inherit`; an evolution child's weight inheritance).

Devices: ``device="auto"`` (the default) trains on CUDA where torch sees a CUDA device and on
the CPU otherwise; ``"cuda"`` without one raises ValueError.  The model is built and initialised
on the CPU and then moved, each batch is moved as it is drawn, and evaluation runs where the model
is.  ``precision="bf16"`` runs every forward pass (training, rungs, evaluation) under
``torch.autocast`` to bfloat16 on CUDA, the weights, gradients and optimiser state staying
float32; on the CPU it is refused (ValueError), never silently run in float32.
``TrainResult.device`` names the device a run used.

At the end the model is evaluated on the validation and the test split (``val/<metric>``,
``test/<metric>``).  The validation split is also evaluated during training, every
``eval_every`` steps, or at each tenth of the budget when ``selection`` is ``"best"``; a
``callback`` sees each of these evaluations and may stop training early (a search's pruning).
``selection="best"`` (the task's default for forecasting) tests the weights of the best
validation evaluation instead of the last ones: early stopping by selection, within the budget
(``TrainResult.selected_step`` says which).

A suite (`einsearch.tasks.base.Suite`, e.g. ``mad``) trains one model per member, one after
another, each on the suite's `Suite.share` of the budget, without rungs or weight inheritance;
its metrics are the suite's `Suite.aggregate` of the members' (each member's under its name, and
the suite's primary metric), and its first failed member makes it fail.

Length generalisation: with ``eval_lengths`` (e.g. ``(1, 2, 4, 8)``), the tested weights are
also tested at those multiples of the task's sequence length, on the test split of
`length_task` (the task's `Task.at_length`: same seed, its own data at that length, about as
many test tokens at every length); ``TrainResult.lengths`` holds one row per factor, and a length
at which the model fails (non-finite metrics, out of memory) is recorded there, not raised: the
curve of metric against length shows, e.g., the state collapse of recurrent models beyond their
training length (Chen et al. 2024, "Stuffed Mamba: State Collapse and State Capacity of
RNN-Based Long-Context Modeling").  A task without a length raises `TaskError` before training.

Rungs (a search's successive halving): at each step of ``rungs`` the run is scored for the
scheduler on a *copy* of the model (and of its optimiser) that first cools down: ``rung_cooldown``
× the steps so far more steps, with the learning rate falling linearly from the current one to
zero, on training batches from a generator of its own; the copy is then discarded, so the run
continues exactly as it would have without the rung (a WSD run's prefix plus a short cool-down is
a fair proxy of the finished run; a cosine prefix is not).  The copy's validation metrics go to
``callback`` (which may stop the run) and to ``TrainResult.rungs``.  With ``state_path``, the
training state (weights, optimiser, batch order, counters) is saved there at each rung, and a run
whose ``state_path`` already holds a state continues from it instead of starting afresh (a Ray
worker that crashed resumes from its last rung).

`train` never raises because of the candidate: a failure is a `TrainResult` with
``status="failed"`` and a ``reason``:

* ``build_error``: the architecture cannot be parsed or built (`BuildError` or any exception
  while building the model);
* ``nan``: a non-finite loss, gradient norm or final metric;
* ``diverged``: the running training loss grew above ``diverge_factor`` times its first value;
* ``oom``: refused before building, when the estimate of its memory (`einsearch.footprint`:
  parameters, optimiser state, activations) is above ``max_memory``; or out of memory while
  running (`torch.OutOfMemoryError`, a RuntimeError saying "out of memory" or "can't allocate
  memory", `MemoryError`);
* ``timeout``: the whole run (building, training, evaluation) passed ``time_limit`` seconds;
* ``error``: any other exception raised by the model while training or evaluating.

Problems with the task itself (unknown name, a missing data file) are the caller's and raise
`TaskError`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from einsearch.arch import Arch
from einsearch.costs import costs as measure_costs
from einsearch.footprint import OverCeiling, check_ceiling, default_memory_limit, estimate_training
from einsearch.grammar.seeds import resolve
from einsearch.inherit import inherit
from einsearch.settings import setting
from einsearch.tasks.base import Budget, Suite, Task
from einsearch.tasks.registry import TASKS, get_task

__all__ = ["Budget", "StepInfo", "TrainConfig", "TrainResult", "train"]

OutOfMemory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
SCHEDULES = ("wsd", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
BF16_ON_CPU = "precision bf16 needs a CUDA device (bfloat16 autocast runs on CUDA only); on the CPU use fp32"
STEPS_TIME_LIMIT = 3600.0  # the default safety limit of a budget in steps
LENGTH_TASKS = tuple(name for name, cls in TASKS.items() if cls.length_option is not None)  # those `eval_lengths` applies to


@dataclass(frozen=True)
class TrainConfig:
    """How to train; fields left at None take the task's defaults (budget, batch size, lr)."""

    d_model: int = setting(64, "Model width.")
    layers: int = setting(2, "Copies of the block (independent weights).")
    budget: Budget | None = setting(None, "Optimiser steps (500steps), or time (60s, 2m: the result then depends on the "
                                          "machine's load) (default: the task's).")  # fmt: skip
    batch_size: int | None = setting(None, "Batch size (default: the task's).")
    lr: float | None = setting(None, "Peak learning rate (default: the task's).")
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    warmup: float = 0.05  # fraction of the budget
    schedule: str = "wsd"  # "wsd" (warmup, stable, linear decay to 0) or "cosine"
    cooldown: float = 0.2  # wsd: the last fraction of the budget, over which the learning rate decays to 0
    min_lr_ratio: float = 0.1  # cosine: it ends at this fraction of the peak learning rate
    clip: float = 1.0  # largest gradient norm
    seed: int = setting(0, "Seed of the initialisation and the batch order.")
    eval_every: int | None = None  # steps between validation evaluations (None: each tenth of the budget when selecting)
    selection: str | None = None  # "last" or "best" (on validation) weights are tested; None: the task's choice
    time_limit: float | None = setting(None, "Seconds before the candidate is stopped as timeout (default: "
                                             f"{STEPS_TIME_LIMIT / 3600:g} hour for a budget in steps).")  # time budget: 1.5 × it + 60 s
    diverge_factor: float = 100.0
    threads: int | None = 1  # torch threads; None leaves torch's setting alone
    device: str = setting("auto", "auto (CUDA when the worker has a CUDA device; on Ray: when Ray gave the trial a GPU) | "
                                  "cpu | cuda.")  # fmt: skip
    precision: str = setting("fp32", "fp32 | bf16 (bfloat16 autocast on CUDA; refused on the CPU).")
    weights_path: str | None = None  # where to save the trained weights (safetensors) of a run that ends ok
    rungs: tuple[int, ...] = ()  # steps at which a cooled-down copy is scored for a scheduler (see the module doc)
    rung_cooldown: float | None = None  # the copy's cool-down, a fraction of the steps so far; None: cooldown (wsd), 0 (cosine)
    state_path: str | None = None  # the training state is saved here at each rung, and continued from if present
    init_from: str | None = None  # start from these trained weights (safetensors) where the trees agree ...
    init_arch: str | None = None  # ... those of this architecture (see `einsearch.inherit`)
    max_memory: int | None = setting(None, "Memory a candidate may need, estimated before it is built, e.g. 4GB (default: half "
                                           "the machine's).")  # in bytes here  # fmt: skip
    eval_lengths: tuple[int, ...] = setting((), "After training, also test at these multiples of the task's length, e.g. 1,2,4,8 "
                                                f"(tasks with a length option: {', '.join(LENGTH_TASKS)}).")  # see the module doc

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "bf16" and self.device == "cpu":
            raise ValueError(BF16_ON_CPU)
        if self.selection not in (None, "last", "best"):
            raise ValueError(f"selection must be 'last' or 'best', got {self.selection!r}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be at least 1, got {self.eval_every}")
        if (self.init_from is None) != (self.init_arch is None):
            raise ValueError("init_from (weights) and init_arch (their architecture) go together")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= self.cooldown <= 1.0 - self.warmup:
            raise ValueError(f"cooldown must be in [0, 1 - warmup], got {self.cooldown}")
        if self.rung_cooldown is not None and self.rung_cooldown < 0:
            raise ValueError(f"rung_cooldown must be at least 0, got {self.rung_cooldown}")
        if self.max_memory is not None and self.max_memory < 1:
            raise ValueError(f"max_memory must be a positive number of bytes, got {self.max_memory}")
        if any(step < 1 for step in self.rungs):
            raise ValueError(f"rungs are steps, at least 1: got {self.rungs}")
        if any(factor < 1 for factor in self.eval_lengths):
            raise ValueError(f"eval_lengths are whole multiples of the task's length, at least 1: got {self.eval_lengths}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the budget as a dict) that crosses to a worker process; `from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        if data.get("budget") is not None:
            data["budget"] = Budget(**data["budget"])
        for key in ("betas", "rungs", "eval_lengths"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def limit(self, budget: Budget) -> float | None:
        """The safety limit in seconds: `time_limit`, else 1.5 × a time budget + 60 s, else (a
        budget in steps) a generous hour."""
        if self.time_limit is not None:
            return self.time_limit
        return STEPS_TIME_LIMIT if budget.seconds is None else 1.5 * budget.seconds + 60.0

    @property
    def rung_cooldown_fraction(self) -> float:
        if self.rung_cooldown is not None:
            return self.rung_cooldown
        return self.cooldown if self.schedule == "wsd" else 0.0


@dataclass(frozen=True)
class StepInfo:
    """Passed to a `progress` callable after each optimiser step."""

    step: int
    fraction: float  # of the budget used
    loss: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    status: str  # "ok" or "failed"
    reason: str | None  # None when ok (or "stopped" by the callback); a failure kind otherwise
    metrics: dict[str, float]
    costs: dict[str, Any] | None
    steps: int
    seconds: float
    task: str = ""
    arch: str = ""
    metric: str = ""  # the task's primary metric: compare results on f"val/{metric}"
    mode: str = "max"
    detail: str = ""  # the message behind a failure
    info: dict[str, Any] = field(default_factory=dict)  # facts about the task's data
    history: tuple[dict[str, float], ...] = ()  # validation metrics at each evaluation during training
    selected_step: int = 0  # the step whose weights were tested (the last step unless selecting the best)
    inherited: int = 0  # tensors that started from `TrainConfig.init_from` instead of a fresh initialisation
    rungs: tuple[dict[str, float], ...] = ()  # at each rung reached: step, cooldown (steps) and the copy's validation metrics
    resumed_from: int = 0  # the step of the saved state (`TrainConfig.state_path`) it continued from; 0: from scratch
    lengths: tuple[dict[str, Any], ...] = ()  # per `TrainConfig.eval_lengths` factor: factor, tokens, test metrics or reason and detail
    device: str = ""  # where it trained: "cpu", or "cuda:0 <device name>" (`TrainConfig.device` resolved)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return _finite_json(asdict(self))

    def to_json(self) -> str:
        """One JSON object; non-finite numbers become null."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        data = dict(data)
        data["history"] = tuple(data.get("history", ()))
        data["rungs"] = tuple(data.get("rungs", ()))
        data["lengths"] = tuple(data.get("lengths", ()))
        data["metrics"] = {k: (float("nan") if v is None else v) for k, v in data.get("metrics", {}).items()}
        return cls(**data)


def _finite_json(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


class Failure(Exception):
    """Raised inside the trainer to end a run with a failure reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def is_out_of_memory(error: BaseException) -> bool:
    message = str(error).lower()
    return isinstance(error, (OutOfMemory, MemoryError)) or (
        isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)
    )


def learning_rate(peak: float, fraction: float, warmup: float, floor: float) -> float:
    """Linear warm-up over [0, warmup), then a cosine from `peak` to `floor * peak` at fraction 1."""
    if fraction < warmup:
        return peak * max(fraction, 1e-3) / warmup
    remaining = (fraction - warmup) / max(1e-12, 1.0 - warmup)
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, remaining))))


def wsd_learning_rate(peak: float, fraction: float, warmup: float, cooldown: float) -> float:
    """Warmup-stable-decay: linear warm-up over [0, warmup), `peak` until 1 - cooldown, then a
    linear decay to 0 at fraction 1.  Any prefix before the decay is the same whatever the budget,
    so a longer run continues a shorter one."""
    if fraction < warmup:
        return peak * max(fraction, 1e-3) / warmup
    if cooldown <= 0 or fraction <= 1.0 - cooldown:
        return peak
    return peak * max(0.0, 1.0 - fraction) / cooldown


def scheduled_lr(config: TrainConfig, peak: float, fraction: float) -> float:
    """The learning rate of `config`'s schedule at `fraction` of the budget."""
    if config.schedule == "wsd":
        return wsd_learning_rate(peak, fraction, config.warmup, config.cooldown)
    return learning_rate(peak, fraction, config.warmup, config.min_lr_ratio)


NO_CUDA = "device cuda: torch finds no CUDA device here (torch.cuda.is_available() is False); use --device auto or cpu"


def resolve_device(device: str) -> str:
    """`TrainConfig.device` on this process's machine: auto is cuda where torch sees a CUDA
    device, else cpu; cuda without a CUDA device raises ValueError (the caller's problem, as a
    missing data file is).  A Ray worker resolves auto itself first (`einsearch.search.run.evaluate`:
    cuda only when Ray gave the trial a GPU)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(NO_CUDA)
    return device


def describe_device(device: str) -> str:
    """'cpu', or 'cuda:<index> <name>' of the CUDA device torch uses for `device`."""
    if torch.device(device).type != "cuda":
        return device
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The forward passes' precision: bf16 is torch.autocast to bfloat16 on CUDA (matrix
    products and convolutions in bfloat16, reductions and the loss in float32; the weights,
    gradients and optimiser state stay float32); fp32 changes nothing."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def memory_ceiling(config: TrainConfig) -> int:
    """What a candidate's estimated memory may reach: `max_memory`, else half the machine's
    memory on the CPU, or the CUDA device's whole memory on CUDA (where its tensors live)."""
    if config.max_memory is not None:
        return config.max_memory
    if torch.device(config.device).type == "cuda":
        return torch.cuda.get_device_properties(torch.device(config.device).index or 0).total_memory
    return default_memory_limit()


def make_optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2) only, not on gains, biases or embeddings."""
    decay, keep, seen = [], [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:  # a shared tensor goes in one group, once
                continue
            seen.add(id(p))
            (decay if p.dim() >= 2 and not isinstance(module, nn.Embedding) else keep).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=config.betas)


def evaluate(task: Task, model: nn.Module, split: Any, started: float, limit: float | None, precision: str = "fp32") -> dict[str, float]:
    """The task's metrics on one split (the task moves each batch to the model's device), in
    the training's `precision`, checked for finiteness and the time limit."""
    model.eval()
    try:
        with torch.no_grad(), autocast(precision):
            metrics = task.evaluate(model, split)
    finally:
        model.train()
    if limit is not None and time.perf_counter() - started > limit:
        raise Failure("timeout", f"evaluation passed the time limit of {limit:g}s")
    bad = [name for name, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise Failure("nan", f"non-finite metric(s) {', '.join(bad)}")
    return metrics


def train(
    arch: Arch | str,
    task: Task | str,
    config: TrainConfig = TrainConfig(),
    *,
    callback: Callable[[int, dict[str, float]], bool] | None = None,
    progress: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Train `arch` (tree, text or seed name) on `task` (a `Task` or its text) under `config`.

    `callback(step, val_metrics)` is called at each validation evaluation during training (every
    `config.eval_every` steps) and at each rung (`config.rungs`, with the rung's score) and may
    return True to stop training (the result then has ``reason="stopped"`` and only validation
    metrics: at a rung, the rung's score).
    `progress(StepInfo)` is called after every step (e.g. for a progress bar).

    The model, each batch and each evaluation run on `config.device` (`resolve_device`; a
    device or precision this machine cannot give raises ValueError); the model is initialised on
    the CPU first, so a seed gives the same initial weights on every device."""
    task = get_task(task)
    for factor in config.eval_lengths:  # a task without a length, or too long a one, is the caller's problem
        length_task(task, factor)
    config = on_device(config)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if isinstance(task, Suite):
        return _train_suite(arch, task, config, callback, progress)
    return _train_one(arch, task, config, callback, progress)


def on_device(config: TrainConfig) -> TrainConfig:
    """`config` with its device resolved on this machine (`resolve_device`); bf16 on a CPU
    raises ValueError."""
    device = resolve_device(config.device)
    if config.precision == "bf16" and device != "cuda":
        raise ValueError(BF16_ON_CPU)
    return config if device == config.device else replace(config, device=device)


def _train_one(
    arch: Arch | str,
    task: Task,
    config: TrainConfig,
    callback: Callable[[int, dict[str, float]], bool] | None,
    progress: Callable[[StepInfo], None] | None,
) -> TrainResult:
    started = time.perf_counter()
    budget = config.budget or task.budget
    limit = config.limit(budget)
    arch_text = arch if isinstance(arch, str) else arch.text
    outcome: dict[str, Any] = dict(
        task=task.spec, arch=arch_text, metric=task.metric, mode=task.mode, costs=None, steps=0, metrics={}, history=(),
        device=describe_device(config.device),
    )
    splits = task.data()  # a TaskError here is the caller's problem, not the candidate's
    outcome["info"] = task.info()

    def finish(status: str, reason: str | None, detail: str = "") -> TrainResult:
        return TrainResult(status=status, reason=reason, detail=detail, seconds=time.perf_counter() - started, **outcome)

    # build, if the estimate of its memory is under the ceiling
    generator = torch.Generator().manual_seed(config.seed)
    batch_size = config.batch_size or task.batch_size
    try:
        tree = resolve(arch) if isinstance(arch, str) else arch
        outcome["arch"] = tree.text
        need = estimate_training(task, tree, config.d_model, config.layers, splits.train.sample(batch_size, generator))
        check_ceiling(need, memory_ceiling(config))
        torch.manual_seed(config.seed)
        model = task.model(tree, config.d_model, config.layers).to(config.device)
        outcome["costs"] = measure_costs(model, task.tokens).as_dict()
    except OverCeiling as error:
        return finish("failed", "oom", str(error))
    except Exception as error:  # noqa: BLE001 - any failure to build is the candidate's
        if is_out_of_memory(error):
            return finish("failed", "oom", f"out of memory while building: {error}")
        return finish("failed", "build_error", f"{type(error).__name__}: {error}")
    if config.init_from is not None:  # a missing weights file is the caller's problem, like a missing data file
        outcome["inherited"] = inherit(model, tree, resolve(config.init_arch), config.init_from).count

    # train
    generator = torch.Generator().manual_seed(config.seed)  # the estimate's batch leaves the run's batches alone
    peak = config.lr if config.lr is not None else task.lr
    selecting = (config.selection or task.selection) == "best"
    evaluations = Evaluations(config.eval_every, tenths=selecting and config.eval_every is None)
    best = Best(task.metric, task.mode) if selecting else None
    optimizer = make_optimizer(model, config, peak)
    params = [p for p in model.parameters() if p.requires_grad]
    history: list[dict[str, float]] = []
    rungs: list[dict[str, float]] = []
    pending = sorted(set(config.rungs))  # rung steps not reached yet
    first_loss, running = None, None
    train_started = time.perf_counter()
    step = 0
    if config.state_path is not None and os.path.exists(config.state_path):  # continue a saved run
        state = torch.load(config.state_path, weights_only=True, map_location=config.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        step, first_loss, running = state["step"], state["first_loss"], state["running"]
        history, rungs = list(state["history"]), list(state["rungs"])
        evaluations.next_tenth = state["next_tenth"]
        if best is not None and state["best"] is not None:
            best.step, best.metrics, best.state = state["best"]
        train_started -= state["seconds"]
        pending = [s for s in pending if s > step]
        outcome.update(steps=step, history=tuple(history), rungs=tuple(rungs), resumed_from=step)
    try:
        model.train()
        while True:
            now = time.perf_counter()
            if limit is not None and now - started > limit:
                raise Failure("timeout", f"training passed the time limit of {limit:g}s after {step} steps")
            fraction = budget.progress(step, now - train_started)
            if fraction >= 1.0:
                break
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(config, peak, fraction)
            batch = tuple(t.to(config.device) for t in splits.train.sample(batch_size, generator))
            value = take_step(task, model, optimizer, params, batch, config.clip, f"at step {step}", config.precision)
            first_loss = value if first_loss is None else first_loss
            running = value if running is None else 0.9 * running + 0.1 * value
            if running > config.diverge_factor * max(first_loss, 1e-8):
                raise Failure("diverged", f"training loss {running:.3g} > {config.diverge_factor:g} × its first value {first_loss:.3g} at step {step}")
            step += 1
            outcome["steps"] = step
            fraction = budget.progress(step, time.perf_counter() - train_started)
            if progress is not None:
                progress(StepInfo(step, fraction, running, time.perf_counter() - started))
            at_rung = bool(pending) and step >= pending[0] and fraction < 1.0  # the last rung is the end
            if at_rung:
                pending = [s for s in pending if s > step]
            plain = None
            if evaluations.due(step, fraction) and fraction < 1.0:  # the final evaluation follows the loop
                val = plain = evaluate(task, model, splits.val, started, limit, config.precision)
                history.append({"step": step, **val})
                outcome["history"] = tuple(history)
                if best is not None:
                    best.offer(step, val, model)
            if at_rung:  # the callback sees the rung's score at a rung, the plain evaluation otherwise
                cooled, val = score_rung(task, model, optimizer, config, peak, fraction, step, splits, batch_size, started, limit)
                rungs.append({"step": step, "cooldown": cooled, **val})
                outcome["rungs"] = tuple(rungs)
                if config.state_path is not None:
                    save_state(config.state_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                               generator=generator.get_state(), rng=torch.get_rng_state(), step=step,
                               first_loss=first_loss, running=running, history=history, rungs=rungs,
                               next_tenth=evaluations.next_tenth, seconds=time.perf_counter() - train_started,
                               best=None if best is None or not best.metrics else (best.step, best.metrics, best.state))  # fmt: skip
            elif plain is None:
                continue
            if callback is not None and callback(step, val):
                outcome["metrics"] = {"train/loss": running, **{f"val/{k}": v for k, v in val.items()}}
                return finish("ok", "stopped")
        val = evaluate(task, model, splits.val, started, limit, config.precision)
        outcome["selected_step"] = step
        if best is not None and not best.offer(step, val, model):
            model.load_state_dict(best.state)
            val, outcome["selected_step"] = best.metrics, best.step
        test = evaluate(task, model, splits.test, started, limit, config.precision)
        outcome["lengths"] = evaluate_lengths(task, model, config.eval_lengths, started, limit, config.precision)
    except Failure as failure:
        return finish("failed", failure.reason, failure.detail)
    except Exception as error:  # noqa: BLE001 - the candidate's failure, reported, never raised
        if is_out_of_memory(error):
            return finish("failed", "oom", f"out of memory at step {step}: {error}")
        return finish("failed", "error", f"{type(error).__name__} at step {step}: {error}")
    outcome["metrics"] = {
        "train/loss": running if running is not None else float("nan"),
        **{f"val/{k}": v for k, v in val.items()},
        **{f"test/{k}": v for k, v in test.items()},
    }
    if config.weights_path is not None:
        save_weights(model, config.weights_path)
    return finish("ok", None)


def length_task(task: Task, factor: int) -> Task:
    """The task that tests `task`'s model at `factor` times its length: `Task.at_length`, of
    which only the test split is used, so where the task counts its examples (options train, val
    and test) train and val shrink to one example and test to ⌈test / factor⌉ (about as many
    test tokens at every length).  Its data is its own, generated with the same seed at the
    longer length; at factor 1 its test split is the task's own (the splits draw from
    independent generators)."""
    if {"train", "val", "test"} <= {f.name for f in fields(task)}:  # type: ignore[arg-type]
        task = replace(task, train=1, val=1, test=math.ceil(task.test / factor))  # type: ignore[attr-defined]
    return task.at_length(factor)


def evaluate_lengths(
    task: Task, model: nn.Module, factors: tuple[int, ...], started: float, limit: float | None, precision: str = "fp32"
) -> tuple[dict[str, Any], ...]:
    """The model's test metrics at each of `factors` times the task's length (`length_task`):
    per factor, a dict of the factor, the test examples' length in tokens and the metrics, or,
    where that length failed (non-finite metrics, out of memory, any error), ``reason`` and
    ``detail`` instead.  Once the run's time limit has passed, the remaining lengths are
    ``timeout`` without being tested."""
    rows = []
    for factor in factors:
        longer = length_task(task, factor)
        row: dict[str, Any] = {"factor": factor, "tokens": longer.tokens}
        try:
            if limit is not None and time.perf_counter() - started > limit:
                raise Failure("timeout", f"not tested: the time limit of {limit:g}s had passed")
            split = longer.data().test
            row["tokens"] = int(next(iter(split.batches(1)))[0].shape[1])  # (1, T, ...): as long as the examples are
            row.update(evaluate(longer, model, split, started, limit, precision))
        except Failure as failure:
            row.update(reason=failure.reason, detail=failure.detail)
        except Exception as error:  # noqa: BLE001 - the candidate's failure at this length, recorded
            row.update(reason="oom" if is_out_of_memory(error) else "error", detail=f"{type(error).__name__}: {error}")
        rows.append(row)
    return tuple(rows)


def take_step(
    task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], batch: tuple, clip: float,
    where: str, precision: str = "fp32",
) -> float:
    """One optimiser step on `batch` with gradient clipping; returns the loss.  The forward pass
    and the loss run in `precision` (`autocast`), the backward pass and the step outside it.  A
    non-finite loss or gradient norm ends the run as ``nan`` (`where` says when, for the message)."""
    with autocast(precision):
        loss = task.loss(model, batch)
    value = loss.item()
    if not math.isfinite(value):
        raise Failure("nan", f"non-finite training loss {where}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    if not math.isfinite(norm.item()):
        raise Failure("nan", f"non-finite gradient norm {where}")
    optimizer.step()
    return value


def score_rung(
    task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, peak: float,
    fraction: float, step: int, splits: Any, batch_size: int, started: float, limit: float | None,
) -> tuple[int, dict[str, float]]:
    """A rung's score: the validation metrics of a copy of the model (and optimiser) after
    ``rung_cooldown`` × `step` more steps whose learning rate falls linearly from the current one
    to zero, on batches of a generator of its own; returns (cool-down steps, metrics).  The run
    itself is left exactly as it was: the copy is discarded, and torch's global random state is
    restored afterwards."""
    n = round(config.rung_cooldown_fraction * step)
    if n == 0:
        return 0, evaluate(task, model, splits.val, started, limit, config.precision)
    devices = [torch.device(config.device).index or 0] if torch.device(config.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        twin = copy.deepcopy(model)
        optimizer_twin = make_optimizer(twin, config, peak)
        optimizer_twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        params = [p for p in twin.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(1_000_003 * (config.seed + 1) + step)
        start_lr = scheduled_lr(config, peak, fraction)
        twin.train()
        for i in range(n):
            if limit is not None and time.perf_counter() - started > limit:
                raise Failure("timeout", f"a rung's cool-down passed the time limit of {limit:g}s at step {step}")
            for group in optimizer_twin.param_groups:
                group["lr"] = start_lr * (n - i) / n
            batch = tuple(t.to(config.device) for t in splits.train.sample(batch_size, generator))
            take_step(task, twin, optimizer_twin, params, batch, config.clip, f"in the cool-down of the rung at step {step}", config.precision)
        return n, evaluate(task, twin, splits.val, started, limit, config.precision)


def save_state(path: str, **state: Any) -> None:
    """The training state (tensors, numbers, lists) in one file, replaced atomically."""
    temporary = f"{path}.tmp"
    torch.save(state, temporary)
    os.replace(temporary, path)


class Evaluations:
    """When to evaluate the validation split during training: every `every` steps, or (`tenths`)
    each time the budget's used fraction passes a tenth (which works for budgets in time too)."""

    def __init__(self, every: int | None, tenths: bool):
        self.every, self.tenths, self.next_tenth = every, tenths, 1

    def due(self, step: int, fraction: float) -> bool:
        if self.every is not None:
            return step % self.every == 0
        if self.tenths and fraction >= self.next_tenth / 10:
            self.next_tenth = math.floor(fraction * 10) + 1
            return True
        return False


class Best:
    """The best validation evaluation so far (by `metric`, larger is better iff mode is "max")
    and a copy of the weights that made it."""

    def __init__(self, metric: str, mode: str):
        self.metric, self.sign = metric, 1.0 if mode == "max" else -1.0
        self.step, self.metrics, self.state = 0, {}, {}

    def offer(self, step: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Keep `model`'s weights if `metrics` beat every earlier offer (a tie keeps the earlier);
        returns whether they were kept."""
        if self.metrics and not self.sign * metrics[self.metric] > self.sign * self.metrics[self.metric]:
            return False
        self.step, self.metrics = step, dict(metrics)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


def save_weights(model: nn.Module, path: str) -> None:
    """The model's state dict as safetensors (tensors made contiguous and unshared, as the format requires)."""
    from pathlib import Path

    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}, path)


def _train_suite(
    arch: Arch | str,
    suite: Suite,
    config: TrainConfig,
    callback: Callable[[int, dict[str, float]], bool] | None,
    progress: Callable[[StepInfo], None] | None,
) -> TrainResult:
    """One model per member on its share of the budget (`Suite.share`); the metrics are the
    suite's `Suite.aggregate` of the members'."""
    members = suite.members
    # no inheritance: a suite's saved weights are only its last member's model
    # no rungs either: the suite's score needs every member, and they train one after another
    share = replace(config, budget=suite.share(config.budget or suite.budget), init_from=None, init_arch=None,
                    rungs=(), state_path=None)  # fmt: skip
    results = [_train_one(arch, member, share, callback, progress) for member in members]
    seconds = sum(r.seconds for r in results)
    steps = sum(r.steps for r in results)
    first = results[0]
    metrics = suite.aggregate([r.metrics for r in results])
    common = dict(task=suite.spec, arch=first.arch, metric=suite.metric, mode=suite.mode, costs=first.costs, steps=steps,
                  seconds=seconds, device=first.device)  # fmt: skip
    failed = next(((m, r) for m, r in zip(members, results) if not r.ok), None)
    if failed is not None:
        member, result = failed
        return TrainResult(status="failed", reason=result.reason, detail=f"{member.name}: {result.detail}", metrics=metrics, **common)
    return TrainResult(status="ok", reason=None, metrics=metrics, **common)
