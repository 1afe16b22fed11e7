"""`at_length`: trees it calls equivalent at length T compute the same function on T tokens."""

import pytest
import torch

import einsearch
from einsearch.grammar import parse
from einsearch.grammar.equivalent import at_length, equivalence_key

TEXT = "seq(res(seq(norm(rms), attn(softmax, heads=4, window={w}, chunk={c}, pos=rope))), res(mlp(expand=2, act=gelu)))"


def outputs(text: str, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    return einsearch.build(parse(text), d_model=16)(x)


@pytest.mark.parametrize("window,chunk", [(9, 12), (40, 9), (9, 9)])
def test_a_span_at_least_the_length_is_left_out_and_changes_nothing(window, chunk):
    text = TEXT.format(w=window, c=chunk)
    kept = at_length(parse(text), 9)
    assert equivalence_key(parse(text), 9) == kept.id == equivalence_key(kept, 9)
    assert kept.text == "seq(res(seq(norm(rms), attn(softmax, heads=4, pos=rope))), res(mlp(expand=2, act=gelu)))"
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(outputs(text, x), outputs(kept.text, x), rtol=0, atol=0)  # same weights, same function
    longer = torch.randn(2, 50, 16)
    assert not torch.allclose(outputs(text, longer), outputs(kept.text, longer))  # beyond T they differ


def test_a_shorter_span_stays_and_other_trees_are_returned_as_they_are():
    arch = parse(TEXT.format(w=8, c=100))
    assert at_length(arch, 9) == parse("seq(res(seq(norm(rms), attn(softmax, heads=4, window=8, pos=rope))), res(mlp(expand=2, act=gelu)))")
    other = parse("seq(rat(heads=2, chunk=64), mem(gla, heads=4))")  # rat's chunk is not a visibility span
    assert at_length(other, 9) is other


def test_a_titans_chunk_of_one_is_the_per_token_memory():
    text = "mem(titans, heads=2, loss=l2, retention=l2, momentum=true, chunk={c})"
    plain = parse("mem(titans, heads=2, loss=l2, retention=l2, momentum=true)")
    assert at_length(parse(text.format(c=1)), 9) == plain
    assert at_length(parse(text.format(c=4)), 9) == parse(text.format(c=4))  # a real chunk stays
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(outputs(text.format(c=1), x), outputs(plain.text, x), rtol=0, atol=0)
