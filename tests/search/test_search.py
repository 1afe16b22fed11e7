"""The search end to end on a tiny task: strategies, failures, duplicates, constraints, resume,
the Optuna record, report and export."""

import json
import pathlib
import subprocess
import sys

import optuna
import pytest
import torch

import einsearch
from einsearch.search import RunFolder, resume, start
from einsearch.search.record import TrialRecord
from einsearch.tasks import Budget, get_task
from tests.search.conftest import TINY_SPACE, TINY_TASK, tiny_config


def run(tmp_path, name="run", **changes):
    folder = RunFolder(tmp_path / name)
    outcome = start(tiny_config(**changes), folder, live=False)
    return outcome, folder


def assert_consistent(folder: RunFolder, trials: int) -> list[TrialRecord]:
    """trials.jsonl and the Optuna study agree, with `trials` distinct trial numbers."""
    records = folder.trials()
    numbers = [r.number for r in records]
    assert len(records) == trials and len(set(numbers)) == trials
    study = optuna.load_study(study_name=folder.path.name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder.journal_path))))  # fmt: skip
    by_number = {t.number: t for t in study.trials}
    for r in records:
        frozen = by_number[r.number]
        assert frozen.user_attrs["arch"] == r.arch and frozen.user_attrs["status"] == r.status
        assert einsearch.parse(r.arch).id == r.id
        if r.status == "ok":
            assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.values[0] == r.objectives[0]
    return records


@pytest.mark.parametrize("strategy", ["random", "evolution", "tpe", "nsga2"])
def test_each_strategy_runs_inline(tmp_path, strategy):
    objectives = ("metric", "params") if strategy == "nsga2" else ("metric",)
    outcome, folder = run(tmp_path, strategy=strategy, trials=5, seed_archs=("res(conv(k=2))",), objectives=objectives)
    assert outcome.completed
    records = assert_consistent(folder, len(folder.trials()))  # with any duplicates, reused and not counted
    assert sum(r.reused_from is None for r in records) == 5
    assert records[0].arch == "res(conv(k=2))" or strategy == "random"
    assert all(r.status in ("ok", "failed") for r in records)
    assert any(r.status == "ok" and 0.0 <= r.metrics["val/accuracy"] <= 1.0 for r in records)
    if strategy == "nsga2":
        ok = next(r for r in records if r.status == "ok")
        assert ok.objectives[1] == ok.costs["params"]
    assert (folder.path / "best" / "arch.txt").exists()
    config = json.loads(folder.config_path.read_text())
    assert config["strategy"] == strategy and config["trials"] == 5


def test_failures_are_recorded_and_the_search_goes_on(tmp_path):
    space = tmp_path / "failing.toml"
    space.write_text(
        pathlib.Path(TINY_SPACE).read_text().replace("max_depth = 3", "max_depth = 4")
        .replace("[seq]", "[repeat]\nn = { 12 = 1.0 }\n\n[act]\nvariant = { relu2 = 1.0 }\n\n[seq]")
        .replace("attn = 0.15", "attn = 0.10\nrepeat = 0.03\nact = 0.02")
    )  # fmt: skip
    nan = "res(repeat(res(act(relu2)), n=12))"  # x + relu(x)² twelve times: overflows to inf
    slow = "seq(attn(softmax, heads=1, pos=rope), attn(softmax, heads=1, pos=rope))"
    outcome, folder = run(
        tmp_path, strategy="evolution", trials=4, seed_archs=(nan, slow), space=str(space),
        trial_budget="100000steps", time_limit=1.0,
    )  # fmt: skip
    assert outcome.completed
    records = {r.arch: r for r in assert_consistent(folder, 4)}
    assert records[einsearch.parse(nan).text].status == "failed"
    assert records[einsearch.parse(nan).text].reason in ("nan", "diverged")
    assert records[einsearch.parse(slow).text].reason == "timeout"


def test_duplicates_are_not_trained_twice_nor_counted(tmp_path):
    outcome, folder = run(tmp_path, strategy="evolution", trials=2, seed_archs=("res(conv(k=2))",) * 3)
    first, second, third, fourth = sorted(assert_consistent(folder, 4), key=lambda r: r.number)
    assert first.reused_from is None and first.steps > 0
    for r in (second, third):
        assert r.reused_from == first.number and r.metrics == first.metrics and r.steps == 0
    assert fourth.reused_from is None and fourth.steps > 0 and fourth.arch != first.arch  # the second trial asked for
    assert outcome.search.counted == 2


