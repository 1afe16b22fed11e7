"""`TaskContract`: the tests every task inherits (as Optuna's `BasicSamplerTestCase` is for its
samplers, and `tests/contract.py`'s `PrimitiveContract` for the primitives).

A test class sets `spec`, the task at tiny options (``{dir}`` in it stands for a temporary
folder, into which `write_files` writes the small files that csv, seqrec and lm read), and gets:

* the spec round-trips through `get_task` (text -> task -> text -> an equal task);
* the same seed gives the same data, generated afresh (not read back from the cache); and where
  the task has a ``seed`` option, another seed gives other data;
* no split is empty, and training batches have the size asked for;
* a tiny model's loss on a training batch is a finite scalar, and backward gives every
  parameter a finite gradient;
* ``evaluate`` returns the task's declared `metric`, finite, on the val and test splits, and the
  task declares a direction (`mode`: max or min);
* the shell's recorded ``options`` rebuild the model as `einsearch.export` does (the shell class
  called with fresh blocks, d_model and the options): the same parameter and buffer shapes, and
  with the same weights the same loss; every option is a literal that export can write.

A suite (`einsearch.tasks.base.Suite`) has no data or model of its own: the checks that need data
run on each of its members, made tiny by `member_options` (options appended to each member's own
spec, so the suite's seed stays), its metric is checked through `Suite.aggregate` of the
members' metrics; `SuiteContract` adds that it refuses data, loss and evaluation of its own,
shares its budget among its members, and passes its seed on to them.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import einsearch
from einsearch.tasks import Task, TaskError, get_task
from einsearch.tasks.base import Suite
from einsearch.tasks.registry import TASKS
from einsearch.tasks.shell import build_blocks

# A block with weights, norms and positions (RoPE needs an even head size: 8 / 2 heads = 4).
ARCH = "res(seq(norm(rms), attn(softmax, heads=2, pos=rope)))"
SPLITS = ("train", "val", "test")


def with_options(spec: str, options: str) -> str:
    """`spec` with `options` (``a=1,b=2``) appended."""
    if not options:
        return spec
    return f"{spec},{options}" if ":" in spec else f"{spec}:{options}"


def split_tensors(split, batch_size: int = 64) -> list[torch.Tensor]:
    """Every tensor of a split, in order: its evaluation batches."""
    return [t for batch in split.batches(batch_size) for t in batch]


def same_tensors(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


class TaskContract:
    spec: ClassVar[str]
    member_options: ClassVar[dict[str, str]] = {}  # a suite: options appended to each member's spec
    arch: ClassVar[str] = ARCH
    d_model: ClassVar[int] = 8
    layers: ClassVar[int] = 1
    batch: ClassVar[int] = 2

    def write_files(self, folder: Path) -> None:
        """Write the files that `spec` names under ``{dir}`` (none by default)."""

    # ------------------------------------------------------------------------- fixtures, helpers

    @pytest.fixture
    def task(self, tmp_path: Path) -> Task:
        folder = tmp_path / "files"
        folder.mkdir()
        self.write_files(folder)
        return get_task(self.spec.format(dir=folder))

    def units(self, task: Task) -> list[Task]:
        """The tasks with data and a model: the task itself, or a suite's members made tiny."""
        if not isinstance(task, Suite):
            return [task]
        missing = {m.name for m in task.members} - set(self.member_options)
        assert not missing, f"member_options lacks tiny options for {', '.join(sorted(missing))}"
        return [get_task(with_options(m.spec, self.member_options[m.name])) for m in task.members]

    def tiny_model(self, task: Task) -> torch.nn.Module:
        torch.manual_seed(0)
        return task.model(einsearch.parse(self.arch), self.d_model, self.layers)

    def train_batch(self, task: Task) -> tuple[torch.Tensor, ...]:
        return task.data().train.sample(self.batch, torch.Generator().manual_seed(0))

    # ------------------------------------------------------------------------------------ checks

    def test_spec_round_trips_through_get_task(self, task):
        assert type(task) is TASKS[task.name]
        assert task.spec != task.name, "the contract should run at tiny options, not the defaults"
        again = get_task(task.spec)
        assert again == task and hash(again) == hash(task)
        assert again.spec == task.spec
        for unit in self.units(task):
            assert get_task(unit.spec) == unit and get_task(unit.spec).spec == unit.spec

    def test_same_seed_same_data(self, task, tmp_path, monkeypatch):
        for unit in self.units(task):
            data = unit.make_data()
            monkeypatch.setenv("EINSEARCH_CACHE", str(tmp_path / f"again-{unit.name}"))  # generated again, not read back
            again = unit.make_data()
            for name in SPLITS:
                mine, same = getattr(data, name), getattr(again, name)
                assert same_tensors(split_tensors(mine), split_tensors(same)), f"{unit.spec}: {name} differs"
                draws = [split.sample(self.batch, torch.Generator().manual_seed(5)) for split in (mine, same)]
                assert same_tensors(*map(list, draws)), f"{unit.spec}: {name} samples differ"
            if "seed" in {f.name for f in dataclasses.fields(unit)}:
                other = dataclasses.replace(unit, seed=unit.seed + 1).make_data()
                assert any(
                    not same_tensors(split_tensors(getattr(data, name)), split_tensors(getattr(other, name))) for name in SPLITS
                ), f"{unit.spec}: another seed gives the same data"

    def test_no_split_is_empty(self, task):
        for unit in self.units(task):
            data = unit.data()
            for name in SPLITS:
                split = getattr(data, name)
                batches = list(split.batches(64))
                assert batches and all(batch and all(len(t) for t in batch) for batch in batches), f"{unit.spec}: {name} is empty"
                sample = split.sample(self.batch, torch.Generator().manual_seed(0))
                assert sample and all(len(t) == self.batch for t in sample), f"{unit.spec}: {name} samples the wrong batch size"

    def test_loss_is_finite_with_finite_gradients(self, task):
        for unit in self.units(task):
            model = self.tiny_model(unit)
            loss = unit.loss(model, self.train_batch(unit))
            assert loss.dim() == 0 and torch.isfinite(loss), f"{unit.spec}: loss {loss}"
            loss.backward()
            for name, p in model.named_parameters():
                assert p.grad is not None, f"{unit.spec}: {name} gets no gradient"
                assert torch.isfinite(p.grad).all(), f"{unit.spec}: {name} has a non-finite gradient"

    def test_evaluate_returns_the_declared_metric(self, task):
        assert task.mode in ("max", "min") and task.metric
        results = []
        for unit in self.units(task):
            assert (unit.metric, unit.mode) == (task.metric, task.mode), f"{unit.spec} reports another metric than {task.spec}"
            model = self.tiny_model(unit).eval()
            data = unit.data()
            result = {}
            for name in ("val", "test"):
                with torch.no_grad():
                    metrics = unit.evaluate(model, getattr(data, name))
                assert unit.metric in metrics, f"{unit.spec}: {name} metrics {sorted(metrics)} lack {unit.metric}"
                assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), f"{unit.spec}: {metrics}"
                result |= {f"{name}/{k}": v for k, v in metrics.items()}
            results.append(result)
        if isinstance(task, Suite):
            combined = task.aggregate(results)
            for name in ("val", "test"):
                mean = sum(r[f"{name}/{task.metric}"] for r in results) / len(results)
                assert combined[f"{name}/{task.metric}"] == mean
            for member, result in zip(task.members, results):
                assert all(combined[f"{member.name}/{k}"] == v for k, v in result.items())

    def test_shell_options_rebuild_the_model(self, task):
        arch = einsearch.parse(self.arch)
        for unit in self.units(task):
            model = self.tiny_model(unit)
            options = model.options  # what einsearch.export writes into the standalone file
            for key, value in options.items():
                assert ast.literal_eval(repr(value)) == value, f"{unit.spec}: option {key}={value!r} is not a literal"
            rebuilt = type(model)(build_blocks(arch, self.d_model, model.stacks * self.layers), self.d_model, **options)
            shapes = {k: v.shape for k, v in model.state_dict().items()}
            assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes, unit.spec
            rebuilt.load_state_dict(model.state_dict())
            batch = self.train_batch(unit)
            with torch.no_grad():
                assert torch.equal(unit.loss(rebuilt, batch), unit.loss(model, batch)), unit.spec


class SuiteContract(TaskContract):
    """`TaskContract` for a suite, and what a suite adds: members (with tiny `member_options`),
    no data, loss or evaluation of its own, shares of the budget, members that follow its seed."""

    def test_a_suite_has_members_and_nothing_of_its_own(self, task):
        assert isinstance(task, Suite)
        members = task.members
        assert members and len({m.name for m in members}) == len(members)
        for refused in (task.make_data, lambda: task.loss(None, ()), lambda: task.evaluate(None, None)):
            with pytest.raises(TaskError, match="suite"):
                refused()
        budget = task.budget
        share = task.share(budget)
        assert share.steps is not None and share.steps * len(members) <= budget.steps
        assert task.tokens == members[0].tokens
        if "seed" in {f.name for f in dataclasses.fields(task)}:
            other = dataclasses.replace(task, seed=task.seed + 1)
            assert all(m.seed == task.seed + 1 for m in other.members), "the members follow the suite's seed"
