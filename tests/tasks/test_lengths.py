"""Length generalisation (Chen et al. 2024, "Stuffed Mamba"): `Task.at_length` against the task
written out by hand at the longer length, the trainer's `length_task` and `evaluate_lengths`
against a hand evaluation of the longer task's test split, and the shells at longer lengths."""

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import einsearch
from einsearch.tasks import TaskError, get_task
from einsearch.tasks.language import IGNORE
from einsearch.train import evaluate_lengths, length_task

MQAR = "mqar:vocab=128,seq_len=16,pairs=2,train=8,val=4,test=6"
PASSKEY = "passkey:seq_len=260,train=4,val=2,test=5"


# ---------------------------------------------------------------------------------------------
# at_length: the task written with its length option scaled


@pytest.mark.parametrize(
    "spec,factor,longer",
    [
        (MQAR, 2, "mqar:vocab=128,seq_len=32,pairs=2,train=8,val=4,test=6"),
        (MQAR, 3, "mqar:vocab=128,seq_len=48,pairs=2,train=8,val=4,test=6"),
        ("passkey:seq_len=300", 4, "passkey:seq_len=1200"),  # test_len=0 (= seq_len) stays 0
        ("passkey:seq_len=300,test_len=400", 2, "passkey:seq_len=600,test_len=800"),
        ("lm:seq_len=64,eval_bytes=1000", 8, "lm:seq_len=512,eval_bytes=1000"),
        ("lm:seq_len=64,curriculum=dd", 2, "lm:seq_len=128,curriculum=dd"),
    ],
)  # fmt: skip
def test_at_length_is_the_task_written_with_the_longer_length(spec, factor, longer):
    task = get_task(spec)
    assert task.at_length(factor) == get_task(longer)
    assert task.at_length(factor).spec == get_task(longer).spec
    assert get_task(task.at_length(factor).spec) == task.at_length(factor)  # the spec round trip
    assert task.at_length(1) == task


@pytest.mark.parametrize("spec", ["lorenz96", "ks", "recall", "selective_copy", "mad"])
def test_a_task_without_a_length_says_so_by_name(spec):
    with pytest.raises(TaskError, match=f"^{spec} has no sequence length option"):
        get_task(spec).at_length(2)


def test_the_longer_task_obeys_the_same_rules_as_task_text():
    with pytest.raises(TaskError, match="vocab \\(256\\) must exceed seq_len \\(512\\)"):
        get_task("mqar").at_length(8)  # Zoology's rule: vocab > seq_len
    with pytest.raises(TaskError, match="option seq_len must be >= 4 and <= 65,536, got 131072"):
        get_task("mqar:vocab=1048576,seq_len=65536,pairs=2,train=1,val=1,test=1").at_length(2)
    with pytest.raises(TaskError, match="at least 1, got 0"):
        get_task(MQAR).at_length(0)
    with pytest.raises(TaskError, match="curriculum=dd needs seq_len to be a power of two, got 192"):
        get_task("lm:seq_len=64,curriculum=dd").at_length(3)


# ---------------------------------------------------------------------------------------------
# the data at the longer length: its own, from the same seed


def test_longer_data_is_deterministic_its_own_and_well_formed(tmp_path, monkeypatch):
    longer = get_task(MQAR).at_length(2)
    first = longer.make_data().test.tensors
    monkeypatch.setenv("EINSEARCH_CACHE", str(tmp_path / "elsewhere"))  # generated again, not read back
    again = longer.make_data().test.tensors
    other = get_task(MQAR + ",seed=1").at_length(2).make_data().test.tensors
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    inputs, targets = first
    assert inputs.shape == targets.shape == (6, 32)
    for row_inputs, row_targets in zip(inputs.tolist(), targets.tolist()):  # Zoology's layout at T=32
        pairs = dict(zip(row_inputs[0:4:2], row_inputs[1:4:2]))
        scored = [t for t, y in enumerate(row_targets) if y != IGNORE]
        assert len(scored) == 2 and all(t >= 4 and t % 2 == 0 for t in scored)
        assert all(row_targets[t] == pairs[row_inputs[t]] for t in scored)


