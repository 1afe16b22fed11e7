"""MQAR against Zoology's definition: key/value halves, queries of earlier keys, power-law gaps,
only the queries scored; deterministic from the seed."""

import numpy as np
import pytest
import torch

from einsearch.tasks import TaskError, get_task
from einsearch.tasks.language import IGNORE
from einsearch.tasks.mqar import distinct_draws, multiquery_ar, weighted_draws

V, T, P = 64, 32, 4


def generate(seed=0, n=500, vocab=V, seq_len=T, pairs=P, power_a=0.01):
    return multiquery_ar(np.random.default_rng(seed), n, vocab, seq_len, pairs, power_a)


def test_same_seed_same_data_and_other_seed_other_data():
    a, b, c = generate(seed=3), generate(seed=3), generate(seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_key_value_prefix_uses_the_two_vocabulary_halves_without_repeats():
    inputs, _ = generate()
    keys, values = inputs[:, 0 : 2 * P : 2], inputs[:, 1 : 2 * P : 2]
    assert ((keys >= 1) & (keys < V // 2)).all()
    assert ((values >= V // 2) & (values < V)).all()
    for row_keys, row_values in zip(keys, values):
        assert len(set(row_keys)) == P and len(set(row_values)) == P


def test_every_query_refers_to_a_key_shown_earlier_and_targets_its_value():
    inputs, targets = generate()
    for row_inputs, row_targets in zip(inputs, targets):
        scored = np.flatnonzero(row_targets != IGNORE)
        assert len(scored) == P  # one query per key
        assert (scored >= 2 * P).all() and (scored % 2 == 0).all()  # even slots of the query region
        pairs = dict(zip(row_inputs[0 : 2 * P : 2], row_inputs[1 : 2 * P : 2]))
        queried = set()
        for t in scored:
            key = row_inputs[t]
            first = int(np.flatnonzero(row_inputs == key)[0])
            assert first < t and first < 2 * P and first % 2 == 0  # shown earlier, as a key
            assert row_targets[t] == pairs[key] == row_inputs[first + 1]
            queried.add(key)
        assert queried == set(pairs)  # every key is queried once


def test_only_query_positions_are_scored_and_the_filler_covers_the_whole_vocabulary():
    inputs, targets = generate(n=2000)
    assert (targets[:, : 2 * P] == IGNORE).all()
    query_region = inputs[:, 2 * P :][targets[:, 2 * P :] == IGNORE]
    assert query_region.min() == 0 and query_region.max() == V - 1


@pytest.mark.parametrize("power_a", [1.0, 0.01])
def test_gap_distribution_matches_numpy_choice_without_replacement(power_a):
    """Zoology draws the query slots with numpy's choice(replace=False, p); our Gumbel-top-k draw
    must give the same inclusion frequency for every slot."""
    slots, k, n = 12, 4, 20_000
    p = power_a * np.arange(1, slots + 1) ** (power_a - 1)
    p /= p.sum()
    ours = weighted_draws(np.random.default_rng(0), n, p, k)
    reference_rng = np.random.default_rng(1)
    reference = np.stack([reference_rng.choice(slots, size=k, replace=False, p=p) for _ in range(n)])
    ours_freq = np.bincount(ours.ravel(), minlength=slots) / n
    reference_freq = np.bincount(reference.ravel(), minlength=slots) / n
    assert np.abs(ours_freq - reference_freq).max() < 0.025
    first_freq = np.bincount(ours[:, 0], minlength=slots) / n  # the order is successive sampling too
    assert np.abs(first_freq - p).max() < 0.02


def test_short_gaps_dominate_with_a_small_power():
    _, targets = generate(n=3000, seq_len=64, pairs=4)
    slots = (np.flatnonzero((targets != IGNORE).ravel()) % 64 - 8) // 2
    counts = np.bincount(slots, minlength=28)
    assert counts[0] > 3 * counts[-1]


@pytest.mark.parametrize("population,k", [(5, 5), (7, 3), (4000, 8)])
def test_distinct_draws_are_distinct_and_uniform(population, k):
    draws = distinct_draws(np.random.default_rng(0), 6000, population, k)
    assert ((draws >= 0) & (draws < population)).all()
    assert all(len(set(row)) == k for row in draws[:500])
    if population < 100:  # every value equally likely in every column
        freq = np.stack([np.bincount(draws[:, j], minlength=population) / len(draws) for j in range(k)])
        assert np.abs(freq - 1 / population).max() < 0.03


def test_task_splits_shapes_and_independence():
    task = get_task("mqar:vocab=64,seq_len=32,pairs=4,train=50,val=20,test=30,seed=5")
    splits = task.data()
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [50, 20, 30]
    assert splits.train.tensors[0].shape == (50, 32)
    assert not torch.equal(splits.val.tensors[0][:20], splits.test.tensors[0][:20])
    again = type(task)(**{**task.__dict__})
    assert torch.equal(again.make_data().train.tensors[0], splits.train.tensors[0])  # from the disk cache
    assert task.spec == "mqar:vocab=64,seq_len=32,pairs=4,train=50,val=20,test=30,seed=5"
    assert get_task(task.spec) == task


@pytest.mark.parametrize(
    "spec", ["mqar:seq_len=33", "mqar:vocab=32,seq_len=64", "mqar:pairs=17,seq_len=64", "mqar:power_a=0", "mqar:pears=3"]
)
def test_bad_options_raise_task_error(spec):
    with pytest.raises(TaskError):
        get_task(spec)
