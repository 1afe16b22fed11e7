"""Byte-level LM: corpus assembly and hash, contiguous splits, windows, bits per byte; the dd
curriculum (dataset decomposition) against hand counts."""

import hashlib
import math
from collections import Counter

import pytest
import torch

import einsearch
from einsearch.tasks import TaskError, get_task
from einsearch.grammar.seeds import resolve
from einsearch.tasks.lm import SKIPPED_FOLDERS, Buckets, read_corpus, stdlib_files
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


# ---------------------------------------------------------------- curriculum=dd (dataset decomposition)

# sha256 of concat's training batches and evaluation windows on the `folder` fixture, recorded by
# running the code before the curriculum option existed (commit 379f72f)
CONCAT_BATCHES_SHA256 = "4f4365926f91209ce28d386b98351bf6be495118634f1fc2eaa360180b8ed476"


def batches_digest(task):
    splits = task.data()
    digest = hashlib.sha256()
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        for t in splits.train.sample(8, generator):
            digest.update(t.numpy().tobytes())
    for split in (splits.val, splits.test):
        for batch in split.batches(4):
            for t in batch:
                digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def test_concat_batches_are_those_of_the_code_before_curricula(folder):
    assert get_task(f"lm:{folder},seq_len=16,eval_bytes=200").curriculum == "concat"
    assert batches_digest(get_task(f"lm:{folder},seq_len=16,eval_bytes=200")) == CONCAT_BATCHES_SHA256
    assert batches_digest(get_task(f"lm:{folder},seq_len=16,eval_bytes=200,curriculum=concat")) == CONCAT_BATCHES_SHA256


# Documents of one character each, sorted by name; 500 bytes, so the training split is the first 450:
# the last file z is cut at 450 - 73 = 377 bytes.
DOCUMENTS = {"a": 1, "b": 12, "c": 17, "d": 40, "e": 3, "z": 427}


@pytest.fixture
def documents(tmp_path):
    root = tmp_path / "documents"
    root.mkdir()
    for name, size in DOCUMENTS.items():
        (root / name).write_bytes(name.encode() * size)
    return root


def dd_task(root, **options):
    text = ",".join(f"{k}={v}" for k, v in ({"seq_len": 16, "curriculum": "dd", "min_len": 2} | options).items())
    return get_task(f"lm:{root},{text}")


def test_decomposition_against_a_hand_count(documents):
    """A document of L bytes has L - 1 predictions, cut into 16s, then the binary digits of the
    rest down to 2, largest first (seq_len=16, min_len=2):
      a [0, 1):    0 predictions -> nothing
      b [1, 13):  11 = 8 + 2 (+1 dropped)        -> 8@1, 2@9
      c [13, 30): 16                             -> 16@13
      d [30, 70): 39 = 16 + 16 + 4 + 2 (+1)      -> 16@30, 16@46, 4@62, 2@66
      e [70, 73):  2                             -> 2@70
      z [73, 450): 376 = 23 * 16 + 8             -> 16@73, 16@89, ..., 16@425, 8@441"""
    train = dd_task(documents).data().train
    expected = {16: [13, 30, 46] + [73 + 16 * k for k in range(23)], 8: [1, 441], 4: [62], 2: [9, 66, 70]}
    assert {length: s.tolist() for length, s in train.starts.items()} == expected
    pieces = [(length, start) for length, starts in expected.items() for start in starts]
    covered = [window for inputs, targets in train.batches(4) for window in torch.cat([inputs, targets[:, -1:]], 1)]
    assert sorted((len(w) - 1, bytes(w.tolist())) for w in covered) == sorted(
        (length, read_corpus(str(documents)).data[start : start + length + 1]) for length, start in pieces
    )


def test_no_piece_crosses_a_document_boundary(documents):
    train = dd_task(documents, min_len=1).data().train
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        inputs, targets = train.sample(2, generator)
        for row_inputs, row_targets in zip(inputs, targets):
            assert len(set(row_inputs.tolist() + row_targets.tolist())) == 1  # one document's character
    assert set(train.lengths) == {16, 8, 4, 2, 1}


