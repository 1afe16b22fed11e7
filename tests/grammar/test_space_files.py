"""Space files: the language read from arch.lark, the built-in spaces, and every kind of bad file."""

import re
from pathlib import Path

import pytest

import einsearch
from einsearch.grammar import SpaceError, builtin_spaces, load_space
from einsearch.grammar.language import language
from einsearch.grammar.space import read_space

SPACES = ["attention", "full", "hybrid", "recurrent", "subquadratic"]
FULL = Path(einsearch.__file__).parent / "grammar" / "spaces" / "full.toml"

# A tiny space used for hand counts (and, below, broken in one place at a time).
TINY = """
[space]
d_model = [8, 16]
max_depth = 3
max_nodes = 4

[module]
seq = 0.3
res = 0.2
norm = 0.3
linear = 0.2

[seq]
children = { 2 = 1.0 }

[norm]
variant = { rms = 0.5, layer = 0.5 }
"""


# ---------------------------------------------------------------- the language, read from the grammar
def test_language_matches_arch_lark_by_hand():
    lang = language()
    assert lang.ops[:6] == ("seq", "res", "par", "gate", "repeat", "wired")
    (seq,) = lang.forms["seq"]
    assert (seq.min_children, seq.variadic) == (1, True)  # seq(M, M, ...): one or more
    (par,) = lang.forms["par"]
    assert (par.min_children, par.variadic, par.keys) == (2, True, ("agg",))  # par(M, M, ..., agg)
    (gate,) = lang.forms["gate"]
    assert (gate.min_children, gate.variadic, gate.keys) == (2, False, ("fn",))
    ws, ba, er = (lang.form_of("wired", graph) for graph in ("ws", "ba", "er"))
    assert ws.keys == ("nodes", "k", "p", "seed") and ws.optional == {"k", "p"}
    assert ba.keys == ("nodes", "k", "seed") and er.keys == ("nodes", "p", "seed")
    softmax = lang.form_of("attn", "softmax")
    assert softmax.keys == ("heads", "window", "chunk", "pos") and softmax.optional == {"window", "chunk"}
    assert lang.form_of("attn", "linear").keys == ("heads", "phi")
    assert lang.form_of("rnn", "gru").variants == ("lstm", "gru", "rhn", "slstm", "elman")
    assert lang.form_of("attn", "flash") is None
    assert lang.is_leaf("mlp") and not lang.is_leaf("res")
    heads = softmax.param("heads")
    assert heads.allows(4) and not heads.allows(0)
    assert softmax.param("pos").words == ("rope", "none")
    assert er.param("p").allows(0.25) and not er.param("p").allows(1.5)


# ---------------------------------------------------------------- the built-in spaces
@pytest.mark.parametrize("name", SPACES)
def test_builtin_space_loads_and_is_subcritical(name):
    space = load_space(name)
    assert space.name == name and space.spectral_radius() < 1
    assert space.expected_size() > 1
    for d in space.d_model:  # the stated width rule: heads split every d_model into even heads
        for rules in space.ops.values():
            for choices in rules.params.values():
                if "heads" in choices:
                    assert all(d % (2 * h) == 0 for h in choices["heads"].support)


def test_builtin_spaces_are_listed():
    assert builtin_spaces() == SPACES


def test_subquadratic_space_has_no_full_context_attention():
    space = load_space("subquadratic")
    assert {"routing", "topk_blocks"}.isdisjoint(space.ops["attn"].variant.support)
    assert space.module.prob("rat") == 0
    assert None not in space.ops["attn"].params["softmax"]["window"].support  # a window is always present


def test_hand_counted_mean_offspring_and_expected_size():
    space = read_space(TINY, "tiny.toml")
    # m = P(seq)·2 + P(res)·1 = 0.6 + 0.2;  E[size] = 1 + m / (1 - m) = 5
    assert space.spectral_radius() == pytest.approx(0.8)
    assert space.expected_size() == pytest.approx(5.0)
    assert space.min_size("seq") == 3 and space.min_size("res") == 2 and space.min_size("norm") == 1


def test_a_copied_and_edited_file_loads_by_path(tmp_path):
    text = FULL.read_text().replace('name = "full"', 'name = "mine"').replace(
        "rnn = 0.05\nrat = 0.02", "rnn = 0.02\nrat = 0.05"
    )
    path = tmp_path / "mine.toml"
    path.write_text(text)
    space = load_space(str(path))
    assert space.name == "mine" and space.module.prob("rat") == 0.05
    assert space.source == str(path)


def test_json_space_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(
        '{"space": {"d_model": [8], "max_depth": 3, "max_nodes": 4},'
        ' "module": {"res": 0.4, "linear": 0.6}}'
    )
    assert load_space(str(path)).module.prob("linear") == 0.6


# ---------------------------------------------------------------- every kind of bad file
def broken(old: str, new: str) -> str:
    assert old in TINY
    return TINY.replace(old, new)


