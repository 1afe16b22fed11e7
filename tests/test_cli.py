"""The command line, through Typer's test runner."""

import dataclasses
import re

import pytest
from typer.testing import CliRunner

from einsearch.cli import app
from einsearch.search import RunConfig
from einsearch.train import TrainConfig

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


def test_show_lays_the_tree_out_with_the_canonical_printer():
    from einsearch import parse
    from einsearch.arch import to_text
    from einsearch.grammar.seeds import seeds

    result = runner.invoke(app, ["show", "transformer", "--d-model", "32"])
    assert result.exit_code == 0, result.output
    layout = to_text(seeds["transformer"], indent=2)
    assert "\n" in layout and layout in result.output and parse(layout) == seeds["transformer"]


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


# An option named as its field, except these; and those whose default the command line states in
# words because it is not the field's (`einsearch run` takes the task's search budget).
FIELD_OF = {"seed_arch": "seed_archs"}
IN_WORDS = {"trial_budget": "the task's search budget"}


def shown_defaults(command: str) -> dict[str, tuple[str | None, str]]:
    """Option (as a field name) -> (the default `--help` shows, or None; the whole help line)."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "1000"})  # one line per option
    assert result.exit_code == 0, result.output
    shown = {}
    for line in result.output.splitlines():
        option = re.match(r"\W*--([a-z-]+)\s", line)
        if option is not None:
            default = re.search(r"\[default: ([^\]]*)\]|\(default: ([^;)]*)", line)
            shown[option.group(1).replace("-", "_")] = (None if default is None else default.group(1) or default.group(2), line)
    return shown


def as_shown(value) -> str | None:
    """A field's default as `--help` shows it: tuples comma-separated, no default for None, False or ()."""
    if isinstance(value, tuple):
        value = ",".join(map(str, value))
    return None if value is None or value is False or value == "" else str(value)


@pytest.mark.parametrize("command, config", [("run", RunConfig), ("train", TrainConfig)])
def test_help_shows_the_config_dataclasses_defaults_and_help(command, config):
    """Each default and its help are written once, on the config dataclass: changing one there
    and not in the command line (or the reverse) fails here."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    compared = 0
    for option, (default, line) in shown_defaults(command).items():
        field = fields.get(FIELD_OF.get(option, option))
        if field is None:
            continue
        about = field.metadata.get("help", "")
        assert about.removesuffix(".") in line, (option, about, line)
        if option in IN_WORDS:
            assert default is not None and default.startswith(IN_WORDS[option]), (option, line)
        elif as_shown(field.default) is not None:
            assert default == as_shown(field.default), (option, default, field.default)
        else:  # None: what it means is said in words, in the field's own help
            assert default is None or f"default: {default}" in about, (option, default, about)
        compared += 1
    assert compared >= {"run": 30, "train": 11}[command]


no_cuda = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@no_cuda
@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--device", "cuda", "--executor", "inline"], "--device cuda: no CUDA device on this machine"),
        (["run", "--device", "cuda", "--gpus-per-trial", "0.5"], "--device cuda: no CUDA device on this machine"),  # a local Ray
        (["run", "--precision", "bf16", "--executor", "inline"], "--precision bf16: no CUDA device on this machine"),
        (["run", "--device", "cuda"], "device cuda on Ray needs --gpus-per-trial"),
        (["run", "--device", "cpu", "--gpus-per-trial", "1"], "reserves GPUs that device cpu never uses"),
        (["run", "--resources-per-trial", '{"gpu_stand_in": 1}'], "a local Ray offers no such resource"),
        (["run", "--resources-per-trial", "[1]"], "give a JSON object"),
        (["train", "transformer", "--device", "cuda"], "device cuda: torch finds no CUDA device here"),
        (["train", "transformer", "--precision", "bf16"], "precision bf16 needs a CUDA device"),
    ],
)  # fmt: skip
def test_a_device_this_machine_lacks_is_one_line_and_status_2_before_anything_exists(tmp_path, args, message):
    output = ["--output", str(tmp_path / "run")] if args[0] == "run" else []
    result = runner.invoke(app, [*args, *output])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()