def test_every_batch_has_batch_size_times_seq_len_tokens_of_one_length(documents):
    train = dd_task(documents).data().train
    generator = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(300):
        inputs, targets = train.sample(4, generator)
        assert inputs.shape == targets.shape and inputs.numel() == 4 * 16
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        seen.add(inputs.shape[1])
    assert seen == {16, 8, 4, 2}


def test_buckets_are_drawn_in_proportion_to_their_tokens():
    starts = {16: torch.arange(3), 8: torch.arange(2), 4: torch.arange(4), 2: torch.arange(4), 1: torch.zeros(0, dtype=torch.long)}
    train = Buckets(torch.zeros(100, dtype=torch.uint8), starts, 16)
    tokens = {16: 48, 8: 16, 4: 16, 2: 8}  # by hand: length x pieces; the empty bucket is never drawn
    draws = 4000
    generator = torch.Generator().manual_seed(2)
    counts = Counter(train.sample(1, generator)[0].shape[1] for _ in range(draws))
    assert set(counts) == set(tokens)
    for length, held in tokens.items():
        p = held / sum(tokens.values())
        assert abs(counts[length] / draws - p) < 4 * math.sqrt(p * (1 - p) / draws), (length, counts)


def test_dd_is_deterministic_from_the_generator_and_keeps_validation_and_test(documents):
    task = dd_task(documents)
    assert get_task(task.spec) == task and task.spec == f"lm:{documents},seq_len=16,curriculum=dd,min_len=2"

    def draws(seed):
        generator = torch.Generator().manual_seed(seed)
        return [t for _ in range(20) for t in task.data().train.sample(4, generator)]

    same, other = draws(0), draws(1)
    assert all(torch.equal(a, b) for a, b in zip(same, draws(0)))
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(same, other))
    concat = get_task(f"lm:{documents},seq_len=16").data()
    for name in ("val", "test"):
        ours, theirs = list(getattr(task.data(), name).batches(32)), list(getattr(concat, name).batches(32))
        assert len(ours) == len(theirs) and all(torch.equal(a, b) for x, y in zip(ours, theirs) for a, b in zip(x, y))


def test_a_fresh_transformer_has_a_finite_loss_on_dd_batches_and_trains(documents):
    task = dd_task(documents)
    model = task.model(resolve("transformer"), 16, 1)
    batch = task.data().train.sample(2, torch.Generator().manual_seed(0))
    assert math.isfinite(task.loss(model, batch).item())
    result = train("mlp(expand=1, act=relu)", task.spec, TrainConfig(d_model=8, layers=1, budget=Budget(steps=3)))
    assert result.ok, result.detail
    assert 0 < result.metrics["test/bpb"] < 9


@pytest.mark.parametrize(
    "options, message",
    [
        ("seq_len=24,curriculum=dd", "curriculum=dd needs seq_len to be a power of two, got 24"),
        ("seq_len=16,curriculum=dd,min_len=3", "curriculum=dd needs min_len to be a power of two, got 3"),
        ("seq_len=16,curriculum=dd,min_len=32", "curriculum=dd needs min_len <= seq_len, got 32 > 16"),
        ("min_len=4", "min_len applies only with curriculum=dd"),
        ("curriculum=chunks", "option curriculum must be one of concat, dd"),
    ],
)
def test_impossible_dd_settings_are_task_errors(options, message):
    with pytest.raises(TaskError, match=message):
        get_task(f"lm:x,{options}")


def test_dd_without_a_long_enough_document_is_a_task_error(tmp_path):
    for i in range(130):
        (tmp_path / f"{i:03d}.txt").write_bytes(b"0123456789")
    with pytest.raises(TaskError, match="no document in the training split with min_len\\+1 = 65 bytes"):
        get_task(f"lm:{tmp_path},seq_len=64,curriculum=dd,min_len=64").data()
