"""Optuna encoding: to_params -> suggest rebuilds the architecture; names keep one choice list."""

import numpy as np
import optuna
import pytest
from optuna.trial import FixedTrial

import einsearch
from einsearch.grammar import SpaceError, load_space, parse, sample, suggest, to_params
from tests.grammar.test_space_files import SPACES

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", SPACES)
def test_to_params_then_suggest_reproduces_samples_and_seeds(name):
    space = load_space(name)
    rng = np.random.default_rng(3)
    archs = [sample(space, rng) for _ in range(200)]
    archs += [seed for seed in einsearch.seeds.values() if space.contains(seed)]
    for arch in archs:
        params = to_params(arch, space)
        assert suggest(FixedTrial(params), space) == arch


def test_enqueued_seeds_come_back_from_a_study():
    space = load_space("full")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for seed in einsearch.seeds.values():
        study.enqueue_trial(to_params(seed, space))
    seen = []
    study.optimize(lambda trial: seen.append(suggest(trial, space)) or 0.0, n_trials=len(einsearch.seeds) + 30)
    assert seen[: len(einsearch.seeds)] == list(einsearch.seeds.values())
    assert all(space.contains(arch) for arch in seen)
    assert len({arch.id for arch in seen[len(einsearch.seeds) :]}) > 20  # the sampler explores


def test_each_name_keeps_one_choice_list():
    space = load_space("full")
    choices: dict[str, list] = {}

    class Recorder:
        def __init__(self, rng):
            self.rng = rng

        def suggest_categorical(self, name, values):
            assert choices.setdefault(name, values) == values, name
            return values[self.rng.integers(len(values))]

    rng = np.random.default_rng(0)
    for _ in range(2000):
        assert space.contains(suggest(Recorder(rng), space))
    assert "op" in choices and "seq.0.op" in choices
    windows = [values for name, values in choices.items() if name.endswith(".attn.softmax.window")]
    assert windows and all(values[0] is None for values in windows)  # absent is the choice None
    assert any("~" in name for name in choices)  # limits cut some choice lists, under their own names


def test_names_are_tree_paths():
    params = to_params(parse("seq(res(norm(rms)), attn(linear, heads=4, phi=relu))"), "full")
    assert params == {
        "op": "seq",
        "seq.children": 2,
        "seq.0.op": "res",
        "seq.0.res.0.op": "norm",
        "seq.0.res.0.norm.variant": "rms",
        "seq.1.op": "attn",
        "seq.1.attn.variant": "linear",
        "seq.1.attn.linear.heads": 4,
        "seq.1.attn.linear.phi": "relu",
    }


def test_to_params_of_a_non_member():
    with pytest.raises(SpaceError, match="not in space recurrent"):
        to_params(einsearch.seeds["transformer"], "recurrent")
