"""Length generalisation in a search (issue 15, item 5): `RunConfig.eval_lengths` tests the trials
trained to the full budget and the finalists' trainings at multiples of the task's length, their
records keep the rows (records from before still load), `--resume` keeps the setting, `report`
plots and tabulates them, and the command line refuses a bad value as `train` does."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import einsearch
from einsearch.cli import app
from einsearch.search import Execution, RunConfig, RunFolder, Search, start
from einsearch.search import finalists as fin
from einsearch.search.record import TrialRecord
from einsearch.search.run import model_costs
from einsearch.search.session import resumed_config
from einsearch.tasks import TaskError, get_task
from tests.search.conftest import TINY_TASK, tiny_config

STRETCHY = "mqar:vocab=64,seq_len=8,pairs=2,train=64,val=32,test=32"  # vocab > seq_len up to 4x
FACTORS = (1, 2, 4)
runner = CliRunner()


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> RunFolder:
    """A search with successive halving (rungs at 1, 3 and 9 steps) and a final of one candidate
    and the transformer (gla is over --max-params), two training seeds each."""
    transformer = model_costs(get_task(STRETCHY), einsearch.seeds["transformer"], 16, 1)
    config = tiny_config(task=STRETCHY, trials=5, trial_budget="9steps", scheduler="asha", rungs=3, eta=3, eval_lengths=FACTORS,
                         finalists=1, final_seeds=2, max_params=transformer["params"])  # fmt: skip
    folder = RunFolder(tmp_path_factory.mktemp("lengths") / "run")
    assert start(config, folder, live=False).completed
    return folder


def rows(lengths) -> list[dict]:
    """Length rows as plain JSON data (a record's, or a fresh training's)."""
    return json.loads(json.dumps(list(lengths)))


def test_full_budget_trials_and_finalists_keep_the_rows_of_train_with_the_same_eval_lengths(searched):
    config = RunConfig.from_dict(searched.read_config())
    trained = [r for r in searched.trials() if r.reused_from is None and r.status in ("ok", "stopped")]
    full = [r for r in trained if r.status == "ok"]
    assert full and all(r.steps == 9 and r.rung == 3 for r in full)
    assert any(r.status == "stopped" for r in trained)  # stopped at a lower rung: never tested at other lengths
    for r in trained:
        assert [(row["factor"], row["tokens"]) for row in r.lengths] == ([(1, 8), (2, 16), (4, 32)] if r.status == "ok" else [])
    for r in full:
        assert r.lengths[0]["accuracy"] == r.metrics["test/accuracy"]  # ×1 is the test split itself

    # the same numbers as `train` of the same tree and seed with the same eval_lengths (the rungs'
    # cooled-down copies leave the run as it was; budgets count steps)
    best = max(full, key=lambda r: r.objectives[0])
    fresh = einsearch.train(best.arch, STRETCHY, config.training())
    assert fresh.ok and rows(fresh.lengths) == rows(best.lengths)

    finals = fin.read_records(searched)
    assert sorted((f.role, f.seed) for f in finals) == [("candidate", 0), ("candidate", 1), ("seed", 0), ("seed", 1)]
    assert all(f.status == "ok" and [row["factor"] for row in f.lengths] == list(FACTORS) for f in finals)
    seed_1 = next(f for f in finals if f.name == "transformer" and f.seed == 1)
    assert rows(seed_1.lengths) == rows(einsearch.train("transformer", STRETCHY, config.training(seed=1)).lengths)
    searched_0 = next(f for f in finals if f.role == "candidate" and f.seed == 0)  # the search's own training
    assert rows(searched_0.lengths) == rows(next(r for r in full if r.id == searched_0.id).lengths)


def test_config_json_keeps_eval_lengths_and_resume_uses_them(searched):
    assert json.loads(searched.config_path.read_text())["eval_lengths"] == list(FACTORS)
    config = resumed_config(searched, None, Execution(executor="inline"))
    assert config.eval_lengths == FACTORS and config.training().eval_lengths == FACTORS


def test_records_from_before_eval_lengths_still_load(searched, tmp_path):
    full = next(r for r in searched.trials() if r.lengths)
    old = {k: v for k, v in json.loads(full.to_json()).items() if k != "lengths"}
    assert TrialRecord.from_json(json.dumps(old)).lengths == ()
    assert TrialRecord.from_json(full.to_json()) == full
    config = {k: v for k, v in json.loads(searched.config_path.read_text()).items() if k != "eval_lengths"}
    assert RunConfig.from_dict(config).eval_lengths == ()
    line = {k: v for k, v in json.loads(fin.read_records(searched)[0].to_json()).items() if k != "lengths"}
    folder = RunFolder(tmp_path / "old")
    folder.path.mkdir()
    fin.records_path(folder).write_text(json.dumps(line) + "\n")
    assert fin.read_records(folder)[0].lengths == ()


def test_report_plots_and_tabulates_the_lengths(searched):
    result = runner.invoke(app, ["report", str(searched.path)])
    assert result.exit_code == 0, result.output
    assert "test accuracy against length (the finalists and seeds, mean over training seeds)" in result.output
    header = next(line for line in result.output.splitlines() if "×1 (8)" in line)
    assert "×2 (16)" in header and "×4 (32)" in header
    assert any(line.split()[0] == "transformer" for line in result.output.splitlines() if line.strip())
    assert f"wrote {searched.path / 'lengths.png'}" in result.output
    from matplotlib.image import imread

    image = imread(searched.path / "lengths.png")
    assert image.shape[0] > 100 and np.std(image[..., :3]) > 0.01  # not blank


@pytest.mark.parametrize(
    "args,message",
    [(["--task", STRETCHY, "--eval-lengths", "0,2"], "--eval-lengths '0,2': expected whole numbers of at least 1"),
     (["--task", STRETCHY, "--eval-lengths", "two"], "expected whole numbers"),
     (["--task", "lorenz96", "--eval-lengths", "1,2"], "lorenz96 has no sequence length option, so it cannot be tested at other lengths (tasks with a length option: mqar, "),
     (["--task", TINY_TASK, "--eval-lengths", "1,2"], "--eval-lengths 2: mqar: vocab (32) must exceed seq_len (32)")],
)  # fmt: skip
def test_run_refuses_a_bad_eval_lengths_in_one_line_with_status_2(tmp_path, args, message):
    result = runner.invoke(app, ["run", "--executor", "inline", "--output", str(tmp_path / "never"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()  # nothing was started


def test_the_config_and_the_search_check_eval_lengths():
    with pytest.raises(ValueError, match="eval_lengths are whole multiples of the task's length, at least 1"):
        tiny_config(eval_lengths=(0, 2))
    with pytest.raises(TaskError, match="vocab \\(32\\) must exceed seq_len \\(32\\)"):  # the Python API, before any trial
        Search(tiny_config(eval_lengths=(1, 2)), RunFolder("/nonexistent/never"))
