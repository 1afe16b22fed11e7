"""Model shells: the fixed parts of a model around the searched block.

    inputs -> embed -> block_1 -> ... -> block_L -> RMSNorm -> head

The L blocks are independent copies of the candidate (`einsearch.build` called L times, so no
weights are shared); there is no positional embedding (position, where a block needs it, comes
from the block itself, e.g. RoPE).  A shell reports its costs like a `Mixer` does, so
``einsearch.costs(shell, seq_len)`` gives the whole model's parameters, FLOPs per token (blocks plus
embedding/head matrix products) and inference state size (the sum over the blocks).

* `LanguageModel`: token embedding, a linear head to logits at every position.
* `NextStepModel`: a linear projection of each state vector, a head predicting the increment to
  the next state at every position (x_{t+1} ≈ x_t + head(h_t)); the head starts at zero, so a
  fresh model is the persistence forecast.
* `ForecastModel`: a lookback window to a horizon at once, with RevIN, channel independence,
  strided patches, a flatten head and DLinear's decomposition as options (see the class).
* `PointerModel`: points, then the decoder's fed-back choices, through the blocks; an additive
  pointer head (Vinyals et al. 2015) scores each decoder step over the input positions and END.
* `RecommenderModel`: SASRec's item embedding, the blocks, and scores by dot product with the same
  item embeddings.
* `CompressionModel`: MAD's auto-encoder for the compression task (Poli et al. 2024): the blocks
  encode, the last position's features are the code, and a small MLP decodes each position from
  the code plus a sinusoidal position embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.arch import Arch
from einsearch.build import build
from einsearch.primitives.base import Mixer


def build_blocks(arch: Arch, d_model: int, layers: int) -> list[Mixer]:
    """`layers` independently initialised copies of the block."""
    if layers < 1:
        raise ValueError(f"layers must be at least 1, got {layers}")
    return [build(arch, d_model) for _ in range(layers)]


class Shell(nn.Module):
    """embed -> blocks -> final RMSNorm; subclasses add the head and the task's input/output form.

    `options` holds a subclass's constructor arguments beyond (blocks, d_model), so that the same
    shell can be rebuilt (e.g. by `einsearch export`); `stacks` says how many stacks of `layers`
    blocks it runs, so a rebuild passes stacks × layers blocks."""

    options: dict
    stacks: int = 1

    def __init__(self, blocks: list[Mixer], d_model: int):
        super().__init__()
        self.d_model = d_model
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(d_model)

    def trunk(self, h: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def io_flops(self, seq_len: int) -> float:
        """FLOPs of the shell's own matrix products (input projection, head) for one sequence."""
        return 0.0

    def flops(self, seq_len: int) -> float:
        return sum(block.flops(seq_len) for block in self.blocks) + self.io_flops(seq_len)

    def state_size(self, seq_len: int) -> int:
        return sum(block.state_size(seq_len) for block in self.blocks)


class LanguageModel(Shell):
    """Token embedding, blocks, norm, logits: (B, T) long -> (B, T, vocab)."""

    def __init__(self, blocks: list[Mixer], d_model: int, vocab: int):
        super().__init__(blocks, d_model)
        self.options = dict(vocab=vocab)
        self.embed = nn.Embedding(vocab, d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.trunk(self.embed(tokens)))

    def io_flops(self, seq_len: int) -> float:
        return 2.0 * self.head.weight.numel() * seq_len


class NextStepModel(Shell):
    """States (B, T, C) -> predicted next states (B, T, C), as x_t + head(h_t)."""

    def __init__(self, blocks: list[Mixer], d_model: int, channels: int):
        super().__init__(blocks, d_model)
        self.options = dict(channels=channels)
        self.embed = nn.Linear(channels, d_model, bias=False)
        self.head = nn.Linear(d_model, channels, bias=False)
        nn.init.zeros_(self.head.weight)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.head(self.trunk(self.embed(x)))

    def io_flops(self, seq_len: int) -> float:
        return 2.0 * (self.embed.weight.numel() + self.head.weight.numel()) * seq_len


