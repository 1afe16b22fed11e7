"""Successive halving: candidates start on the cheapest rung, the best go on training to the full
budget; inline with Optuna's pruner, on Ray with Tune's ASHA, across --resume, in the report."""

import json
import shutil

import optuna
import pytest

from einsearch.search import RunFolder, resume, start
from einsearch.search.record import TrialRecord, leaderboard
from tests.search.conftest import tiny_config

# At 10 steps the attention block is ahead (val accuracy ~0.09) of the three below (~0.02-0.06),
# so with these seeds in this order, successive halving stops each of the others at rung 1.
STRONG = "res(attn(softmax, heads=1, pos=rope))"
WEAK = ("res(shift())", "res(mlp(expand=1, act=gelu))", "res(conv(k=2))")
TASK = "mqar:vocab=32,seq_len=16,pairs=2,train=256,val=64,test=32"
LADDER = (10, 30, 90)


def asha(**changes):
    base = dict(strategy="evolution", seed_archs=(STRONG, *WEAK), trials=4, task=TASK, scheduler="asha",
                trial_budget="90steps", rungs=3, eta=3)  # fmt: skip
    return tiny_config(**{**base, **changes})


def check_ladder(records: list[TrialRecord]) -> None:
    """Each trial's steps are those of the rung it reached, with a score at each rung below."""
    for r in records:
        assert r.status in ("ok", "stopped"), (r.status, r.reason)
        assert r.steps == LADDER[r.rung - 1] and len(r.rung_scores) == (r.rung if r.status == "stopped" else 2)
        if r.status == "stopped":
            assert r.objectives[0] == r.rung_scores[-1] == r.metrics["val/accuracy"]


