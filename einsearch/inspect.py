"""Look inside a trained model's softmax attention: attention maps, attention sinks, and ACT.

Attention sinks are keys that receive attention far above the average without carrying meaning
for the query: the first token of a sequence, and (Yu et al. 2024, "Unveiling and Harnessing
Hidden Attention Sinks: Enhancing Large Language Models without Training through Attention
Calibration", ICML) also tokens later in the input.  Yu et al. find that not every sink helps:
the Attention Calibration Technique (ACT) lowers the attention on the sinks of chosen heads at
inference time, without training, and gives the removed mass to the other tokens.

For one head and one input, with A the (T, T) causal attention matrix (rows sum to 1):

* the attention a key j receives on average, from the n_j queries that can see it,
  r_j = (1/n_j) Σ_i A_ij (the ACT code divides by T − j: the n_j of causal attention);
* the sinks: S = { j ≥ 1 : r_j > α / T } (1/T is the mean attention; the first token is kept out,
  as ACT keeps the initial sink: it is reported on its own);
* the calibration, for every query i (ACT, Sec. 4):

      A'_is = β A_is                                           s ∈ S
      A'_ij = A_ij + (1 − β) (Σ_{s∈S} A_is) · A_ij / Σ_{k∉S} A_ik   j ∉ S

  so each row still sums to 1, the sinks keep a fraction β and every other token gains in
  proportion to what it had (a row that sees nothing but sinks is left as it is);
* the choice of heads (ACT's offline calibration): on a few samples of the validation split,
  calibrate one head at a time and keep the heads whose calibration improves the task metric;
  the chosen heads are then calibrated together on the test split.  Sinks are found afresh in
  every input (ACT is input-adaptive); only the heads are fixed.

Defaults: β = 0.4 (the ACT repository's calibration script); α = 5, so that a uniform causal
head (whose first key receives about ln T / T on average) marks no sink for T up to ~150.

`SoftmaxAttention.forward` runs torch SDPA, which does not return its weights: here they are
recomputed from the module's own projections, positions (RoPE) and mask, and `mix` turns them
back into the module's output (a test checks that this reproduces `forward`).

    maps = capture(model, task, batch)                  # one AttentionMap per attention call
    for s in sink_scores(maps, alpha=5.0): ...          # per head: first-token share, other sinks
    plot_attention(maps, "attention.png")
    result = calibrate(model, task, ActConfig())        # metric before/after ACT on the test split
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from einsearch.arch import Arch
from einsearch.messages import shown
from einsearch.primitives.attention import SoftmaxAttention, visible
from einsearch.tasks.base import Examples, Task

CELL = 2.0  # inches per attention map in the PNG grid
DPI = 100


class InspectError(ValueError):
    """The model cannot be inspected as asked (no softmax attention, weights that do not fit, ...)."""


@dataclass(frozen=True)
class ActConfig:
    """ACT's two numbers: a key is a sink where its mean received attention exceeds alpha / T; a
    calibrated head keeps beta of its sinks' attention."""

    alpha: float = 5.0
    beta: float = 0.4

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")


@dataclass(frozen=True)
class AttentionMap:
    """The attention weights of one call of one attention module on a batch."""

    site: str  # the module's label (see `attention_modules`), with "#k" for the k-th call of a shared one
    weights: Tensor  # (B, H, T, T), rows sum to 1 over the visible keys
    mask: Tensor  # (T, T) bool: may query i see key j?


@dataclass(frozen=True)
class SinkScore:
    """One head's sinks, averaged over the inputs of a batch."""

    site: str
    head: int
    first: float  # share of the head's attention mass on the first token: (1/T) Σ_i A_i0
    other: float  # share on the other sinks (j ≥ 1 with r_j > α/T): (1/T) Σ_i Σ_{s∈S} A_is
    sinks: float  # number of other sink tokens per input


@dataclass(frozen=True)
class HeadTrial:
    """ACT's head search: the calibration split's metric with only this head calibrated."""

    site: str
    head: int
    metric: float
    gain: float  # improvement over the uncalibrated model (positive: better, in the task's direction)


@dataclass(frozen=True)
class Calibration:
    metric: str  # the task's primary metric
    config: ActConfig
    samples: int | None  # examples of the validation split the heads were chosen on (None: the whole split)
    baseline: float  # the metric on them without calibration
    trials: tuple[HeadTrial, ...]
    heads: tuple[tuple[str, int], ...]  # the chosen heads: (site, head)
    before: dict[str, float]  # test metrics without calibration
    after: dict[str, float]  # test metrics with the chosen heads calibrated (= before if none chosen)


