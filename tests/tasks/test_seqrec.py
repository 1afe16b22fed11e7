"""Sequential recommendation against SASRec's protocol: a hand-worked log (ordering, ties, dropped
users, re-indexing, leave-one-out splits), hand-ranked HR@10/NDCG@10, negatives outside each
user's items, both file layouts, clear errors, and a planted next-item pattern that a small
transformer learns."""

import math

import numpy as np
import pytest
import torch

import einsearch
from einsearch.tasks import Examples, TaskError, get_task
from einsearch.tasks.seqrec import NEGATIVES, ranking_metrics, sample_negatives
from einsearch.train import Budget, TrainConfig, train

# (user, item, timestamp, rating).  By time: user 7 -> 10, 20, 40 (tied with 20 at t=3, later in
# the file), 30; user 9 -> 50, 20, 10; user 3 -> 40, 10, 20, 30, 30 (a repeat); user 5 has two
# interactions and is dropped, and with it item 60, which only user 5 has.
LOG = [
    (7, 30, 5, 4), (7, 10, 1, 3), (7, 20, 3, 5), (7, 40, 3, 1), (9, 20, 2, 2), (9, 50, 1, 5), (5, 10, 9, 3),
    (5, 60, 8, 3), (3, 40, 1, 4), (3, 10, 2, 4), (3, 20, 3, 4), (3, 30, 4, 4), (3, 30, 5, 1), (9, 10, 4, 4),
]  # fmt: skip
# Items 10, 20, 30, 40, 50 become 1..5; users in increasing id: 3, 7, 9.
SEQUENCES = {3: [4, 1, 2, 3, 3], 7: [1, 2, 4, 3], 9: [5, 2, 1]}


def write_csv(path, rows, header="user,item,timestamp,rating"):
    path.write_text(header + "\n" + "".join(f"{u},{i},{t},{r}\n" for u, i, t, r in rows))
    return path


def write_movielens(path, rows):
    path.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, t, r in rows))
    return path


@pytest.fixture
def hand_log(tmp_path):
    return write_csv(tmp_path / "log.csv", LOG)


def test_sequences_are_time_ordered_ties_in_file_order_short_users_dropped_and_items_reindexed(hand_log):
    task = get_task(f"seqrec:{hand_log},max_len=3")
    data = task.sequences()
    assert data.users.tolist() == [3, 7, 9] and data.items.tolist() == [10, 20, 30, 40, 50]
    assert [s.tolist() for s in data.sequences] == list(SEQUENCES.values())
    info = task.info()
    assert info["users"] == 3 and info["items"] == 5 and info["interactions"] == 12
    assert info["dropped_users_under_3_interactions"] == 1


def test_leave_one_out_splits_by_hand(hand_log):
    splits = get_task(f"seqrec:{hand_log},max_len=3").data()
    # training: users with two training items or more (3 and 7); input s[:-3], target s[1:-2]
    inputs, targets = splits.train.tensors
    assert inputs.tolist() == [[0, 4, 1], [0, 0, 1]]
    assert targets.tolist() == [[0, 1, 2], [0, 0, 2]]
    # validation: the training sequence, then the second-to-last item; test: one item further
    val_inputs, val_candidates = splits.val.tensors
    assert val_inputs.tolist() == [[4, 1, 2], [0, 1, 2], [0, 0, 5]]
    assert val_candidates[:, 0].tolist() == [3, 4, 2]
    test_inputs, test_candidates = splits.test.tensors
    assert test_inputs.tolist() == [[1, 2, 3], [1, 2, 4], [0, 5, 2]]
    assert test_candidates[:, 0].tolist() == [3, 3, 1]
    assert val_candidates.shape == test_candidates.shape == (3, 1 + NEGATIVES)


