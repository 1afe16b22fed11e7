"""A run folder cannot be corrupted (issue #12, items 2, 4, 5 and 6): it resumes after a move or a
copy, takes its execution settings from the command line, reports and repairs damaged records,
and refuses to start where it could not record."""

import json
import os
import shutil
import subprocess

import optuna
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import einsearch
from einsearch.cli import app
from einsearch.search import Execution, RunFolder, resume, start
from einsearch.search.record import DamagedRecord, RunFolderError, TrialRecord, leaderboard
from einsearch.tasks import get_task
from tests.search.conftest import TINY_TASK, tiny_config

# three different shapes, so that weights of one cannot load into another
SEEDS = ("res(attn(softmax, heads=2, pos=rope))", "res(mlp(expand=2, act=gelu))", "res(conv(k=2))")
INLINE = Execution(executor="inline")
runner = CliRunner()


def journal(folder: RunFolder) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder.journal_path)))


def lines(folder: RunFolder) -> list[str]:
    return folder.trials_path.read_text().splitlines()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> RunFolder:
    """A finished run of three trained trials (the seeds, in order), named "run"."""
    folder = RunFolder(tmp_path_factory.mktemp("finished") / "run")
    outcome = start(tiny_config(strategy="evolution", seed_archs=SEEDS, trials=3), folder, live=False)
    assert outcome.completed and [r.status for r in folder.trials()] == ["ok"] * 3
    return folder


@pytest.fixture
def copy(finished, tmp_path):
    """Copy the finished run to a fresh path (`cp -a`), under another name."""

    def make(name: str = "renamed") -> RunFolder:
        target = tmp_path / "elsewhere" / name
        shutil.copytree(finished.path, target, symlinks=True)
        return RunFolder(target, warn=warnings.append)

    warnings: list[str] = []
    make.warnings = warnings
    return make


# ---------------------------------------------------------------------------------------------- item 2: relocatable


def assert_exports_load(folder: RunFolder, tmp_path) -> None:
    """`export --rank N --weights` for every rank with kept weights loads into its architecture."""
    board = leaderboard(folder.trials(), maximize=True)
    assert board
    for leader in board:
        target = tmp_path / f"rank{leader.rank}.py"
        result = runner.invoke(app, ["export", str(folder.path), "--rank", str(leader.rank), "-o", str(target), "--weights"])
        assert result.exit_code == 0, result.output
        model = get_task(TINY_TASK).model(einsearch.parse(leader.record.arch), 16, 1)
        model.load_state_dict(load_file(str(target.with_suffix(".safetensors"))))  # strict: the right shapes


def test_a_copied_run_folder_resumes_its_own_study(finished, copy, tmp_path):
    folder = copy()
    weights = {p.name: p.read_bytes() for p in (folder.path / "weights").iterdir()}
    original = finished.trials_path.read_bytes(), finished.journal_path.read_bytes()
    assert sorted(weights) == ["0.safetensors", "1.safetensors", "2.safetensors"]

    outcome = resume(folder, trials=6, live=False, execution=INLINE)

    assert outcome.completed
    numbers = [r.number for r in folder.trials()]
    assert sorted(numbers) == list(range(6))  # numbering continues: nothing restarts at 0
    for name, data in weights.items():
        assert (folder.path / "weights" / name).read_bytes() == data
    assert optuna.get_all_study_names(journal(folder)) == ["run"]  # no second study
    assert (finished.trials_path.read_bytes(), finished.journal_path.read_bytes()) == original  # the original is untouched
    assert_exports_load(folder, tmp_path)
    assert copy.warnings == []


def test_a_run_folder_from_before_stored_names_resumes_after_a_move(copy):
    folder = copy()
    config = json.loads(folder.config_path.read_text())
    del config["study"]
    folder.config_path.write_text(json.dumps(config))

    resume(folder, trials=4, live=False, execution=INLINE)

    assert sorted(r.number for r in folder.trials()) == [0, 1, 2, 3]
    assert json.loads(folder.config_path.read_text())["study"] == "run"  # named by the one study it holds


