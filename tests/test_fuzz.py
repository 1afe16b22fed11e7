"""Fuzzing the command line in-process: random and mutated architecture text, space files, task
strings and CSV files.  Whatever the input, the CLI answers with exit status 0 or 2 (one
`error:` line), never a traceback, within a few seconds each, without growing the process by
more than a few hundred MB.

Numbers in fuzzed architectures stay small (below 100): candidates that are huge because of
their numbers (``mlp(expand=1000000000, ...)``) are the business of the resource ceilings of
the builder, tested with them.  Example counts are in `EXAMPLES` (quoted in BENCHMARKS.md).
"""

import atexit
import json
import re
import resource
import shutil
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import einsearch
from einsearch.cli import MAX_ERROR, app
from einsearch.grammar import builtin_spaces, grammar, to_text
from einsearch.grammar.space import SPACES_DIR
from einsearch.tasks import Task, TaskError, get_task
from einsearch.tasks.registry import TASKS

runner = CliRunner()
EXAMPLES = {"random text": 100, "mutated seeds": 100, "space files": 60, "JSON spaces": 40, "task strings": 120, "CSV files": 30}
DEADLINE_MS = 5000


def fuzz(kind: str):
    """Hypothesis settings of one kind of input: derandomised (the same examples every run), a
    deadline per example."""
    return settings(
        max_examples=EXAMPLES[kind], deadline=DEADLINE_MS, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )  # fmt: skip