def test_an_architecture_equal_at_the_tasks_length_reuses_the_result(tmp_path):
    # a window of 4 changes nothing on 4 tokens (at_length) and matters on TINY_TASK's 16
    full, windowed = "res(attn(softmax, heads=2, pos=none))", "res(attn(softmax, heads=2, window=4, pos=none))"
    outcome, folder = run(tmp_path, strategy="evolution", trials=2, seed_archs=(full, windowed), task=TINY_TASK.replace("seq_len=16,pairs=2", "seq_len=4,pairs=1"))
    first, second, _ = sorted(assert_consistent(folder, 3), key=lambda r: r.number)  # the reuse is not counted
    assert first.arch == full and second.arch == windowed  # each recorded as proposed ...
    assert second.reused_from == first.number and second.metrics == first.metrics and second.steps == 0  # ... trained once
    outcome, folder = run(tmp_path, name="longer", strategy="evolution", trials=2, seed_archs=(full, windowed))
    assert [r.reused_from for r in assert_consistent(folder, 2)] == [None, None]  # at 16 tokens they differ


def test_cheap_constraints_reject_without_training(tmp_path):
    big = "res(mlp(expand=2, act=gelu))"
    outcome, folder = run(tmp_path, strategy="evolution", trials=1, seed_archs=(big, "res(shift())"), max_params=1500)
    records = {r.arch: r for r in assert_consistent(folder, 2)}  # a rejection is recorded, not counted
    rejected = records[big]
    assert rejected.status == "rejected" and "params" in rejected.reason and rejected.steps == 0
    assert rejected.costs["params"] > 1500
    assert records["res(shift())"].status == "ok"


def test_a_search_that_proposes_only_what_it_may_not_train_gives_up(tmp_path):
    from einsearch.search.run import PROPOSALS_PER_TRIAL

    outcome, folder = run(tmp_path, strategy="random", trials=2, max_params=1)  # every block of the space has more
    records = assert_consistent(folder, 2 * PROPOSALS_PER_TRIAL)
    assert outcome.completed and outcome.search.counted == 0
    assert all(r.status == "rejected" and r.costs["params"] > 1 for r in records)