def test_negatives_are_uniform_over_the_items_each_user_never_had(hand_log):
    splits = get_task(f"seqrec:{hand_log},max_len=3").data()
    for split in (splits.val, splits.test):
        negatives = split.tensors[1][:, 1:]
        assert (negatives[0] == 5).all() and (negatives[1] == 5).all()  # users 3 and 7: only item 5 unseen
        assert set(negatives[2].tolist()) == {3, 4}  # user 9 never had items 3 and 4
    negatives = get_task(f"seqrec:{hand_log},max_len=3,seed=1").data().val.tensors[1][2, 1:]
    assert 25 < (negatives == 3).sum() < 75


def test_negatives_never_hold_a_users_items_on_a_larger_log(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(u, int(rng.integers(1, 60)), t, 1) for u in range(40) for t in range(int(rng.integers(2, 30)))]
    task = get_task(f"seqrec:{write_csv(tmp_path / 'log.csv', rows)}")
    data, splits = task.sequences(), task.data()
    for split in (splits.val, splits.test):
        for sequence, negatives in zip(data.sequences, split.tensors[1][:, 1:]):
            assert not set(negatives.tolist()) & set(sequence.tolist())
            assert ((negatives >= 1) & (negatives <= len(data.items))).all()


def test_negative_draws_are_uniform_over_the_complement():
    """Against the naive draw: the items 1..12 not in the sequence, each as likely."""
    sequences = [np.array([2, 3, 7, 3]), np.array([1]), np.array([12, 1, 6, 5, 4, 11, 10, 9, 8])]
    draws = sample_negatives(np.random.default_rng(0), sequences, 12, 12_000)
    for sequence, row in zip(sequences, draws):
        complement = sorted(set(range(1, 13)) - set(sequence.tolist()))
        frequency = np.bincount(row, minlength=13)[complement] / len(row)
        assert set(row.tolist()) == set(complement)
        assert np.abs(frequency - 1 / len(complement)).max() < 0.02


def test_same_seed_same_negatives_other_seed_other_negatives(hand_log, tmp_path):
    rows = [(u, (u * 7 + t) % 50, t, 1) for u in range(20) for t in range(6)]
    path = write_csv(tmp_path / "big.csv", rows)
    a, b = get_task(f"seqrec:{path},seed=3").make_data(), get_task(f"seqrec:{path},seed=3").make_data()
    c = get_task(f"seqrec:{path},seed=4").make_data()
    assert torch.equal(a.test.tensors[1], b.test.tensors[1]) and torch.equal(a.val.tensors[1], b.val.tensors[1])
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1])
    assert not torch.equal(a.val.tensors[1][:, 1:], a.test.tensors[1][:, 1:])  # val and test draw apart


def test_movielens_layout_reads_like_the_csv(hand_log, tmp_path):
    dat = write_movielens(tmp_path / "ratings.dat", LOG)
    from_dat, from_csv = get_task(f"seqrec:{dat}").sequences(), get_task(f"seqrec:{hand_log}").sequences()
    assert [s.tolist() for s in from_dat.sequences] == [s.tolist() for s in from_csv.sequences]
    assert from_dat.items.tolist() == from_csv.items.tolist()


