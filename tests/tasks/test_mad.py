"""The MAD generators against the task definitions of Poli et al. 2024 (mad-lab instances.py)."""

import numpy as np
import pytest
import torch

import einsearch
from einsearch.tasks import get_task
from einsearch.tasks.language import IGNORE
from einsearch.tasks.mad import (
    MAD,
    compression_instance,
    fuzzy_recall_instance,
    memorization_instance,
    memorization_map,
    recall_instance,
    selective_copy_instance,
)
from einsearch.train import Budget, TrainConfig, train


def rng(seed=0):
    return np.random.default_rng(seed)


def test_recall_scores_exactly_the_values_of_keys_seen_before():
    generator = rng()
    for _ in range(50):
        inputs, targets = recall_instance(generator, 16, 128, 0, 0.0, training=False)
        assert inputs.shape == targets.shape == (127,)
        # undo the shift: the full sequence is inputs + the last target
        sequence = np.append(inputs, targets[-1])
        keys, values = sequence[0::2], sequence[1::2]
        assert (keys < 8).all() and ((values >= 8) & (values < 16)).all()
        seen = {}
        for i, (k, v) in enumerate(zip(keys, values)):
            scored = targets[2 * i] != IGNORE  # the target at the key position is the value
            assert scored == (k in seen)
            if k in seen:
                assert v == seen[k] == targets[2 * i]
            seen.setdefault(k, v)
        assert targets[-1] != IGNORE  # the final probe is always scored


def test_recall_training_targets_are_the_next_tokens():
    a = recall_instance(rng(1), 16, 128, 0, 0.0, training=True)
    b = recall_instance(rng(1), 16, 128, 0, 0.0, training=False)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1][:-1], a[0][1:])


def test_noisy_recall_noise_is_unscored_pairs_from_the_noise_vocabulary():
    generator, noise_pairs, pairs = rng(), 0, 0
    for _ in range(100):
        inputs, targets = recall_instance(generator, 32, 128, 16, 0.2, training=False)
        sequence = np.append(inputs, targets[-1])
        noisy = sequence >= 16
        assert (noisy[0::2] == noisy[1::2]).all()  # noise comes in pairs
        assert (targets[noisy[:-1] | np.roll(noisy, -1)[:-1]] == IGNORE).all()
        noise_pairs += int(noisy[0::2][:-1].sum())
        pairs += 63
    assert 0.15 < noise_pairs / pairs < 0.25


def test_fuzzy_recall_probe_appears_earlier_and_its_value_is_scored_at_the_end():
    generator = rng()
    for _ in range(30):
        inputs, targets = fuzzy_recall_instance(generator, 16, 128, 3, 3, training=False)
        assert inputs.shape == targets.shape == (128,)
        sequence = list(np.append(inputs, targets[-1]))
        scored = np.flatnonzero(targets != IGNORE)
        tail = [t for t in scored if t >= len(targets) - 3]
        value = [int(targets[t]) for t in tail]
        key = [int(x) for x in sequence[tail[0] - 2 : tail[0] + 1]]  # test keys have 3 tokens
        assert all(k < 7 for k in key) and all(7 <= v < 15 for v in value)
        probe = key + value
        text = sequence[: tail[0] - 2]
        assert any(text[i : i + len(probe)] == probe for i in range(len(text)))


def test_selective_copy_targets_are_the_non_blank_tokens_in_order():
    inputs, targets = selective_copy_instance(rng(), 16, 256, 16)
    assert len(inputs) == len(targets) == 256
    copy_at = int(np.flatnonzero(inputs == 15)[0])
    assert copy_at == 256 - 16 - 1
    tokens = [t for t in inputs[:copy_at] if t != 14]
    assert len(tokens) == 16 and list(targets[copy_at + 1 :]) == tokens
    assert (inputs[copy_at + 1 :] == 14).all() and (targets[: copy_at + 1] == IGNORE).all()


def test_compression_targets_are_the_inputs():
    inputs, targets = compression_instance(rng(), 16, 32)
    assert np.array_equal(inputs, targets) and inputs[-1] == 15 and (inputs[:-1] < 15).all()


def test_memorization_uses_one_fixed_map():
    kv = memorization_map(256, 0)
    assert len(kv) == 127 and all(k < 127 <= v < 255 for k, v in kv.items())
    for seed in range(5):
        inputs, targets = memorization_instance(rng(seed), 256, 32, kv)
        assert (inputs[1::2] == 255).all() and (targets[0::2] == IGNORE).all()
        assert all(targets[2 * i + 1] == kv[int(k)] for i, k in enumerate(inputs[0::2]))


def test_mad_baselines():
    assert get_task("recall").vocab == 16 and get_task("recall").seq_len == 128
    assert get_task("recall").train == 12_800 and get_task("recall").test == 1_280
    noisy = get_task("noisy_recall")
    assert (noisy.vocab, noisy.noise_vocab, noisy.frac_noise) == (32, 16, 0.2)
    assert (get_task("fuzzy_recall").k_motif, get_task("fuzzy_recall").v_motif) == (3, 3)
    assert (get_task("selective_copy").seq_len, get_task("selective_copy").to_copy) == (256, 16)
    assert get_task("compression").seq_len == 32
    assert (get_task("memorization").vocab, get_task("memorization").train) == (256, 256)
    assert [m.name for m in get_task("mad").members] == [
        "recall", "fuzzy_recall", "noisy_recall", "selective_copy", "compression", "memorization"
    ]  # fmt: skip


def test_compression_shell_decodes_from_the_last_position_only():
    task = get_task("compression:vocab=8,seq_len=6")
    model = task.model(einsearch.parse("res(seq(norm(rms), attn(softmax, heads=2, pos=rope)))"), 16, 1)
    tokens = torch.randint(7, (2, 6))
    logits = model(tokens)
    assert logits.shape == (2, 6, 8)
    costs = einsearch.costs(model, 6)
    assert costs.params == sum(p.numel() for p in model.parameters())


def test_suite_trains_each_member_and_averages(monkeypatch):
    small = (
        get_task("recall:seq_len=16,train=32,val=16,test=16"),
        get_task("compression:seq_len=8,train=32,val=16,test=16"),
    )
    monkeypatch.setattr(MAD, "members", property(lambda self: small))
    result = train("mlp(expand=1, act=relu)", "mad", TrainConfig(d_model=8, layers=1, budget=Budget(steps=4), batch_size=4))
    assert result.ok and result.steps == 4  # 2 steps each
    for split in ("val", "test"):
        members = [result.metrics[f"{m}/{split}/accuracy"] for m in ("recall", "compression")]
        assert result.metrics[f"{split}/accuracy"] == pytest.approx(sum(members) / 2)