def test_interrupted_run_resumes_to_the_requested_count(tmp_path, monkeypatch):
    from einsearch.search import execute

    calls = {"n": 0}
    real = execute.evaluate

    def interrupted_on_third(job, callback=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(job, callback)

    monkeypatch.setattr(execute, "evaluate", interrupted_on_third)
    outcome, folder = run(tmp_path, trials=4)
    assert not outcome.completed
    before = assert_consistent(folder, 2)
    monkeypatch.setattr(execute, "evaluate", real)
    outcome = resume(folder, trials=6, live=False)
    assert outcome.completed
    after = assert_consistent(folder, 6)
    assert after[:2] == before  # nothing finished is lost or redone
    assert json.loads(folder.config_path.read_text())["trials"] == 6


def test_report_writes_plots_and_export_round_trips(tmp_path):
    outcome, folder = run(tmp_path, strategy="evolution", trials=3, seed_archs=("seq(conv(k=2), attn(softmax, heads=2, window=4, pos=rope))",))
    from typer.testing import CliRunner

    from einsearch.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["report", str(folder.path)])
    assert result.exit_code == 0, result.output
    for png in ("best_so_far.png", "cost_scatter.png", "primitives.png"):
        assert (folder.path / png).stat().st_size > 1000
    assert not (folder.path / "lengths.png").exists() and "against length" not in result.output  # no --eval-lengths: nothing said

    target = tmp_path / "exported" / "my_mixer.py"
    target.parent.mkdir()
    result = runner.invoke(app, ["export", str(folder.path), "--rank", "1", "-o", str(target), "--weights"])
    assert result.exit_code == 0, result.output

    # the candidate as einsearch builds it, with the trained weights
    from safetensors.torch import load_file

    from einsearch.report import leaderboard
    from einsearch.tasks import get_task

    best = leaderboard(folder.trials(), maximize=True)[0].record
    model = get_task(TINY_TASK).model(einsearch.parse(best.arch), 16, 1)
    model.load_state_dict(load_file(str(target.with_suffix(".safetensors"))))
    tokens = torch.randint(32, (2, 16), generator=torch.Generator().manual_seed(0))
    expected = model.eval()(tokens)
    torch.save(tokens, tmp_path / "tokens.pt")

    # a fresh interpreter in which einsearch cannot be imported
    code = f"""
import sys
sys.modules["einsearch"] = None
sys.path.insert(0, {str(target.parent)!r})
import torch, my_mixer
from safetensors.torch import load_file
model = my_mixer.Candidate()
model.load_state_dict(load_file({str(target.with_suffix(".safetensors"))!r}))
torch.save(model.eval()(torch.load({str(tmp_path / "tokens.pt")!r})), {str(tmp_path / "out.pt")!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_bad_run_options_are_one_line_and_status_2(tmp_path):
    from typer.testing import CliRunner

    from einsearch.cli import app

    runner = CliRunner()
    for extra, message in [
        (["--trial-budget", "soon"], "trial budget: cannot read budget 'soon'"),
        (["--strategy", "annealing"], "unknown strategy 'annealing'"),
        (["--space", "nowhere"], "nowhere"),
        (["--seed-arch", "transfomer"], "neither architecture text nor a seed name"),
        (["--objectives", "params"], "objectives must start with 'metric'"),
    ]:
        result = runner.invoke(app, ["run", "--executor", "inline", "--output", str(tmp_path / "never"), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output, (extra, result.output)
        assert not (tmp_path / "never").exists()  # nothing was started


def test_the_config_names_a_bad_strategy_and_executor_and_what_is_allowed():
    """Both are checked when the config is made, before any run folder, task or space is touched."""
    from einsearch.search import RunConfig

    for changes, message in [
        (dict(strategy="annealing"), "unknown strategy 'annealing' (allowed: random, evolution, tpe, nsga2)"),
        (dict(executor="dask"), "executor 'dask' is not one of ray, inline"),
    ]:
        with pytest.raises(ValueError) as raised:
            tiny_config(**changes)
        assert str(raised.value) == message
    assert RunConfig.from_dict(tiny_config(strategy="tpe").to_dict()).strategy == "tpe"


def test_a_job_crosses_to_a_worker_as_plain_data():
    from einsearch.search.run import Job

    train = tiny_config().training(weights_path="/w/3.safetensors", rungs=(1, 2), init_from="/w/1.safetensors", init_arch="conv(k=2)")
    job = Job(3, einsearch.parse("res(conv(k=2))"), TINY_TASK, train, started=12.5)
    sent = json.loads(json.dumps(job.to_dict()))  # text and numbers only
    assert sent["arch"] == "res(conv(k=2))" and sent["train"]["budget"] == {"steps": 3, "seconds": None}
    assert Job.from_dict(sent) == Job(3, job.arch, TINY_TASK, train)  # `started` stays with the driver


def test_the_driver_hands_the_tree_to_the_trainer_and_keeps_it(tmp_path, monkeypatch):
    """Within the driver's process the tree is passed as it is: no text is parsed back."""
    from einsearch.search import run as driver
    from einsearch.train import TrainResult

    given = []

    def trainer(arch, task, config, callback=None):
        given.append(arch)
        return TrainResult(status="failed", reason="error", detail="not trained", metrics={}, costs=None, steps=0,
                           seconds=0.0, task=task, arch=arch.text)  # fmt: skip

    def no_parsing(text):
        raise AssertionError(f"parsed {text!r} again")

    monkeypatch.setattr(driver, "train_limited", trainer)
    monkeypatch.setattr(driver, "parse", no_parsing)
    monkeypatch.setattr(driver, "resolve", no_parsing)
    outcome, folder = run(tmp_path, trials=2)
    assert outcome.completed and len(given) == 2 and all(isinstance(arch, einsearch.Arch) for arch in given)
    assert [r.arch for r in folder.trials()] == [arch.text for arch in given]


