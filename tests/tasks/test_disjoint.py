"""Set disjointness against its definition (JRT, Arora et al. 2024, Sec. 3): the answer is
recomputed with Python sets from the tokens; classes are balanced, an intersection is one shared
element placed uniformly, the order option decides which set comes first."""

import numpy as np
import pytest
import torch
from torch import nn

import einsearch
from einsearch.tasks import TaskError, get_task
from einsearch.tasks.disjoint import ASK, NO, SEP, YES, disjoint_sets
from einsearch.tasks.language import IGNORE


def generate(seed=0, n=400, vocab=64, small=3, large=9, order="small_first"):
    return disjoint_sets(np.random.default_rng(seed), n, vocab, small, large, order)


def read(row: np.ndarray) -> tuple[list[int], list[int]]:
    """The two sets of an input row, first and second, as written."""
    assert row[-1] == ASK and (row == SEP).sum() == 1
    sep = int(np.flatnonzero(row == SEP)[0])
    return row[:sep].tolist(), row[sep + 1 : -1].tolist()


@pytest.mark.parametrize("order", ["small_first", "large_first", "random"])
def test_answers_are_set_disjointness_recomputed_with_python_sets(order):
    inputs, targets = generate(order=order)
    assert inputs.shape == targets.shape == (400, 3 + 9 + 2)
    assert (targets[:, :-1] == IGNORE).all()
    firsts = []
    for row, target in zip(inputs, targets):
        first, second = read(row)
        assert len(set(first)) == len(first) and len(set(second)) == len(second)  # sets: no repeats
        assert min(first + second) >= 4 and max(first + second) < 64  # no special token inside
        assert sorted([len(first), len(second)]) == [3, 9]
        shared = set(first) & set(second)
        assert len(shared) <= 1
        assert target[-1] == (YES if not shared else NO)
        firsts.append(len(first))
    if order == "small_first":
        assert set(firsts) == {3}
    elif order == "large_first":
        assert set(firsts) == {9}
    else:
        assert 150 < firsts.count(3) < 250


@pytest.mark.parametrize("n", [400, 401])
def test_classes_are_balanced(n):
    _, targets = generate(n=n)
    assert (targets[:, -1] == NO).sum() == n // 2 and (targets[:, -1] == YES).sum() == n - n // 2


def test_the_shared_element_is_placed_uniformly_in_both_sets():
    small, large = 3, 6
    inputs, targets = generate(n=6000, small=small, large=large, vocab=32)
    where_small, where_large = [], []
    for row in inputs[targets[:, -1] == NO]:
        first, second = read(row)
        (token,) = set(first) & set(second)
        where_small.append(first.index(token))
        where_large.append(second.index(token))
    assert np.abs(np.bincount(where_small, minlength=small) / len(where_small) - 1 / small).max() < 0.03
    assert np.abs(np.bincount(where_large, minlength=large) / len(where_large) - 1 / large).max() < 0.03


class Oracle(nn.Module):
    """Logits that answer with Python sets (or always YES): the metric must score them 1 and 1/2."""

    def __init__(self, vocab: int, always_yes: bool = False):
        super().__init__()
        self.vocab, self.always_yes = vocab, always_yes
        self.weight = nn.Parameter(torch.zeros(1))  # so that the metric can find the device

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, self.vocab)
        for b, row in enumerate(tokens.numpy()):
            first, second = read(row)
            answer = YES if self.always_yes or not set(first) & set(second) else NO
            logits[b, -1, answer] = 1.0
        return logits


def test_accuracy_is_scored_at_the_answer_only():
    task = get_task("disjoint:vocab=32,train=10,val=10,test=40")
    test = task.data().test
    assert task.evaluate(Oracle(32), test)["accuracy"] == 1.0
    assert task.evaluate(Oracle(32, always_yes=True), test)["accuracy"] == 0.5


def test_task_contract_spec_determinism_and_a_finite_loss():
    spec = "disjoint:small=2,large=5,order=large_first,vocab=32,train=20,val=8,test=8,seed=3"
    task = get_task(spec)
    assert task.spec == spec and get_task(task.spec) == task and task.tokens == 9
    again = get_task(spec).make_data().train.tensors[0]
    other = get_task(spec.replace("seed=3", "seed=4")).make_data().train.tensors[0]
    assert torch.equal(task.data().train.tensors[0], again) and not torch.equal(again, other)
    assert get_task("disjoint").small == 4 and get_task("disjoint").large == 16
    torch.manual_seed(0)
    model = task.model(einsearch.seeds["transformer"], 16, 1)
    loss = task.loss(model, task.data().train.sample(4, torch.Generator().manual_seed(0)))
    assert torch.isfinite(loss) and loss.requires_grad


@pytest.mark.parametrize(
    "spec", ["disjoint:small=5,large=4", "disjoint:small=0", "disjoint:vocab=16,small=6,large=8", "disjoint:order=middle"]
)
def test_bad_options_raise_task_error(spec):
    with pytest.raises(TaskError):
        get_task(spec)