def test_a_folder_whose_storage_holds_several_studies_and_names_none_is_refused(copy):
    folder = copy()
    config = json.loads(folder.config_path.read_text())
    del config["study"]
    folder.config_path.write_text(json.dumps(config))
    optuna.create_study(storage=journal(folder), study_name="another")
    before = folder.trials_path.read_bytes()
    result = runner.invoke(app, ["run", "--resume", str(folder.path), "--trials", "4"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: ") and "2 studies (another, run)" in result.output
    assert folder.trials_path.read_bytes() == before


def test_the_rung_study_moves_with_the_run(tmp_path):
    config = tiny_config(strategy="evolution", seed_archs=SEEDS, trials=2, scheduler="asha", trial_budget="9steps", rungs=2)
    start(config, RunFolder(tmp_path / "a"), live=False)
    shutil.move(tmp_path / "a", tmp_path / "b")
    folder = RunFolder(tmp_path / "b")

    resume(folder, trials=3, live=False, execution=INLINE)

    assert sorted(optuna.get_all_study_names(journal(folder))) == ["a", "a.rungs"]
    rungs = optuna.load_study(study_name="a.rungs", storage=journal(folder)).trials
    assert sorted(t.user_attrs["trial"] for t in rungs) == [0, 1, 2]  # the second session used the same rung study
    assert sorted(r.number for r in folder.trials()) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------- item 4: execution settings


@pytest.fixture
def fake_ray(monkeypatch):
    """Record the config a resumed run would give Ray, without starting one (and stop there)."""
    from einsearch.search import session

    seen = []

    def run_ray(search, update=lambda: None):
        seen.append(search.config)
        return False

    monkeypatch.setattr(session, "run_ray", run_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return seen


def test_resume_joins_no_cluster_named_in_the_folder(copy, fake_ray):
    folder = copy()
    config = json.loads(folder.config_path.read_text())
    folder.config_path.write_text(json.dumps({**config, "executor": "ray", "workers": 3, "address": "ray://198.51.100.7:10001"}))

    result = runner.invoke(app, ["run", "--resume", str(folder.path), "--trials", "4"])
    assert result.exit_code == 130, result.output
    assert fake_ray[-1].address is None and fake_ray[-1].workers == 3  # the run's own worker count
    said = [line for line in result.output.splitlines() if line.startswith("resuming ")]
    assert said == [f"resuming {folder.path}: study 'run' in {folder.journal_path}; ray executor, 3 workers, a local Ray"]

    result = runner.invoke(app, ["run", "--resume", str(folder.path), "--address", "ray://127.0.0.1:10001", "--workers", "1"])
    assert result.exit_code == 130, result.output
    assert fake_ray[-1].address == "ray://127.0.0.1:10001" and fake_ray[-1].workers == 1
    assert "1 workers, Ray cluster at ray://127.0.0.1:10001" in result.output
    assert len(fake_ray) == 2


def test_resume_takes_the_executor_from_the_command_line(copy, fake_ray):
    folder = copy()
    config = json.loads(folder.config_path.read_text())
    folder.config_path.write_text(json.dumps({**config, "executor": "ray"}))
    result = runner.invoke(app, ["run", "--resume", str(folder.path), "--trials", "4", "--executor", "inline"])
    assert result.exit_code == 0, result.output
    assert fake_ray == [] and "inline executor" in result.output
    assert sorted(r.number for r in folder.trials()) == [0, 1, 2, 3]


def test_resume_opens_no_storage_named_in_the_folder(copy, tmp_path):
    folder = copy()
    database = tmp_path / "far" / "away.db"
    database.parent.mkdir()
    config = json.loads(folder.config_path.read_text())
    folder.config_path.write_text(json.dumps({**config, "storage": f"sqlite:///{database}"}))
    before = folder.trials_path.read_bytes()

    result = runner.invoke(app, ["run", "--resume", str(folder.path), "--trials", "4", "--executor", "inline"])

    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: ") and "pass --storage" in result.output and len(result.output) < 300
    assert not database.exists() and folder.trials_path.read_bytes() == before


def test_resume_refuses_a_storage_for_a_run_kept_in_its_journal(copy, tmp_path):
    folder = copy()
    database = tmp_path / "other.db"
    result = runner.invoke(app, ["run", "--resume", str(folder.path), "--storage", f"sqlite:///{database}", "--executor", "inline"])
    assert result.exit_code == 2 and "journal" in result.output and not database.exists()


def test_resume_uses_a_storage_given_again_on_the_command_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    folder = RunFolder(tmp_path / "run")
    start(tiny_config(strategy="evolution", seed_archs=SEEDS, trials=2, storage=url), folder, live=False)
    result = runner.invoke(app, ["run", "--resume", str(folder.path), "--trials", "3", "--storage", url, "--executor", "inline"])
    assert result.exit_code == 0, result.output
    assert f"study 'run' in {url}" in result.output
    assert sorted(r.number for r in folder.trials()) == [0, 1, 2]
    assert len(optuna.load_study(study_name="run", storage=url).trials) == 3


# ---------------------------------------------------------------------------------------------- item 5: damaged records


def test_damaged_lines_are_named_and_valid_ones_read():
    good = TrialRecord(0, "res(conv(k=2))", einsearch.parse("res(conv(k=2))").id, "ok", None, (0.5,), {"val/accuracy": 0.5})
    assert TrialRecord.from_json(good.to_json()) == good
    data = json.loads(good.to_json())
    for line, problem in [
        ("null", "not a trial record but JSON NoneType"),
        ("[1, 2]", "not a trial record but JSON list"),
        (good.to_json()[:40], "not JSON"),
        (json.dumps({**data, "objectives": "abc"}), 'objectives is "abc", not a list of numbers or null'),
        (json.dumps({**data, "objectives": ["abc"]}), "objectives is"),
        (json.dumps({**data, "number": True}), "number is true"),
        (json.dumps({**data, "number": -1}), "number is -1"),
        (json.dumps({**data, "status": "great"}), "status is"),
        (json.dumps({**data, "metrics": {"val/accuracy": "high"}}), "metrics is"),
        (json.dumps({k: v for k, v in data.items() if k != "arch"}), "missing arch"),
        (json.dumps({**data, "colour": "red"}), "unknown field colour"),
        (json.dumps({**data, "arch": "res(conv(k=2)"}), "is not valid architecture text"),
        (json.dumps({**data, "arch": "res(conv(k=3))"}), "is not the id of its arch"),
    ]:
        with pytest.raises(DamagedRecord) as caught:
            TrialRecord.from_json(line)
        assert problem in str(caught.value), (line, str(caught.value))
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 160


def test_a_record_cut_short_mid_file_is_reported_and_recorded_again_from_the_study(finished, copy):
    folder = copy()
    original = finished.trials()
    content = lines(folder)
    content[1] = content[1][: len(content[1]) // 2]
    folder.trials_path.write_text("\n".join(content) + "\n")

    resume(folder, trials=4, live=False, execution=INLINE)

    assert any("trials.jsonl line 2: damaged record skipped: not JSON" in w for w in copy.warnings), copy.warnings
    assert any("trial 1 finished in the study but had no valid record" in w for w in copy.warnings), copy.warnings
    records = folder.trials()
    assert sorted(r.number for r in records) == [0, 1, 2, 3]
    assert next(r for r in records if r.number == 1) == original[1]  # restored whole
    assert len([w for w in copy.warnings if "line 2" in w]) == 1  # reported once, however often it is read


def test_null_and_wrong_typed_lines_give_one_warning_each_not_a_traceback(finished, copy):
    folder = copy()
    content = lines(folder)
    content[0] = "null"
    content[2] = json.dumps({**json.loads(content[2]), "objectives": "abc"})
    folder.trials_path.write_text("\n".join(content) + "\n")

    result = runner.invoke(app, ["report", str(folder.path)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 2 and "line 1:" in warned[0] and "line 3: damaged record skipped: objectives is" in warned[1]
    assert all(len(line) < 250 for line in warned)

    result = runner.invoke(app, ["run", "--resume", str(folder.path), "--trials", "4", "--executor", "inline"])
    assert result.exit_code == 0, result.output
    assert "trial 0 finished in the study" in result.output and "trial 2 finished in the study" in result.output
    assert sorted(r.number for r in RunFolder(folder.path).trials()) == [0, 1, 2, 3]
    assert {r.number: r for r in RunFolder(folder.path).trials()}[2] == finished.trials()[2]


def test_a_torn_last_line_does_not_swallow_the_next_record(finished, copy):
    folder = copy()
    text = folder.trials_path.read_text()
    folder.trials_path.write_text(text[: len(text) - 30])  # the last record cut short, no newline

    resume(folder, trials=5, live=False, execution=INLINE)

    records, damaged = folder.read_trials()
    assert sorted(r.number for r in records) == [0, 1, 2, 3, 4]
    assert [d.line for d in damaged] == [3]  # kept as it was, and skipped
    assert records[:2] == finished.trials()[:2]


def test_a_record_the_study_does_not_hold_is_refused(finished, copy):
    folder = copy()
    stranger = json.loads(lines(folder)[0])
    with open(folder.trials_path, "a") as f:
        f.write(json.dumps({**stranger, "number": 99}) + "\n")
    result = runner.invoke(app, ["run", "--resume", str(folder.path), "--trials", "4", "--executor", "inline"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "does not hold trial(s) 99 of trials.jsonl" in result.output


# ---------------------------------------------------------------------------------------------- item 6: unwritable


@pytest.fixture
def unwritable():
    """Make a file or folder unwritable for this process: chmod for a user, `chattr +i` for root
    (whom permissions do not stop); undone afterwards."""
    done = []

    def make(path):
        if os.geteuid() != 0:
            mode = path.stat().st_mode
            path.chmod(0o555 if path.is_dir() else 0o444)
            done.append(lambda: path.chmod(mode))
        else:
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
                pytest.skip("running as root without chattr +i here: permissions cannot stop this process")
            done.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=True))
        assert not os.access(path, os.W_OK)

    yield make
    for undo in reversed(done):
        undo()


def check_refused(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.startswith("error: ") and len(result.output.splitlines()) == 1 and len(result.output) < 250
    assert expected in result.output, result.output


def test_an_unwritable_run_folder_is_refused_before_anything_starts(copy, unwritable):
    folder = copy()
    before = {p.name: p.read_bytes() for p in folder.path.iterdir() if p.is_file()}
    unwritable(folder.path)
    check_refused(["run", "--resume", str(folder.path), "--trials", "4", "--executor", "inline"], "the folder renamed is not writable")
    check_refused(["final", str(folder.path)], "the folder renamed is not writable")
    assert {p.name: p.read_bytes() for p in folder.path.iterdir() if p.is_file()} == before


def test_an_unwritable_trials_file_is_refused_before_anything_starts(copy, unwritable):
    folder = copy()
    before = folder.journal_path.read_bytes()
    unwritable(folder.trials_path)
    check_refused(["run", "--resume", str(folder.path), "--trials", "4", "--executor", "inline"], "the file trials.jsonl is not writable")
    assert folder.journal_path.read_bytes() == before


def test_a_new_run_under_an_unwritable_folder_is_refused(tmp_path, unwritable):
    parent = tmp_path / "readonly"
    parent.mkdir()
    unwritable(parent)
    target = parent / "run"
    check_refused(
        ["run", "--executor", "inline", "--space", tiny_config().space, "--task", TINY_TASK, "--output", str(target)],
        f"{parent} is not writable",
    )
    assert not target.exists()
