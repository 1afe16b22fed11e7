"""Pointer networks (sort, hull) against independent truth: Python's sorted, Andrew's monotone-chain
hull, hand-worked greedy decodings, and the paper's pointer formula written out as a loop."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import einsearch
from einsearch.grammar.seeds import resolve
from einsearch.tasks import Examples, TaskError, get_task
from einsearch.tasks.language import IGNORE
from einsearch.tasks.pointer import greedy_decode, hull_targets
from einsearch.tasks.shell import PointerModel
from einsearch.tasks.shell import build_blocks

ATTENTION = einsearch.parse("res(seq(norm(rms), attn(softmax, heads=2, pos=rope)))")


def monotone_chain(points):
    """Andrew's monotone chain: strict hull vertices counter-clockwise from the lowest-x (then
    lowest-y) point, as indices."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(indices):
        chain = []
        for i in indices:
            while len(chain) >= 2 and cross(points[chain[-2]], points[chain[-1]], points[i]) <= 0:
                chain.pop()
            chain.append(i)
        return chain

    lower, upper = half(order), half(reversed(order))
    return lower[:-1] + upper[:-1]


def signed_area(polygon):
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(polygon, polygon[1:] + polygon[:1])) / 2


def output(row):
    """A target row's pointers through END."""
    row = [int(v) for v in row]
    return row[: row.index(IGNORE)] if IGNORE in row else row


# ---------------------------------------------------------------- targets


def test_sort_targets_are_pythons_sorted_positions_then_end():
    task = get_task("sort:n=6,test_n=9,train=50,val=5,test=20")
    for split, n in ((task.data().train, 6), (task.data().test, 9)):
        points, targets = split.tensors
        assert points.shape[1:] == (n, 1) and targets.shape[1:] == (n + 1,)
        for values, row in zip(points[:, :, 0].tolist(), targets.tolist()):
            assert row == sorted(range(n), key=values.__getitem__) + [n]


def test_hull_targets_of_hand_worked_examples():
    # a square given clockwise from (1, 0), its centre first, and a point on its bottom edge
    square = [(0.5, 0.5), (1, 0), (1, 1), (0, 1), (0, 0), (0.5, 0)]
    # a triangle given clockwise from its lowest index
    triangle = [(0, 0), (0, 1), (1, 0)]
    assert output(hull_targets(np.array([square], dtype=np.float32))[0]) == [1, 2, 3, 4, 6]
    assert output(hull_targets(np.array([triangle], dtype=np.float32))[0]) == [0, 2, 1, 3]


def test_hull_targets_match_the_monotone_chain_counter_clockwise_from_the_lowest_index():
    task = get_task("hull:n=8,test_n=13,train=200,val=5,test=100,seed=2")
    for split, n in ((task.data().train, 8), (task.data().test, 13)):
        points, targets = split.tensors
        for xy, row in zip(points.double().tolist(), targets.tolist()):
            hull = monotone_chain(xy)
            first = hull.index(min(hull))
            expected = hull[first:] + hull[:first]
            assert output(row) == expected + [n]
            assert row[len(expected) + 1 :] == [IGNORE] * (n - len(expected))
            assert row[0] == min(expected) and signed_area([xy[i] for i in expected]) > 0


# ---------------------------------------------------------------- model


def tiny_model(dim=2, d_model=8):
    torch.manual_seed(0)
    return PointerModel(build_blocks(ATTENTION, d_model, 1), d_model, dim)


def test_pointer_head_is_the_papers_additive_attention_over_the_inputs_and_end_only():
    model = tiny_model()
    points, fed = torch.rand(2, 4, 2), torch.tensor([[3, 0, 4], [1, 2, 0]])  # 4: END fed back
    trunk = {}
    model.norm.register_forward_hook(lambda module, args, out: trunk.setdefault("h", out))
    logits = model(points, fed)
    assert logits.shape == (2, 4, 5)  # 3 + 1 decoder steps, over 4 points and END
    h, head = trunk["h"], model.head
    assert h.shape == (2, 4 + 1 + 3, 8)
    for b in range(2):
        for i in range(4):
            for j in range(5):  # keys: the points and the go position, never a decoder step
                u = head.v.weight[0] @ torch.tanh(head.w1.weight @ h[b, j] + head.w2.weight @ h[b, 4 + i])
                assert logits[b, i, j].item() == pytest.approx(u.item(), abs=1e-5)


def test_later_feedback_leaves_earlier_steps_alone_and_the_shell_takes_any_length():
    model = tiny_model()
    points = torch.rand(3, 5, 2)
    a = model(points, torch.tensor([[1, 2, 3]] * 3))
    b = model(points, torch.tensor([[1, 4, 0]] * 3))
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-6) and not torch.allclose(a[:, 2:], b[:, 2:])
    for n in (1, 3, 17):
        assert model(torch.rand(2, n, 2), torch.zeros(2, n, dtype=torch.long)).shape == (2, n + 1, n + 1)


