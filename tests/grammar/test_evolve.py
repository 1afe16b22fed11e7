"""Mutation and crossover: children are members of the space, differ from their parents, never hang."""

import numpy as np
import pytest

import einsearch
from einsearch.arch import Arch
from einsearch.grammar import crossover, load_space, mutate, parse, sample
from einsearch.grammar.evolve import positions, replace_at
from einsearch.grammar.space import read_space
from tests.grammar.test_space_files import SPACES


def test_replace_at_by_hand():
    arch = parse("seq(res(norm(rms)), linear())")
    assert [path for path, _ in positions(arch)] == [(), (0,), (0, 0), (1,)]
    assert replace_at(arch, (0, 0), parse("shift()")) == parse("seq(res(shift()), linear())")
    assert replace_at(arch, (), parse("shift()")) == parse("shift()")


@pytest.mark.parametrize("name", SPACES)
def test_mutation_and_crossover_give_new_members(name):
    space = load_space(name)
    rng = np.random.default_rng(5)
    population = [sample(space, rng) for _ in range(40)]
    changed_params = 0
    for _ in range(150):
        a, b = population[rng.integers(40)], population[rng.integers(40)]
        m = mutate(a, space, rng)
        assert space.contains(m), space.explain(m)
        assert m != a
        changed_params += m.size == a.size and [n.op for n in m.walk()] == [n.op for n in a.walk()]
        c = crossover(a, b, space, rng)
        assert space.contains(c), space.explain(c)
        assert c != a
    assert changed_params > 10  # point mutations happen (same tree shape, one value changed)


def test_point_mutation_changes_one_value():
    space = load_space("full")
    arch = parse("res(attn(softmax, heads=4, pos=rope))")
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = mutate(arch, space, rng, p_point=1.0)
        assert m.op == "res" and m.children[0].op == "attn" and m.children[0].variant == "softmax"
        before, after = dict(arch.children[0].params), dict(m.children[0].params)
        assert sum(before.get(k) != after.get(k) for k in set(before) | set(after)) == 1


def test_seeds_evolve_inside_spaces_that_do_not_contain_them():
    recurrent = load_space("recurrent")
    transformer = einsearch.seeds["transformer"]  # has attention, which the recurrent space lacks
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert recurrent.contains(mutate(transformer, recurrent, rng))
        assert recurrent.contains(crossover(transformer, sample(recurrent, rng), recurrent, rng))


def test_a_space_with_one_tree_does_not_hang():
    space = read_space("[space]\nd_model = [8]\nmax_depth = 2\nmax_nodes = 2\n[module]\nlinear = 1.0\n", "one.toml")
    only = Arch("linear")
    rng = np.random.default_rng(0)
    assert mutate(only, space, rng) == only
    assert crossover(only, only, space, rng) == only
