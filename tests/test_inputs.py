"""Bad input of every kind gets one short line and exit status 2, never a traceback: architecture
text (limits, parse errors that say what is allowed), space files, task options and CSV files;
and an export stays valid Python whatever the run's folder is called."""

import ast
import dataclasses
import importlib.util
import math
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import einsearch
from einsearch.cli import MAX_ERROR, app
from einsearch.export import export_source, literal, quote_annotations
from einsearch.grammar import ArchSyntaxError, SpaceError, load_space, parse
from einsearch.grammar.parser import MAX_DEPTH, MAX_DIGITS, MAX_TEXT
from einsearch.tasks import TaskError, get_task
from einsearch.tasks.registry import TASKS
from einsearch.tasks.shell import LanguageModel, build_blocks

runner = CliRunner()


def one_error_line(result) -> str:
    """The CLI answered with exit status 2 and one `error:` line of bounded length."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output[:500]
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output[:500]
    assert len(lines[0]) <= len("error: ") + MAX_ERROR
    return lines[0]


# ---------------------------------------------------------------- architecture text
def test_deep_nesting_is_refused_before_parsing():
    deep = "res(" * 300 + "linear()" + ")" * 300
    line = one_error_line(runner.invoke(app, ["show", deep]))
    assert f"nesting deeper than {MAX_DEPTH} levels" in line
    shallow = "res(" * (MAX_DEPTH - 1) + "linear()" + ")" * (MAX_DEPTH - 1)  # exactly MAX_DEPTH levels
    assert parse(shallow).op == "res"


def test_long_text_and_long_numbers_are_refused():
    with pytest.raises(ArchSyntaxError, match=f"at most {MAX_TEXT:,}"):
        parse("seq(" + "linear(), " * MAX_TEXT + "linear())")
    with pytest.raises(ArchSyntaxError, match=f"more than {MAX_DIGITS} digits"):
        parse("mlp(expand=" + "9" * 5000 + ", act=gelu)")
    assert parse("conv(k=" + "9" * MAX_DIGITS + ")").params == (("k", int("9" * MAX_DIGITS)),)


@pytest.mark.parametrize("text", ["x" * 1_000_000, "mlp(expand=" + "y" * 10_000 + ", act=gelu)", "q" * 30_000 + "("])
def test_a_huge_input_makes_a_short_error_line(text):
    one_error_line(runner.invoke(app, ["show", text]))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("norm(rms)x", "unexpected 'x'; expected end of text"),  # only the end fits after a whole tree
        ("mlp(expand=2, act=gelu) 3", "unexpected '3'; expected end of text"),
        ("seq(norm(rms)x", "unexpected 'x'; expected one of ')', ','"),  # inside seq both fit
        ("norm(rms", "unexpected end of text; expected ')'"),
    ],
)
def test_parse_errors_say_what_is_really_allowed(text, expected):
    with pytest.raises(ArchSyntaxError) as error:
        parse(text)
    assert str(error.value).endswith(expected)


def test_unknown_seed_names_suggest_close_ones():
    line = one_error_line(runner.invoke(app, ["show", "transfomer"]))
    assert "did you mean transformer" in line


# ---------------------------------------------------------------- space files
@pytest.mark.parametrize(
    "name, content, message",
    [
        ("binary.toml", bytes(range(256)), "not a text file"),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
        ("list.json", b"[1, 2]", "a space file holds tables"),
        ("huge.toml", b"# " + b"x" * 2_000_000, "too large for a space file"),
        ("deep.toml", b"[space]\nd_model = [64]\nmax_depth = 1000\nmax_nodes = 10\n", "max_depth must be an integer from 1 to 64"),
    ],
)
def test_bad_space_files_are_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SpaceError, match=message):
        load_space(str(path))
    line = one_error_line(runner.invoke(app, ["space", "stats", "--space", str(path), "--samples", "1", "--no-build"]))
    assert message.split()[0] in line


# ---------------------------------------------------------------- task options
def numeric_options():
    for name, cls in TASKS.items():
        for f in dataclasses.fields(cls):
            if type(f.default) in (int, float):
                yield name, f


@pytest.mark.parametrize("task, field", list(numeric_options()), ids=lambda v: getattr(v, "name", v))
def test_every_numeric_option_declares_its_range_and_is_held_to_it(task, field):
    meta = field.metadata
    assert ("at_least" in meta or "above" in meta) and "at_most" in meta, f"{task}:{field.name} declares no range"
    low = meta.get("at_least", meta.get("above"))
    below = low - 1 if "at_least" in meta else low  # the first value outside, below
    prefix = "csv:x.csv," if task == "csv" else f"{task}:"
    integer = isinstance(field.default, int)
    for bad in [below, meta["at_most"] * 2 + 1] + ([] if integer else [math.nan, -math.inf]):
        with pytest.raises(TaskError, match=f"option {field.name} must be"):
            get_task(f"{prefix}{field.name}={bad}")
    if integer:
        with pytest.raises(TaskError, match=f"option {field.name} expects int"):
            get_task(f"{prefix}{field.name}=1.5")


def test_string_options_are_paths_or_word_choices():
    for name, cls in TASKS.items():
        for f in dataclasses.fields(cls):
            if isinstance(f.default, str):
                assert f.name == cls.positional or "choices" in f.metadata, f"{name}:{f.name}"
    with pytest.raises(TaskError, match="option head must be one of flatten, last"):
        get_task("csv:x.csv,head=middle")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mqar:seed=-1", "option seed must be >= 0"),
        ("mqar:train=100000000", "would need about 190.7 GiB of memory; at most 4 GiB"),
        ("passkey:seq_len=100000,train=100000", "GiB of memory"),
        ("lorenz96:trajectories=100000,length=10000000", "GiB of memory"),
        ("lorenz96:dt=0.0000001,every=0.01", "solver steps per trajectory; at most 1,000,000"),
        ("mqar:vocab=" + "9" * 5000, "option vocab expects int"),
        ("mqar:" + "z" * 10_000 + "=1", "unknown option"),
    ],
)
def test_task_text_out_of_range_is_one_line(spec, message):
    with pytest.raises(TaskError, match=message) as error:
        get_task(spec)
    assert len(str(error.value)) <= MAX_ERROR
    line = one_error_line(runner.invoke(app, ["train", "linear()", "--task", spec, "--budget", "1steps"]))
    assert message.split()[0] in line


# ---------------------------------------------------------------- CSV files
def test_a_binary_csv_is_one_line(tmp_path):
    path = tmp_path / "binary.csv"
    path.write_bytes(b"date,a\n\xff\xfe\x00\x80,1\n")
    with pytest.raises(TaskError, match="is not a text file"):
        get_task(f"csv:{path}").data()
    line = one_error_line(runner.invoke(app, ["train", "linear()", "--task", f"csv:{path}", "--budget", "1steps"]))
    assert "not a text file" in line


def write_series(path, first_column, header="first"):
    rows = [f"{t},{math.sin(i / 3):.4f}" for i, t in enumerate(first_column)]
    path.write_text(f"{header},x\n" + "\n".join(rows) + "\n")


def test_a_csv_without_a_date_column_is_refused(tmp_path):
    path = tmp_path / "no_dates.csv"
    write_series(path, [f"{math.cos(i):.3f}" for i in range(300)], header="OT")  # a channel where the dates belong
    with pytest.raises(TaskError, match="has no date column: its first column 'OT' holds numbers that do not increase"):
        get_task(f"csv:{path},lookback=16,horizon=4").data()


@pytest.mark.parametrize("first", [["2020-01-01 %02d:00" % (i % 24) for i in range(300)], list(range(300))])
def test_dates_or_an_increasing_time_index_are_taken_as_time(tmp_path, first):
    path = tmp_path / "ok.csv"
    write_series(path, first)
    task = get_task(f"csv:{path},lookback=16,horizon=4")
    assert task.table().columns == ("x",) and len(task.table().values) == 300


def test_a_csv_cell_beyond_the_field_limit_is_one_line(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("date,a\n" + "x" * 200_000 + ",1\n")
    with pytest.raises(TaskError, match="is not a readable CSV"):
        get_task(f"csv:{path}").data()


# ---------------------------------------------------------------- export
@settings(max_examples=150, deadline=None)
@given(st.text())
def test_literal_is_a_string_literal_of_exactly_its_text(text):
    assert ast.literal_eval(literal(text)) == text


def test_quoted_annotations_never_evaluate_and_keep_the_code():
    source = 'x = "∝ non-ASCII before"\ndef f(a: Later, *b: Later, c: "S" = 1, **d: dict[str,\n  Later]) -> Later:\n    return a\nclass Later: pass\n'
    quoted = quote_annotations(source)
    namespace: dict = {}
    exec(compile(quoted, "<quoted>", "exec"), namespace)  # Later is not defined when f is
    assert namespace["f"](3) == 3
    assert namespace["f"].__annotations__["return"] == "Later" and namespace["f"].__annotations__["c"] == "S"


def load_unregistered(path, name="exported_candidate"):
    """importlib as a user would: spec_from_file_location, never registered in sys.modules."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert name not in sys.modules
    return module