class Successor(nn.Module):
    """Points to the successor of the pointer it was fed last (0 at the first step)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, points, fed):
        n = points.shape[1]
        last = torch.cat([torch.full((len(fed), 1), -1), fed], dim=1)  # (B, S + 1)
        return 10.0 * nn.functional.one_hot((last + 1) % (n + 1), n + 1).float()


def test_greedy_decoding_feeds_back_its_own_choices_and_stops_at_end():
    decoded = greedy_decode(Successor(), torch.rand(2, 3, 1))
    assert decoded.tolist() == [[0, 1, 2, 3]] * 2
    decoded = greedy_decode(Successor(), torch.rand(1, 2, 1))
    assert decoded.tolist() == [[0, 1, 2]]


def test_metrics_of_forced_pointer_logits_match_a_hand_count(monkeypatch):
    """The head is forced to point at scripted positions whatever it reads; greedy decoding and
    the metrics are counted by hand (n = 3, END = 3)."""
    script = torch.tensor([[2, 0, 1, 3], [0, 2, 1, 3], [1, 3, 0, 0], [0, 3, 1, 2], [1, 2, 3, 0]])
    targets = torch.tensor([[2, 0, 1, 3], [0, 1, 2, 3], [1, 2, 0, 3], [0, 3, IGNORE, IGNORE], [1, 3, IGNORE, IGNORE]])
    model = tiny_model(dim=1)
    monkeypatch.setattr(model.head, "forward", lambda keys, queries: 10.0 * nn.functional.one_hot(script[:, : queries.shape[1]], 4).float())
    split = Examples(torch.rand(5, 3, 1), targets.to(torch.int8))
    metrics = get_task("sort:n=3").evaluate(model.eval(), split)
    # greedy outputs, cut at the first END: [2 0 1 3] [0 2 1 3] [1 3] [0 3] [1 2 3]
    # right steps: 4 of 4, 2 of 4, 1 of 4, 2 of 2, 1 of 2; exact: the first and the fourth
    assert metrics["accuracy"] == pytest.approx(10 / 16)
    assert metrics["exact"] == pytest.approx(2 / 5)
    # teacher forcing scores the script itself: right at 4 + 2 + 2 + 2 + 1 = 11 of 16 steps
    normaliser = math.log(math.exp(10) + 3)
    assert metrics["loss"] == pytest.approx((11 * (normaliser - 10) + 5 * normaliser) / 16, rel=1e-5)


# ---------------------------------------------------------------- the task contract


@pytest.mark.parametrize("spec", ["sort:n=4,test_n=6,train=64,val=8,test=8,seed=3", "hull:n=5,train=64,val=8,test=8,seed=3"])
def test_task_contract(spec, tmp_path, monkeypatch):
    task = get_task(spec)
    assert task.spec == spec and get_task(task.spec) == task
    assert (task.metric, task.mode) == ("accuracy", "max") and task.tokens == 2 * task.n + 1
    data = task.make_data()
    monkeypatch.setenv("EINSEARCH_CACHE", str(tmp_path / "other"))  # generated again, not read back
    again = task.make_data()
    other = get_task(spec.replace("seed=3", "seed=4")).make_data()
    for split in ("train", "val", "test"):
        for mine, same, theirs in zip(getattr(data, split).tensors, getattr(again, split).tensors, getattr(other, split).tensors):
            assert torch.equal(mine, same) and not torch.equal(mine, theirs)
    assert data.test.tensors[0].shape[1] == (6 if task.name == "sort" else 10)  # test_n, 2n by default

    torch.manual_seed(0)
    model = task.model(resolve("transformer"), 16, 1)
    loss = task.loss(model, data.train.sample(8, torch.Generator().manual_seed(0)))
    assert torch.isfinite(loss) and loss.item() > 0
    with torch.no_grad():
        metrics = task.evaluate(model.eval(), data.test)
    assert set(metrics) == {"loss", "accuracy", "exact"}
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["exact"] <= 1 and math.isfinite(metrics["loss"])


def test_longer_tasks_scale_the_training_and_the_test_points_together():
    assert get_task("sort:n=4,seed=2").at_length(1) == get_task("sort:n=4,test_n=8,seed=2")
    assert get_task("hull:n=4,test_n=6").at_length(3) == get_task("hull:n=12,test_n=18")
    assert get_task("sort:n=4,test_n=6,test=5").at_length(2).make_data().test.tensors[0].shape == (5, 12, 1)
    with pytest.raises(TaskError, match="option test_n must be >= 0 and <= 1,024, got 1200"):
        get_task("hull:n=300").at_length(2)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("hull:n=2", "option n must be >= 3"),
        ("hull:test_n=2", "test_n must be 0"),
        ("sort:n=0", "option n must be >= 1"),
        ("sort:val=0", "option val must be >= 1"),
        ("sort:n=1024,train=1000000000", "GiB"),
    ],
)
def test_bad_options_raise_one_line_task_errors(spec, message):
    with pytest.raises(TaskError, match=message) as error:
        get_task(spec)
    assert "\n" not in str(error.value)