def test_csv_columns_in_any_order_extra_ones_ignored(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("Timestamp,extra,Item,user\n" + "".join(f"{t},x,{i},{u}\n" for u, i, t, _ in LOG))
    assert [s.tolist() for s in get_task(f"seqrec:{path}").sequences().sequences] == list(SEQUENCES.values())


class FixedScores(torch.nn.Module):
    """A 'model' whose last-position scores are row `inputs[:, -1]` of a fixed table."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, inputs):
        return self.table[inputs[:, -1]][:, None, :].expand(-1, inputs.shape[1], -1)  # (B, T, I + 1)


def test_hit_rate_and_ndcg_by_hand():
    """Target item 1 against negatives 2..101; each row scores it so that exactly `rank`
    negatives score higher: rank 0, 3 and 9 are hits (NDCG 1/log2(rank + 2)), 10 is a miss."""
    ranks = [0, 3, 9, 10]
    table = torch.zeros(len(ranks), 102)
    for row, rank in enumerate(ranks):
        table[row, 2:] = -torch.arange(2, 102, dtype=torch.float)  # negatives in decreasing order
        table[row, 1] = -(2 + rank) + 0.5  # just below the first `rank` negatives
    inputs = torch.arange(len(ranks))[:, None].repeat(1, 3)
    candidates = torch.cat([torch.ones(len(ranks), 1, dtype=torch.long), torch.arange(2, 102).repeat(len(ranks), 1)], dim=1)
    metrics = ranking_metrics(FixedScores(table), Examples(inputs, candidates))
    assert metrics["hr10"] == pytest.approx(3 / 4)
    assert metrics["ndcg10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11)) / 4)
    constant = ranking_metrics(FixedScores(torch.zeros(4, 102)), Examples(inputs, candidates))
    assert constant == {"hr10": 0.0, "ndcg10": 0.0}  # ties count against the target


def test_task_contract(hand_log):
    task = get_task(f"seqrec:{hand_log},max_len=3,seed=2")
    assert task.spec == f"seqrec:{hand_log},max_len=3,seed=2" and get_task(task.spec) == task
    assert task.tokens == 3
    torch.manual_seed(0)
    model = task.model(einsearch.parse("seq(res(seq(norm(rms), attn(softmax, heads=2, pos=rope))))"), 16, 1)
    loss = task.loss(model, task.data().train.sample(4, torch.Generator().manual_seed(0)))
    assert torch.isfinite(loss) and loss.item() > 0
    metrics = task.evaluate(model, task.data().test)
    assert set(metrics) == {"hr10", "ndcg10"} and 0 <= metrics["ndcg10"] <= metrics["hr10"] <= 1


def test_a_transformer_learns_a_planted_next_item_cycle(tmp_path):
    """Every user walks a stretch of one fixed cycle of 40 items: the next item is the successor
    of the last.  A one-layer transformer finds it within 40 steps, far above 10/101 at random."""
    rng = np.random.default_rng(0)
    cycle = rng.permutation(40) + 100
    rows = []
    for user in range(60):
        start = int(rng.integers(40))
        rows += [(user, int(cycle[(start + t) % 40]), t, 1) for t in range(8)]
    spec = f"seqrec:{write_csv(tmp_path / 'cycle.csv', rows)},max_len=8"
    config = TrainConfig(d_model=16, layers=1, budget=Budget(steps=40), batch_size=16, lr=1e-2, selection="last")
    result = train("res(seq(norm(rms), attn(softmax, heads=2, pos=rope)))", spec, config)
    assert result.status == "ok", result.detail
    assert result.metrics["test/hr10"] > 0.6


@pytest.mark.parametrize(
    "content, message",
    [
        ("user,item\n1,2\n", "line 1: the header must name the columns user, item and timestamp"),
        ("user,item,timestamp\n1,2,3\n1,x,4\n", "line 3: item is not an integer"),
        ("user,item,timestamp\n1,2,3\n1,2\n", "line 3 has 2 fields"),
        ("1::2::5::3\n1::2\n", "line 2 has 2 fields; expected user::item::rating::timestamp"),
        ("1::2::5::3\n1::2::5::t\n", "line 2: timestamp is not an integer"),
        ("user,item,timestamp\n1,2,3\n1,3,4\n2,2,5\n", "no user with at least 3 interactions"),
        ("user,item,timestamp\n1,2,3\n1,3,4\n1,4,5\n", "none with 4\\+"),
        ("user,item,timestamp\n1,2,3\n1,3,4\n1,2,5\n1,3,6\n", "user 1 interacted with all 2 items"),
        ("", "is empty"),
    ],
)
def test_bad_logs_are_one_line_task_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(TaskError, match=message) as error:
        get_task(f"seqrec:{path}").data()
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_file_and_missing_path_are_task_errors(tmp_path):
    with pytest.raises(TaskError, match="no such file"):
        get_task(f"seqrec:{tmp_path}/nothing.csv").data()
    with pytest.raises(TaskError, match="give the log"):
        get_task("seqrec:max_len=10")
