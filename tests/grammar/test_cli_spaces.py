"""`einsearch sample` and `einsearch space ...`, through Typer's test runner."""

import numpy as np
from typer.testing import CliRunner

from einsearch.cli import app
from einsearch.grammar import load_space, parse, sample
from tests.grammar.test_space_files import FULL, SPACES

runner = CliRunner()


def test_sample_prints_one_architecture_per_line():
    result = runner.invoke(app, ["sample", "--space", "hybrid", "-n", "5", "--seed", "0"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rng = np.random.default_rng(0)
    assert [parse(line) for line in lines] == [sample("hybrid", rng) for _ in range(5)]


def test_sample_output_feeds_show():
    (line,) = runner.invoke(app, ["sample", "--space", "attention", "--seed", "3"]).output.splitlines()
    result = runner.invoke(app, ["show", line, "--d-model", "32"])
    assert result.exit_code == 0, result.output
    assert line in result.output


def test_sample_from_a_space_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(FULL.read_text())
    result = runner.invoke(app, ["sample", "--space", str(path), "-n", "3", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert all(load_space("full").contains(parse(line)) for line in result.output.splitlines())


def test_unknown_space_and_bad_file_exit_2_with_one_line(tmp_path):
    result = runner.invoke(app, ["sample", "--space", "nope"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: unknown space 'nope'") and len(result.output.splitlines()) == 1
    bad = tmp_path / "bad.toml"
    bad.write_text(FULL.read_text().replace("seq = 0.10", "seq = 0.5"))
    result = runner.invoke(app, ["space", "stats", "--space", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {bad}: [module] probabilities sum to 1.4, not 1"


def test_space_list():
    result = runner.invoke(app, ["space", "list"])
    assert result.exit_code == 0, result.output
    assert [line.split()[1] for line in result.output.splitlines()] == SPACES


def test_space_stats():
    result = runner.invoke(app, ["space", "stats", "--space", "recurrent", "--samples", "200", "--no-build"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "mean offspring    0.617" in out and "expected size     6.29 nodes before limits" in out
    assert "depth             " in out and "rnn(lstm)" in out and "build" not in out
    result = runner.invoke(app, ["space", "stats", "--space", "full", "--samples", "6", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "build + causal at d_model 32:    6/6 (100.0%)" in result.output
    assert "finite forward + backward (float32): 6/6 (100.0%)" in result.output
