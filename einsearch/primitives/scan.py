"""Scans: a diagonal linear recurrence (S4D, Mamba) and softmax attention as a prefix scan (Aaren).

Each mixer has a functional core written twice, with the same arguments: a chunked parallel form
used by `forward` (the form a Triton kernel will later replace) and a plain loop over time
(`naive_...`) used by `reference` and, one token at a time, by `step`.

* `scan_diag_chunked` / `naive_scan_diag`: h_t = exp(log_a_t) ⊙ h_{t-1} + x_t b_tᵀ ; y_t = h_t c_t.
* `aaren_chunked` / `naive_aaren`: o_t = Σ_{i≤t} exp(s_i) v_i / Σ_{i≤t} exp(s_i), kept as the
  running triple (m, u, w) of Feng et al. (2024).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.kernels import dispatch
from einsearch.primitives.base import Mixer, State, head_dim

# Chunk lengths of the parallel forms, tuned for CPU: see the docstrings of the chunked functions.
DIAG_CHUNK = 2
AAREN_CHUNK = 32
OUTPUT_NORM_EPS = 1e-5  # Mamba-2's RMSNorm default


# ---------------------------------------------------------------- diagonal recurrence, the core


def diag_step(x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the diagonal recurrence, for every channel d and state index n:

        h[d, n] = exp(log_a[d, n]) · h[d, n] + x[d] · b[n] ;   y[d] = Σ_n c[n] · h[d, n]

    x (B, D), log_a (B, D, N), b (B, N), c (B, N), h (B, D, N) -> y (B, D), h (B, D, N).
    """
    h = log_a.exp() * h + x[:, :, None] * b[:, None, :]
    return torch.einsum("bdn,bn->bd", h, c), h


