"""hier(M_slow, M_fast, rate=k): the shared contract, plus the equations written out by hand."""

import pytest
import torch

import einsearch
from einsearch.causality import check_causal
from einsearch.grammar import ArchSyntaxError
from einsearch.primitives.hier import Hier
from tests.contract import PrimitiveContract

GRU = "rnn(gru, heads=1, wiring=none, parallel=sequential)"
LSTM = "rnn(lstm, heads=2, wiring=none, parallel=sequential)"


class TestHierRNN(PrimitiveContract):
    arch = f"hier({GRU}, {LSTM}, rate=4)"
    constant_state = True


class TestHierRateTwoLong(PrimitiveContract):
    arch = "hier(mem(gla, heads=2), conv(k=3), rate=2)"
    seq_len = 63
    gradcheck_len = 7
    constant_state = True


class TestHierSlowAttention(PrimitiveContract):
    """A slow tier whose cache grows: it holds T // k keys, not T."""

    arch = f"hier(attn(softmax, heads=2, pos=rope), {GRU}, rate=3)"
    constant_state = False


class TestHierRateOne(PrimitiveContract):
    arch = "hier(conv(k=2), mlp(expand=2, act=gelu), rate=1)"
    constant_state = True


def hand_condition(x: torch.Tensor, slow, k: int) -> torch.Tensor:
    """c_t = z_{J(t)} with J(t) = floor((t + 1) / k) - 1 and z = slow(block means), from the equations."""
    B, T, D = x.shape
    means = [x[:, j * k : (j + 1) * k].mean(1) for j in range(T // k)]
    z = slow(torch.stack(means, 1)) if means else None
    c = torch.zeros_like(x)
    for t in range(T):
        J = (t + 1) // k - 1
        if J >= 0:
            c[:, t] = z[:, J]
    return c


@pytest.mark.parametrize("k", [1, 3, 4])
def test_identity_fast_tier_outputs_x_plus_the_up_sampled_slow_output(k):
    """With fast = identity, y - x is the conditioning itself: a linear map of the mean of the
    latest block that ended at or before t, zero before the first block ends."""
    torch.manual_seed(0)
    module = einsearch.build(f"hier(linear(), identity(), rate={k})", 6)
    W = module.slow.proj.weight  # linear(): y = x Wᵀ
    x = torch.randn(2, 13, 6)
    expected = x.clone()
    for t in range(13):
        blocks_done = (t + 1) // k
        if blocks_done:
            j = blocks_done - 1
            expected[:, t] += x[:, j * k : j * k + k].mean(1) @ W.T
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected)
        c = module(x) - x
    assert torch.all(c[:, : k - 1] == 0)  # nothing before the first block ends
    assert c[:, k - 1].abs().min() > 0  # the block ending at t is used at t


def test_recurrent_tiers_equal_the_equations():
    torch.manual_seed(0)
    module = einsearch.build(f"hier({GRU}, {LSTM}, rate=3)", 8)
    x = torch.randn(2, 14, 8)
    with torch.no_grad():
        expected = module.fast(x + hand_condition(x, module.slow, 3))
        torch.testing.assert_close(module(x), expected)


def test_rate_above_length_is_the_fast_tier_alone():
    torch.manual_seed(0)
    module = einsearch.build(f"hier({GRU}, {LSTM}, rate=16)", 8)
    x = torch.randn(2, 15, 8)
    with torch.no_grad():
        torch.testing.assert_close(module(x), module.fast(x))
        assert torch.equal(module.reference(x), module.fast(x))


def test_the_causality_check_sees_a_block_used_one_position_early(monkeypatch):
    """The boundary is exact: shifting the up-sampled slow output by k - 2 instead of k - 1
    (block j used at its second-to-last position) is caught by the check the contract runs."""
    torch.manual_seed(0)
    module = einsearch.build(f"hier({GRU}, {GRU}, rate=4)", 8)
    assert check_causal(module, 8, seq_len=13)

    def early(self, x):
        B, T, D = x.shape
        up = self.slow(self.summaries(x)).repeat_interleave(self.rate, dim=1)
        return torch.cat([x.new_zeros(B, self.rate - 2, D), up, x.new_zeros(B, self.rate, D)], dim=1)[:, :T]

    monkeypatch.setattr(Hier, "condition", early)
    assert not check_causal(module, 8, seq_len=13)


def test_costs_by_hand():
    D, T, k = 8, 64, 4
    module = einsearch.build(f"hier(linear(), {LSTM}, rate={k})", D)
    slow, fast = module.slow, module.fast
    assert einsearch.costs(module, T).params == sum(p.numel() for p in slow.parameters()) + sum(
        p.numel() for p in fast.parameters()
    )
    per_token = einsearch.costs(module, T).flops_per_token
    assert per_token == pytest.approx(2 * D * D / k + fast.flops(T) / T)  # the slow tier's FLOPs / k
    assert module.state_size(T) == 2 * D + 2 * D  # running sum, latest slow output; LSTM (h, c)


def test_parse_round_trip_and_errors():
    text = f"hier({GRU}, linear(), rate=4)"
    arch = einsearch.parse(text)
    assert arch.op == "hier" and arch["rate"] == 4 and [c.op for c in arch.children] == ["rnn", "linear"]
    assert einsearch.parse(arch.text) == arch
    with pytest.raises(ArchSyntaxError, match="positive integer"):
        einsearch.parse("hier(linear(), linear(), rate=0)")
    with pytest.raises(ArchSyntaxError, match="expected ','"):
        einsearch.parse("hier(linear(), linear())")
    with pytest.raises(ArchSyntaxError, match="'rate'"):
        einsearch.parse("hier(linear(), linear(), k=2)")
