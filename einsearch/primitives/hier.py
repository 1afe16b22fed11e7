"""hier(M_slow, M_fast, rate=k): a two-rate hierarchy of mixers (multi-rate hierarchical RNNs).

CM-HRNN (Guo, Makris & Herremans 2021, "Hierarchical Recurrent Neural Networks for Conditional
Melody Generation with Long-term Structure") stacks RNN tiers that tick at different rates — bar,
beat, note — in the manner of SampleRNN (Mehri et al. 2017) and the clockwork RNN (Koutník et al.
2014): a slow tier steps once per frame of k positions, and its output, up-sampled to the fast
rate, conditions the fast tier, which steps at every position.  Here the tiers are any two mixers.

With blocks j = 0, 1, ... of k positions, block j covering positions jk .. jk + k - 1:

    s_j = mean(x_{jk}, ..., x_{jk+k-1})                       block summary        (D,)
    z   = M_slow(s_0, s_1, ...)                               the slow sequence    (T // k, D)
    c_t = z_{J(t)},  J(t) = floor((t + 1) / k) - 1            latest completed block (c_t = 0 if J(t) < 0)
    y   = M_fast(x + c)                                       the fast sequence    (T, D)

* Summary: the mean of the block's inputs, not its last input, so that every position reaches
  the slow tier (in the value and in the gradient); it is SampleRNN's frame input with the k
  input maps tied.  It is a causal summary: s_j holds no position after jk + k - 1.
* Boundary: block j is complete at its last position t = jk + k - 1, and its summary holds no
  position > t, so position t already uses z_j (J(t) is the latest block that *ended at or before*
  t).  The slow tier never sees an unfinished block, so the output at t depends on x_{<=t} only:
  causal by construction.  A trailing incomplete block is never summarised.
* Conditioning: the up-sampled slow output is added to the fast tier's input (the simplest form;
  SampleRNN adds a learned linear up-sampling of it in the same place).  hier adds no weights.

`step` carries the running sum of the current block, how many of its positions have been seen,
the slow tier's state and latest output z_{J(t)}, and the fast tier's state; when a block
completes it steps the slow tier once on the block's mean.  Costs: the slow tier runs on T // k
positions (its FLOPs per token divided by k), the fast tier on T; the state is both tiers'
states plus two vectors of width D (the running sum and the latest slow output).
"""

from __future__ import annotations

import torch
from torch import Tensor

from einsearch.primitives.base import Mixer, State


class Hier(Mixer):
    """M_fast(x + up-sampled M_slow(block means of x)): the slow mixer ticks once per `rate` positions."""

    def __init__(self, d_model: int, slow: Mixer, fast: Mixer, rate: int):
        super().__init__()
        self.d_model, self.slow, self.fast, self.rate = d_model, slow, fast, rate

    def summaries(self, x: Tensor) -> Tensor:
        """The mean of each complete block of `rate` positions: (B, T, D) -> (B, T // rate, D)."""
        B, T, D = x.shape
        blocks = T // self.rate
        return x[:, : blocks * self.rate].reshape(B, blocks, self.rate, D).mean(2)

    def condition(self, x: Tensor) -> Tensor:
        """c: at position t, the slow output of the latest block that ended at or before t; (B, T, D)."""
        B, T, D = x.shape
        k = self.rate
        if T < k:  # no block completes: nothing to condition on (and the slow mixer never runs)
            return torch.zeros_like(x)
        z = self.slow(self.summaries(x))  # (B, T // k, D)
        up = z.repeat_interleave(k, dim=1)  # (B, (T // k)·k, D): position jk + i -> z_j
        # shift right by k - 1: position t -> z_{floor((t + 1) / k) - 1}, zeros before the first block ends
        return torch.cat([x.new_zeros(B, k - 1, D), up], dim=1)[:, :T]

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        return self.fast(x + self.condition(x))

    def reference(self, x: Tensor) -> Tensor:
        """The plain per-position loop: at each t, the slow mixer recomputed on the blocks completed
        by t (each summary averaged by hand), its last output added to x_t; then the fast mixer."""
        B, T, D = x.shape
        k = self.rate
        inputs = []
        for t in range(T):
            done = (t + 1) // k  # blocks that ended at or before t
            c_t = x.new_zeros(B, D)
            if done:
                blocks = [sum(x[:, j * k + i] for i in range(k)) / k for j in range(done)]
                c_t = self.slow(torch.stack(blocks, dim=1))[:, -1]  # (B, D)
            inputs.append(x[:, t] + c_t)
        return self.fast(torch.stack(inputs, dim=1))

    def init_state(self, batch: int) -> State:
        zeros = torch.zeros(batch, self.d_model, device=self._device, dtype=self._dtype)
        # (positions of the current block seen, their running sum, latest slow output, slow state, fast state)
        return 0, zeros, zeros.clone(), self.slow.init_state(batch), self.fast.init_state(batch)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:  # (B, D) -> (B, D)
        seen, total, latest, slow_state, fast_state = state
        seen, total = seen + 1, total + x
        if seen == self.rate:  # the block ends here: the slow mixer ticks on its mean
            latest, slow_state = self.slow.step(total / self.rate, slow_state)
            seen, total = 0, torch.zeros_like(total)
        y, fast_state = self.fast.step(x + latest, fast_state)
        return y, (seen, total, latest, slow_state, fast_state)

    def flops(self, seq_len: int) -> float:
        return self.slow.flops(seq_len // self.rate) + self.fast.flops(seq_len)

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d_model + self.slow.state_size(seq_len // self.rate) + self.fast.state_size(seq_len)
