"""Sampling architectures from a space, and scoring them, by one derivation walk.

A derivation visits a tree top-down, left to right, and makes one decision at a time: the op of
a position, its variant, each parameter's value (None: an optional parameter left out), and the
number of children of ``seq``/``par``; then it derives each child.  `derive` walks it and asks a
*decider* for every decision, giving the decision's name (its path in the tree), the values it
may take here with their probabilities (a `Support`, already truncated by the space's limits),
and, when walking an existing tree, the value that tree has.  The deciders are:

* drawing from a `numpy.random.Generator` (`sample`, `sample_subtree`);
* reading an existing tree and summing the log probabilities (`replay`: membership, log_prob);
* Optuna's ``trial.suggest_categorical`` and reading params back (`suggest.py`).

Limits: a position at depth d (the root is at 1) whose subtree may use at most b nodes allows
only ops whose smallest subtree fits (`Space.min_size(op) <= b`), and only leaf ops at
``max_depth``; a ``seq``/``par`` with b nodes allows at most b - 1 children; child i of n gets
the nodes left minus one for each later sibling.  A member is then exactly a tree whose every
decision has positive probability and which is within both limits.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Union

import numpy as np

from einsearch.arch import Arch
from einsearch.grammar.space import Space, Support, load_space

# decide(name, support, value_in_existing_tree_or_None) -> the value taken
Decider = Callable[[str, Support, Any], Any]
SeedOrRng = Union[int, np.random.Generator, None]


class _Outside(Exception):
    """Raised by the replay decider at the first decision an existing tree takes outside the space."""


def derive(
    space: Space,
    decide: Decider,
    target: Arch | None = None,
    depth: int = 1,
    budget: int | None = None,
    path: str = "",
) -> tuple[Arch, int]:
    """Derive one subtree at `path` (the root when depth is 1); returns it and its node count."""
    root = depth == 1
    budget = space.max_nodes if budget is None else budget
    support = space.op_support(root, depth, budget)
    op = decide(path + "op" + support.tag, support, target.op if target else None)
    rules = space.ops[op]
    here = f"{path}{op}."

    variant = None
    if rules.variant is not None:
        variant = decide(here + "variant", space.variant_support(op), target.variant if target else None)
    form = space.language.form_of(op, variant)

    params = []
    prefix = here if space.form_key(form) is None else f"{here}{form.name}."
    for param in form.params:
        value = decide(prefix + param.key, space.param_support(form, param.key), target.get(param.key) if target else None)
        if value is not None:
            params.append((param.key, value))

    count = form.min_children
    if form.variadic:
        support = space.count_support(op, budget)
        count = decide(here + "children" + support.tag, support, len(target.children) if target else None)
    if target is not None and len(target.children) != count:
        raise _Outside(f"{op} takes {count} children, the tree has {len(target.children)}")

    children, size = [], 1
    for i in range(count):
        left_for_child = budget - size - (count - 1 - i)
        child, child_size = derive(
            space, decide, target.children[i] if target else None, depth + 1, left_for_child, f"{here}{i}."
        )
        children.append(child)
        size += child_size
    return Arch(op, variant, tuple(params), tuple(children)), size


# --------------------------------------------------------------------------- drawing
def rng_of(seed_or_rng: SeedOrRng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


def _drawer(rng: np.random.Generator) -> Decider:
    def draw(name: str, support: Support, _: Any) -> Any:
        if len(support.values) == 1:
            return support.values[0]
        return support.draw(rng.random())

    return draw


def sample(space: Space | str, seed_or_rng: SeedOrRng = None) -> Arch:
    """One architecture drawn from `space` (a Space, a built-in name or a file path).

    The same seed gives the same architecture on every machine: the only randomness is
    ``rng.random()`` from numpy's PCG64 generator, compared against cumulative probabilities.
    """
    space = load_space(space)
    return derive(space, _drawer(rng_of(seed_or_rng)))[0]


def sample_subtree(space: Space, rng: np.random.Generator, depth: int, budget: int) -> Arch:
    """A subtree for a position at `depth` (1: the root) that may use at most `budget` nodes."""
    return derive(space, _drawer(rng), depth=depth, budget=budget)[0]


# --------------------------------------------------------------------------- scoring
def replay(space: Space, arch: Arch) -> tuple[float, str | None]:
    """(log probability of drawing `arch`, None) for a member; (-inf, the reason) otherwise."""
    for node in arch.walk():
        form = space.language.form_of(node.op, node.variant)
        if form is None:
            return -math.inf, f"{node.op} with variant {node.variant!r} is not in the grammar"
        problem = form.conforms(node)
        if problem is not None:
            return -math.inf, problem
    if arch.depth > space.max_depth:
        return -math.inf, f"depth {arch.depth} exceeds the space's max_depth {space.max_depth}"
    if arch.size > space.max_nodes:
        return -math.inf, f"{arch.size} nodes exceed the space's max_nodes {space.max_nodes}"
    log_prob = 0.0

    def score(name: str, support: Support, value: Any) -> Any:
        nonlocal log_prob
        i = support.index(value)
        if i is None:
            shown = "absent" if value is None else value
            where = name.rsplit(".", 1)
            raise _Outside(
                f"{where[0] + ': ' if len(where) > 1 else ''}{where[-1]}={shown} is not in the space here "
                f"(allowed: {', '.join('absent' if v is None else str(v) for v in support.values)})"
            )
        log_prob += math.log(support.probs[i])
        return value

    try:
        derived, size = derive(space, score, arch)
    except _Outside as e:
        return -math.inf, str(e)
    assert derived == arch and size == arch.size, "a replay must rebuild the tree it reads"
    return log_prob, None