def test_inline_successive_halving_stops_the_weak_at_the_first_rung(tmp_path):
    outcome = start(asha(), RunFolder(tmp_path / "run"), live=False)
    assert outcome.completed and outcome.search.ladder == LADDER
    records = outcome.search.folder.trials()
    check_ladder(records)
    first, *rest = records
    assert first.arch == STRONG and first.status == "ok" and first.rung == 3
    assert [(r.status, r.rung) for r in rest] == [("stopped", 1)] * 3
    board = leaderboard(records, maximize=True)
    assert board[0].record.number == first.number and len(board) == 4  # stopped trials rank below, by their rung score
    rung_study = optuna.load_study(study_name="run.rungs", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study.journal"))))  # fmt: skip
    states = [t.state for t in rung_study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.PRUNED] * 3
    main = outcome.search.study.trials
    assert main[1].state == optuna.trial.TrialState.PRUNED and main[1].intermediate_values == {10: rest[0].rung_scores[0]}


def test_the_pruner_remembers_earlier_sessions_on_resume(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run")
    start(asha(trials=2), folder, live=False)
    outcome = resume(folder, trials=4, live=False)  # the last two compete with the first session's rung scores
    records = folder.trials()
    assert outcome.completed and [(r.status, r.rung) for r in records] == [("ok", 3)] + [("stopped", 1)] * 3
    check_ladder(records)


def test_multi_objective_runs_use_the_rung_study_too(tmp_path):
    outcome = start(asha(strategy="nsga2", objectives=("metric", "params"), trials=2), RunFolder(tmp_path / "run"), live=False)
    records = outcome.search.folder.trials()
    assert [(r.status, r.rung) for r in records] == [("ok", 3), ("stopped", 1)]
    assert records[1].objectives == (records[1].rung_scores[0], records[1].costs["params"])


def test_report_shows_the_rung_each_trial_reached(tmp_path):
    from typer.testing import CliRunner

    from einsearch.cli import app

    start(asha(), RunFolder(tmp_path / "run"), live=False)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "rung" in result.output and "3/3" in result.output and "1/3" in result.output
    assert "rungs reached: 10 steps ×4, 30 steps ×1, 90 steps ×1" in result.output


def test_progress_view_shows_rungs_and_the_best(tmp_path):
    from rich.console import Console

    from einsearch.search.session import ProgressView

    outcome = start(asha(), RunFolder(tmp_path / "run"), live=False)
    console = Console(width=200, record=True)
    console.print(ProgressView(outcome.search))
    text = console.export_text()
    assert "rungs reached  ·  10 steps: 4  ·  30 steps: 1  ·  90 steps: 1" in text
    assert "at rung 3/3 (90 steps)" in text


def test_ray_asha_stops_the_weak_at_the_first_rung(ray_local, tmp_path):
    outcome = start(asha(executor="ray", workers=1), RunFolder(tmp_path / "run"), live=False)
    assert outcome.completed
    records = outcome.search.folder.trials()
    check_ladder(records)
    assert [(r.arch, r.status) for r in records] == [(STRONG, "ok")] + [(a, "stopped") for a in WEAK]
    # Tune's cut-off interpolates the (1 - 1/eta) quantile of a rung's scores, so a candidate
    # just at it goes on one more rung (Optuna's pruner keeps the top 1/eta)
    assert records[0].rung == 3 and records[1].rung == 1 and all(r.rung < 3 for r in records[1:])
    assert all(r.costs.get("params", 0) > 0 for r in records)  # a stopped trial's record is whole


def test_ray_asha_remembers_earlier_sessions():
    from ray.tune.schedulers import ASHAScheduler

    from einsearch.search.execute import _remember_earlier_rungs

    class Earlier:
        maximize, ladder = True, LADDER
        records = [TrialRecord(number=0, arch="a", id="a", status="ok", reason=None, objectives=(0.5,), rung=3, rung_scores=(0.1, 0.3)),
                   TrialRecord(number=1, arch="b", id="b", status="stopped", reason=None, objectives=(0.05,), rung=1, rung_scores=(0.05,))]  # fmt: skip

    scheduler = ASHAScheduler(metric="objective", mode="max", time_attr="step", grace_period=10, reduction_factor=3, max_t=90)
    _remember_earlier_rungs(scheduler, Earlier())
    recorded = {int(milestone): values for milestone, values in scheduler._brackets[0]._rungs}
    assert recorded[10] == {"earlier-0": 0.1, "earlier-1": 0.05} and recorded[30] == {"earlier-0": 0.3}


def test_a_retried_ray_trial_continues_from_its_last_rung(tmp_path, monkeypatch):
    """The trainable with Tune's session faked: the first attempt dies right after its first
    rung's checkpoint; the retry gets that checkpoint and ends as an uninterrupted run does."""
    from ray import tune

    from einsearch.search import execute
    from einsearch import parse
    from einsearch.search.run import Job
    from einsearch.train import Budget, TrainConfig

    train = TrainConfig(d_model=16, layers=1, budget=Budget(steps=90), rungs=LADDER[:-1])
    job = Job(0, parse(STRONG), TASK, train).to_dict() | {"metric": "accuracy"}  # as Tune hands it to a worker
    saved, reports, crash = tmp_path / "checkpoint", [], [True]

    class Crash(BaseException):  # not an Exception: the trainer reports those as the candidate's
        pass

    def report(metrics, checkpoint=None):
        reports.append(metrics)
        if checkpoint is not None and crash[0]:
            shutil.copytree(checkpoint.path, saved)
            crash[0] = False
            raise Crash

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    with pytest.raises(Crash):
        execute._trainable({"job": job})
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(saved)))
    execute._trainable({"job": job})
    resumed = json.loads(reports[-1]["outcome"])
    assert resumed["resumed_from"] == 10 and [r["step"] for r in resumed["rungs"]] == [10, 30]
    assert json.loads(reports[-2]["partial"])["rungs"][0]["step"] == 10  # the retry's rung report keeps the first rung

    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    reports.clear()
    execute._trainable({"job": job})  # uninterrupted
    whole = json.loads(reports[-1]["outcome"])
    assert whole["resumed_from"] == 0 and whole["metrics"] == resumed["metrics"]
