"""Every registered task at tiny options runs `TaskContract` (see tests/tasks/contract.py)."""

from __future__ import annotations

import csv
import sys
from datetime import datetime, timedelta

import numpy as np

from einsearch.tasks.registry import TASKS
from tests.tasks.contract import SuiteContract, TaskContract

TINY = "train=8,val=4,test=4"


class TestMQAR(TaskContract):
    spec = f"mqar:vocab=32,seq_len=16,pairs=2,{TINY},seed=3"


class TestDisjoint(TaskContract):
    spec = f"disjoint:small=2,large=3,vocab=16,{TINY},seed=3"


MAD_MEMBERS = {
    "recall": f"seq_len=16,{TINY}",
    "fuzzy_recall": f"seq_len=16,k_motif=2,v_motif=2,{TINY}",
    "noisy_recall": f"seq_len=16,{TINY}",
    "selective_copy": f"seq_len=16,to_copy=4,{TINY}",
    "compression": f"seq_len=8,{TINY}",
    "memorization": f"vocab=16,seq_len=8,{TINY}",
}


class TestRecall(TaskContract):
    spec = f"recall:{MAD_MEMBERS['recall']},seed=3"


class TestFuzzyRecall(TaskContract):
    spec = f"fuzzy_recall:{MAD_MEMBERS['fuzzy_recall']},seed=3"


class TestNoisyRecall(TaskContract):
    spec = f"noisy_recall:{MAD_MEMBERS['noisy_recall']},seed=3"


class TestSelectiveCopy(TaskContract):
    spec = f"selective_copy:{MAD_MEMBERS['selective_copy']},seed=3"


class TestCompression(TaskContract):
    spec = f"compression:{MAD_MEMBERS['compression']},seed=3"


class TestMemorization(TaskContract):
    spec = f"memorization:{MAD_MEMBERS['memorization']},seed=3"


class TestMAD(SuiteContract):
    spec = "mad:seed=3"
    member_options = MAD_MEMBERS


class TestPasskey(TaskContract):
    spec = "passkey:seq_len=240,digits=2,train=4,val=2,test=2,seed=3"


class TestLM(TaskContract):
    spec = "lm:{dir},seq_len=16,eval_bytes=64"

    def write_files(self, folder):
        source = open(sys.modules[__name__].__file__, encoding="utf-8").read()  # any text: this file
        (folder / "a.txt").write_text(source[:3000])
        (folder / "b.txt").write_text(source[3000:6000])


class TestLorenz96(TaskContract):
    spec = "lorenz96:trajectories=2,val=1,test=1,length=60,context=8,horizon=10,spinup=1,seed=3"


class TestKS(TaskContract):
    spec = "ks:trajectories=1,val=1,test=1,length=40,context=8,horizon=10,spinup=50,score_time=0.043,seed=3"


def write_series(path, rows=200, channels=3):
    values = np.random.default_rng(0).normal(5.0, 2.0, size=(rows, channels)).cumsum(axis=0) * 0.1
    start = datetime(2016, 7, 1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["date"] + [f"c{i}" for i in range(channels - 1)] + ["OT"])
        for i, row in enumerate(values):
            writer.writerow([(start + i * timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")] + [f"{v:.6f}" for v in row])


class TestCSV(TaskContract):
    spec = "csv:{dir}/series.csv,lookback=16,horizon=4,patch=4,stride=4"

    def write_files(self, folder):
        write_series(folder / "series.csv")


class TestCSVMixedLast(TestCSV):
    """The forecasting shell's other options (they change what `options` must rebuild)."""

    spec = "csv:{dir}/series.csv,lookback=16,horizon=4,patch=4,stride=2,mixing=mixed,head=last,revin=false"


class TestCSVDecomposed(TestCSV):
    """decomp runs a seasonal and a trend stack: 2 × layers blocks, which a rebuild must pass."""

    spec = "csv:{dir}/series.csv,lookback=16,horizon=4,patch=4,stride=4,decomp=5"
    layers = 2


class TestSeqRec(TaskContract):
    spec = "seqrec:{dir}/log.csv,max_len=4,seed=3"

    def write_files(self, folder):
        rng = np.random.default_rng(0)
        rows = [(user, int(item), t) for user in range(12) for t, item in enumerate(rng.choice(40, size=6, replace=False))]
        (folder / "log.csv").write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))


class TestSort(TaskContract):
    spec = f"sort:n=4,test_n=6,{TINY},seed=3"


class TestHull(TaskContract):
    spec = f"hull:n=5,{TINY},seed=3"


def test_every_registered_task_runs_the_contract():
    def subclasses(cls):
        return [cls] + [c for sub in cls.__subclasses__() for c in subclasses(sub)]

    covered = {cls.spec.partition(":")[0] for cls in subclasses(TaskContract) if "spec" in vars(cls)}
    assert covered == set(TASKS)
