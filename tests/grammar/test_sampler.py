"""The sampler: samples parse back and are members; probabilities by hand; determinism; seeds."""

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from lark import Lark

import einsearch
from einsearch.arch import Arch
from einsearch.grammar import builtin_spaces, load_space, parse, sample, to_text
from einsearch.grammar.language import read_language
from einsearch.grammar.parser import grammar
from einsearch.grammar.space import read_space
from tests.grammar.test_space_files import SPACES, TINY

GOLDEN = Path(__file__).parents[1] / "data" / "grammar" / "sample_seed0.json"


@pytest.mark.parametrize("name", SPACES)
def test_2000_samples_parse_back_and_are_members(name):
    space = load_space(name)
    rng = np.random.default_rng(2024)
    ops = Counter()
    for _ in range(2000):
        arch = sample(space, rng)
        assert parse(to_text(arch)) == arch
        assert space.contains(arch), space.explain(arch)
        assert arch.depth <= space.max_depth and arch.size <= space.max_nodes
        ops.update(node.op for node in arch.walk())
    # every op the space gives positive probability shows up
    assert set(ops) == {op for op in space.language.ops if space.module.prob(op) > 0 or space.start.prob(op) > 0}


def test_golden_ids_for_seed_0():
    golden = json.loads(GOLDEN.read_text())["ids"]
    assert sorted(golden) == builtin_spaces()
    for name, ids in golden.items():
        rng = np.random.default_rng(0)
        assert [sample(name, rng).id for _ in ids] == ids, name


def test_same_seed_same_architecture():
    assert sample("full", 7) == sample("full", np.random.default_rng(7)) == einsearch.sample("full", 7)
    assert len({sample("full", seed).id for seed in range(50)}) > 30


# ---------------------------------------------------------------- probabilities, against hand counts
TINY_OPS = {"seq": 2, "res": 1, "norm": 0, "linear": 0}


def all_trees(depth: int, size: int) -> list[Arch]:
    """Every tree of the tiny space's ops with at most `depth` levels and `size` nodes (brute force)."""
    trees = [Arch("norm", "rms"), Arch("norm", "layer"), Arch("linear")]
    if depth > 1:
        for op, arity in (("res", 1), ("seq", 2)):
            for kids in itertools.product(all_trees(depth - 1, size - 1), repeat=arity):
                if 1 + sum(k.size for k in kids) <= size:
                    trees.append(Arch(op, None, (), kids))
    return trees


def test_probabilities_of_all_trees_sum_to_one_and_match_sampling():
    space = read_space(TINY, "tiny.toml")  # max_depth 3, max_nodes 4
    inside = all_trees(3, 4)
    outside = [t for t in all_trees(4, 6) if t.depth > 3 or t.size > 4]
    probs = {t: math.exp(space.log_prob(t)) for t in inside}
    assert math.fsum(probs.values()) == pytest.approx(1.0, abs=1e-12)
    assert all(p > 0 for p in probs.values()) and all(space.contains(t) for t in inside)
    assert outside and all(space.log_prob(t) == -math.inf for t in outside)

    n = 20000
    rng = np.random.default_rng(1)
    counts = Counter(sample(space, rng) for _ in range(n))
    assert set(counts) <= set(inside)
    for tree, p in probs.items():
        assert abs(counts[tree] / n - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9, (tree.text, counts[tree] / n, p)


def test_log_prob_by_hand():
    space = read_space(TINY, "tiny.toml")  # seq .3, res .2, norm .3, linear .2; max_depth 3, max_nodes 4
    # root: any op (4 nodes left); its child at depth 2 with 3 nodes left: any op
    assert space.log_prob(parse("res(norm(rms))")) == pytest.approx(math.log(0.2 * 0.3 * 0.5))
    # root seq, 2 nodes left for each child, so no seq below (it needs 3), renormalised over 0.7;
    # res's child is at depth 3 = max_depth: leaves only, renormalised over 0.5
    expected = 0.3 * (0.3 / 0.7 * 0.5) * (0.2 / 0.7) * (0.2 / 0.5)
    assert space.log_prob(parse("seq(norm(rms), res(linear()))")) == pytest.approx(math.log(expected))


# ---------------------------------------------------------------- membership
def test_every_seed_is_in_full_and_in_every_space_that_has_its_primitives():
    members = {}
    for name in SPACES:
        space = load_space(name)
        for seed, arch in einsearch.seeds.items():
            if name == "full" or space.uses(arch):
                assert space.contains(arch), f"{seed} not in {name}: {space.explain(arch)}"
                assert space.log_prob(arch) > -math.inf
                members.setdefault(name, []).append(seed)
    assert len(members["full"]) == len(einsearch.seeds)
    assert {"lstm", "mamba", "gla", "deltanet"} <= set(members["recurrent"])
    assert {"transformer", "linear_attention"} <= set(members["attention"])
    assert "titans" in members["subquadratic"] and "transformer" not in members["subquadratic"]
    assert "rat_hybrid" in members["hybrid"]


def test_non_members_with_reasons():
    full, recurrent = load_space("full"), load_space("recurrent")
    transformer = einsearch.seeds["transformer"]
    assert "op=attn" in recurrent.explain(transformer)
    assert "window=absent" in load_space("subquadratic").explain(transformer)
    assert "heads=3" in full.explain(parse("res(attn(softmax, heads=3, pos=rope))"))
    deep = parse("res(" * 6 + "linear()" + ")" * 6)
    assert "depth 7 exceeds" in full.explain(deep)
    assert full.log_prob(deep) == -math.inf and not full.contains(deep)
    wide = parse("seq(" + ", ".join(["linear()"] * 40) + ")")
    assert "41 nodes exceed" in full.explain(wide)
    assert "not allowed by the grammar" in full.explain(Arch("conv", None, (("k", 0),)))


# ---------------------------------------------------------------- derived from the grammar
def test_a_new_rule_in_the_grammar_is_sampled_without_code_changes():
    source = grammar().source_grammar
    source = source.replace("| attn | scan", "| attn | scan | blur").replace(
        "// ---------------------------------------------------------------- variants",
        'blur: "blur" "(" radius ")"\n!radius: "radius" "=" POSINT\n'
        "// ---------------------------------------------------------------- variants",
    )
    lang = read_language(Lark(source, parser="lalr", maybe_placeholders=True))
    assert lang.form_of("blur", None).keys == ("radius",)
    space = read_space(
        "[space]\nd_model = [8]\nmax_depth = 3\nmax_nodes = 6\n"
        "[module]\nres = 0.3\nblur = 0.7\n[blur]\nradius = { 2 = 0.5, 5 = 0.5 }\n",
        "blur.toml",
        lang=lang,
    )
    rng = np.random.default_rng(0)
    texts = {to_text(sample(space, rng)) for _ in range(200)}
    assert "blur(radius=2)" in texts and "res(blur(radius=5))" in texts
