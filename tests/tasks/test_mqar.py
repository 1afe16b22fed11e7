"""MQAR against Zoology's definition: key/value halves, queries of earlier keys, power-law gaps,
only the queries scored; deterministic from the seed.  JRT's repeated context (passes) against
hand-built sequences, and Zoology's mixture against its settings and a naive evaluation loop."""

import numpy as np
import pytest
import torch

import einsearch
from einsearch.tasks import TaskError, get_task
from einsearch.tasks.language import IGNORE, split_seeds
from einsearch.tasks.mqar import distinct_draws, multiquery_ar, repeat_context, weighted_draws

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


# ---------------------------------------------------------------- passes (JRT-Prompt)
def test_passes_1_is_todays_mqar_bit_for_bit_with_the_same_cache_key():
    task = get_task("mqar:vocab=64,seq_len=32,pairs=4,train=40,val=10,test=10,seed=2")
    assert task.passes == 1 and task.tokens == 32
    for split, rng, n in zip((task.data().train, task.data().val, task.data().test), split_seeds(2), (40, 10, 10)):
        inputs, targets = multiquery_ar(rng, n, 64, 32, 4, 0.01)  # what make_data did before passes existed
        assert np.array_equal(split.tensors[0].numpy(), inputs) and np.array_equal(split.tensors[1].numpy(), targets)
    assert task.data_key() == "MQAR(vocab=64, seq_len=32, pairs=4, power_a=0.01, train=40, val=10, test=10, seed=2)"
    assert "passes=3" in get_task("mqar:passes=3").data_key()


def test_repeat_context_on_a_hand_built_example():
    #                  k1 v1 k2 v2 | x  k2 x  k1
    inputs = np.array([[1, 5, 2, 6, 7, 2, 3, 1]])
    targets = np.array([[IGNORE] * 5 + [6, IGNORE, 5]])
    twice, twice_targets = repeat_context(inputs, targets, pairs=2, passes=2)
    assert twice.tolist() == [[1, 5, 2, 6, 1, 5, 2, 6, 7, 2, 3, 1]]
    assert twice_targets.tolist() == [[IGNORE] * 9 + [6, IGNORE, 5]]


def test_passes_repeats_the_context_before_the_same_queries():
    base = get_task("mqar:vocab=64,seq_len=32,pairs=4,train=30,val=10,test=10")
    thrice = get_task("mqar:vocab=64,seq_len=32,pairs=4,train=30,val=10,test=10,passes=3")
    assert thrice.tokens == 32 + 2 * 8 and thrice.spec.endswith("passes=3") and get_task(thrice.spec) == thrice
    one, three = base.data().train.tensors, thrice.data().train.tensors
    assert three[0].shape == (30, 48)
    for row in range(30):
        context, rest = one[0][row, :8].tolist(), one[0][row, 8:].tolist()
        assert three[0][row].tolist() == context + context + context + rest
        assert three[1][row].tolist() == [IGNORE] * 16 + one[1][row].tolist()


# ---------------------------------------------------------------- mixture=zoology
MIXTURE = "mqar:vocab=1030,train=90,val=10,test=14,mixture=zoology"


def test_zoology_mixture_settings_and_shares():
    task = get_task(MIXTURE)
    assert task.spec == MIXTURE and get_task(task.spec) == task
    assert task.settings("train") == [(64, 4, 50), (128, 8, 10), (256, 16, 10), (256, 32, 10), (256, 64, 10)]  # 5:1:1:1:1
    assert task.settings("val") == [(64, 4, 2), (128, 8, 2), (256, 16, 2), (256, 32, 2), (256, 64, 2)]
    test = [(64, 4), (64, 8), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256)]
    assert task.settings("test") == [(t, p, 2) for t, p in test]
    assert task.tokens == 256
    assert get_task(MIXTURE + ",passes=2").tokens == 256 + 2 * 64
    splits = task.data()
    assert {name: tuple(part.tensors[0].shape) for name, part in splits.test.parts.items()} == {
        f"{t}x{p}": (2, t) for t, p in test
    }
    for name, part in splits.test.parts.items():  # every setting is MQAR with its own pairs
        pairs = int(name.split("x")[1])
        assert ((part.tensors[1] != IGNORE).sum(dim=1) == pairs).all()


def test_zoology_mixture_is_deterministic_from_the_seed():
    a = get_task(MIXTURE).make_data().train.parts["256x32"].tensors[0]
    b = get_task(MIXTURE).make_data().train.parts["256x32"].tensors[0]
    c = get_task(MIXTURE.replace("test=14", "test=14,seed=1")).make_data().train.parts["256x32"].tensors[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_mixture_batch_comes_from_one_setting_in_proportion_to_its_examples():
    train = get_task(MIXTURE).data().train
    generator = torch.Generator().manual_seed(0)
    lengths = [train.sample(4, generator)[0].shape[1] for _ in range(900)]
    assert set(lengths) == {64, 128, 256}
    assert abs(lengths.count(64) / 900 - 5 / 9) < 0.06 and abs(lengths.count(128) / 900 - 1 / 9) < 0.04


def test_mixture_metrics_per_setting_and_overall_against_a_naive_loop():
    task = get_task(MIXTURE)
    torch.manual_seed(0)
    model = task.model(einsearch.seeds["transformer"], 16, 1).eval()
    inputs, targets = task.data().train.sample(8, torch.Generator().manual_seed(1))
    assert torch.isfinite(task.loss(model, (inputs, targets)))
    test = task.data().test
    with torch.no_grad():
        metrics = task.evaluate(model, test)
        per_example = []
        for name, part in test.parts.items():
            alone = get_task("mqar").evaluate(model, part)  # the setting's own split, evaluated by itself
            assert metrics[f"accuracy@{name}"] == pytest.approx(alone["accuracy"])
            for x, y in zip(*part.tensors):
                scored = y != IGNORE
                right = model(x[None].long())[0].argmax(-1)[scored] == y[scored]
                per_example.append(right.float().mean().item())
    assert len(per_example) == 14
    assert metrics["accuracy"] == pytest.approx(sum(per_example) / len(per_example))  # Zoology's valid/accuracy


@pytest.mark.parametrize(
    "spec",
    ["mqar:mixture=zoology", "mqar:mixture=zoology,vocab=2048,seq_len=128", "mqar:mixture=zoology,vocab=2048,test=6",
     "mqar:mixture=mixed", "mqar:passes=0", "mqar:passes=17"],
)  # fmt: skip
def test_bad_passes_and_mixture_options_raise_task_error(spec):
    with pytest.raises(TaskError):
        get_task(spec)