def answered(result) -> None:
    """Exit 0, or exit 2 with exactly one short `error:` line; never an exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), (result.exit_code, result.output[-500:])
    if result.exit_code == 2:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output[-500:]
        assert len(lines[0]) <= len("error: ") + MAX_ERROR


def show(text: str) -> None:
    answered(runner.invoke(app, ["show", "--d-model", "16", "--seq-len", "16", "--", text]))  # "--": text may start with "-"


# ---------------------------------------------------------------- architecture text
WORDS = sorted({t.pattern.value for t in grammar().terminals if t.pattern.type == "str"})  # every keyword and symbol
SEED_TEXTS = [to_text(arch) for arch in einsearch.seeds.values()]
small_numbers = st.integers(0, 99).map(str)
token = st.one_of(st.sampled_from(WORDS), small_numbers, st.sampled_from(["0.5", "0.", "-1", "x", " ", "\n", "\x00", "é"]))


@fuzz("random text")
@given(st.one_of(st.lists(token, max_size=40).map("".join), st.text(max_size=80)))
def test_random_architecture_text(text):
    show(text)


@st.composite
def mutated_seed(draw) -> str:
    """A zoo seed after a few edits: a span deleted, duplicated or replaced by a token, a number
    changed, a subtree wrapped in res(...)."""
    text = draw(st.sampled_from(SEED_TEXTS))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 30)))
        edit = draw(st.sampled_from(["delete", "duplicate", "replace", "number", "wrap"]))
        if edit == "delete":
            text = text[:i] + text[j:]
        elif edit == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif edit == "replace":
            text = text[:i] + draw(token) + text[j:]
        elif edit == "number":
            digits = [k for k, c in enumerate(text) if c.isdigit()]
            if digits:
                k = draw(st.sampled_from(digits))
                text = text[:k] + draw(small_numbers) + text[k + 1 :]
        else:
            text = text[:i] + "res(" + text[i:j] + ")" + text[j:]
    return text


@fuzz("mutated seeds")
@given(mutated_seed())
def test_mutated_seeds(text):
    show(text)


# ---------------------------------------------------------------- space files
def builtin_space_text(name: str) -> str:
    from importlib import resources

    return resources.files("einsearch.grammar").joinpath(SPACES_DIR, name + ".toml").read_text()


SPACE_TEXTS = [builtin_space_text(name) for name in builtin_spaces()]
FOLDER = Path(tempfile.mkdtemp(prefix="einsearch-fuzz-"))
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)


def space_stats(content: bytes, suffix: str) -> None:
    path = FOLDER / f"space{suffix}"
    path.write_bytes(content)
    answered(runner.invoke(app, ["space", "stats", "--space", str(path), "--samples", "3", "--d-model", "16", "--no-build"]))


@st.composite
def mutated_space(draw) -> bytes:
    """A built-in space file with lines deleted or duplicated, numbers changed, or bytes replaced."""
    lines = draw(st.sampled_from(SPACE_TEXTS)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        k = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["delete", "duplicate", "number", "garble"]))
        if edit == "delete":
            del lines[k]
        elif edit == "duplicate":
            lines.insert(k, lines[k])
        elif edit == "number":
            number = draw(st.one_of(st.integers(-5, 10**6).map(str), st.sampled_from(["0.0", "1e308", "nan", "inf", '"3"'])))
            lines[k] = re.sub(r"\d+(\.\d+)?", number, lines[k], count=1)
        else:
            lines[k] = draw(st.text(alphabet=string.printable + "\x00\xff", max_size=30))
        if not lines:
            break
    content = "\n".join(lines).encode("utf-8", "surrogateescape")
    return draw(st.one_of(st.just(content), st.binary(max_size=200)))


@fuzz("space files")
@given(mutated_space())
def test_mutated_space_files(content):
    space_stats(content, ".toml")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["space", "module", "seq", "d_model", "max_depth", "max_nodes", "conv", "k", "1", "absent"]), inner, max_size=4),
    max_leaves=20,
)


@fuzz("JSON spaces")
@given(json_values)
def test_random_json_space_files(value):
    space_stats(json.dumps(value).encode(), ".json")


# ---------------------------------------------------------------- task strings
def option_value():
    return st.one_of(
        st.integers(-(2**70), 2**70).map(str), st.floats().map(str), st.sampled_from(["", "true", "1e999", "-0", "nan", "x" * 300]),
        st.text(max_size=12),
    )  # fmt: skip


@st.composite
def task_spec(draw) -> str:
    name = draw(st.one_of(st.sampled_from(sorted(TASKS)), st.text(max_size=8)))
    keys = [f.name for f in TASKS[name].__dataclass_fields__.values()] if name in TASKS else ["x"]
    options = draw(st.lists(st.tuples(st.sampled_from(keys + ["bogus"]), option_value()), max_size=3))
    return name + (":" + ",".join(f"{k}={v}" for k, v in options) if options else "")


@fuzz("task strings")
@given(task_spec())
def test_task_strings(spec):
    """Parsing gives a task or one short `TaskError`; the CLI turns that error into exit 2.  (A
    valid task is not trained here: its data may take a while to generate.)"""
    try:
        task = get_task(spec)
    except TaskError as e:
        assert len(str(e)) <= MAX_ERROR, str(e)
        answered(runner.invoke(app, ["train", "linear()", "--task=" + spec, "--budget", "1steps"]))
    else:
        assert isinstance(task, Task) and get_task(task.spec) == task


# ---------------------------------------------------------------- CSV files
@st.composite
def csv_bytes(draw) -> bytes:
    rows = draw(st.integers(0, 60))
    channels = draw(st.integers(0, 3))
    cell = st.one_of(st.floats(-1e3, 1e3).map(lambda v: f"{v:.3f}"), st.sampled_from(["", "nan", "x", "1e999", '"1,2"']))
    lines = ["date" + "".join(f",c{k}" for k in range(channels))]
    for i in range(rows):
        values = [draw(cell) if draw(st.integers(0, 30)) == 0 else f"{i % 7}.5" for _ in range(channels)]
        lines.append(",".join([f"2020-01-{i:05d}"] + values))
    text = "\n".join(lines).encode()
    return draw(st.one_of(st.just(text), st.binary(max_size=300), st.just(text[: draw(st.integers(0, len(text)))] + b"\xff\x00")))


@fuzz("CSV files")
@given(csv_bytes())
def test_csv_files(content):
    path = FOLDER / "series.csv"
    path.write_bytes(content)
    spec = f"csv:{path},lookback=4,horizon=2,patch=2,stride=1"
    answered(runner.invoke(app, ["train", "identity()", "--task", spec, "--budget", "2steps", "--d-model", "8", "--layers", "1"]))


def test_memory_stayed_bounded():
    """Run last in this file: the fuzzing above grew this process's peak memory by little (the
    peak of a pytest process that imported torch is a few hundred MB)."""
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak_mb < 2048, f"peak RSS {peak_mb:.0f} MB"
