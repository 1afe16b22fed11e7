"""Search spaces: the grammar made probabilistic (a PCFG, as in einspace, Ericsson et al. 2024).

A space is a file in ``einsearch/grammar/spaces/`` (or anywhere, passed by path to ``--space``).
It gives, for every decision the grammar leaves open, a probability for each alternative:

* ``[module]``: which node op a child position becomes (the alternatives of the grammar's
  ``module`` rule); ``[start]``, optional, the same for the root (default: ``[module]``);
* ``[<op>]``: ``variant`` (each variant word), ``children`` (for ``seq``/``par``, each child
  count), and per parameter a table value -> probability; an optional parameter also has the
  value ``absent``.  Ops with several forms (``attn``, ``mem``) keep their parameters in
  ``[<op>.<variant>]``;
* ``[space]``: ``d_model`` (the widths every sample must build at), ``max_depth`` (the root is at
  depth 1) and ``max_nodes``.

Ops, variants and values a table leaves out have probability 0.  Every decision is independent
of the others, so a sample is drawn top-down, left to right; the limits truncate that process
(at the depth limit only leaf ops, and never an op or child count whose smallest subtree exceeds
the nodes left), renormalising the remaining probabilities, so the distribution is proper
without any rejection loop.  The mean offspring of the untruncated process (the spectral
radius of its mean matrix) must be below 1, so the expected tree size is finite by construction.

Loading checks the file against the grammar (`language.py`) and rejects, with a message that
names the file and the entry, unknown rules or keys, probabilities that are negative or do not
sum to 1, values the grammar does not allow, used ops whose decisions the file omits, and
head counts that cannot split every declared ``d_model`` (see `_Reader.check_widths`).

Membership (`Space.explain`, `contains`) and `log_prob` replay a tree through the derivation walk
(`derive`, below) that `sample` draws with and `suggest.py` asks Optuna with.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from einsearch.arch import Arch, Value
from einsearch.grammar.language import Form, Language, language
from einsearch.grammar.parser import MAX_DEPTH
from einsearch.messages import clip, shown

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ABSENT = "absent"  # the space-file word for an optional parameter left out
TOLERANCE = 1e-6  # how far from 1 a table's probabilities may sum
MAX_FILE_BYTES = 1_000_000  # a space file is a few kB; refuse anything this large unread
MAX_NODES = 10_000  # the largest max_nodes a space may declare
MAX_WIDTH = 65_536  # the largest d_model a space may declare


class SpaceError(ValueError):
    """A space file that is malformed or inconsistent with the grammar; names the file and entry."""


# --------------------------------------------------------------------------- distributions
@dataclass(frozen=True)
class Choice:
    """A categorical distribution over the values of one decision (value None: parameter absent)."""

    values: tuple[Any, ...]
    probs: tuple[float, ...]

    def prob(self, value: Any) -> float:
        for v, p in zip(self.values, self.probs):
            if v == value and type(v) is type(value):
                return p
        return 0.0

    @property
    def support(self) -> tuple[Any, ...]:
        return tuple(v for v, p in zip(self.values, self.probs) if p > 0)

    def mean(self) -> float:
        return float(sum(v * p for v, p in zip(self.values, self.probs)))


@dataclass(frozen=True)
class Support:
    """The values one decision may take at one point of a derivation, renormalised.

    `tag` is empty when nothing was truncated, else it says which limit applied (e.g. ``~3``:
    subtrees of at most 3 nodes); Optuna parameter names carry it so that each name keeps one
    fixed list of choices.
    """

    values: tuple[Any, ...]
    probs: tuple[float, ...]  # renormalised to sum to 1
    tag: str = ""
    cumulative: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cumulative", tuple(np.cumsum(self.probs).tolist()))

    @staticmethod
    def of(values: tuple[Any, ...], weights: tuple[float, ...], tag: str = "") -> "Support":
        kept = [(v, w) for v, w in zip(values, weights) if w > 0]
        total = math.fsum(w for _, w in kept)
        return Support(tuple(v for v, _ in kept), tuple(w / total for _, w in kept), tag)

    def draw(self, u: float) -> Any:
        """The value at quantile u in [0, 1)."""
        return self.values[min(bisect_right(self.cumulative, u), len(self.values) - 1)]

    def index(self, value: Any) -> int | None:
        for i, v in enumerate(self.values):
            if v == value and type(v) is type(value):
                return i
        return None


@dataclass(frozen=True)
class OpRules:
    """What a space says about one op."""

    variant: Choice | None  # over variant words; None for ops written without a variant
    children: Choice | None  # over child counts; None unless the op takes a list of children
    params: dict[str | None, dict[str, Choice]]  # form name -> parameter key -> its values


# --------------------------------------------------------------------------- the space
@dataclass(frozen=True, eq=False)
class Space:
    name: str
    source: str  # where it was read from, for messages
    description: str
    d_model: tuple[int, ...]
    max_depth: int
    max_nodes: int
    start: Choice  # op at the root
    module: Choice  # op at every other position
    ops: dict[str, OpRules]
    language: Language = field(repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------- structure
    def form_key(self, form: Form) -> str | None:
        """The key of `form` in `OpRules.params`: None when its op has a single form."""
        return form.name if len(self.language.forms[form.op]) > 1 else None

    def param_choice(self, form: Form, key: str) -> Choice:
        return self.ops[form.op].params[self.form_key(form)][key]

    def min_size(self, op: str) -> int:
        """Nodes in the smallest subtree rooted at `op` that the space allows."""
        rules = self.ops.get(op)
        if rules is not None and rules.children is not None:
            return 1 + min(rules.children.support)
        return 1 + self.language.min_children(op)

    def mean_children(self, op: str) -> float:
        rules = self.ops.get(op)
        if rules is not None and rules.children is not None:
            return rules.children.mean()
        return float(self.language.min_children(op))

    # ---------------------------------------------------------------- truncated supports
    def op_support(self, root: bool, depth: int, budget: int) -> Support:
        """Ops allowed at a position at `depth` whose subtree may use at most `budget` nodes."""
        key = ("op", root, min(depth, self.max_depth), budget)
        if key not in self._cache:
            table = self.start if root else self.module
            sizes = sorted({self.min_size(op) for op in table.support})
            cap = 1 if depth >= self.max_depth else max((s for s in sizes if s <= budget), default=0)
            weights = tuple(p if self.min_size(op) <= cap else 0.0 for op, p in zip(table.values, table.probs))
            if not any(w > 0 for w in weights):
                raise SpaceError(f"{self.source}: no op fits at depth {depth} with {budget} nodes left")
            self._cache[key] = Support.of(table.values, weights, "" if cap == sizes[-1] else f"~{cap}")
        return self._cache[key]

    def count_support(self, op: str, budget: int) -> Support:
        """Child counts of a variadic `op` whose smallest subtree fits in `budget` nodes."""
        key = ("children", op, budget)
        if key not in self._cache:
            counts = self.ops[op].children
            cap = max(c for c in counts.support if 1 + c <= budget)
            weights = tuple(p if c <= cap else 0.0 for c, p in zip(counts.values, counts.probs))
            self._cache[key] = Support.of(counts.values, weights, "" if cap == max(counts.support) else f"~{cap}")
        return self._cache[key]

    def variant_support(self, op: str) -> Support:
        key = ("variant", op)
        if key not in self._cache:
            choice = self.ops[op].variant
            self._cache[key] = Support.of(choice.values, choice.probs)
        return self._cache[key]

    def param_support(self, form: Form, key: str) -> Support:
        cache_key = ("param", form.op, form.variant_rule, key)
        if cache_key not in self._cache:
            choice = self.param_choice(form, key)
            self._cache[cache_key] = Support.of(choice.values, choice.probs)
        return self._cache[cache_key]

    # ---------------------------------------------------------------- the branching process
    def mean_matrix(self) -> np.ndarray:
        """Mean offspring matrix over the two position types (root, other): M[i, j] = E[# type j children of type i]."""
        root = sum(p * self.mean_children(op) for op, p in zip(self.start.values, self.start.probs))
        other = sum(p * self.mean_children(op) for op, p in zip(self.module.values, self.module.probs))
        return np.array([[0.0, root], [0.0, other]])

    def spectral_radius(self) -> float:
        return float(max(abs(np.linalg.eigvals(self.mean_matrix()))))

    def expected_size(self) -> float:
        """Expected node count of the untruncated process: 1 + E[root children] / (1 - radius)."""
        m = self.mean_matrix()
        return 1.0 + m[0, 1] / (1.0 - m[1, 1])

    # ---------------------------------------------------------------- membership
    def explain(self, arch: Arch) -> str | None:
        """None if `arch` is a member of the space, else the first reason it is not."""
        return replay(self, arch)[1]

    def contains(self, arch: Arch) -> bool:
        return self.explain(arch) is None

    def log_prob(self, arch: Arch) -> float:
        """Natural log of the probability that `sample` draws `arch` (-inf outside the space)."""
        return replay(self, arch)[0]

    def uses(self, arch: Arch) -> bool:
        """Whether every node's op, variant and set of optional parameters has positive probability here.

        A seed whose primitives the space uses this way is expected to be a member (its values,
        child counts and size permitting).
        """
        for node in arch.walk():
            form = self.language.form_of(node.op, node.variant)
            table = self.start if node is arch else self.module
            if form is None or table.prob(node.op) <= 0:
                return False
            rules = self.ops[node.op]
            if rules.variant is not None and rules.variant.prob(node.variant) <= 0:
                return False
            for key in form.optional:
                choice, present = self.param_choice(form, key), node.get(key) is not None
                if not any(p > 0 and (v is not None) == present for v, p in zip(choice.values, choice.probs)):
                    return False
        return True

    def summary(self) -> str:
        return (
            f"space {self.name} ({self.source}): d_model {list(self.d_model)}, max depth {self.max_depth}, "
            f"max nodes {self.max_nodes}, mean offspring {self.spectral_radius():.3f}, "
            f"expected size {self.expected_size():.2f} (before limits)"
        )


def _even_splits(widths: tuple[int, ...]) -> list[int]:
    """Head counts h with d / h an even integer for every d in `widths`."""
    return [h for h in range(1, min(widths) // 2 + 1) if all(d % (2 * h) == 0 for d in widths)]


# --------------------------------------------------------------------------- the derivation
# A derivation visits a tree top-down, left to right, and makes one decision at a time: the op of
# a position, its variant, each parameter's value (None: an optional parameter left out), and the
# number of children of ``seq``/``par``; then it derives each child.  `derive` walks it and asks a
# *decider* for every decision, giving the decision's name (its path in the tree), the values it
# may take here with their probabilities (a `Support`, already truncated by the space's limits),
# and, when walking an existing tree, the value that tree has.  The deciders are:
#
# * drawing from a `numpy.random.Generator` (`sample`, `sample_subtree`);
# * reading an existing tree and summing the log probabilities (`replay`: membership, log_prob);
# * Optuna's ``trial.suggest_categorical`` and reading params back (`suggest.py`).
#
# Limits: a position at depth d (the root is at 1) whose subtree may use at most b nodes allows
# only ops whose smallest subtree fits (`Space.min_size(op) <= b`), and only leaf ops at
# ``max_depth``; a ``seq``/``par`` with b nodes allows at most b - 1 children; child i of n gets
# the nodes left minus one for each later sibling.  A member is then exactly a tree whose every
# decision has positive probability and which is within both limits.

# decide(name, support, value_in_existing_tree_or_None) -> the value taken
Decider = Callable[[str, Support, Any], Any]


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


# --------------------------------------------------------------------------- reading files
SPACES_DIR = "spaces"


def builtin_spaces() -> list[str]:
    """Names of the spaces shipped in einsearch/grammar/spaces/."""
    return list(_builtin_names())


@lru_cache(maxsize=1)
def _builtin_names() -> tuple[str, ...]:
    folder = resources.files("einsearch.grammar").joinpath(SPACES_DIR)
    return tuple(sorted(Path(f.name).stem for f in folder.iterdir() if f.name.endswith((".toml", ".json"))))


@lru_cache(maxsize=None)
def _builtin(name: str) -> Space:
    folder = resources.files("einsearch.grammar").joinpath(SPACES_DIR)
    for suffix in (".toml", ".json"):
        entry = folder.joinpath(name + suffix)
        if entry.is_file():
            return read_space(entry.read_text(), f"spaces/{name}{suffix}", suffix)
    raise KeyError(name)


def load_space(space: "Space | str | Path") -> Space:
    """A space by built-in name (``full``), or read from a .toml/.json file path."""
    if isinstance(space, Space):
        return space
    text = str(space)
    if text in _builtin_names():
        return _builtin(text)
    path = Path(text)
    if not path.is_file():
        raise SpaceError(
            f"unknown space {clip(text)}: built-in spaces are {', '.join(builtin_spaces())}, or give a path to a .toml file"
        )
    return read_space(_read_text(path), str(path), path.suffix)


def _brief(value: Any, limit: int = 40) -> str:
    """repr(value), cut to about `limit` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _read_text(path: Path) -> str:
    """A space file's text: UTF-8 and at most `MAX_FILE_BYTES`, else a `SpaceError`."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SpaceError(f"{shown(str(path))}: {path.stat().st_size:,} bytes is too large for a space file (at most {MAX_FILE_BYTES:,})")
        data = path.read_bytes()
    except OSError as e:
        raise SpaceError(f"{shown(str(path))}: cannot read it ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpaceError(f"{shown(str(path))}: not a text file (byte {e.start} is not UTF-8)") from None


def read_space(text: str, source: str, suffix: str = ".toml", lang: Language | None = None) -> Space:
    """Parse and check a space file's text; `source` names it in error messages.

    `lang` is the language to check it against (default: the one of arch.lark).
    """
    kind = "JSON" if suffix == ".json" else "TOML"
    try:
        data = json.loads(text) if suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise SpaceError(f"{shown(source)}: not valid {kind}: {clip(str(e), 120)[1:-1]}") from None
    except RecursionError:
        raise SpaceError(f"{shown(source)}: {kind} nested too deeply") from None
    if not isinstance(data, dict):
        raise SpaceError(f"{shown(source)}: a space file holds tables ([space], [module], ...), got a JSON {type(data).__name__}")
    return _Reader(source, lang or language()).space(data)


class _Reader:
    """Turns a parsed space file into a `Space`, checking every entry against the grammar."""

    def __init__(self, source: str, lang: Language):
        self.source, self.lang = source, lang

    def error(self, entry: str, message: str) -> SpaceError:
        return SpaceError(f"{shown(self.source)}: [{entry}] {message}")

    # ---------------------------------------------------------------- pieces
    def table(self, entry: str, value: Any) -> dict:
        if not isinstance(value, dict):
            raise self.error(entry, f"must be a table of value = probability, got {_brief(value)}")
        return value

    def probabilities(self, entry: str, table: dict, parse) -> Choice:
        """A table value -> probability; `parse` turns each key into a value or raises ValueError."""
        values, probs = [], []
        for key, p in table.items():
            if isinstance(p, dict):
                raise self.error(
                    entry, f"{clip(key, 40)} maps to a table; write decimal values as quoted keys, e.g. \"0.1\" = 0.5"
                )
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
                raise self.error(entry, f"probability of {clip(key, 40)} must be a number, got {_brief(p)}")
            if p < 0:
                raise self.error(entry, f"probability of {clip(key, 40)} is negative ({p})")
            try:
                value = parse(str(key))
            except ValueError as e:
                raise self.error(entry, str(e)) from None
            if any(v == value and type(v) is type(value) for v in values):
                raise self.error(entry, f"{clip(key, 40)} is given twice")
            values.append(value)
            probs.append(float(p))
        total = math.fsum(probs)
        if abs(total - 1.0) > TOLERANCE:
            raise self.error(entry, f"probabilities sum to {total:g}, not 1")
        return Choice(tuple(values), tuple(probs))

    def integer(self, entry: str, key: str, value: Any, least: int, most: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
            raise self.error(entry, f"{key} must be an integer from {least} to {most:,}, got {_brief(value)}")
        return value

    # ---------------------------------------------------------------- the file
    def space(self, data: dict) -> Space:
        known = {"space", "start", "module", *self.lang.ops}
        for key in data:
            if key not in known:
                entry = key if len(key) <= 40 else key[:40] + "..."
                raise self.error(entry, f"unknown rule {clip(key, 40)}; the grammar's node ops are {', '.join(self.lang.ops)}")
        header = self.table("space", data.get("space", {}))
        for key in header:
            if key not in ("name", "description", "d_model", "max_depth", "max_nodes"):
                raise self.error("space", f"unknown key {clip(key, 40)}; expected name, description, d_model, max_depth, max_nodes")
        for key in ("d_model", "max_depth", "max_nodes"):
            if key not in header:
                raise self.error("space", f"missing {key}")
        widths = header["d_model"]
        if not isinstance(widths, list) or not widths:
            raise self.error("space", f"d_model must be a non-empty list of widths, got {_brief(widths)}")
        d_model = tuple(self.integer("space", "d_model", w, 1, MAX_WIDTH) for w in widths)
        max_depth = self.integer("space", "max_depth", header["max_depth"], 1, MAX_DEPTH)
        max_nodes = self.integer("space", "max_nodes", header["max_nodes"], 1, MAX_NODES)

        if "module" not in data:
            raise self.error("module", "missing: give the probability of each node op")
        module = self.op_choice("module", data["module"])
        start = self.op_choice("start", data["start"]) if "start" in data else module
        used = {op for op in self.lang.ops if module.prob(op) > 0 or start.prob(op) > 0}
        ops = {}
        for op in self.lang.ops:
            if op in data or op in used:
                ops[op] = self.op_rules(op, data.get(op), op in used)
        name = header.get("name", Path(self.source).stem)
        space = Space(
            name=str(name),
            source=self.source,
            description=str(header.get("description", "")),
            d_model=d_model,
            max_depth=max_depth,
            max_nodes=max_nodes,
            start=start,
            module=module,
            ops=ops,
            language=self.lang,
        )
        self.check_widths(space)
        self.check_feasible(space)
        return space

    def op_choice(self, entry: str, table: Any) -> Choice:
        def parse(key: str) -> str:
            if key not in self.lang.ops:
                raise ValueError(f"unknown rule {clip(key, 40)}; the grammar's node ops are {', '.join(self.lang.ops)}")
            return key

        return self.probabilities(entry, self.table(entry, table), parse)

    def op_rules(self, op: str, table: Any, used: bool) -> OpRules:
        """The [op] table: variant, children, and the parameters of each form."""
        forms = self.lang.forms[op]
        table = dict(self.table(op, table)) if table is not None else {}
        words, form = self.lang.variants(op), forms[0]
        if any(f.variadic != form.variadic or f.min_children != form.min_children for f in forms):
            raise self.error(op, "forms with different children are not supported by spaces")
        several = len(forms) > 1
        entries = ["variant"] * bool(words) + ["children"] * form.variadic
        entries += [f.name for f in forms] if several else list(form.keys)
        for key in table:
            if key not in entries:
                if key == "variant":
                    raise self.error(op, f"{op} has no variants in the grammar")
                if key == "children":
                    raise self.error(op, f"{op} takes a fixed number of children ({form.min_children})")
                raise self.error(op, f"unknown entry {clip(key, 40)}; {op} takes {', '.join(entries) or 'no entries'}")

        variant = None
        if "variant" in table:
            variant = self.probabilities(
                f"{op}.variant", self.table(f"{op}.variant", table["variant"]), self.word_parser(op, words)
            )
        elif len(words) == 1:
            variant = Choice(words, (1.0,))
        elif words and used:
            raise self.error(op, f"gives no probabilities for the variants ({', '.join(words)}): add variant = {{...}}")

        children = None
        if "children" in table:
            children = self.probabilities(
                f"{op}.children", self.table(f"{op}.children", table["children"]), self.count_parser(form)
            )
        elif form.variadic and used:
            raise self.error(op, "gives no probabilities for the number of children: add children = {...}")

        if not several:
            return OpRules(variant, children, {None: self.form_params(op, form, table, used)})
        params = {}
        for f in forms:
            form_used = used and any(variant.prob(w) > 0 for w in f.variants)
            entry = f"{op}.{f.name}"
            sub = self.table(entry, table.get(f.name, {}))
            for key in sub:
                if key not in f.keys:
                    raise self.error(entry, f"unknown entry {clip(key, 40)}; {op}({f.name}) takes {', '.join(f.keys)}")
            params[f.name] = self.form_params(entry, f, sub, form_used)
        return OpRules(variant, children, params)

    def form_params(self, entry: str, form: Form, table: dict, used: bool) -> dict[str, Choice]:
        """Each parameter's table value -> probability (`absent` for an optional parameter left out)."""
        out = {}
        for param in form.params:
            if param.key not in table:
                if used:
                    allowed = ", ".join(param.words) if param.words else f"values matching {param.terminal}"
                    raise self.error(entry, f"gives no values for {param.key} ({allowed}), which the grammar requires")
                continue
            optional = param.key in form.optional

            def parse(text: str, param=param, optional=optional) -> Value | None:
                if text == ABSENT and optional:
                    return None
                if text == ABSENT:
                    raise ValueError(f"{param.key} is required by the grammar; it cannot be {ABSENT}")
                return param.parse_value(text)

            sub = f"{entry}.{param.key}"
            out[param.key] = self.probabilities(sub, self.table(sub, table[param.key]), parse)
        return out

    def word_parser(self, op: str, words: tuple[str, ...]):
        def parse(key: str) -> str:
            if key not in words:
                raise ValueError(f"{op} has no variant {clip(key, 40)}; the grammar has {', '.join(words)}")
            return key

        return parse

    def count_parser(self, form: Form):
        def parse(key: str) -> int:
            if not (key.isascii() and key.isdigit()) or len(key) > 6 or not form.min_children <= int(key) <= MAX_NODES:
                raise ValueError(
                    f"child count {clip(key, 20)}: {form.op} takes at least {form.min_children} children "
                    f"(and at most {MAX_NODES:,}, the node limit of a space)"
                )
            return int(key)

        return parse

    # ---------------------------------------------------------------- consistency
    def check_widths(self, space: Space) -> None:
        """Every `heads` value must split every declared d_model into heads of an even size.

        Multi-head primitives split d_model into `heads` equal parts
        (`einsearch.primitives.base.head_dim`), and rotary embeddings (attn softmax with
        pos=rope, rat) and RetNet's rotations pair up a head's channels, so the head size
        d_model / heads must be an even integer.  The rule applies to every parameter named
        `heads`, so it also holds for primitives added later.
        """
        for op, rules in space.ops.items():
            for form_key, choices in rules.params.items():
                heads = choices.get("heads")
                if heads is None:
                    continue
                entry = op if form_key is None else f"{op}.{form_key}"
                for h in heads.support:
                    for d in space.d_model:
                        if d % (2 * h):
                            raise self.error(
                                f"{entry}.heads",
                                f"heads={h} does not split d_model={d} into heads of an even size "
                                f"(allowed at these widths: {', '.join(map(str, _even_splits(space.d_model)))})",
                            )

    def check_feasible(self, space: Space) -> None:
        if not any(space.language.is_leaf(op) for op in space.module.support):
            raise self.error("module", "no leaf op (one without children) has positive probability")
        try:
            space.op_support(True, 1, space.max_nodes)
        except SpaceError:
            raise self.error("start", f"no root op fits in max_depth={space.max_depth}, max_nodes={space.max_nodes}") from None
        radius = space.spectral_radius()
        if radius >= 1:
            raise self.error(
                "module",
                f"mean number of children per node is {radius:.3f} >= 1 (spectral radius of the branching "
                "process), so the expected tree is infinite; lower the combinators' probabilities or child counts",
            )