def test_passkey_at_a_longer_length_hides_the_key_in_more_filler():
    inputs, targets = get_task(PASSKEY).at_length(3).data().test.tensors
    assert inputs.shape == (5, 780)
    for row_inputs, row_targets in zip(inputs, targets):
        text = bytes(row_inputs.numpy().astype(np.uint8)).decode("ascii")
        key = text.split("The pass key is ")[1][:5]
        scored = (row_targets != IGNORE).nonzero().flatten().tolist()
        assert scored == list(range(775, 780))
        assert bytes(row_targets[scored].numpy().astype(np.uint8)).decode("ascii") == key


# ---------------------------------------------------------------------------------------------
# length_task: only the test split, about as many test tokens at every length


@pytest.mark.parametrize("spec", [MQAR, PASSKEY])
def test_length_task_at_factor_one_tests_on_the_tasks_own_test_split(spec):
    task = get_task(spec)
    own, small = task.data().test.tensors, length_task(task, 1).data().test.tensors
    assert all(torch.equal(a, b) for a, b in zip(own, small))


def test_length_task_keeps_one_train_and_val_example_and_a_share_of_the_test_examples():
    assert length_task(get_task(MQAR), 4) == get_task("mqar:vocab=128,seq_len=64,pairs=2,train=1,val=1,test=2")  # ⌈6/4⌉
    assert length_task(get_task(PASSKEY), 2) == get_task("passkey:seq_len=520,train=1,val=1,test=3")  # ⌈5/2⌉
    lm = get_task("lm:seq_len=64,eval_bytes=1000")
    assert length_task(lm, 2) == lm.at_length(2)  # no example counts: the same bytes are scored


def test_length_task_of_a_long_task_does_not_generate_its_long_training_set():
    """Passkey at 64 x 512 bytes with 20,000 training examples would need about 21 GiB; the test
    split alone is small."""
    with pytest.raises(TaskError, match="GiB"):
        get_task("passkey").at_length(64)
    assert length_task(get_task("passkey"), 64) == get_task("passkey:seq_len=32768,train=1,val=1,test=8")


# ---------------------------------------------------------------------------------------------
# evaluate_lengths against a hand evaluation


def hand_metrics(model, inputs, targets):
    """Cross-entropy and arg-max accuracy over the scored positions, one example at a time."""
    losses, right = [], []
    with torch.no_grad():
        for x, y in zip(inputs.long(), targets.long()):
            logits = model(x[None])[0]  # (T, V)
            scored = y != IGNORE
            losses += F.cross_entropy(logits[scored], y[scored], reduction="none").tolist()
            right += (logits[scored].argmax(-1) == y[scored]).tolist()
    return sum(losses) / len(losses), sum(right) / len(right)


def test_metrics_at_twice_the_length_are_those_of_the_longer_tasks_test_split():
    task = get_task(MQAR)
    torch.manual_seed(0)
    model = task.model(einsearch.seeds["transformer"], 16, 1).eval()
    rows = evaluate_lengths(task, model, (1, 2), time.perf_counter(), None)
    assert [(r["factor"], r["tokens"]) for r in rows] == [(1, 16), (2, 32)]
    for row, spec in zip(rows, (MQAR, "mqar:vocab=128,seq_len=32,pairs=2,train=1,val=1,test=3")):
        loss, accuracy = hand_metrics(model, *get_task(spec).data().test.tensors)
        assert row["loss"] == pytest.approx(loss, rel=1e-5) and row["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("seed", ["transformer", "gla", "mamba", "lstm"])
def test_a_fresh_model_gives_finite_metrics_at_four_times_its_length(seed):
    """No shell or block is tied to the training length (no position table; RoPE is computed)."""
    task = get_task(MQAR)
    torch.manual_seed(0)
    model = task.model(einsearch.seeds[seed], 16, 1)
    rows = evaluate_lengths(task, model, (1, 4), time.perf_counter(), None)
    assert [r["tokens"] for r in rows] == [16, 64]
    assert all("reason" not in r and math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in rows), rows


def test_a_length_past_the_time_limit_is_not_tested():
    task = get_task(MQAR)
    model = task.model(einsearch.parse("mlp(expand=1, act=relu)"), 8, 1)
    rows = evaluate_lengths(task, model, (1, 2), time.perf_counter() - 10.0, 5.0)
    assert [(r["factor"], r["reason"]) for r in rows] == [(1, "timeout"), (2, "timeout")]
    assert "accuracy" not in rows[0]
