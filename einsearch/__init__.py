"""einsearch: search for sequence-mixer architectures in a probabilistic grammar.

    einsearch.parse(text) -> Arch                      the language
    einsearch.build(arch, d_model) -> nn.Module        (B, T, d_model) -> (B, T, d_model), with step()
    einsearch.costs(module, seq_len) -> Costs          parameters, FLOPs/token, state size
    einsearch.seeds[name] -> Arch                      the seed zoo of published mixers
    einsearch.sample(space, seed_or_rng) -> Arch       a draw from a search space
    einsearch.train(arch, task, TrainConfig(...)) -> TrainResult
    with einsearch.recycle(model, stride, keep): ...   step softmax attention with recycled attention
"""

from einsearch.arch import Arch
from einsearch.build import build
from einsearch.causality import check_causal
from einsearch.costs import Costs, costs
from einsearch.grammar import (
    ArchSyntaxError,
    SpaceError,
    crossover,
    load_space,
    mutate,
    parse,
    sample,
    to_text,
)
from einsearch.grammar.seeds import resolve, seeds
from einsearch.primitives.attention import Recycle, recycle
from einsearch.primitives.base import BuildError
from einsearch.tasks import Budget, TaskError, get_task
from einsearch.train import TrainConfig, TrainResult, train

__all__ = [
    "Arch",
    "ArchSyntaxError",
    "Budget",
    "BuildError",
    "Costs",
    "Recycle",
    "SpaceError",
    "TaskError",
    "TrainConfig",
    "TrainResult",
    "build",
    "check_causal",
    "costs",
    "crossover",
    "get_task",
    "load_space",
    "mutate",
    "parse",
    "recycle",
    "resolve",
    "sample",
    "seeds",
    "to_text",
    "train",
]
__version__ = "0.1.0"