def test_every_seed_export_loads_without_sys_modules(tmp_path):
    for name in sorted(einsearch.seeds):
        arch = einsearch.seeds[name]
        path = tmp_path / f"{name}.py"
        path.write_text(export_source(arch, LanguageModel(build_blocks(arch, 16, 1), 16, vocab=8), d_model=16, layers=1))
        module = load_unregistered(path)
        assert repr(module.ARCH) == repr(arch) and isinstance(module.Candidate(), module.LanguageModel), name


HOSTILE_NAMES = ['a"""b', "back\\x\\N{", "quote'\"\"\n\r\tend\"", os.fsdecode(b"latin\xff\\u")]


def test_export_of_a_run_in_a_hostile_folder_compiles_and_loads(tmp_path):
    from safetensors.torch import load_file

    from einsearch.search import RunFolder, start
    from tests.search.conftest import tiny_config

    for i, name in enumerate(HOSTILE_NAMES):
        folder = tmp_path / name
        start(tiny_config(trials=1, seed_archs=("res(conv(k=2))",)), RunFolder(folder), live=False)
        target = tmp_path / f"mixer_{i}.py"
        result = runner.invoke(app, ["export", str(folder), "-o", str(target), "--weights"])
        assert result.exit_code == 0, result.output
        module = load_unregistered(target)
        assert str(folder) in module.__doc__  # the path, exactly as it is, inside the docstring
        model = module.Candidate()
        model.load_state_dict(load_file(target.with_suffix(".safetensors")))
