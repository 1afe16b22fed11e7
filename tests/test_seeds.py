"""The seed zoo: every published mixer builds, trains, and runs as an RNN."""

import math

import pytest
import torch
from torch import nn

import einsearch
from einsearch.causality import check_causal

SEEDS = sorted(einsearch.seeds)


def test_zoo_has_the_published_mixers():
    expected = {
        "transformer", "lstm", "gru", "rhn_attention", "mamba", "gla", "retnet", "deltanet", "gated_deltanet",
        "linear_attention", "aaren", "titans", "moneta", "yaad", "memora", "rat", "rat_hybrid",
        "universal_transformer", "mambaout", "routing_transformer", "landmark", "sparse_rnn", "pararnn_gru",
        "linear", "cm_hrnn",
    }  # fmt: skip
    assert expected <= set(SEEDS)


def test_the_linear_baseline_passes_its_input_through():
    x = torch.randn(2, 7, 16)
    module = einsearch.build(einsearch.seeds["linear"], 16)
    assert torch.equal(module(x), x) and einsearch.costs(module, 7).params == 0


@pytest.mark.parametrize("name", SEEDS)
@pytest.mark.parametrize("d_model", [64, 128])
def test_seed_builds_runs_forward_and_backward(name, d_model):
    torch.manual_seed(0)
    module = einsearch.build(einsearch.seeds[name], d_model)
    x = torch.randn(2, 19, d_model, requires_grad=True)
    y = module(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", SEEDS)
def test_seed_is_causal_and_steps_like_forward(name):
    torch.manual_seed(0)
    module = einsearch.build(einsearch.seeds[name], 32).eval()
    assert check_causal(module, 32, seq_len=10, atol=1e-4)
    x = torch.randn(1, 10, 32)
    with torch.no_grad():
        expected = module(x)
        state, outputs = module.init_state(1), []
        for t in range(10):
            y, state = module.step(x[:, t], state)
            outputs.append(y)
    torch.testing.assert_close(torch.stack(outputs, 1), expected, atol=1e-4, rtol=1e-4)


class CopyModel(nn.Module):
    """Embedding -> block -> linear head."""

    def __init__(self, block: nn.Module, d_model: int, vocab: int):
        super().__init__()
        self.embed, self.block, self.head = nn.Embedding(vocab, d_model), block, nn.Linear(d_model, vocab)

    def forward(self, tokens):
        return self.head(self.block(self.embed(tokens)))


@pytest.mark.parametrize("name", [s for s in SEEDS if s != "linear"])  # linear mixes nothing, by design
def test_seed_learns_a_tiny_copy_task(name):
    """Output at t must be the token at t-2: the loss falls within 40 steps, and stays finite.

    (Content-addressed memories without a convolution have no notion of position, so they learn
    this slowly; the bar is a clear decrease, not a solution.)"""
    torch.manual_seed(0)
    vocab, d_model, T = 8, 64, 16
    model = CopyModel(einsearch.build(einsearch.seeds[name], d_model), d_model, vocab)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        tokens = torch.randint(vocab, (8, T), generator=generator)
        logits = model(tokens)[:, 2:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, :-2].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(map(math.isfinite, losses)), f"{name}: non-finite loss"
    assert last < 0.9 * first, f"{name}: loss {first:.3f} -> {last:.3f}"
