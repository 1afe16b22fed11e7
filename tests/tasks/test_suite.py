"""`Suite`: the members' metrics aggregated, and the trainer seeing a suite only through the task
interface (a suite defined here, unknown to einsearch, trains as MAD does)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import pytest

from einsearch.tasks import Budget, Task, get_task
from einsearch.tasks.base import SEEDS, Suite, option
from einsearch.train import TrainConfig, train

ARCH = "mlp(expand=1, act=relu)"


@dataclass(frozen=True)
class Pair(Suite):
    name: ClassVar[str] = "pair"
    summary: ClassVar[str] = "two tiny MAD tasks"
    metric: ClassVar[str] = "accuracy"
    mode: ClassVar[str] = "max"
    budget: ClassVar[Budget] = Budget(steps=6)
    batch_size: ClassVar[int] = 4
    lr: ClassVar[float] = 1e-3

    seed: int = option(0, "data seed of both members", **SEEDS)

    @property
    def members(self) -> tuple[Task, ...]:
        return (
            get_task(f"recall:seq_len=16,train=32,val=16,test=16,seed={self.seed}"),
            get_task(f"compression:seq_len=8,train=32,val=16,test=16,seed={self.seed}"),
        )


def test_aggregate_names_each_members_metrics_and_averages_the_primary_one():
    metrics = [{"train/loss": 1.0, "val/accuracy": 0.25, "test/accuracy": 0.5}, {"val/accuracy": 0.75, "test/accuracy": 0.0}]
    assert Pair().aggregate(metrics) == {
        "recall/train/loss": 1.0, "recall/val/accuracy": 0.25, "recall/test/accuracy": 0.5,
        "compression/val/accuracy": 0.75, "compression/test/accuracy": 0.0,
        "val/accuracy": 0.5, "test/accuracy": 0.25,
    }  # fmt: skip


def test_aggregate_has_no_mean_where_a_member_lacks_the_metric():
    stopped = {"val/accuracy": 0.5}  # stopped by a callback: validation only
    assert Pair().aggregate([stopped, {}]) == {"recall/val/accuracy": 0.5}  # a failed member reports nothing
    assert Pair().aggregate([stopped, stopped])["val/accuracy"] == 0.5 and "test/accuracy" not in Pair().aggregate([stopped, stopped])
    with pytest.raises(ValueError, match="2 members but metrics of 1"):
        Pair().aggregate([stopped])


def test_share_splits_the_budget_equally():
    assert Pair().share(Budget(steps=7)) == Budget(steps=3)
    assert Pair().share(Budget(seconds=10.0)) == Budget(seconds=5.0)


def test_a_suite_unknown_to_the_trainer_trains_each_member_on_its_share():
    config = TrainConfig(d_model=8, layers=1, budget=Budget(steps=4), batch_size=4)
    result = train(ARCH, Pair(seed=1), config)
    alone = [train(ARCH, member, replace(config, budget=Budget(steps=2))) for member in Pair(seed=1).members]
    assert result.ok and result.task == "pair:seed=1" and (result.metric, result.mode) == ("accuracy", "max")
    assert result.steps == 4 and result.costs == alone[0].costs
    assert result.metrics == Pair(seed=1).aggregate([r.metrics for r in alone])  # bit for bit: the same runs
    assert result.metrics["test/accuracy"] == (alone[0].metrics["test/accuracy"] + alone[1].metrics["test/accuracy"]) / 2


def test_a_failed_member_fails_the_suite_with_its_reason():
    config = TrainConfig(d_model=8, layers=1, budget=Budget(steps=2), batch_size=4)
    result = train("attn(softmax, heads=3, pos=rope)", Pair(), config)  # 3 heads do not divide d_model 8
    assert not result.ok and result.reason == "build_error" and result.detail.startswith("recall: ")
    assert "val/accuracy" not in result.metrics