BAD = {
    "unknown rule": (broken("[seq]", "[sequence]"), r"\[sequence\] unknown rule 'sequence'"),
    "unknown op in [module]": (broken("linear = 0.2", "linearr = 0.2"), r"\[module\] unknown rule 'linearr'"),
    "unknown variant": (broken("layer = 0.5", "batch = 0.5"), r"\[norm.variant\] norm has no variant 'batch'"),
    "unknown entry of an op": (broken("children", "kids"), r"\[seq\] unknown entry 'kids'"),
    "does not sum to 1": (broken("seq = 0.3", "seq = 0.4"), r"\[module\] probabilities sum to 1.1, not 1"),
    "negative": (broken("rms = 0.5, layer = 0.5", "rms = 1.5, layer = -0.5"), r"\[norm.variant\] .*negative"),
    "not a number": (broken("seq = 0.3", 'seq = "0.3"'), r"\[module\] probability of 'seq' must be a number"),
    "child count below the grammar's": (
        TINY + "[par]\nchildren = { 1 = 1.0 }\nagg = { add = 1.0 }\n", r"\[par.children\] .*par takes at least 2"
    ),
    "missing limit": (broken("max_nodes = 4\n", ""), r"\[space\] missing max_nodes"),
    "bad limit": (broken("max_depth = 3", "max_depth = 0"), r"\[space\] max_depth must be an integer from 1 to 64, got 0"),
    "used op without its table": (broken("[seq]\nchildren = { 2 = 1.0 }", ""), r"\[seq\] gives no probabilities"),
    "variant of an op without variants": (
        TINY + "[linear]\nvariant = { x = 1.0 }\n", r"\[linear\] linear has no variants"
    ),
    "no leaf": (
        broken("norm = 0.3\nlinear = 0.2", "norm = 0.0\nlinear = 0.0").replace("seq = 0.3", "seq = 0.4")
        .replace("res = 0.2", "res = 0.6"),
        r"\[module\] no leaf op",
    ),
    "supercritical": (
        broken("seq = 0.3\nres = 0.2\nnorm = 0.3", "seq = 0.5\nres = 0.1\nnorm = 0.2").replace(
            "2 = 1.0", "3 = 1.0"
        ),
        r"\[module\] mean number of children per node is 1.600 >= 1",
    ),
    "not TOML": (TINY + "[[[", r"not valid TOML"),
}

# Errors about parameter values need an op with parameters: attn and its heads.
ATTN = TINY.replace("linear = 0.2", "attn = 0.2") + """
[attn]
variant = { softmax = 1.0 }

[attn.softmax]
heads = { 1 = 0.5, 2 = 0.5 }
window = { absent = 0.5, 16 = 0.5 }
chunk = { absent = 1.0 }
pos = { rope = 0.5, none = 0.5 }
"""


def attn_broken(old: str, new: str) -> str:
    assert old in ATTN
    return ATTN.replace(old, new)


BAD.update(
    {
        "value the grammar forbids": (attn_broken("1 = 0.5, 2", "0 = 0.5, 2"), r"\[attn.softmax.heads\] heads=0 is not allowed"),
        "word the grammar forbids": (attn_broken("none = 0.5", "alibi = 0.5"), r"\[attn.softmax.pos\] pos=alibi .*rope, none"),
        "absent for a required parameter": (
            attn_broken("1 = 0.5, 2", "absent = 0.5, 2"), r"\[attn.softmax.heads\] heads is required"
        ),
        "used form without a parameter": (attn_broken("chunk = { absent = 1.0 }\n", ""), r"\[attn.softmax\] gives no values for chunk"),
        "unknown form": (ATTN + "[attn.flash]\nheads = { 1 = 1.0 }\n", r"\[attn\] unknown entry 'flash'"),
        "heads that do not split d_model evenly": (
            attn_broken("1 = 0.5, 2 = 0.5", "1 = 0.5, 8 = 0.5"),
            r"\[attn.softmax.heads\] heads=8 does not split d_model=8 into heads of an even size",
        ),
        "bare decimal key": (
            attn_broken("[attn.softmax]", "[wired]\nvariant = { er = 1.0 }\n\n[wired.er]\np = { 0.5 = 1.0 }\n\n[attn.softmax]"),
            r"\[wired.er.p\] '0' maps to a table; write decimal values as quoted keys",
        ),
    }
)


def test_the_tiny_files_are_valid():
    read_space(TINY, "tiny.toml")
    read_space(ATTN, "attn.toml")


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_file_is_rejected_naming_file_and_entry(kind, tmp_path):
    text, message = BAD[kind]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpaceError) as error:
        load_space(str(path))
    assert str(error.value).startswith(f"{path}: ")
    assert re.search(message, str(error.value)), str(error.value)


def test_unknown_space_name():
    with pytest.raises(SpaceError, match="unknown space 'nope': built-in spaces are attention, full"):
        load_space("nope")
