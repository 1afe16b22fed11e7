"""Passkey: the prompt of Mohtashami & Jaggi (2023) at an exact byte length, the key at a random
depth, only the answer digits scored."""

import re

import numpy as np
import pytest

from einsearch.tasks import TaskError, get_task
from einsearch.tasks.language import IGNORE
from einsearch.tasks.passkey import FILLER, INTRO, QUESTION, passkey_instance, shortest


def decode(tokens) -> str:
    return bytes(np.asarray(tokens, dtype=np.uint8)).decode("ascii")


@pytest.mark.parametrize("length", [shortest(5), 300, 1000, 4096])
def test_example_has_the_exact_length_and_the_answer_is_the_hidden_key(length):
    inputs, targets = passkey_instance(np.random.default_rng(length), length, 5)
    assert inputs.shape == targets.shape == (length,)
    text = decode(inputs)
    assert text.startswith(INTRO)
    keys = re.findall(r"The pass key is (\d{5})\. Remember it\. (\d{5}) is the pass key\.", text)
    assert len(keys) == 1 and keys[0][0] == keys[0][1]
    scored = np.flatnonzero(targets != IGNORE)
    assert list(scored) == list(range(length - 5, length))
    assert decode(targets[scored]) == keys[0][0]
    # teacher forcing: the prompt ends with the question and the first four answer digits
    assert text.endswith(QUESTION + keys[0][0][:4])


def test_depth_varies_and_filler_is_the_papers_sentences():
    depths = set()
    for seed in range(40):
        text = decode(passkey_instance(np.random.default_rng(seed), 800, 5)[0])
        depths.add(text.index("The pass key is"))
        filler = text[len(INTRO) :].split("The pass key is")[0]
        assert FILLER.startswith(filler[: len(FILLER)]) or filler == ""
    assert len(depths) > 10


def test_too_short_is_a_task_error():
    with pytest.raises(TaskError, match="shorter than the prompt"):
        get_task(f"passkey:seq_len={shortest(5) - 1}")


def test_splits_and_test_length():
    task = get_task("passkey:seq_len=300,test_len=400,train=8,val=4,test=4")
    splits = task.data()
    assert splits.train.tensors[0].shape == (8, 300) and splits.test.tensors[0].shape == (4, 400)
    assert task.vocab_size == 256 and task.tokens == 300