def test_a_run_without_a_trial_budget_takes_the_tasks_search_budget(tmp_path):
    from typer.testing import CliRunner

    from einsearch.cli import app

    task = "mqar:vocab=16,seq_len=8,pairs=2,train=128,val=16,test=16"
    assert get_task(task).trial_budget() == Budget(steps=600)  # MQAR's, chosen in BENCHMARKS.md
    args = ["run", "--executor", "inline", "--task", task, "--space", TINY_SPACE, "--trials", "1", "--scheduler", "fifo",
            "--finalists", "0", "--d-model", "8", "--layers", "1", "--output", str(tmp_path / "run")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert RunFolder(tmp_path / "run").read_config()["trial_budget"] == "600steps"
    (record,) = RunFolder(tmp_path / "run").trials()
    assert record.status == "ok" and record.steps == 600


def test_a_jobs_device_and_precision_reach_the_trainer_and_a_ray_worker_resolves_auto(tmp_path, monkeypatch):
    """The run's device and precision travel with each job (as plain data) to the trainer; in a
    Ray worker, auto is cuda exactly when Ray gave the worker a GPU (not whatever torch sees)."""
    import ray

    from einsearch.search import run as driver
    from einsearch.search.run import Job, Search, evaluate
    from einsearch.train import TrainResult

    given = []

    def trainer(arch, task, config, callback=None):
        given.append(config)
        return TrainResult(status="failed", reason="error", metrics={}, costs=None, steps=0, seconds=0.0, task=task, arch=arch.text)

    monkeypatch.setattr(driver, "train_limited", trainer)
    search = Search(tiny_config(device="cuda", precision="bf16", cpus_per_trial=2), RunFolder(tmp_path / "run"))
    search.folder.create(search.config.to_dict())
    search.attach()
    job = search.next_job()
    evaluate(job.to_dict())
    assert (given[-1].device, given[-1].precision, given[-1].threads) == ("cuda", "bf16", 2)  # 2 CPUs: 2 threads

    auto = Job(0, job.arch, job.task, tiny_config().training()).to_dict()
    for gpus, device in (([], "cpu"), ([0], "cuda")):
        monkeypatch.setattr(ray, "get_gpu_ids", lambda gpus=gpus: gpus)
        evaluate(auto, ray_worker=True)
        assert given[-1].device == device
    evaluate(auto)  # outside Ray the trainer resolves auto itself
    assert given[-1].device == "auto"


def test_a_resumed_run_takes_its_device_and_resources_from_config_json(tmp_path):
    from einsearch.search import Execution, RunConfig
    from einsearch.search.session import resumed_config

    config = tiny_config(executor="ray", device="auto", cpus_per_trial=2.0, gpus_per_trial=0.5, resources_per_trial=(("gpu_stand_in", 1.0),))
    folder = RunFolder(tmp_path / "run")
    folder.create(config.to_dict())
    assert folder.read_config()["resources_per_trial"] == {"gpu_stand_in": 1.0}  # config.json keeps an object
    resumed = resumed_config(folder, None, Execution())
    assert (resumed.cpus_per_trial, resumed.gpus_per_trial, resumed.resources_per_trial) == (2.0, 0.5, (("gpu_stand_in", 1.0),))
    assert resumed.trial_resources == {"CPU": 2.0, "GPU": 0.5, "gpu_stand_in": 1.0}
    old = {k: v for k, v in config.to_dict().items() if k not in ("device", "precision", "cpus_per_trial", "gpus_per_trial", "resources_per_trial")}
    assert RunConfig.from_dict(old).trial_resources == {"CPU": 1.0}  # a run from before these options: as it ran then


def test_per_trial_resources_follow_rays_rules():
    for changes, message in [
        (dict(gpus_per_trial=1.5), "Ray takes a fraction only below 1"),
        (dict(cpus_per_trial=0), "cpus per trial must be positive"),
        (dict(resources_per_trial=(("GPU", 1),)), "not a custom resource name"),
        (dict(resources_per_trial=(("gpu_stand_in", 0),)), "needs a positive amount"),
        (dict(executor="ray", precision="bf16"), "precision bf16 on Ray needs --gpus-per-trial"),
    ]:
        with pytest.raises(ValueError, match=message):
            tiny_config(**changes)
    assert tiny_config(executor="ray", device="cuda", gpus_per_trial=0.25).trial_resources == {"CPU": 1.0, "GPU": 0.25}
