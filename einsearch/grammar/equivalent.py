"""Architectures that compute the same function at a given sequence length.

Some parameters change nothing on sequences no longer than a length: softmax attention with a
``window`` of at least T sees every earlier token anyway (key > query - window holds for all
key <= query < T), and a ``chunk`` of at least T puts the whole sequence in one chunk.  At T they
are the same model, with the same parameters, the same initialisation from the same seed, and the
same training run — so a search need not train both.  Likewise a parameter written at the value
that means the same as leaving it out (``mem(titans, ..., chunk=1)``: one token per chunk is the
per-token form).

    at_length(parse("attn(softmax, heads=4, window=64, pos=rope)"), 64).text
    # 'attn(softmax, heads=4, pos=rope)'

The tree `at_length` returns is a key for "trains the same at this length", not a replacement:
the windowed block still differs beyond T (its inference state stays bounded), so a search keeps
the architecture it proposed and only reuses the result of its equivalent.
"""

from __future__ import annotations

from einsearch.arch import Arch

__all__ = ["at_length", "equivalence_key"]

# (op, variant) -> parameters that are no-ops when their value is at least the sequence length
SPANS: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("attn", "softmax"): ("window", "chunk"),
}
# (op, variant) -> {parameter: the value that means the same as leaving it out}
ABSENT: dict[tuple[str, str | None], dict[str, int]] = {
    ("mem", "titans"): {"chunk": 1},
}


def at_length(arch: Arch, tokens: int) -> Arch:
    """`arch` with every parameter that changes nothing on sequences of length <= `tokens` left
    out (see the module doc); the same tree when there is none."""
    children = tuple(at_length(child, tokens) for child in arch.children)
    spans, absent = SPANS.get((arch.op, arch.variant), ()), ABSENT.get((arch.op, arch.variant), {})

    def no_op(name: str, value: object) -> bool:
        return (name in spans and value >= tokens) or absent.get(name) == value  # spans are integers (grammar)

    params = tuple((name, value) for name, value in arch.params if not no_op(name, value))
    if children == arch.children and params == arch.params:
        return arch
    return Arch(arch.op, arch.variant, params, children)


def equivalence_key(arch: Arch, tokens: int) -> str:
    """One id for all the trees that train the same on sequences of length `tokens`: the id of
    `at_length(arch, tokens)`.  A search reuses results, and the finalists count architectures,
    by this key."""
    return at_length(arch, tokens).id
