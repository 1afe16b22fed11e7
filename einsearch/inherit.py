"""Weight inheritance: start a model from another model's trained weights where their trees agree.

An evolution child differs from its parent in one place (a mutation) or by one grafted sub-tree
(a crossover).  `inherit` copies the parent's trained tensors into the child's freshly built
model for

* every node whose whole sub-tree is the same in both trees at the same path (child indices from
  the root, as in `einsearch.grammar.evolve`): all tensors of that node's module, its
  descendants' included;
* the shell's own tensors (embedding, head, final norm), which lie outside the tree.

Everything else keeps its fresh initialisation: the changed sub-tree, and the own tensors of the
nodes above it (e.g. the projection of a ``par(..., agg=cat)`` whose branch changed, or the edge
weights of a ``wired`` whose node changed), since their sub-trees changed too.  "The same place"
is the tree path, not the module name, so a sub-tree moved under another combinator at the same
path (``seq(A, B)`` -> ``par(A, B, agg=add)``) still inherits.  The copies inside a ``wired``
node are paired in order; a parent with fewer copies leaves the child's extra ones fresh.

A tensor is copied only if the parent has it with the same shape; otherwise it is reported as
skipped and stays fresh (e.g. another ``d_model``, another vocabulary).  A crossover child has
two parents; the search passes the first (the tree the graft went into), which is where the
child's paths come from.

The module of each node is found through ``arch_path``, which `einsearch.build.Builder` records
on every module it builds; the model is a task shell (its blocks are the modules at the root
path) or a single built block.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from einsearch.arch import Arch
from einsearch.build import build
from einsearch.grammar.evolve import Path, positions

__all__ = ["Inheritance", "inherit", "module_paths", "unchanged_paths"]


@dataclass(frozen=True)
class Inheritance:
    """What `inherit` did."""

    paths: tuple[Path, ...]  # the largest sub-trees that are the same in both trees
    copied: tuple[str, ...]  # the child's state-dict keys that now hold the parent's tensors
    skipped: tuple[str, ...]  # keys of unchanged parts that the parent lacks or holds in another shape

    @property
    def count(self) -> int:
        return len(self.copied)


def inherit(model: nn.Module, arch: Arch, parent: Arch, weights: Mapping[str, Tensor] | str | os.PathLike) -> Inheritance:
    """Copy into `model` (built from `arch`, freshly initialised) the tensors of `weights` (the
    parent's state dict, or the path of its safetensors file) that belong to sub-trees `arch`
    shares with `parent` at the same path, and the shell's own tensors; see the module docstring."""
    if not isinstance(weights, Mapping):
        from safetensors.torch import load_file

        weights = load_file(os.fspath(weights))
    roots = [name for name, module in model.named_modules() if getattr(module, "arch_path", None) == ()]
    if not roots:
        raise ValueError("the model holds no block built by einsearch.build (no module at the root path)")
    kept = unchanged_paths(parent, arch)
    parent_modules = module_paths(_skeleton(parent, model.get_submodule(roots[0]).d_model))
    state = model.state_dict()
    copied: list[str] = []
    skipped: list[str] = []

    def take(key: str, source_key: str) -> None:
        source, target = weights.get(source_key), state[key]
        if source is None or source.shape != target.shape:
            skipped.append(key)
            return
        target.copy_(source)
        copied.append(key)

    with torch.no_grad():
        for root in roots:
            child_modules = module_paths(model.get_submodule(root))
            for path in kept:
                for mine, theirs in zip(child_modules[path], parent_modules.get(path, [])):
                    here, there = _join(root, mine), _join(root, theirs)
                    for key in state:
                        if _under(key, here):
                            take(key, _join(there, key[len(here) + 1 :] if here else key))
        for key in state:  # the shell's own tensors
            if not any(_under(key, root) for root in roots):
                take(key, key)
    return Inheritance(paths=tuple(kept), copied=tuple(copied), skipped=tuple(skipped))


def unchanged_paths(parent: Arch, child: Arch) -> list[Path]:
    """The paths at which `child` holds the same sub-tree as `parent`, largest sub-trees only
    (a path below one already listed is not listed), parents before children."""
    parent_nodes = dict(positions(parent))
    kept: list[Path] = []
    for path, node in positions(child):
        if any(path[: len(k)] == k for k in kept):
            continue
        if parent_nodes.get(path) == node:
            kept.append(path)
    return kept


def module_paths(block: nn.Module) -> dict[Path, list[str]]:
    """Tree path -> the names (relative to `block`, "" for the block itself) of the modules built
    for that node, in registration order: one name per node, several inside ``wired`` copies."""
    names: dict[Path, list[str]] = defaultdict(list)
    for name, module in block.named_modules():
        path = getattr(module, "arch_path", None)
        if path is not None:
            names[path].append(name)
    return names


def _skeleton(arch: Arch, d_model: int) -> nn.Module:
    """`arch` built without memory or random draws: only its module names are wanted."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build(arch, d_model)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _under(key: str, prefix: str) -> bool:
    return not prefix or key.startswith(prefix + ".")
