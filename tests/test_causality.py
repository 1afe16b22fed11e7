"""The causality check itself: it must catch a leak and refuse to judge NaN."""

import torch


def test_causality_check_catches_a_leak_and_refuses_nan():
    from torch import nn

    from einsearch.causality import check_causal

    class Future(nn.Module):  # y_t = x_{t+1}: anti-causal
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.w * torch.roll(x, -1, dims=1)

    class Overflow(Future):
        def forward(self, x):
            return x * float("inf")

    leak = check_causal(Future(), 4, seq_len=6)
    assert not leak.causal and leak.finite and leak.max_output_change > 0 and leak.max_future_grad > 0
    nan = check_causal(Overflow(), 4, seq_len=6)
    assert not nan.causal and not nan.finite
