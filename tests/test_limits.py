"""Memory and time ceilings: candidates over them are refused before building or killed, and the
search goes on (issue #12, item 3)."""

import json
import resource
import sys
import time

import pytest
from typer.testing import CliRunner

from einsearch.build import MAX_MODULES, check_size
from einsearch.cli import app
from einsearch.footprint import block_activation, parse_bytes
from einsearch.grammar import parse
from einsearch.limits import ChildFailed, run_in_child, train_limited
from einsearch.primitives.base import BuildError
from einsearch.tasks import Budget
from einsearch.train import TrainConfig, train

TASK = "mqar:vocab=64,seq_len=16,pairs=2"
DEEP = "repeat(mlp(expand=4, act=gelu), n=1000000)"  # the candidate: ~4.7 TB of activations


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_candidate_over_the_ceiling_is_refused_before_building(monkeypatch):
    def never(*args):
        raise AssertionError("built a refused candidate for real")

    monkeypatch.setattr(sys.modules["einsearch.train"], "measure_costs", never)  # runs right after the real build
    before, started = peak_rss(), time.perf_counter()
    result = train(DEEP, TASK, TrainConfig(budget=Budget.parse("5steps"), max_memory=parse_bytes("1GB")))
    assert result.status == "failed" and result.reason == "oom"
    assert "refused before building" in result.detail and "1 GB" in result.detail and len(result.detail) < 200
    assert time.perf_counter() - started < 15  # measured ~0.5 s warm; the run went past 90 s
    assert peak_rss() - before < 200e6
    assert result.steps == 0


def test_activation_estimate_scales_with_repeat_and_matches_a_direct_probe():
    one = block_activation(parse("mlp(expand=4, act=gelu)"), 16, 16)
    # mlp saves its input (d), the up projection (4d) and the gelu output (4d): 9d floats per token at least
    assert one >= 9 * 16 * 16 * 4
    assert block_activation(parse("repeat(mlp(expand=4, act=gelu), n=1000)"), 16, 16) == pytest.approx(1000 * one)
    direct = block_activation(parse("seq(mlp(expand=4, act=gelu), mlp(expand=4, act=gelu))"), 16, 16)
    assert block_activation(parse("repeat(mlp(expand=4, act=gelu), n=2)"), 16, 16) == pytest.approx(direct)


def test_module_count_is_checked_before_building():
    with pytest.raises(BuildError, match="nodes=1,000,000 is too large"):
        check_size(parse("wired(er, mlp(expand=1, act=gelu), nodes=1000000, seed=0)"))
    nested = parse("wired(ws, wired(ws, linear(), nodes=200, seed=0), nodes=200, seed=0)")
    with pytest.raises(BuildError, match=f"builds 40,000 modules.*at most {MAX_MODULES:,}"):
        check_size(nested)


@pytest.mark.parametrize(
    "arch, message",
    [
        ("mlp(expand=1000000000, act=gelu)", "refused before building: needs ~32.8 TB"),
        ("wired(er, mlp(expand=4, act=gelu), nodes=1000000, seed=0)", "nodes=1,000,000 is too large"),
    ],
)
def test_show_refuses_huge_candidates_with_one_line(arch, message):
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["show", arch])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0] and len(lines[0]) < 220
    assert time.perf_counter() - started < 10


def test_show_and_train_read_the_memory_option():
    assert CliRunner().invoke(app, ["show", "mlp(expand=4, act=gelu)", "--max-memory", "1KB"]).exit_code == 2
    assert CliRunner().invoke(app, ["show", "mlp(expand=4, act=gelu)", "--max-memory", "1MB"]).exit_code == 0
    bad = CliRunner().invoke(app, ["show", "mlp(expand=4, act=gelu)", "--max-memory", "lots"])
    assert bad.exit_code == 2 and "cannot read memory size" in bad.output


def test_a_blocking_call_is_killed_at_the_hard_limit():
    # time.sleep never returns to Python code that could check a clock: only a kill ends it
    started = time.perf_counter()
    with pytest.raises(ChildFailed, match="hard time limit of 1s") as failed:
        run_in_child(time.sleep, (60,), {}, time_limit=1.0, memory=None)
    assert failed.value.reason == "timeout"
    assert time.perf_counter() - started < 20  # the forkserver's first start (imports) included


SLOW = "repeat(mlp(expand=256, act=gelu), n=2)"  # ~1-2 s a step on one core, ~0.6 GB


def test_a_run_past_its_hard_limit_is_killed_and_reported_as_timeout(monkeypatch):
    monkeypatch.setattr("einsearch.limits.hard_limit", lambda soft: 3.0)  # the trainer's own limit never trips
    started = time.perf_counter()
    config = TrainConfig(budget=Budget.parse("1000steps"), time_limit=600, max_memory=parse_bytes("2GB"))
    result = train_limited(SLOW, TASK, config)
    assert (result.status, result.reason) == ("failed", "timeout")
    assert "hard time limit of 3s" in result.detail
    assert time.perf_counter() - started < 25


def test_limited_training_relays_progress_and_matches_in_process_training():
    steps = []
    config = TrainConfig(budget=Budget.parse("4steps"))
    limited = train_limited("mlp(expand=2, act=gelu)", TASK, config, progress=lambda info: steps.append(info.step))
    direct = train("mlp(expand=2, act=gelu)", TASK, config)
    assert steps == [1, 2, 3, 4]
    assert limited.ok and limited.metrics == direct.metrics


def test_the_search_records_refused_and_killed_candidates_and_goes_on(tmp_path, monkeypatch):
    from einsearch.search import RunConfig, RunFolder, start

    archs = [DEEP, SLOW, "mlp(expand=2, act=gelu)"]
    monkeypatch.setattr("einsearch.limits.hard_limit", lambda soft: 5.0)  # SLOW's 4 steps take longer
    proposals = iter(parse(a) for a in archs)
    monkeypatch.setattr("einsearch.search.run.suggest", lambda trial, space: next(proposals))  # these three, in order
    config = RunConfig(
        task=TASK, space="full", strategy="random", trials=3, trial_budget="4steps", scheduler="fifo",
        time_limit=600, max_memory=parse_bytes("2GB"), executor="inline", finalists=0, workers=1,
    )  # fmt: skip
    outcome = start(config, RunFolder(tmp_path / "run"))
    records = {r.arch: r for r in outcome.search.records}
    assert [(records[a].status, records[a].reason) for a in archs] == [("failed", "oom"), ("failed", "timeout"), ("ok", None)]
    lines = [json.loads(line) for line in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    assert [line["reason"] for line in lines] == ["oom", "timeout", None]
