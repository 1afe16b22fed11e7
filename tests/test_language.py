"""The architecture language: round trips, canonical form, golden files, ids, errors."""

import pathlib
import pickle
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import einsearch
from einsearch import Arch, ArchSyntaxError, parse, to_text

GOLDEN = pathlib.Path(__file__).parent / "data" / "parse"

# ---------------------------------------------------------------- random trees, written independently
# of the grammar: each entry builds one node from drawn values, as a user would write it.
pos = st.integers(1, 64)


def leaves():
    return st.one_of(
        st.builds(lambda e, a: Arch("mlp", None, (("expand", e), ("act", a))), pos,
                  st.sampled_from(["gelu", "relu", "relu2", "silu", "swiglu", "geglu"])),
        st.builds(lambda v: Arch("norm", v), st.sampled_from(["rms", "layer"])),
        st.just(Arch("linear")),
        st.just(Arch("shift")),
        st.builds(lambda v: Arch("act", v), st.sampled_from(["gelu", "relu", "relu2", "silu", "sigmoid", "tanh"])),
        st.builds(lambda k: Arch("conv", None, (("k", k),)), pos),
        st.builds(
            lambda h, w, c, p: Arch("attn", "softmax", (("heads", h),) + w + c + (("pos", p),)),
            pos, st.sampled_from([(), (("window", 8),)]), st.sampled_from([(), (("chunk", 3),)]),
            st.sampled_from(["rope", "none"]),
        ),
        st.builds(lambda h, phi: Arch("attn", "linear", (("heads", h), ("phi", phi))), pos,
                  st.sampled_from(["elu1", "relu", "identity"])),
        st.builds(lambda n, s: Arch("scan", "diag", (("state", n), ("selective", s))), pos, st.booleans()),
        st.builds(lambda h, g: Arch("mem", "delta", (("heads", h), ("gated", g))), pos, st.booleans()),
        st.builds(lambda c, h, w, p: Arch("rnn", c, (("heads", h), ("wiring", w), ("parallel", p))),
                  st.sampled_from(["lstm", "gru", "rhn", "slstm", "elman"]), pos,
                  st.sampled_from(["none", "ws", "ba", "er"]), st.sampled_from(["sequential", "newton"])),
    )


def extend(inner):
    return st.one_of(
        st.builds(lambda cs: Arch("seq", children=tuple(cs)), st.lists(inner, min_size=1, max_size=4)),
        st.builds(lambda c: Arch("res", children=(c,)), inner),
        st.builds(lambda cs, a: Arch("par", None, (("agg", a),), tuple(cs)), st.lists(inner, min_size=2, max_size=3),
                  st.sampled_from(["add", "mul", "cat"])),
        st.builds(lambda a, b, f: Arch("gate", None, (("fn", f),), (a, b)), inner, inner,
                  st.sampled_from(["sigmoid", "silu"])),
        st.builds(lambda c, n: Arch("repeat", None, (("n", n),), (c,)), inner, pos),
        st.builds(lambda c, g, n, s, p: Arch("wired", g, (("nodes", n),) + (() if g == "ba" else p) + (("seed", s),), (c,)),
                  inner, st.sampled_from(["ws", "ba", "er"]), pos, st.integers(0, 10**6),
                  st.sampled_from([(), (("p", 0.25),), (("p", 0.125),)])),
    )


trees = st.recursive(leaves(), extend, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(trees)
def test_print_parse_round_trip(arch):
    text = to_text(arch)
    assert parse(text) == arch
    assert to_text(parse(text)) == text  # printing is stable
    assert parse(to_text(arch, indent=2)) == arch  # the multi-line layout means the same tree


@settings(max_examples=100, deadline=None)
@given(trees)
def test_equal_trees_have_equal_ids_and_hashes(arch):
    twin = parse(to_text(arch))
    assert twin is not arch and twin == arch
    assert hash(twin) == hash(arch) and twin.id == arch.id
    assert pickle.loads(pickle.dumps(arch)) == arch


def test_id_is_stable_across_processes():
    text = einsearch.seeds["transformer"].text
    code = f"import einsearch; print(einsearch.parse({text!r}).id)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == parse(text).id
    assert len(parse(text).id) == 12


def test_different_trees_have_different_ids():
    a = parse("attn(softmax, heads=4, pos=rope)")
    b = parse("attn(softmax, heads=2, pos=rope)")
    assert a != b and a.id != b.id


def test_arch_is_frozen():
    arch = parse("conv(k=3)")
    with pytest.raises(AttributeError):
        arch.op = "mlp"


def test_parameter_access():
    arch = parse("attn(softmax, heads=4, window=16, pos=rope)")
    assert arch.variant == "softmax"
    assert arch["heads"] == 4 and arch["window"] == 16 and arch.get("chunk") is None
    assert parse("mem(delta, heads=2, gated=true)")["gated"] is True
    assert parse("wired(er, shift(), nodes=6, p=0.3, seed=0)")["p"] == 0.3


@pytest.mark.parametrize("case", sorted(p.stem for p in GOLDEN.glob("*.ein")))
def test_golden(case):
    text = (GOLDEN / f"{case}.ein").read_text()
    expected = (GOLDEN / f"{case}.expected").read_text().rstrip("\n")
    if expected.startswith("error: "):
        with pytest.raises(ArchSyntaxError) as info:
            parse(text)
        assert f"error: {info.value}" == expected
        assert info.value.line is not None or "end of text" in expected
    else:
        assert to_text(parse(text)) == expected


def test_errors_name_line_column_found_and_allowed():
    with pytest.raises(ArchSyntaxError) as info:
        parse("seq(\n  norm(rms),\n  mlp(expand=4, act=mish)\n)")
    error = info.value
    assert (error.line, error.column) == (3, 21)
    assert "'mish'" in str(error) and "'swiglu'" in str(error)


def test_seed_names_resolve_and_unknown_names_are_rejected():
    assert einsearch.resolve("transformer") == einsearch.seeds["transformer"]
    assert einsearch.resolve("conv(k=3)") == parse("conv(k=3)")
    with pytest.raises(ArchSyntaxError, match="neither architecture text nor a seed name"):
        einsearch.resolve("transfomer")
