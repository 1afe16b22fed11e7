"""The trainer: budgets, schedule, determinism, every failure kind as a result, early stopping,
JSON, and the `train` / `tasks` commands."""

import json
import math
from dataclasses import dataclass, replace
from typing import ClassVar

import pytest
import torch
from typer.testing import CliRunner

import einsearch
from einsearch.cli import app
from einsearch.tasks import Budget, Examples, Splits, Task, TaskError, get_task
from einsearch.tasks.mqar import MQAR
from einsearch.tasks.shell import NextStepModel, build_blocks
from einsearch.train import TrainConfig, TrainResult, learning_rate, train

TINY = "mlp(expand=1, act=relu)"
SMALL_MQAR = "mqar:vocab=32,seq_len=16,pairs=2,train=64,val=16,test=16"
STRETCHY_MQAR = "mqar:vocab=128,seq_len=16,pairs=2,train=64,val=16,test=16"  # vocab > seq_len up to 4x


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EINSEARCH_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------
# budgets and schedule


@pytest.mark.parametrize(
    "text,steps,seconds",
    [("60s", None, 60.0), ("2m", None, 120.0), ("1.5h", None, 5400.0), ("500steps", 500, None),
     ("500", 500, None), ("1step", 1, None), ("500steps,2m", 500, 120.0), ("30s+10steps", 10, 30.0)],
)  # fmt: skip
def test_budget_parse(text, steps, seconds):
    budget = Budget.parse(text)
    assert (budget.steps, budget.seconds) == (steps, seconds)
    assert Budget.parse(str(budget)) == budget


@pytest.mark.parametrize("text", ["", "fast", "-5s", "0steps", "1.5steps", "10x"])
def test_bad_budgets(text):
    with pytest.raises(ValueError):
        Budget.parse(text)


def test_budget_progress_is_the_larger_fraction():
    budget = Budget(steps=100, seconds=10.0)
    assert budget.progress(50, 1.0) == 0.5 and budget.progress(10, 8.0) == 0.8 and budget.progress(200, 0) == 1.0


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    peak, warmup, floor = 1.0, 0.1, 0.1
    assert learning_rate(peak, 0.05, warmup, floor) == pytest.approx(0.5)
    assert learning_rate(peak, 0.1, warmup, floor) == pytest.approx(1.0)
    middle = 0.1 + 0.9 / 2
    assert learning_rate(peak, middle, warmup, floor) == pytest.approx(floor + (1 - floor) * 0.5)
    assert learning_rate(peak, 1.0, warmup, floor) == pytest.approx(floor)


# ---------------------------------------------------------------------------------------------
# normal runs

CONFIG = TrainConfig(d_model=16, layers=1, budget=Budget(steps=6), batch_size=8)


def test_fixed_seeds_give_identical_results_and_another_seed_does_not():
    a = train(TINY, SMALL_MQAR, CONFIG)
    b = train(TINY, SMALL_MQAR, CONFIG)
    c = train(TINY, SMALL_MQAR, TrainConfig(d_model=16, layers=1, budget=Budget(steps=6), batch_size=8, seed=1))
    assert a.ok and a.steps == 6
    assert a.metrics == b.metrics
    assert a.metrics != c.metrics
    assert set(a.metrics) >= {"train/loss", "val/accuracy", "test/accuracy", "val/loss", "test/loss"}


# ---------------------------------------------------------------------------------------------
# devices and precision


