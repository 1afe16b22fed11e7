"""Byte-level LM: corpus assembly and hash, contiguous splits, windows, bits per byte."""

import hashlib
import math

import pytest
import torch

import einsearch
from einsearch.tasks import TaskError, get_task
from einsearch.tasks.lm import SKIPPED_FOLDERS, read_corpus, stdlib_files
from einsearch.train import Budget, TrainConfig, train


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "corpus"
    (root / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a.txt").write_bytes(b"alpha " * 300)
    (root / "b" / "c.txt").write_bytes(b"gamma delta " * 200)
    (root / "b" / "a.txt").write_bytes(b"beta " * 100)
    (root / ".hidden" / "x.txt").write_bytes(b"never")
    (root / ".dot").write_bytes(b"never")
    return root


def test_folder_corpus_is_sorted_files_without_hidden_ones_and_hashed(folder):
    corpus = read_corpus(str(folder))
    names = ["a.txt", "b/a.txt", "b/c.txt"]
    contents = [(folder / n).read_bytes() for n in names]
    assert corpus.data == b"".join(contents) and corpus.files == 3
    digest = hashlib.sha256()
    for name, content in zip(names, contents):
        digest.update(name.encode() + b"\0" + content + b"\0")
    assert corpus.sha256 == digest.hexdigest()


def test_splits_are_contiguous_90_5_5_and_windows_are_shifted_by_one(folder):
    task = get_task(f"lm:{folder},seq_len=16")
    splits = task.data()
    data = read_corpus(str(folder)).data
    n = len(data)
    assert len(splits.train.data) == int(0.9 * n) and len(splits.test.data) == n - int(0.95 * n)
    assert bytes(splits.val.data.tolist()) == data[int(0.9 * n) : int(0.95 * n)]
    inputs, targets = splits.train.sample(8, torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (8, 16)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    for row in inputs:
        assert bytes(row.tolist()) in data
    assert task.info()["sha256"] == read_corpus(str(folder)).sha256


def test_a_uniform_model_scores_eight_bits_per_byte(folder):
    task = get_task(f"lm:{folder},seq_len=16,eval_bytes=100")

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))

        def forward(self, tokens):
            return torch.zeros(*tokens.shape, 256)

    metrics = task.evaluate(Uniform(), task.data().test)
    assert metrics["bpb"] == pytest.approx(8.0) and metrics["loss"] == pytest.approx(math.log(256))


def test_missing_and_too_short_corpora_are_task_errors(tmp_path):
    with pytest.raises(TaskError, match="no such file"):
        get_task(f"lm:{tmp_path}/nothing").data()
    (tmp_path / "short.txt").write_bytes(b"tiny")
    with pytest.raises(TaskError, match="too short"):
        get_task(f"lm:{tmp_path}/short.txt").data()


def test_default_corpus_is_the_stdlib_without_tests():
    files = stdlib_files()
    assert len(files) > 100
    root = files[0].parent
    relative = [f.relative_to(root).as_posix() for f in files]
    assert relative == sorted(relative)
    assert all(not SKIPPED_FOLDERS & set(f.relative_to(root).parts[:-1]) for f in files)
    assert any(name == "json/decoder.py" for name in relative)


def test_training_on_a_folder(folder):
    result = train("mlp(expand=1, act=relu)", f"lm:{folder},seq_len=16", TrainConfig(d_model=8, layers=1, budget=Budget(steps=3)))
    assert result.ok, result.detail
    assert result.info["files"] == 3 and len(result.info["sha256"]) == 64
    assert 0 < result.metrics["test/bpb"] < 9
    assert result.costs["seq_len"] == 16
    model = get_task(f"lm:{folder},seq_len=16").model(einsearch.parse("mlp(expand=1, act=relu)"), 8, 1)
    assert result.costs["params"] == sum(p.numel() for p in model.parameters())