# ---------------------------------------------------------------------------------------------- weights


def attention_modules(model: nn.Module) -> dict[str, SoftmaxAttention]:
    """Every softmax attention module of `model`, by a short label: ``b{i}.a{k}`` for the k-th
    attention module of the shell's i-th block (the module's path where it is not in a block).
    Raises `InspectError` if there is none."""
    found: dict[str, SoftmaxAttention] = {}
    per_block: dict[str, int] = {}
    for path, module in model.named_modules():
        if isinstance(module, SoftmaxAttention):
            match = re.match(r"blocks\.(\d+)(\.|$)", path)
            if match is None:
                found[path or "attn"] = module
                continue
            block = match.group(1)
            found[f"b{block}.a{per_block.get(block, 0)}"] = module
            per_block[block] = per_block.get(block, 0) + 1
    if not found:
        raise InspectError(
            "the model has no softmax attention (attn(softmax, ...)): there are no attention weights to inspect"
        )
    return found


def attention_weights(module: SoftmaxAttention, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """softmax(q kᵀ / √d + mask) of `module` on its input x (B, T, D), computed explicitly from the
    module's own projections, positions (RoPE) and mask (causal ∧ window ∧ chunk), as its SDPA
    call computes them.  Returns weights (B, H, T, T), values (B, H, T, d) and the mask (T, T)."""
    T = x.shape[1]
    positions = torch.arange(T, device=x.device)
    q, k, v = module._heads(x, positions)  # (B, H, T, d) each
    mask = visible(positions[:, None], positions[None, :], module.window, module.chunk)  # (T, T)
    scores = q @ k.transpose(-2, -1) / math.sqrt(module.d_head)  # (B, H, T, T)
    return scores.masked_fill(~mask, float("-inf")).softmax(-1), v, mask


def mix(module: SoftmaxAttention, weights: Tensor, v: Tensor) -> Tensor:
    """The module's output from attention weights (B, H, T, T) and values (B, H, T, d): (B, T, D)."""
    B, H, T, d = v.shape
    y = weights @ v  # (B, H, T, d)
    return module.out(y.transpose(1, 2).reshape(B, T, H * d))


@contextmanager
def record_attention(model: nn.Module) -> Iterator[list[AttentionMap]]:
    """Within the block, every call of a softmax attention module of `model` appends its
    `AttentionMap` to the list yielded (a module shared by ``repeat`` gives one per call)."""
    modules = attention_modules(model)
    maps: list[AttentionMap] = []
    calls = {label: 0 for label in modules}

    def hook(label: str):
        def record(module: SoftmaxAttention, args: tuple[Any, ...]) -> None:
            with torch.no_grad():
                weights, _, mask = attention_weights(module, args[0])
            maps.append(AttentionMap(f"{label}#{calls[label]}", weights.detach(), mask))
            calls[label] += 1

        return record

    handles = [module.register_forward_pre_hook(hook(label)) for label, module in modules.items()]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()
        for i, m in enumerate(maps):  # a module called once is named by its label alone
            label = m.site.split("#")[0]
            if calls[label] == 1:
                maps[i] = AttentionMap(label, m.weights, m.mask)


def capture(model: nn.Module, task: Task, batch: tuple[Tensor, ...]) -> list[AttentionMap]:
    """The attention maps of every softmax attention call while `model` runs on `batch` (a batch
    of the task's examples, e.g. ``next(task.data().test.batches(64))``); the model runs as the
    task's loss runs it, in eval mode and without gradients."""
    was_training = model.training
    model.eval()
    try:
        with record_attention(model) as maps, torch.no_grad():
            task.loss(model, batch)
    finally:
        model.train(was_training)
    return maps


# ---------------------------------------------------------------------------------------------- sinks


def received(weights: Tensor, mask: Tensor) -> Tensor:
    """r_j: the attention each key receives on average from the queries that can see it,
    (..., T, T) -> (..., T)."""
    seen_by = mask.sum(0).clamp_min(1).to(weights.dtype)  # (T,): n_j
    return weights.sum(-2) / seen_by


def sink_tokens(weights: Tensor, mask: Tensor, alpha: float) -> Tensor:
    """The sinks other than the first token: keys j ≥ 1 with r_j > alpha / T, (..., T, T) ->
    (..., T) bool."""
    T = weights.shape[-1]
    sinks = received(weights, mask) > alpha / T
    sinks[..., 0] = False
    return sinks


def sink_scores(maps: Iterable[AttentionMap], alpha: float = ActConfig.alpha) -> list[SinkScore]:
    """Per head of every map: the share of attention mass on the first token and on the other
    sinks, and how many other sinks an input has, averaged over the batch."""
    scores = []
    for m in maps:
        T = m.weights.shape[-1]
        sinks = sink_tokens(m.weights, m.mask, alpha)  # (B, H, T)
        first = m.weights[..., 0].sum(-1) / T  # (B, H)
        other = (m.weights * sinks[:, :, None, :]).sum((-2, -1)) / T  # (B, H)
        count = sinks.sum(-1).float()  # (B, H)
        for h in range(m.weights.shape[1]):
            scores.append(SinkScore(m.site, h, float(first[:, h].mean()), float(other[:, h].mean()), float(count[:, h].mean())))
    return scores


# ---------------------------------------------------------------------------------------------- ACT


def act(weights: Tensor, sinks: Tensor, beta: float) -> Tensor:
    """ACT's calibration of attention weights (..., T, T) at the sink keys `sinks` (..., T):
    each row keeps beta of its sinks' attention and gives the rest to its other keys in
    proportion to their attention; a row whose attention is all on sinks is left unchanged."""
    sink = sinks[..., None, :].to(weights.dtype)  # (..., 1, T)
    on_sinks = (weights * sink).sum(-1, keepdim=True)  # (..., T, 1)
    rest = weights * (1 - sink)  # (..., T, T)
    rest_mass = rest.sum(-1, keepdim=True)  # (..., T, 1)
    share = rest / rest_mass.clamp_min(torch.finfo(weights.dtype).tiny)
    moved = weights - (1 - beta) * weights * sink + (1 - beta) * on_sinks * share
    return torch.where(rest_mass > 0, moved, weights)


@contextmanager
def calibrated(model: nn.Module, heads: Iterable[tuple[str, int]], config: ActConfig = ActConfig()) -> Iterator[None]:
    """Within the block, the given heads (site label, head index) of `model` run with ACT: their
    attention weights are computed explicitly, calibrated at each input's sinks, and mixed; the
    other heads of the same module are computed explicitly too, unchanged.  A site names a module
    (a "#k" call suffix is ignored: a module shared by ``repeat`` is calibrated at every call)."""
    modules = attention_modules(model)
    chosen: dict[str, list[int]] = {}
    for site, head in heads:
        label = site.split("#")[0]
        if label not in modules:
            raise InspectError(f"no attention module {site!r}; the model has {', '.join(modules)}")
        if not 0 <= head < modules[label].heads:
            raise InspectError(f"{label} has {modules[label].heads} heads; there is no head {head}")
        chosen.setdefault(label, []).append(head)

    def hook(heads_here: list[int]):
        def replace(module: SoftmaxAttention, args: tuple[Any, ...], output: Tensor) -> Tensor:
            weights, v, mask = attention_weights(module, args[0])  # (B, H, T, T), (B, H, T, d)
            picked = weights[:, heads_here]  # (B, h, T, T)
            weights = weights.clone()  # softmax's output: kept intact for autograd
            weights[:, heads_here] = act(picked, sink_tokens(picked, mask, config.alpha), config.beta)
            return mix(module, weights, v)

        return replace

    handles = [modules[label].register_forward_hook(hook(sorted(set(h)))) for label, h in chosen.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def evaluate(model: nn.Module, task: Task, split: Any) -> dict[str, float]:
    """The task's metrics on a split, in eval mode and without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return task.evaluate(model, split)
    finally:
        model.train(was_training)


def first_examples(split: Any, n: int) -> Any:
    """The first `n` examples of a split (a split that is not an `Examples`, e.g. a mixture or a
    forecasting window set, whole)."""
    return Examples(*(t[:n] for t in split.tensors)) if isinstance(split, Examples) else split


def choose_heads(
    model: nn.Module, task: Task, split: Any, config: ActConfig = ActConfig()
) -> tuple[float, list[HeadTrial]]:
    """ACT's head search: the metric on `split` without calibration, and with each head alone
    calibrated (every head of every softmax attention module)."""
    sign = 1.0 if task.mode == "max" else -1.0
    baseline = evaluate(model, task, split)[task.metric]
    trials = []
    for label, module in attention_modules(model).items():
        for head in range(module.heads):
            with calibrated(model, [(label, head)], config):
                value = evaluate(model, task, split)[task.metric]
            trials.append(HeadTrial(label, head, value, sign * (value - baseline)))
    return baseline, trials


def calibrate(model: nn.Module, task: Task, config: ActConfig = ActConfig(), samples: int = 256) -> Calibration:
    """ACT on a trained model: choose the heads whose calibration alone improves the task metric
    on the first `samples` validation examples, then report the test metrics without and with
    the chosen heads calibrated together."""
    splits = task.data()
    calibration = first_examples(splits.val, samples)
    baseline, trials = choose_heads(model, task, calibration, config)
    heads = tuple((t.site, t.head) for t in trials if t.gain > 0)
    before = evaluate(model, task, splits.test)
    if heads:
        with calibrated(model, heads, config):
            after = evaluate(model, task, splits.test)
    else:
        after = dict(before)
    return Calibration(task.metric, config, len(calibration) if isinstance(calibration, Examples) else None, baseline, tuple(trials), heads, before, after)


# ---------------------------------------------------------------------------------------------- plots


def plot_attention(maps: list[AttentionMap], path: str | Path, example: int | None = None, alpha: float = ActConfig.alpha) -> Path:
    """A PNG grid of attention maps: one row per attention call, one column per head, each the
    (T, T) weights averaged over the batch (or of one `example`), titled with its first-token
    share.  Its size is (heads × CELL, calls × CELL) inches at DPI dots per inch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not maps:
        raise InspectError("no attention maps to plot")
    heads = max(m.weights.shape[1] for m in maps)
    scores = {(s.site, s.head): s for s in sink_scores(maps, alpha)}
    fig, axes = plt.subplots(len(maps), heads, figsize=(heads * CELL, len(maps) * CELL), squeeze=False)
    for row, m in zip(axes, maps):
        picture = m.weights.mean(0) if example is None else m.weights[example]  # (H, T, T)
        for h, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if h >= picture.shape[0]:
                ax.axis("off")
                continue
            ax.imshow(picture[h].float().cpu().numpy(), cmap="viridis", vmin=0.0, interpolation="nearest")
            s = scores[(m.site, h)]
            ax.set_title(f"{m.site} h{h}: first {s.first:.2f}, other {s.other:.2f}", fontsize=6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Loaded:
    model: nn.Module
    task: Task
    arch: Arch
    note: str  # where the weights came from, in words


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    """Load a safetensors state dict into `model`; weights that do not fit raise `InspectError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise InspectError(f"cannot read weights {shown(str(path))}: {e}") from None
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise InspectError(f"the weights in {shown(str(path))} are not those of {what}: {len(missing)} tensor(s) missing, {len(unexpected)} unexpected")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise InspectError(f"the weights in {shown(str(path))} do not fit {what}: {first}") from None


def load_trial(run: str | Path, rank: int = 1, task: Task | None = None) -> Loaded:
    """The trained model of the candidate at `rank` of a run's leaderboard (its weights from the
    run folder), on the run's task unless `task` is given (one with the same model shell)."""
    from einsearch.grammar import parse
    from einsearch.search.config import RunConfig
    from einsearch.search.record import RunFolder, leaderboard
    from einsearch.tasks import get_task

    folder = RunFolder(run)
    config = RunConfig.from_dict(folder.read_config())
    run_task = get_task(config.task)
    board = leaderboard(folder.trials(), maximize=run_task.mode == "max")
    if not 1 <= rank <= len(board):
        raise InspectError(f"{folder.path} has {len(board)} scored trial(s); there is no rank {rank}")
    record = board[rank - 1].record
    weights = folder.weights_path(record.number)
    if not weights.exists():
        raise InspectError(f"the weights of trial {record.number} were not kept (a run keeps the best {config.keep_weights})")
    arch, task = parse(record.arch), task or run_task
    model = task.model(arch, config.d_model, config.layers)
    attention_modules(model)  # no attention: say so before loading anything
    load_weights(model, weights, f"trial {record.number} on {task.spec}")
    return Loaded(model, task, arch, f"trial {record.number} (rank {rank}) of {folder.path}")


def load_arch(arch: Arch, task: Task, weights: str | Path, d_model: int = 64, layers: int = 2) -> Loaded:
    """`arch` in `task`'s shell at (d_model, layers) with trained weights from a safetensors file
    (e.g. written by ``einsearch export RUN --weights`` or `TrainConfig.weights_path`)."""
    model = task.model(arch, d_model, layers)
    attention_modules(model)
    load_weights(model, weights, f"this architecture at d_model={d_model}, layers={layers} on {task.spec}")
    return Loaded(model, task, arch, f"{weights}")