def naive_scan_diag(
    x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The diagonal recurrence as a plain loop over time (the reference for `scan_diag_chunked`).

    x (B, T, D), log_a (B, T, D, N), b (B, T, N), c (B, T, N), h0 (B, D, N) or None for zeros
    -> y (B, T, D), h_T (B, D, N).
    """
    batch, _, d = x.shape
    h = x.new_zeros(batch, d, b.shape[-1]) if h0 is None else h0
    ys = []
    for x_t, log_a_t, b_t, c_t in zip(x.unbind(1), log_a.unbind(1), b.unbind(1), c.unbind(1)):
        y_t, h = diag_step(x_t, log_a_t, b_t, c_t, h)
        ys.append(y_t)
    return torch.stack(ys, dim=1), h


def scan_diag_chunked(
    x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h0: Tensor | None = None, chunk: int = DIAG_CHUNK
) -> tuple[Tensor, Tensor]:
    """The diagonal recurrence of `naive_scan_diag`, computed chunk by chunk in parallel.

        h_t[d, n] = exp(log_a_t[d, n]) · h_{t-1}[d, n] + x_t[d] · b_t[n] ;   y_t[d] = Σ_n c_t[n] · h_t[d, n]

    x (B, T, D), log_a (B, T, D, N) with log_a ≤ 0, b (B, T, N), c (B, T, N), h0 (B, D, N) or
    None for zeros -> y (B, T, D), h_T (B, D, N).  Any T ≥ 1 and chunk ≥ 1.

    Time is cut into chunks of L = chunk steps (the last one padded with x = 0 and log_a = 0,
    which leaves the state unchanged).  With Λ(i, t] = Σ_{i<r≤t} log_a_r = cumsum_t - cumsum_i,
    the log decay from just after step i to step t, inside one chunk (positions 0..L-1,
    incoming state h_in):

        y_t[d] = Σ_n c_t[n] exp(Λ(-1, t][d, n]) h_in[d, n]           (the incoming state)
               + x_t[d] Σ_n c_t[n] b_t[n]                               (the token itself)
               + Σ_{i<t} x_i[d] Σ_n c_t[n] b_i[n] exp(Λ(i, t][d, n])   (earlier tokens of the chunk)

    Λ is formed for the causal pairs (i < t) only, directly as the sum of log_a over each
    interval (one matrix product with a 0/1 interval matrix; no masking needed, no cancellation
    between two large cumulative sums), so every exponent is ≤ 0: a strong decay underflows to
    0 and nothing can overflow.  Each chunk hands on h_out = exp(Λ(-1, L-1]) ⊙ h_in + h_local,
    h_local being its end state from a zero incoming state; this carry is the only loop, one
    step per chunk.

    Cost: the pairs make the work per token about (L+1)/2 times the loop's, done in a few large
    operations instead of T small ones.  On one CPU thread, forward + backward at T = 1024,
    D = 64, N = 16, L = 2 was fastest (L = 4 close, L = 8 slower than the loop): about 1.5× the
    loop at batch 4, but 0.4× at batch 16, where the loop's per-step tensors stay in cache and
    these stream from memory.  The chunked form is the layout for a GPU kernel, not a CPU win.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    batch, T, d = x.shape
    n = b.shape[-1]
    if h0 is None:
        h0 = x.new_zeros(batch, d, n)
    L = min(chunk, T)
    pad = -T % L
    if pad:  # F.pad copies even when there is nothing to add
        x, b, c = (F.pad(z, (0, 0, 0, pad)) for z in (x, b, c))
        log_a = F.pad(log_a, (0, 0, 0, 0, 0, pad))
    K = (T + pad) // L
    x, b, c = x.reshape(batch, K, L, d), b.reshape(batch, K, L, n), c.reshape(batch, K, L, n)
    log_a = log_a.reshape(batch, K, L, d * n)

    # Interval matrices: row t of `from_start` selects (-1, t]; row p of `between` selects
    # (i_p, t_p] for the pairs i_p < t_p, listed row-major (by t, then i), so the last L-1 rows
    # are the pairs (L-1, i) ending the chunk.
    r = torch.arange(L, device=x.device)
    t_idx, i_idx = torch.tril_indices(L, L, -1, device=x.device)
    from_start = (r[None, :] <= r[:, None]).to(x.dtype)  # (L, L)
    between = ((r[None, :] > i_idx[:, None]) & (r[None, :] <= t_idx[:, None])).to(x.dtype)  # (P, L)
    decay_in = torch.matmul(from_start, log_a).exp().view(batch, K, L, d, n)  # (B, K, L, D, N): exp Λ(-1, t]
    decay_pair = torch.matmul(between, log_a).exp().view(batch, K, -1, d, n)  # (B, K, P, D, N): exp Λ(i, t]

    # Contributions of the chunk's own tokens.
    y = x * (c * b).sum(-1, keepdim=True)  # (B, K, L, D)
    cb = c[:, :, t_idx] * b[:, :, i_idx]  # (B, K, P, N)
    weight = (decay_pair * cb[:, :, :, None, :]).sum(-1) * x[:, :, i_idx]  # (B, K, P, D)
    to_t = F.one_hot(t_idx, L).to(x.dtype).T  # (L, P): pair p contributes to y_{t_p}
    y = y + torch.matmul(to_t, weight)
    ending = decay_pair[:, :, decay_pair.shape[2] - (L - 1) :]  # (B, K, L-1, D, N): exp Λ(i, L-1], i < L-1
    inputs = x[..., None] * b[:, :, :, None, :]  # (B, K, L, D, N): x_i b_iᵀ
    h_local = (ending * inputs[:, :, :-1]).sum(2) + inputs[:, :, -1]  # (B, K, D, N)

    # Carry the state across chunks: h_out = exp(Λ(-1, L-1]) ⊙ h_in + h_local, one step per chunk.
    h, h_in = h0, []
    for decay_k, h_local_k in zip(decay_in[:, :, -1].unbind(1), h_local.unbind(1)):
        h_in.append(h)
        h = torch.addcmul(h_local_k, decay_k, h)
    h_in = torch.stack(h_in, dim=1)  # (B, K, D, N): the state entering each chunk
    y = y + torch.einsum("bkldn,bkln->bkld", decay_in * h_in[:, :, None], c)
    return y.reshape(batch, K * L, d)[:, :T], h


# ---------------------------------------------------------------- diagonal recurrence, the mixer


def inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y, for y > 0."""
    return y + torch.log(-torch.expm1(-y))


class DiagScan(Mixer):
    """Diagonal state-space scan: S4D (time-invariant) or Mamba's selective scan.

    Per channel d, with a state of size N (Gu et al. 2022, "On the Parameterization and
    Initialization of Diagonal State Space Models"; Gu & Dao 2023, "Mamba"):

        h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t-1}[d, n] + Δ_t[d] b_t[n] x_t[d]
        y_t[d]    = Σ_n c_t[n] h_t[d, n] + skip[d] x_t[d]

    with A = -exp(A_log) (S4D-real initialisation A[d, n] = -(n+1)) and Δ = softplus(·) so that
    0 < exp(Δ A) < 1.  Selective (Mamba): Δ_t = softplus(W_Δ x_t + bias), b_t = W_b x_t,
    c_t = W_c x_t.  Not selective (S4D): Δ, b and c are learned constants.  Δ starts
    log-uniform in [1e-3, 1e-1] as in Mamba, skip at 1.  A pure token mixer: input and output
    projections and gating are composed around it in the language.

    The selective output y_t + skip ⊙ x_t is RMS-normalised over the channels, the normalisation
    Mamba-2 (Dao & Gu 2024, §7) adds before the output projection: with b_t and c_t projections
    of x_t the readout grows as |x|³, so stacked scans overflow without it.  Parameter-free (a
    per-channel scale before the next linear map is absorbed by it).  S4D's scan is linear in x
    and keeps the paper's un-normalised output.
    """

    def __init__(self, d_model: int, state: int, selective: bool, chunk: int = DIAG_CHUNK):
        super().__init__()
        self.d_model, self.state, self.selective, self.chunk = d_model, state, selective, chunk
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(d_model, 1))
        self.skip = nn.Parameter(torch.ones(d_model))
        dt = torch.exp(torch.empty(d_model).uniform_(math.log(1e-3), math.log(1e-1)))
        if selective:
            self.delta = nn.Linear(d_model, d_model)
            with torch.no_grad():
                self.delta.bias.copy_(inverse_softplus(dt))
            self.bc = nn.Linear(d_model, 2 * state, bias=False)
        else:
            self.delta_bias = nn.Parameter(inverse_softplus(dt))
            self.b = nn.Parameter(torch.ones(state))
            self.c = nn.Parameter(torch.randn(state))

    def _coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (..., D) -> the core's inputs: Δ x (..., D), log_a = Δ A (..., D, N), b, c (..., N)."""
        if self.selective:
            delta = F.softplus(self.delta(x))
            b, c = self.bc(x).split(self.state, dim=-1)
        else:
            delta = F.softplus(self.delta_bias).expand_as(x)
            b = self.b.expand(*x.shape[:-1], self.state)
            c = self.c.expand(*x.shape[:-1], self.state)
        log_a = delta[..., None] * -torch.exp(self.A_log)
        return delta * x, log_a, b, c

    def _read(self, y: Tensor, x: Tensor) -> Tensor:
        """The scan's readout y (..., D) -> the output, with the skip and (selective) the norm."""
        y = y + self.skip * x
        return F.rms_norm(y, (self.d_model,), eps=OUTPUT_NORM_EPS) if self.selective else y

    def forward(self, x: Tensor) -> Tensor:
        y, _ = dispatch.scan_diag(*self._coefficients(x), chunk=self.chunk)
        return self._read(y, x)

    def reference(self, x: Tensor) -> Tensor:
        y, _ = naive_scan_diag(*self._coefficients(x))
        return self._read(y, x)

    def init_state(self, batch: int) -> State:
        return torch.zeros(batch, self.d_model, self.state, device=self._device, dtype=self._dtype)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y, h = diag_step(*self._coefficients(x), state)
        return self._read(y, x), h

    def flops(self, seq_len: int) -> float:
        projections = 2.0 * (self.d_model * self.d_model + self.d_model * 2 * self.state) if self.selective else 0.0
        update_and_readout = 2.0 * 2 * self.d_model * self.state  # x bᵀ into h, then h c
        return seq_len * (projections + update_and_readout)

    def state_size(self, seq_len: int) -> int:
        return self.d_model * self.state


# ---------------------------------------------------------------- attention as a prefix scan, the core

Triple = tuple[Tensor, Tensor, Tensor]


def aaren_combine(first: Triple, second: Triple) -> Triple:
    """Feng et al. (2024) combine of two (m, u, w) summaries, the earlier one first:

        m = max(m_A, m_B),  u = u_A e^(m_A - m) + u_B e^(m_B - m),  w = w_A e^(m_A - m) + w_B e^(m_B - m)

    m, w (...), u (..., E).  The empty summary (-inf, 0, 0) is its identity.
    """
    (m_a, u_a, w_a), (m_b, u_b, w_b) = first, second
    m = torch.maximum(m_a, m_b)
    scale_a, scale_b = torch.exp(m_a - m), torch.exp(m_b - m)
    return m, u_a * scale_a[..., None] + u_b * scale_b[..., None], w_a * scale_a + w_b * scale_b


def aaren_empty(shape: tuple[int, ...], value_dim: int, dtype: torch.dtype, device: torch.device) -> Triple:
    """The identity summary (m, u, w) = (-inf, 0, 0): m, w of `shape`, u of (*shape, value_dim)."""
    m = torch.full(shape, float("-inf"), dtype=dtype, device=device)
    return m, torch.zeros(*shape, value_dim, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)


def naive_aaren(s: Tensor, v: Tensor) -> Tensor:
    """Prefix softmax by applying `aaren_combine` one token at a time (the reference for `aaren_chunked`).

    s (B, H, T) scores, v (B, H, T, E) values -> o (B, H, T, E), o_t = u_t / w_t.
    """
    batch, heads, _, e = v.shape
    summary = aaren_empty((batch, heads), e, v.dtype, v.device)
    outputs = []
    for s_t, v_t in zip(s.unbind(2), v.unbind(2)):
        summary = aaren_combine(summary, (s_t, v_t, torch.ones_like(s_t)))
        _, u, w = summary
        outputs.append(u / w[..., None])
    return torch.stack(outputs, dim=2)


def aaren_chunked(s: Tensor, v: Tensor, chunk: int = AAREN_CHUNK) -> Tensor:
    """The prefix softmax of `naive_aaren`, computed chunk by chunk:

        o_t = Σ_{i≤t} exp(s_i - m_t) v_i / Σ_{i≤t} exp(s_i - m_t),   m_t = max_{i≤t} s_i

    s (B, H, T), v (B, H, T, E) -> o (B, H, T, E).  Any T ≥ 1.

    Within a chunk of L = chunk tokens, with the chunk's own running max m'_t = max of s_i over
    the chunk up to t (torch.cummax), the chunk's summary at t is an L × L causal matrix product:
    u'_t = Σ_{i≤t} exp(s_i - m'_t) v_i, w'_t = Σ_{i≤t} exp(s_i - m'_t); masked entries are
    exp(-inf) = 0 and all others exp(≤ 0), so large scores cannot overflow and the token's own
    term keeps w'_t ≥ 1.  The summaries of whole chunks are then combined left to right with
    `aaren_combine` (one step per chunk), and each position's summary is the combine of its
    chunk's incoming summary with (m'_t, u'_t, w'_t).  The reference maxima cancel between u and
    w, so they carry no gradient and are detached.  A plain cumsum of exp(s_i - m_t) over the
    whole sequence is not used: it needs one reference for all t, which either overflows or
    underflows when scores differ by more than ~88.

    Cost: L·E per token for the chunk matrix, K = T/L combine steps.  On one CPU thread at
    T = 1024, forward + backward, L = 32 was fastest: about 20× the loop at batch 4 with 2
    heads of 32, 4.5× at batch 16 with 4 heads of 16.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    batch, heads, T, e = v.shape
    L = min(chunk, T)
    pad = -T % L
    if pad:  # padded positions come after every real one, so they change no real output
        s, v = F.pad(s, (0, pad)), F.pad(v, (0, 0, 0, pad))
    K = (T + pad) // L
    s, v = s.reshape(batch, heads, K, L), v.reshape(batch, heads, K, L, e)

    m_local = s.detach().cummax(dim=-1).values  # (B, H, K, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=s.device).tril()
    logits = s[..., None, :] - m_local[..., :, None]  # (B, H, K, L_t, L_i): s_i - m'_t
    p = logits.masked_fill(~causal, float("-inf")).exp()
    local = (m_local, p @ v, p.sum(-1))  # (B, H, K, L), (B, H, K, L, E), (B, H, K, L)

    chunk_summaries = zip(*(z[:, :, :, -1].unbind(2) for z in local))  # each chunk's summary at its end
    summary = aaren_empty((batch, heads), e, v.dtype, v.device)
    incoming = []
    for chunk_summary in chunk_summaries:
        incoming.append(summary)
        summary = aaren_combine(summary, chunk_summary)
    m_in, u_in, w_in = (torch.stack(z, dim=2) for z in zip(*incoming))  # (B, H, K), (B, H, K, E), (B, H, K)
    _, u, w = aaren_combine((m_in[..., None], u_in[..., None, :], w_in[..., None]), local)
    return (u / w[..., None]).reshape(batch, heads, K * L, e)[:, :, :T]


# ---------------------------------------------------------------- attention as a prefix scan, the mixer


class Aaren(Mixer):
    """Aaren (Feng et al. 2024, "Attention as an RNN").

    Per head h, a learned query q_h (a parameter, not a function of the input) attends over
    keys k_i = W_k x_i and values v_i = W_v x_i at positions i ≤ t:

        s_i = q_h · k_i / √d_head,   o_t = Σ_{i≤t} softmax_i(s) v_i,   y_t = W_o [o_t over heads]

    computed as a prefix scan of (m, u, w) (see `aaren_combine`), so stepping carries a state of
    constant size: m, w per head and u of the value size.
    """

    def __init__(self, d_model: int, heads: int, chunk: int = AAREN_CHUNK):
        super().__init__()
        self.d_model, self.heads, self.chunk = d_model, heads, chunk
        self.d_head = head_dim(d_model, heads, "aaren")
        self.query = nn.Parameter(torch.randn(heads, self.d_head))  # scores start O(1)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _scores_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> scores s (B, H, T), values v (B, H, T, d_head)."""
        B, T, _ = x.shape
        k, v = self.kv(x).view(B, T, 2, self.heads, self.d_head).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        s = torch.einsum("bhtd,hd->bht", k, self.query) / math.sqrt(self.d_head)
        return s, v

    def _output(self, o: Tensor) -> Tensor:
        """o (B, H, T, d_head) -> y (B, T, D)."""
        B, _, T, _ = o.shape
        return self.out(o.transpose(1, 2).reshape(B, T, self.d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self._output(dispatch.aaren(*self._scores_values(x), chunk=self.chunk))

    def reference(self, x: Tensor) -> Tensor:
        return self._output(naive_aaren(*self._scores_values(x)))

    def init_state(self, batch: int) -> State:
        return aaren_empty((batch, self.heads), self.d_head, self._dtype, self._device)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        s, v = self._scores_values(x[:, None])  # (B, H, 1), (B, H, 1, d)
        state = aaren_combine(state, (s[:, :, 0], v[:, :, 0], torch.ones_like(s[:, :, 0])))
        _, u, w = state
        return self._output((u / w[..., None])[:, :, None])[:, 0], state

    def flops(self, seq_len: int) -> float:
        projections = 2.0 * 3 * self.d_model**2  # keys and values, output
        scores_and_values = 2.0 * 2 * self.d_model  # q · k_t, then v_t into u
        return seq_len * (projections + scores_and_values)

    def state_size(self, seq_len: int) -> int:
        return self.d_model + 2 * self.heads  # u, and m, w per head
