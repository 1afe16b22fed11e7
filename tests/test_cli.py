"""The command line, through Typer's test runner."""

from typer.testing import CliRunner

from einsearch.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "show" in result.output


def test_show_seed():
    result = runner.invoke(app, ["show", "transformer", "--d-model", "32", "--seq-len", "100"])
    assert result.exit_code == 0, result.output
    assert "attn(softmax, heads=4, pos=rope)" in result.output
    assert f"{16 * 32 * 32 + 2 * 32:,}" in result.output  # parameter count by hand
    assert f"{2 * 32 * 100:,}" in result.output  # KV cache at T=100


def test_show_architecture_text():
    result = runner.invoke(app, ["show", "seq(conv(k=3), mlp(expand=2, act=relu))"])
    assert result.exit_code == 0, result.output
    assert "seq(conv(k=3), mlp(expand=2, act=relu))" in result.output


def test_syntax_error_is_one_line_and_status_2():
    result = runner.invoke(app, ["show", "mlp(expand=0, act=gelu)"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: line 1, column 12: unexpected '0'; expected a positive integer"
    assert "Traceback" not in result.output


def test_unknown_seed_and_build_errors_are_status_2():
    for args in (["show", "transfomer"], ["show", "attn(softmax, heads=3, pos=rope)"], ["show", "x", "--d-model", "0"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        assert "Traceback" not in result.output


def test_show_reads_sampled_architectures_from_stdin():
    lines = "conv(k=3)\nattn(softmax, heads=2, pos=rope)\n"
    result = runner.invoke(app, ["show", "-", "--d-model", "16"], input=lines)
    assert result.exit_code == 0, result.output
    assert "conv(k=3)" in result.output and "attn(softmax, heads=2, pos=rope)" in result.output
    assert result.output.count("parameters") == 2


def test_final_on_a_missing_run_folder_is_one_line_and_status_2(tmp_path):
    result = runner.invoke(app, ["final", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nowhere'} is not a run folder (no config.json)"