class ForecastModel(Shell):
    """Lookback window (B, lookback, C) -> forecast (B, horizon, C), in the shell the long-horizon
    forecasting literature converged on (each part an option of the ``csv`` task):

        x -> RevIN -> [decompose: seasonal, trend] -> patches -> embed -> blocks -> head -> sum -> RevIN⁻¹

    * ``revin``: reversible instance normalisation (Kim et al. 2022, without the affine part):
      each window and channel is standardised by its own mean and std, and the forecast is mapped
      back with the same statistics.
    * ``mixing``: ``independent`` runs every channel as its own sequence of patches through the same
      blocks (PatchTST, Nie et al. 2023); ``mixed`` makes one sequence whose tokens hold a patch of
      every channel.
    * patches of ``patch`` rows every ``stride`` rows, after repeating the last row ``stride``
      times at the end (PatchTST's ``padding_patch="end"``); the last patch ends at the last row.
    * ``head``: ``flatten`` maps the features of every position linearly to the horizon (PatchTST's
      flatten head); ``last`` reads the last position only.
    * ``decomp``: a moving average of that many rows (odd; 0 for none) splits the window into
      trend and seasonal parts (DLinear, Zeng et al. 2023), each through its own embedding, blocks
      and head, and the two forecasts are added.

    There is no final norm: the head reads the residual stream, as PatchTST's does, so that with
    the ``identity()`` block the whole model is linear in the (normalised) window — DLinear.  The
    head starts at zero, so a fresh model forecasts the window's mean (with RevIN; otherwise 0).
    """

    def __init__(
        self, blocks: list[Mixer], d_model: int, channels: int, lookback: int, horizon: int,
        patch: int, stride: int, head: str, revin: bool, mixing: str, decomp: int,
    ):  # fmt: skip
        super().__init__(blocks, d_model)
        self.norm = nn.Identity()  # see the class docstring
        self.options = dict(
            channels=channels, lookback=lookback, horizon=horizon, patch=patch, stride=stride,
            head=head, revin=revin, mixing=mixing, decomp=decomp,
        )  # fmt: skip
        self.channels, self.horizon, self.patch, self.stride = channels, horizon, patch, stride
        self.revin, self.mixing, self.decomp, self.flatten = revin, mixing, decomp, head == "flatten"
        self.positions = patch_count(lookback, patch, stride)
        branches = self.stacks = 2 if decomp else 1  # decomp: a seasonal and a trend stack
        if len(blocks) % branches:
            raise ValueError(f"decomposition needs an even number of blocks, got {len(blocks)}")
        self.layers = len(blocks) // branches
        width = patch if mixing == "independent" else patch * channels  # numbers per token
        out = horizon if mixing == "independent" else horizon * channels  # numbers per sequence
        features = d_model * (self.positions if self.flatten else 1)
        self.embeds = nn.ModuleList(nn.Linear(width, d_model, bias=False) for _ in range(branches))
        self.heads = nn.ModuleList(nn.Linear(features, out) for _ in range(branches))
        for head_layer in self.heads:
            nn.init.zeros_(head_layer.weight)
            nn.init.zeros_(head_layer.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C) -> (B, H, C)
        if self.revin:
            mean, std = instance_statistics(x)  # (B, 1, C) each
            x = (x - mean) / std
        parts = decompose(x, self.decomp) if self.decomp else (x,)
        y = sum(self._branch(i, part) for i, part in enumerate(parts))
        return y * std + mean if self.revin else y

    def _branch(self, i: int, x: Tensor) -> Tensor:
        B, L, C = x.shape
        tokens = patches(x, self.patch, self.stride)  # (B, C, N, P)
        if self.mixing == "independent":
            h = tokens.reshape(B * C, self.positions, self.patch)  # (B*C, N, P)
        else:
            h = tokens.permute(0, 2, 1, 3).reshape(B, self.positions, C * self.patch)  # (B, N, C*P)
        h = self.embeds[i](h)  # (B', N, D)
        for block in self.blocks[i * self.layers : (i + 1) * self.layers]:
            h = block(h)
        h = h.flatten(1) if self.flatten else h[:, -1]  # (B', N*D) or (B', D)
        y = self.heads[i](h)  # (B*C, H) or (B, H*C)
        if self.mixing == "independent":
            return y.view(B, C, self.horizon).transpose(1, 2)
        return y.view(B, self.horizon, C)

    @property
    def sequences(self) -> int:
        """Sequences the blocks see per example: one per channel when channels are independent."""
        return self.channels if self.mixing == "independent" else 1

    def io_flops(self, seq_len: int) -> float:
        embed = sum(2.0 * e.weight.numel() * seq_len for e in self.embeds)
        return self.sequences * (embed + sum(2.0 * h.weight.numel() for h in self.heads))

    def flops(self, seq_len: int) -> float:
        return self.sequences * sum(block.flops(seq_len) for block in self.blocks) + self.io_flops(seq_len)

    def state_size(self, seq_len: int) -> int:
        return self.sequences * super().state_size(seq_len)


class PointerHead(nn.Module):
    """Additive attention as the output distribution (Vinyals et al. 2015, eq. 3): the scores
    u_ij = v^T tanh(W1 e_j + W2 d_i) of each decoder state d_i over the keys e_j."""

    def __init__(self, d_model: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_model, bias=False)
        self.w2 = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, 1, bias=False)

    def forward(self, keys: Tensor, queries: Tensor) -> Tensor:  # (B, J, D), (B, I, D) -> (B, I, J)
        u = torch.tanh(self.w1(keys)[:, None, :, :] + self.w2(queries)[:, :, None, :])  # (B, I, J, D)
        return self.v(u).squeeze(-1)


