"""Optuna encoding of a space: each grammar decision is one ``trial.suggest_categorical``.

`suggest` walks the same derivation as the sampler (`space.derive`), define-by-run: the op of
each position, its variant, its parameters and its child count are asked of the trial in tree
order.  Each decision is named by its path in the tree, built from the ops above it and the
child index at each level, e.g.::

    op                               the root's op
    seq.children                     how many children the root seq has
    seq.1.op                         the op of its second child
    seq.1.res.0.attn.variant         ...
    seq.1.res.0.attn.softmax.heads   a parameter of that form (one form per variant of attn/mem)

so a name always means the same decision, and the subtree under a changed choice gets new names
(NOTES.md: Optuna needs one fixed choice list per name).  Where the space's limits cut a
decision's choices, the name carries the cut (``seq.1.op~1``: only leaves fit there), so each
name keeps one fixed list.  Decisions with a single possible value are not asked.  An optional
parameter left out is the choice None.

Optuna's samplers choose among a decision's values (the space's support); the space's
probabilities are used by `sample`, `mutate` and `crossover`, not by Optuna.

`to_params(arch, space)` gives the parameters under which `suggest` rebuilds `arch`, for
``study.enqueue_trial(to_params(seed, space))`` or ``optuna.trial.FixedTrial``.
"""

from __future__ import annotations

from typing import Any

from einsearch.arch import Arch
from einsearch.grammar.space import Space, SpaceError, Support, derive, load_space, replay


def suggest(trial: Any, space: Space | str) -> Arch:
    """The architecture an Optuna trial (Trial or FixedTrial) chooses in `space`."""
    space = load_space(space)

    def ask(name: str, support: Support, _: Any) -> Any:
        if len(support.values) == 1:
            return support.values[0]
        return trial.suggest_categorical(name, list(support.values))

    return derive(space, ask)[0]


def to_params(arch: Arch, space: Space | str) -> dict[str, Any]:
    """The trial parameters that make `suggest` return `arch` (a member of `space`)."""
    space = load_space(space)
    reason = replay(space, arch)[1]
    if reason is not None:
        raise SpaceError(f"{arch.text} is not in space {space.name}: {reason}")
    params: dict[str, Any] = {}

    def record(name: str, support: Support, value: Any) -> Any:
        if len(support.values) > 1:
            params[name] = value
        return value

    derive(space, record, arch)
    return params