def test_device_and_precision_are_checked_when_the_config_is_made():
    assert (TrainConfig().device, TrainConfig().precision) == ("auto", "fp32")
    for changes, message in [(dict(device="tpu"), "device must be one of auto, cpu, cuda"),
                             (dict(precision="fp16"), "precision must be one of fp32, bf16"),
                             (dict(device="cpu", precision="bf16"), "precision bf16 needs a CUDA device")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            TrainConfig(**changes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only behaviour")
def test_auto_trains_on_the_cpu_without_cuda_and_cuda_or_bf16_are_refused_not_run(monkeypatch):
    import importlib

    trainer = importlib.import_module("einsearch.train")  # the module (einsearch.train is also the function)
    seen = []
    real = trainer.autocast
    monkeypatch.setattr(trainer, "autocast", lambda precision: seen.append(precision) or real(precision))
    result = train(TINY, SMALL_MQAR, replace(CONFIG, budget=Budget(steps=2)))
    assert result.ok and result.device == "cpu"
    assert seen.count("fp32") == 2 + 2  # every step's forward pass and each evaluation (val, test) go through autocast
    for changes in (dict(device="cuda"), dict(precision="bf16")):  # the caller's problem: raised, never a silent CPU fp32 run
        with pytest.raises(ValueError, match="CUDA device"):
            train(TINY, SMALL_MQAR, replace(CONFIG, **changes))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_in_fp32_and_bf16():
    from einsearch.train import autocast

    with autocast("bf16"):
        assert (torch.ones(4, 4, device="cuda") @ torch.ones(4, 4, device="cuda")).dtype == torch.bfloat16
    results = {p: train("transformer", SMALL_MQAR, replace(CONFIG, device="cuda", precision=p, budget=Budget(steps=20))) for p in ("fp32", "bf16")}
    for precision, result in results.items():
        assert result.ok, (precision, result.detail)
        assert result.device.startswith("cuda:") and math.isfinite(result.metrics["test/loss"])
    auto = train(TINY, SMALL_MQAR, replace(CONFIG, device="auto"))
    assert auto.ok and auto.device.startswith("cuda:")


def test_result_reports_costs_of_the_whole_model_and_uses_one_thread():
    torch.set_num_threads(2)
    result = train("transformer", SMALL_MQAR, CONFIG)
    assert torch.get_num_threads() == 1
    model = get_task(SMALL_MQAR).model(einsearch.seeds["transformer"], 16, 1)
    expected = einsearch.costs(model, 16)
    assert result.costs == expected.as_dict()
    assert result.costs["params"] == sum(p.numel() for p in model.parameters())
    block = einsearch.build(einsearch.seeds["transformer"], 16)
    head = 2 * 16 * 32
    assert result.costs["flops_per_token"] == pytest.approx(block.flops(16) / 16 + head)
    assert result.costs["state_size"] == block.state_size(16)
    assert result.arch == einsearch.seeds["transformer"].text and result.task == SMALL_MQAR


def test_training_lowers_the_loss():
    """Even without recall, the model learns that targets are values (the upper half of the
    vocabulary): the loss must fall well below the uniform ln(32)."""
    config = TrainConfig(d_model=16, layers=1, budget=Budget(steps=40), batch_size=16, lr=1e-2)
    result = train("transformer", SMALL_MQAR, config)
    assert result.ok, result.detail
    assert result.metrics["train/loss"] < math.log(32) - 0.3 and result.metrics["val/loss"] < math.log(32) - 0.3


def test_a_seconds_budget_stops_in_time():
    result = train(TINY, SMALL_MQAR, TrainConfig(d_model=8, layers=1, budget=Budget(seconds=0.3), batch_size=4))
    assert result.ok and result.steps >= 1 and result.seconds < 5


def test_callback_sees_validation_metrics_and_can_stop_early():
    seen = []

    def callback(step, metrics):
        seen.append((step, metrics["accuracy"]))
        return step >= 4

    config = TrainConfig(d_model=8, layers=1, budget=Budget(steps=100), batch_size=4, eval_every=2)
    result = train(TINY, SMALL_MQAR, config, callback=callback)
    assert result.ok and result.reason == "stopped" and result.steps == 4
    assert [s for s, _ in seen] == [2, 4] and [h["step"] for h in result.history] == [2, 4]
    assert "val/accuracy" in result.metrics and "test/accuracy" not in result.metrics


def test_json_round_trip_and_non_finite_numbers_become_null():
    result = train(TINY, STRETCHY_MQAR, replace(CONFIG, eval_lengths=(1, 2)))
    data = json.loads(result.to_json())
    assert {"status", "reason", "metrics", "costs", "steps", "seconds", "lengths"} <= set(data)
    assert [row["factor"] for row in data["lengths"]] == [1, 2]
    assert TrainResult.from_dict(data) == result
    del data["lengths"]  # a record from before eval_lengths
    assert TrainResult.from_dict(data) == replace(result, lengths=())
    odd = TrainResult(status="failed", reason="nan", metrics={"x": float("nan")}, costs=None, steps=1, seconds=0.1)
    assert json.loads(odd.to_json())["metrics"]["x"] is None


# ---------------------------------------------------------------------------------------------
# tested at multiples of the training length (eval_lengths)


def test_eval_lengths_test_the_trained_weights_at_each_multiple_of_the_length(tmp_path):
    config = replace(CONFIG, eval_lengths=(1, 2, 4), weights_path=str(tmp_path / "w.safetensors"))
    result = train("transformer", STRETCHY_MQAR, config)
    assert result.ok, result.detail
    assert [(row["factor"], row["tokens"]) for row in result.lengths] == [(1, 16), (2, 32), (4, 64)]
    at_one = result.lengths[0]
    assert {k: at_one[k] for k in ("loss", "accuracy", "exact")} == {k: result.metrics[f"test/{k}"] for k in ("loss", "accuracy", "exact")}
    # by hand: the saved weights on the test split of the task written at twice the length
    from safetensors.torch import load_file

    longer = get_task("mqar:vocab=128,seq_len=32,pairs=2,train=1,val=1,test=8")  # test: ⌈16 / 2⌉
    model = longer.model(einsearch.seeds["transformer"], 16, 1)
    model.load_state_dict(load_file(tmp_path / "w.safetensors"))
    model.eval()
    inputs, targets = longer.data().test.tensors
    with torch.no_grad():
        logits = model(inputs.long())  # (8, 32, 128)
    scored = targets != -100
    accuracy = (logits.argmax(-1)[scored] == targets[scored]).float().mean().item()
    loss = torch.nn.functional.cross_entropy(logits[scored], targets[scored].long()).item()
    assert result.lengths[1]["accuracy"] == pytest.approx(accuracy) and result.lengths[1]["loss"] == pytest.approx(loss, rel=1e-5)


def test_a_failure_at_one_length_is_recorded_and_the_run_stays_ok(monkeypatch):
    honest = MQAR.evaluate

    def fragile(self, model, split):
        if self.seq_len == 32:
            return {"loss": float("nan"), "accuracy": 0.0, "exact": 0.0}
        if self.seq_len == 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return honest(self, model, split)

    monkeypatch.setattr(MQAR, "evaluate", fragile)
    result = train(TINY, STRETCHY_MQAR, replace(CONFIG, eval_lengths=(1, 2, 4)))
    assert result.ok and math.isfinite(result.metrics["test/accuracy"])
    reasons = [row.get("reason") for row in result.lengths]
    assert reasons == [None, "nan", "oom"] and "accuracy" not in result.lengths[1]
    assert TrainResult.from_dict(json.loads(result.to_json())) == result


def test_eval_lengths_of_a_task_without_a_length_raise_before_training():
    with pytest.raises(TaskError, match="faulty has no sequence length option"):
        train(TINY, Faulty(), replace(FAULT_CONFIG, eval_lengths=(2,)))
    with pytest.raises(TaskError, match="vocab \\(32\\) must exceed seq_len \\(32\\)"):
        train(TINY, SMALL_MQAR, replace(CONFIG, eval_lengths=(1, 2)))
    with pytest.raises(ValueError, match="at least 1"):
        TrainConfig(eval_lengths=(0, 2))


# ---------------------------------------------------------------------------------------------
# failures, each injected through a tiny task


@dataclass(frozen=True)
class Faulty(Task):
    """Next-step regression on random data whose loss misbehaves on demand at step `at`."""

    name: ClassVar[str] = "faulty"
    summary: ClassVar[str] = "test task"
    metric: ClassVar[str] = "loss"
    mode: ClassVar[str] = "min"
    budget: ClassVar[Budget] = Budget(steps=5)
    batch_size: ClassVar[int] = 4
    lr: ClassVar[float] = 1e-3

    fault: str = "none"
    at: int = 2

    @property
    def tokens(self) -> int:
        return 4

    def make_data(self) -> Splits:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(16, 5, 3, generator=g)
        examples = Examples(x[:, :-1], x[:, 1:])
        return Splits(examples, examples, examples)

    def model(self, arch, d_model, layers):
        model = NextStepModel(build_blocks(arch, d_model, layers), d_model, 3)
        model.calls = 0
        return model

    def loss(self, model, batch):
        inputs, targets = batch
        loss = (model(inputs) - targets).pow(2).mean()
        model.calls += 1
        if model.calls <= self.at:
            return loss
        if self.fault == "nan":
            return loss * float("nan")
        if self.fault == "grow":
            return loss * 1e6
        if self.fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.fault == "runtime_oom":
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: out of memory")
        if self.fault == "memory":
            raise MemoryError()
        if self.fault == "error":
            raise ValueError("shapes do not match")
        return loss

    def evaluate(self, model, split):
        value = sum((model(x) - y).pow(2).mean().item() for x, y in split.batches(8))
        return {"loss": value * (float("nan") if self.fault == "nan_metric" else 1.0)}


FAULT_CONFIG = TrainConfig(d_model=8, layers=1, batch_size=4)


@pytest.mark.parametrize(
    "fault,reason",
    [("nan", "nan"), ("nan_metric", "nan"), ("grow", "diverged"), ("oom", "oom"), ("runtime_oom", "oom"),
     ("memory", "oom"), ("error", "error")],
)  # fmt: skip
def test_each_failure_is_a_result_with_its_reason(fault, reason):
    result = train(TINY, Faulty(fault=fault), FAULT_CONFIG)
    assert result.status == "failed" and result.reason == reason, result.detail
    assert result.detail and result.costs is not None
    json.loads(result.to_json())


def test_no_fault_runs_to_the_end():
    result = train(TINY, Faulty(), FAULT_CONFIG)
    assert result.ok and result.steps == 5 and math.isfinite(result.metrics["test/loss"])


def test_build_errors_are_results():
    heads = train("attn(softmax, heads=3, pos=rope)", Faulty(), FAULT_CONFIG)
    assert heads.reason == "build_error" and "BuildError" in heads.detail and heads.costs is None
    syntax = train("attn(softmax, heads=", Faulty(), FAULT_CONFIG)
    assert syntax.status == "failed" and syntax.reason == "build_error"


def test_any_exception_while_building_is_a_build_error(monkeypatch):
    def broken(self, arch, d_model, layers):
        raise ImportError("einsearch.primitives.recurrent is not there yet")

    monkeypatch.setattr(Faulty, "model", broken)
    result = train(TINY, Faulty(), FAULT_CONFIG)
    assert result.reason == "build_error" and "ImportError" in result.detail


def test_timeout():
    config = TrainConfig(d_model=8, layers=1, batch_size=4, budget=Budget(steps=10_000), time_limit=1e-6)
    result = train(TINY, Faulty(), config)
    assert result.status == "failed" and result.reason == "timeout" and result.steps == 0


def test_task_errors_are_raised_not_reported(tmp_path):
    with pytest.raises(TaskError):
        train(TINY, f"csv:{tmp_path}/absent.csv", FAULT_CONFIG)


# ---------------------------------------------------------------------------------------------
# command line

runner = CliRunner()


def test_cli_train_json():
    result = runner.invoke(app, ["train", "transformer", "--task", SMALL_MQAR, "--budget", "3steps", "--d-model", "16", "--layers", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "ok" and data["steps"] == 3 and data["costs"]["params"] > 0


def test_cli_train_table():
    result = runner.invoke(app, ["train", TINY, "--task", SMALL_MQAR, "--budget", "2steps", "--d-model", "8"])
    assert result.exit_code == 0, result.output
    assert "test/accuracy" in result.stdout and "parameters" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [(["--task", "nosuch"], "unknown task"), (["--task", SMALL_MQAR, "--budget", "soon"], "budget"),
     (["--task", "csv:/no/such.csv"], "no such file"), (["--task", "mqar:seq_len=7"], "even")],
)  # fmt: skip
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, ["train", TINY, *args])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_bad_architecture_is_exit_2():
    result = runner.invoke(app, ["train", "attn(softmax", "--task", SMALL_MQAR])
    assert result.exit_code == 2 and "error" in result.stderr


def test_cli_failed_candidate_is_exit_1():
    result = runner.invoke(app, ["train", "attn(softmax, heads=3, pos=rope)", "--task", SMALL_MQAR, "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["reason"] == "build_error"


def test_cli_tasks_lists_every_task_and_its_options():
    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0
    for name in ("mqar", "recall", "fuzzy_recall", "noisy_recall", "selective_copy", "compression",
                 "memorization", "mad", "passkey", "lm", "lorenz96", "ks", "csv"):  # fmt: skip
        assert name in result.stdout
    assert "horizon" in result.stdout and "power_a" in result.stdout


def test_cli_train_eval_lengths_json_table_and_plot(tmp_path):
    args = ["train", TINY, "--task", STRETCHY_MQAR, "--budget", "2steps", "--d-model", "8", "--layers", "1", "--eval-lengths", "4,1,2,2"]
    result = runner.invoke(app, [*args, "--json", "--plot", str(tmp_path / "curve.png")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout holds the JSON only; "wrote ..." goes to stderr
    assert [(row["factor"], row["tokens"]) for row in data["lengths"]] == [(1, 16), (2, 32), (4, 64)]  # sorted, once each
    assert data["lengths"][0]["accuracy"] == data["metrics"]["test/accuracy"]
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "curve.png" in result.stderr
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "test accuracy against length" in table.stdout
    assert [line.split()[:2] for line in table.stdout.splitlines() if line.strip()[:2] in ("×1", "×2", "×4")] == [["×1", "16"], ["×2", "32"], ["×4", "64"]]


@pytest.mark.parametrize(
    "args,message",
    [(["--task", STRETCHY_MQAR, "--eval-lengths", "0,2"], "--eval-lengths '0,2': expected whole numbers of at least 1"),
     (["--task", STRETCHY_MQAR, "--eval-lengths", "1,,2"], "expected whole numbers"),
     (["--task", STRETCHY_MQAR, "--eval-lengths", "two"], "expected whole numbers"),
     (["--task", STRETCHY_MQAR, "--eval-lengths", "1.5"], "expected whole numbers"),
     (["--task", "lorenz96", "--eval-lengths", "1,2"], "lorenz96 has no sequence length option, so it cannot be tested at other lengths (tasks with a length option: mqar, "),
     (["--task", SMALL_MQAR, "--eval-lengths", "1,2"], "--eval-lengths 2: mqar: vocab (32) must exceed seq_len (32)"),
     (["--task", STRETCHY_MQAR, "--plot", "x.png"], "--plot draws the test metric against length: it needs --eval-lengths"),
     (["--task", STRETCHY_MQAR, "--eval-lengths", "1", "--plot", "/no/such/folder/x.png"], "no such folder")],
)  # fmt: skip
def test_cli_bad_eval_lengths_are_one_line_and_exit_2(args, message):
    result = runner.invoke(app, ["train", TINY, "--budget", "1steps", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