class PointerModel(Shell):
    """Points (B, n, dim) and the pointers fed back (B, S) -> pointer logits (B, S + 1, n + 1) of
    the S + 1 decoder steps over the n points and END (see the module docstring)."""

    def __init__(self, blocks: list[Mixer], d_model: int, dim: int):
        super().__init__(blocks, d_model)
        self.options = dict(dim=dim)
        self.enc = nn.Linear(dim, d_model)
        self.dec = nn.Linear(dim, d_model)
        self.go = nn.Parameter(torch.randn(d_model) * 0.02)
        self.head = PointerHead(d_model)

    def forward(self, points: Tensor, fed: Tensor) -> Tensor:
        B, n, dim = points.shape
        is_point = ((fed >= 0) & (fed < n))[..., None]  # (B, S, 1): END and IGNORE feed zeros
        chosen = points.gather(1, fed.clamp(0, n - 1)[..., None].expand(-1, -1, dim))  # (B, S, dim)
        steps = torch.where(is_point, self.dec(chosen), 0.0)  # (B, S, D)
        go = self.go.expand(B, 1, -1)  # (B, 1, D)
        h = self.trunk(torch.cat([self.enc(points), go, steps], dim=1))  # (B, n + 1 + S, D)
        return self.head(h[:, : n + 1], h[:, n:])  # (B, S + 1, n + 1)

    def io_flops(self, seq_len: int) -> float:
        """For the training sequence of T = 2n + 1 positions: n points, n + 1 decoder steps."""
        n = (seq_len - 1) // 2
        keys, steps = n + 1, seq_len - n
        D = self.d_model
        embed = 2.0 * self.enc.weight.numel() * seq_len
        head = 2.0 * D * D * (keys + steps) + 3.0 * D * keys * steps  # W1, W2; add, tanh and v per pair
        return embed + head


class RecommenderModel(Shell):
    """SASRec's shell: item embedding -> blocks -> norm -> dot product with every item's embedding.
    Items (B, T) long, 0 for padding -> scores (B, T, items + 1), the padding column at -inf."""

    def __init__(self, blocks: list[Mixer], d_model: int, items: int):
        super().__init__(blocks, d_model)
        self.options = dict(items=items)
        self.embed = nn.Embedding(items + 1, d_model, padding_idx=0)
        nn.init.normal_(self.embed.weight[1:], std=d_model**-0.5)  # scores of order 1 from the start

    def forward(self, items: Tensor) -> Tensor:
        h = self.trunk(self.embed(items))  # (B, T, D)
        scores = h @ self.embed.weight[1:].T  # (B, T, I)
        return F.pad(scores, (1, 0), value=-math.inf)  # (B, T, I + 1): item 0 is never recommended

    def io_flops(self, seq_len: int) -> float:
        return 2.0 * self.embed.weight.numel() * seq_len


def patch_count(lookback: int, patch: int, stride: int) -> int:
    """Patches of a window padded by `stride` repeated last rows (PatchTST)."""
    return (lookback + stride - patch) // stride + 1


def patches(x: Tensor, patch: int, stride: int) -> Tensor:
    """(B, L, C) -> (B, C, N, patch): the window with its last row repeated `stride` times, cut
    into patches every `stride` rows, aligned so that the last patch ends at the last row."""
    x = x.transpose(1, 2)  # (B, C, L)
    x = torch.cat([x, x[..., -1:].expand(*x.shape[:-1], stride)], dim=-1)  # (B, C, L + stride)
    count = patch_count(x.shape[-1] - stride, patch, stride)
    first = x.shape[-1] - (count - 1) * stride - patch
    return x[..., first:].unfold(-1, patch, stride)


def instance_statistics(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """RevIN's statistics of each window and channel: mean and std over time, (B, 1, C) each."""
    mean = x.mean(dim=1, keepdim=True)
    std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + eps)
    return mean.detach(), std.detach()


def decompose(x: Tensor, kernel: int) -> tuple[Tensor, Tensor]:
    """DLinear's series decomposition of (B, L, C): (seasonal, trend), the trend a centred moving
    average of `kernel` rows (odd), the window extended by repeating its first and last rows."""
    half = (kernel - 1) // 2
    padded = torch.cat([x[:, :1].expand(-1, half, -1), x, x[:, -1:].expand(-1, half, -1)], dim=1)
    trend = padded.unfold(1, kernel, 1).mean(dim=-1)  # (B, L, C)
    return x - trend, trend


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Fixed sine/cosine position embeddings (Vaswani et al. 2017), (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class CompressionModel(Shell):
    """MAD's auto-encoder (`mad/model/auto_encoder.py`): tokens (B, T) -> logits (B, T, vocab)
    reconstructed from the last position's features only (the blocks must compress the sequence
    into one vector)."""

    def __init__(self, blocks: list[Mixer], d_model: int, vocab: int, length: int):
        super().__init__(blocks, d_model)
        self.options = dict(vocab=vocab, length=length)
        self.embed = nn.Embedding(vocab, d_model)
        self.register_buffer("positions", sinusoidal_positions(length, d_model), persistent=False)
        self.decoder = nn.Sequential(
            nn.RMSNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(),
            nn.RMSNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(),
            nn.RMSNorm(d_model),
        )  # fmt: skip
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        code = self.trunk(self.embed(tokens))[:, -1]  # (B, D)
        h = code[:, None, :] + self.positions[:T]  # (B, T, D)
        return self.head(self.decoder(h))

    def io_flops(self, seq_len: int) -> float:
        decoder = sum(m.weight.numel() for m in self.decoder if isinstance(m, nn.Linear))
        return 2.0 * (decoder + self.head.weight.numel()) * seq_len
