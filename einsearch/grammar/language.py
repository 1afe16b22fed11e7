"""The language's structure, read from the compiled Lark grammar (`grammar()` in parser.py).

The search spaces and the sampler need to know, for every node op: its variants, its parameters
(which are optional, which values the grammar allows) and how many children it takes.  All of it
is read here from the Lark rules of `arch.lark`, so the grammar stays the single registry; nothing
below names an op.  The header of arch.lark fixes the three kinds of rule this relies on:

* node rules are the alternatives of ``module``; each of their expansions is one *form* of the
  op, and Lark expands ``[optional]`` parameters into several expansions of the same form;
* variant rules are ``!`` rules whose expansions are single words (``norm_kind: "rms" | "layer"``);
* parameter rules are ``!`` rules of the shape ``key "=" value``; the value is either a word
  (an enumeration) or a typed terminal such as ``POSINT``.

A repetition ``("," module)*`` compiles to a helper rule (``__seq_star_0``) that stands for one
or more further children.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from lark import Lark, Token

from einsearch.arch import Arch, Value, format_value
from einsearch.grammar.parser import MAX_DIGITS, _convert, grammar
from einsearch.messages import clip

MODULE = "module"  # the nonterminal every child position expands


@dataclass(frozen=True)
class Param:
    """One parameter rule: ``key "=" value``."""

    rule: str  # the rule name in arch.lark (e.g. gate_fn)
    key: str  # the word written before "=" (e.g. fn); the name in `Arch.params`
    words: tuple[str, ...]  # an enumeration's words; empty for a typed terminal
    terminal: str | None  # the typed terminal (POSINT, INT, PROB, BOOL), or None for words
    pattern: str | None  # that terminal's regular expression

    def parse_value(self, text: str) -> Value:
        """The value written as `text` (as in architecture text); ValueError if the grammar forbids it."""
        if self.terminal is None:
            if text not in self.words:
                raise ValueError(f"{self.key}={clip(text, 30, quote=False)} is not in the grammar; allowed: {', '.join(self.words)}")
            return text
        if not re.fullmatch(self.pattern, text) or len(text) > MAX_DIGITS + 2:  # + "0." of a probability
            raise ValueError(f"{self.key}={clip(text, 30, quote=False)} is not allowed by the grammar's {self.terminal} ({self.pattern}, at most {MAX_DIGITS} digits)")
        return _convert(Token(self.terminal, text))

    def allows(self, value: Value) -> bool:
        if self.terminal is None:
            return isinstance(value, str) and value in self.words
        return re.fullmatch(self.pattern, format_value(value)) is not None


@dataclass(frozen=True)
class Form:
    """One form of a node op: a variant rule (or none), its children and its parameters."""

    op: str
    variant_rule: str | None  # e.g. attn_softmax; None for ops written without a variant
    variants: tuple[str, ...]  # the variant rule's words, e.g. ("softmax",) or ("lstm", "gru", ...)
    params: tuple[Param, ...]  # in canonical order
    optional: frozenset[str]  # keys of the parameters that may be left out
    min_children: int
    variadic: bool  # True: min_children or more children (seq, par); False: exactly min_children

    @property
    def name(self) -> str | None:
        """How a space file names this form when its op has several: the variant word, or the rule."""
        if self.variant_rule is None:
            return None
        return self.variants[0] if len(self.variants) == 1 else self.variant_rule

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.params)

    def param(self, key: str) -> Param:
        for p in self.params:
            if p.key == key:
                return p
        raise KeyError(f"{self.op} has no parameter {key!r}")

    def conforms(self, node: Arch) -> str | None:
        """None if `node` (its own variant, parameters, child count) fits this form, else why not."""
        keys = [k for k, _ in node.params]
        if [k for k in self.keys if k in keys] != keys or not set(self.keys) - self.optional <= set(keys):
            return f"{node.op}: parameters {keys} do not match the grammar's {list(self.keys)}"
        count = len(node.children)
        if count < self.min_children or (count > self.min_children and not self.variadic):
            return f"{node.op}: {count} children"
        for key, value in node.params:
            if not self.param(key).allows(value):
                return f"{node.op}: {key}={format_value(value)} is not allowed by the grammar"
        return None


@dataclass(frozen=True)
class Language:
    ops: tuple[str, ...]  # the alternatives of `module`, in grammar order
    forms: dict[str, tuple[Form, ...]]  # op -> its forms

    def form_of(self, op: str, variant: str | None) -> Form | None:
        """The form of `op` written with `variant` (None when the op has no such form)."""
        for form in self.forms.get(op, ()):
            if (variant is None and form.variant_rule is None) or (variant is not None and variant in form.variants):
                return form
        return None

    def variants(self, op: str) -> tuple[str, ...]:
        return tuple(word for form in self.forms[op] for word in form.variants)

    def min_children(self, op: str) -> int:
        return min(form.min_children for form in self.forms[op])

    def is_leaf(self, op: str) -> bool:
        return all(form.min_children == 0 and not form.variadic for form in self.forms[op])


@lru_cache(maxsize=1)
def language() -> Language:
    """The structure of the grammar in arch.lark (see the module docstring)."""
    return read_language(grammar())


def read_language(lark: Lark) -> Language:
    by_origin: dict[str, list] = {}
    for rule in lark.rules:
        by_origin.setdefault(rule.origin.name, []).append(rule)

    def words_of(name: str) -> tuple[str, ...]:
        return tuple(lark.get_terminal(r.expansion[0].name).pattern.value for r in by_origin[name])

    def is_variant_rule(name: str) -> bool:
        rules = by_origin.get(name, [])
        return bool(rules) and all(len(r.expansion) == 1 and r.expansion[0].is_term for r in rules)

    def is_param_rule(name: str) -> bool:
        rules = by_origin.get(name, [])
        return bool(rules) and all(
            len(r.expansion) == 3 and all(s.is_term for s in r.expansion) and r.expansion[1].name == "EQUAL"
            for r in rules
        )

    def is_repetition(name: str) -> bool:  # ("," module)* compiled to a helper rule
        return name.startswith("__") and any(s.name == MODULE for r in by_origin[name] for s in r.expansion)

    params: dict[str, Param] = {}
    for name in by_origin:
        if not is_param_rule(name):
            continue
        rules = by_origin[name]
        key = lark.get_terminal(rules[0].expansion[0].name).pattern.value
        values = [lark.get_terminal(r.expansion[2].name) for r in rules]
        if all(v.pattern.type == "str" for v in values):
            params[name] = Param(name, key, tuple(v.pattern.value for v in values), None, None)
        else:
            (typed,) = values
            params[name] = Param(name, key, (), typed.name, typed.pattern.to_regexp())

    ops = tuple(r.expansion[0].name for r in by_origin[MODULE])
    forms: dict[str, tuple[Form, ...]] = {}
    for op in ops:
        expansions: dict[str | None, list[list[str]]] = {}  # variant rule -> the nonterminals of each expansion
        for rule in by_origin[op]:
            names = [s.name for s in rule.expansion if not s.is_term]
            variant = next((n for n in names if is_variant_rule(n)), None)
            expansions.setdefault(variant, []).append(names)
        op_forms = []
        for variant, group in expansions.items():
            longest = max(group, key=len)
            param_rules = [n for n in longest if n in params]
            children = [(e.count(MODULE) + any(map(is_repetition, e)), any(map(is_repetition, e))) for e in group]
            op_forms.append(
                Form(
                    op=op,
                    variant_rule=variant,
                    variants=words_of(variant) if variant else (),
                    params=tuple(params[n] for n in param_rules),
                    optional=frozenset(params[n].key for n in param_rules if not all(n in e for e in group)),
                    min_children=min(count for count, _ in children),
                    variadic=any(repeated for _, repeated in children),
                )
            )
        forms[op] = tuple(op_forms)
    return Language(ops=ops, forms=forms)
