"""Mutation and crossover of architectures within a space (for regularised evolution).

* `mutate` picks a node uniformly at random and, with probability `p_point`, redraws one of its
  point decisions (a parameter, or the variant within the same form, e.g. lstm -> gru) from the
  space's distribution conditioned on changing; otherwise it replaces the node's subtree with a
  fresh draw from the PCFG at that position (same depth, at most the nodes the rest of the tree
  leaves free), as in einspace (Ericsson et al. 2024).
* `crossover` replaces a random subtree of `a` with a random subtree of `b`.  Every node of the
  language is a ``module``, so any two subtrees are of the same kind; pairs that would break the
  space's limits are never tried.

Both return a member of the space different from the parent(s) whenever they can: each tries a
bounded number of candidates, then falls back (crossover to mutating `a`, mutation to a fresh
sample), so neither can hang.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from einsearch.arch import Arch
from einsearch.grammar.sampler import sample, sample_subtree
from einsearch.grammar.space import Space, load_space

Path = tuple[int, ...]  # child indices from the root


def positions(arch: Arch) -> list[tuple[Path, Arch]]:
    """Every node with its path, parents before children."""
    out = [((), arch)]
    for i, child in enumerate(arch.children):
        out += [((i,) + path, node) for path, node in positions(child)]
    return out


def replace_at(arch: Arch, path: Path, new: Arch) -> Arch:
    """`arch` with the subtree at `path` replaced by `new`."""
    if not path:
        return new
    i, rest = path[0], path[1:]
    children = arch.children[:i] + (replace_at(arch.children[i], rest, new),) + arch.children[i + 1 :]
    return Arch(arch.op, arch.variant, arch.params, children)


# --------------------------------------------------------------------------- mutation
def mutate(arch: Arch, space: Space | str, rng: np.random.Generator, p_point: float = 0.3, tries: int = 10) -> Arch:
    """A member of `space` near `arch` (see the module docstring)."""
    space = load_space(space)
    for _ in range(tries):
        child = _point_mutation(arch, space, rng) if rng.random() < p_point else None
        if child is None:
            child = _subtree_mutation(arch, space, rng)
        if child is not None and child != arch and space.contains(child):
            return child
    return sample(space, rng)


def _subtree_mutation(arch: Arch, space: Space, rng: np.random.Generator) -> Arch | None:
    nodes = positions(arch)
    path, node = nodes[int(rng.integers(len(nodes)))]
    depth, budget = len(path) + 1, space.max_nodes - (arch.size - node.size)
    if depth > space.max_depth or budget < 1:
        return None  # `arch` itself breaks the limits; only a fresh sample can help
    return replace_at(arch, path, sample_subtree(space, rng, depth, budget))


def _point_decisions(node: Arch, space: Space) -> list[tuple[str | None, tuple[Any, ...], tuple[float, ...]]]:
    """(parameter key, or None for the variant; values; probabilities) of each decision at `node`
    that the space lets take another value without changing the node's form."""
    rules = space.ops.get(node.op)
    form = space.language.form_of(node.op, node.variant)
    if rules is None or form is None:
        return []
    decisions = []
    if rules.variant is not None:
        words = [(w, p) for w, p in zip(rules.variant.values, rules.variant.probs) if w in form.variants and p > 0]
        decisions.append((None, tuple(w for w, _ in words), tuple(p for _, p in words)))
    choices = rules.params.get(space.form_key(form), {})
    for param in form.params:
        if param.key in choices:
            support = space.param_support(form, param.key)
            decisions.append((param.key, support.values, support.probs))
    return [d for d in decisions if len(d[1]) > 1]


def _point_mutation(arch: Arch, space: Space, rng: np.random.Generator) -> Arch | None:
    candidates = [(path, node, d) for path, node in positions(arch) for d in _point_decisions(node, space)]
    if not candidates:
        return None
    path, node, (key, values, probs) = candidates[int(rng.integers(len(candidates)))]
    current = node.variant if key is None else node.get(key)
    others = [(v, p) for v, p in zip(values, probs) if not (v == current and type(v) is type(current))]
    weights = np.array([p for _, p in others])
    value = others[int(rng.choice(len(others), p=weights / weights.sum()))][0]
    if key is None:
        new = Arch(node.op, value, node.params, node.children)
    else:
        form = space.language.form_of(node.op, node.variant)
        params = {**dict(node.params), key: value}
        new = Arch(node.op, node.variant, tuple((k, params[k]) for k in form.keys if params.get(k) is not None), node.children)
    return replace_at(arch, path, new)


# --------------------------------------------------------------------------- crossover
def crossover(a: Arch, b: Arch, space: Space | str, rng: np.random.Generator, tries: int = 20) -> Arch:
    """`a` with one of its subtrees replaced by a subtree of `b`, a member of `space`."""
    space = load_space(space)
    in_b = positions(b)
    pairs = [
        (path, donor)
        for path, node in positions(a)
        for _, donor in in_b
        if donor != node
        and len(path) + donor.depth <= space.max_depth
        and a.size - node.size + donor.size <= space.max_nodes
    ]
    for k in rng.permutation(len(pairs))[:tries]:
        path, donor = pairs[int(k)]
        child = replace_at(a, path, donor)
        if child != a and child != b and space.contains(child):
            return child
    return mutate(a, space, rng)
