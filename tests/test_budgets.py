"""Budgets in work, not time: the WSD schedule, rung scores on a cooled-down copy that leave the
run untouched, continuing from a saved state, and the same metrics whatever else the machine runs."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from einsearch.search import RunConfig
from einsearch.tasks import Budget
from einsearch.train import TrainConfig, scheduled_lr, train, wsd_learning_rate

TASK = "mqar:vocab=32,seq_len=16,pairs=2,train=256,val=32,test=32"
ARCH = "res(attn(softmax, heads=1, pos=rope))"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EINSEARCH_CACHE", str(tmp_path / "cache"))


def config(**changes) -> TrainConfig:
    return TrainConfig(**{**dict(d_model=16, layers=1, budget=Budget(steps=30), batch_size=16), **changes})


def test_wsd_warms_up_holds_then_decays_linearly_to_zero():
    peak, warmup, cooldown = 2.0, 0.1, 0.2
    lr = lambda f: wsd_learning_rate(peak, f, warmup, cooldown)  # noqa: E731
    assert lr(0.05) == pytest.approx(1.0) and lr(0.1) == pytest.approx(2.0)
    assert lr(0.3) == lr(0.8) == 2.0  # stable: the same whatever the budget
    assert lr(0.9) == pytest.approx(1.0) and lr(0.95) == pytest.approx(0.5) and lr(1.0) == 0.0
    by_step = [scheduled_lr(TrainConfig(warmup=0.1, cooldown=0.2), 1.0, s / 20) for s in range(20)]
    assert by_step[:2] == [pytest.approx(0.001 / 0.1), pytest.approx(0.5)]
    assert by_step[2:17] == [1.0] * 15 and by_step[17:] == [pytest.approx(0.15 / 0.2), pytest.approx(0.1 / 0.2), pytest.approx(0.05 / 0.2)]
    cosine = TrainConfig(schedule="cosine", warmup=0.1, min_lr_ratio=0.1)
    assert scheduled_lr(cosine, 1.0, 1.0) == pytest.approx(0.1)


def test_rung_scores_leave_the_run_bit_identical(tmp_path):
    plain = train(ARCH, TASK, config(weights_path=str(tmp_path / "plain.safetensors")))
    seen = []
    scored = train(ARCH, TASK, config(rungs=(5, 12), weights_path=str(tmp_path / "rungs.safetensors")),
                   callback=lambda step, val: seen.append(step) and False)  # fmt: skip
    assert plain.ok and scored.ok and scored.metrics == plain.metrics
    a, b = load_file(str(tmp_path / "plain.safetensors")), load_file(str(tmp_path / "rungs.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert seen == [5, 12] and [(r["step"], r["cooldown"]) for r in scored.rungs] == [(5, 1), (12, 2)]  # 0.2 × steps so far
    assert not plain.rungs
    cosine = train(ARCH, TASK, config(schedule="cosine", rungs=(12,)))  # a prefix without cool-down
    assert cosine.rungs[0]["cooldown"] == 0


def test_a_saved_state_continues_exactly(tmp_path):
    whole = train(ARCH, TASK, config(rungs=(10,), state_path=str(tmp_path / "whole.pt")))
    saved = tmp_path / "resumed.pt"
    saved.write_bytes((tmp_path / "whole.pt").read_bytes())  # the state at step 10
    resumed = train(ARCH, TASK, config(rungs=(10,), state_path=str(saved)))
    assert resumed.resumed_from == 10 and whole.resumed_from == 0
    assert resumed.metrics == whole.metrics and resumed.rungs == whole.rungs and resumed.steps == 30


def test_same_metrics_whatever_else_the_machine_runs():
    quiet = train(ARCH, TASK, config(budget=Budget(steps=60)))
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = train(ARCH, TASK, config(budget=Budget(steps=60)))
    finally:
        burner.kill()
        burner.wait()
    assert quiet.ok and busy.ok and busy.steps == quiet.steps == 60
    assert busy.metrics == quiet.metrics and busy.history == quiet.history


def test_a_search_budget_counts_steps_never_seconds():
    assert RunConfig().trial_budget == "600steps" and RunConfig().ladder == (600 // 9, 600 // 9 * 3, 600)
    for budget in ("30s", "500steps,2m"):
        with pytest.raises(ValueError, match="machine runs"):
            RunConfig(trial_budget=budget)
    with pytest.raises(ValueError, match="cannot hold 3 rungs"):
        RunConfig(trial_budget="8steps")
    assert RunConfig(trial_budget="8steps", scheduler="fifo").ladder == (8,)
    assert RunConfig(trial_budget="100steps", rungs=2, eta=4).ladder == (25, 100)


def test_a_candidates_safety_limit_follows_its_budget_unless_given():
    assert RunConfig(trial_budget="500steps").candidate_time_limit == 500 + 60
    assert RunConfig(trial_budget="500steps", time_limit=12.5).candidate_time_limit == 12.5
