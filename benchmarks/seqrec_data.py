"""A synthetic interaction log with a planted sequential pattern, for the ``seqrec`` task's
benchmark (no real recommendation data ships here), and the baselines to read its table by.

    python benchmarks/seqrec_data.py /tmp/seqrec.csv            # writes the log, prints the baselines
    python benchmarks/seqrec_data.py /tmp/seqrec.csv --users 2000 --items 100 --groups 8 --noise 0.1
    einsearch train transformer --task seqrec:/tmp/seqrec.csv,max_len=32 --budget 600steps --json

The pattern: users fall in ``groups`` groups, and group g has its own random order of the items, a
permutation π_g.  A user of group g walks x_{t+1} = π_g(x_t) from a random item, for 5 to 30
steps; each interaction logged is the walk's item with probability 1 - ``noise``, else an item
drawn by popularity (Zipf, exponent 1), the walk going on underneath.  The next item is thus fixed
by the group and the last item, and the group only shows in the history: a model that reads only
the last item (a first-order Markov chain) must spread its guess over the groups' successors.
The rows are written shuffled, with integer timestamps, so the task must order them itself.
Defaults: 6,000 users (ML-1M has 6,040), 200 items, 16 groups, noise 0.2, about 104,000 rows.

The baselines are scored by the task's own evaluation (same users, same negatives):

* random: 10/101 ≈ 0.099 HR@10 (stated, not run);
* popularity: every user gets the items ranked by their count in the training sequences;
* Markov: the items ranked by how often they followed the user's last item in the training
  sequences (ties by popularity) — the first-order chain SASRec is compared against.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from einsearch.tasks import get_task  # noqa: E402
from einsearch.tasks.seqrec import NEGATIVES, TOP  # noqa: E402


def synthetic_log(users: int, items: int, groups: int, noise: float, seed: int) -> list[tuple[int, int, int]]:
    """(user, item, timestamp) rows of the planted pattern, shuffled; items are 1..items."""
    rng = np.random.default_rng(seed)
    orders = np.stack([rng.permutation(items) for _ in range(groups)])  # (G, I): π_g as successor tables
    popularity = 1.0 / np.arange(1, items + 1)
    popularity = rng.permutation(popularity / popularity.sum())  # Zipf over items in random order
    rows = []
    for user in range(users):
        group, item = rng.integers(groups), rng.integers(items)
        start = int(rng.integers(10**9, 2 * 10**9))
        for step in range(int(rng.integers(5, 31))):
            logged = rng.choice(items, p=popularity) if rng.random() < noise else item
            rows.append((user, int(logged) + 1, start + 60 * step))
            item = orders[group, item]
    return [rows[i] for i in rng.permutation(len(rows))]


class FixedScores(torch.nn.Module):
    """A 'model' scoring items from the last input item: scores = table[last item] (B, T, I + 1)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.table[inputs[:, -1]][:, None, :].expand(-1, inputs.shape[1], -1)


def baselines(spec: str) -> dict[str, dict[str, float]]:
    """Popularity and first-order Markov baselines on the task's validation and test splits, both
    counted on the training part of every user's sequence (all but the last two items)."""
    task = get_task(spec)
    splits = task.data()
    data = task.sequences()
    items = len(data.items)
    counts = torch.zeros(items + 1, dtype=torch.double)
    transitions = torch.zeros(items + 1, items + 1, dtype=torch.double)  # [previous, next]
    for sequence in data.sequences:
        train = torch.from_numpy(sequence[:-2])
        counts += torch.bincount(train, minlength=items + 1)
        transitions.index_put_((train[:-1], train[1:]), torch.ones(len(train) - 1, dtype=torch.double), accumulate=True)
    popularity = counts / (counts.max() + 1)  # in [0, 1): breaks the Markov chain's ties
    models = {"popularity": popularity.expand(items + 1, -1).clone(), "markov": transitions + popularity}
    return {
        name: {f"{split}/{k}": v for split in ("val", "test") for k, v in task.evaluate(FixedScores(table), getattr(splits, split)).items()}
        for name, table in models.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="where to write the CSV log")
    parser.add_argument("--users", type=int, default=6000)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-len", type=int, default=32, help="the task's max_len for the baselines")
    args = parser.parse_args()
    rows = synthetic_log(args.users, args.items, args.groups, args.noise, args.seed)
    Path(args.path).write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    spec = f"seqrec:{args.path},max_len={args.max_len}"
    print(f"wrote {len(rows):,} interactions of {args.users:,} users to {args.path}; task {spec}")
    print(f"random        HR@10 {TOP / (NEGATIVES + 1):.3f}")
    for name, metrics in baselines(spec).items():
        print(f"{name:<13} " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
