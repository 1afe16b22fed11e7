"""Deep neural memory learned at test time: Titans and its Miras variants (Moneta, Yaad, Memora).

Titans (Behrouz, Zhong, Mirrokni 2024, "Titans: Learning to Memorize at Test Time", §3.1) keeps,
per head, a small MLP whose weights are the recurrent state and trains it online, one gradient
step per token, on an associative-memory loss of the current key/value pair.  Miras (Behrouz,
Razaviyayn, Zhong, Mirrokni 2025, "It's All Connected: A Journey Through Test-Time Memorization,
Attentional Bias, Retention, and Online Optimization", §3-5) names the loss the *attentional
bias* and the forgetting the *retention*, and varies both: Moneta uses an ℓp loss, Yaad a Huber
loss, Memora a KL-divergence retention.

Per head, with d = d_model / heads and hidden width n = 2d, the memory is the residual MLP

    M_W(k) = k + W2 σ(W1 k),        W1: (n, d), W2: (d, n), σ = SiLU

and at each token t (q_t, k_t unit-norm, all projections of x_t; the gates are per head):

    g_t = ∇_W ℓ(M_{W_{t-1}}(k_t), v_t)                      attentional bias ℓ, see below
    S_t = η_t S_{t-1} − θ'_t g_t     (momentum=true)   or   S_t = −θ'_t g_t  (momentum=false)
    retention l2:  W_t = (1 − α_t) W_{t-1} + S_t                          (Titans eq. 13-14)
    retention kl:  W±_t = c · softmax_rows((1 − α_t) log W±_{t-1} ± S_t)  (Miras eq. 21, Memora;
                   W = W⁺ − W⁻, see "KL retention" below)
    y_t = M_{W_t}(q_t),   output = W_o [y_t of all heads]

θ'_t is the learning-rate gate θ_t, shortened for lp (below) and rescaled to the simplex for kl
(below); otherwise θ'_t = θ_t.

Attentional biases, of the error e = M(k) − v, and their derivative ψ = ∂ℓ/∂M(k):

* l2:    ℓ = ½‖e‖²,                                      ψ = e
* lp:    ℓ = (1/p) Σ_i |e_i|^p with p = 3 (Moneta),      ψ = sign(e) |e|^{p−1} = e ⊙ |e|
* huber: ℓ = Σ_i H_δ(e_i), H_δ(a) = ½a² for |a| ≤ δ, δ(|a| − ½δ) otherwise (Miras eq. 14,
         the coordinate-wise Huber; Yaad),               ψ = clamp(e, −δ_t, δ_t)

Moneta's step bound.  ψ = e|e| grows quadratically, so no fixed learning rate keeps plain gradient
descent on the ℓ3 loss stable: to first order a step changes the error by −θ J Jᵀ ψ (J = ∂M/∂W),
i.e. e_i ← e_i (1 − θ λ |e_i|) along an eigendirection λ of J Jᵀ, which overshoots once
θ λ |e_i| > 2 and then diverges (the overshoot makes |e| larger, which makes the next step
longer).  The lp step is therefore taken with θ'_t = θ_t / max(1, ‖e_t‖_∞): gradient descent on
Moneta's own ℓ3 loss (same direction ψ) with a data-dependent step that is exactly Moneta's
while ‖e‖_∞ ≤ 1 and never longer, per coordinate, than the l2 step (|e_i| / max(1, ‖e‖_∞) ≤ 1),
so it contracts wherever the l2 step does.  (Miras keeps Moneta bounded by normalising instead:
an ℓq retention W = A / ‖A‖_q^{q−2} and a LayerNorm inside the memory; neither is part of this
node — the retention here is l2 — so the bound is put on the step.)

The gradient g_t is written out in closed form (the backward pass of the 2-layer MLP, batched over
batch and heads; see `memory_gradient`), so the recurrence is ordinary differentiable tensor code
and the module's own parameters are trained by autograd through it:

    z = W1 k,  h = σ(z),  e = k + W2 h − v
    ∇_{W2} ℓ = ψ hᵀ,   ∇_{W1} ℓ = ((W2ᵀ ψ) ⊙ σ'(z)) kᵀ

Gates, from one biased projection of x_t (H values per gate):
α_t = sigmoid(·) (forgetting, ≈ 0.01 at initialisation), θ_t = sigmoid(·) / n (learning rate,
≈ 0.1/n at initialisation), η_t = sigmoid(·) (momentum decay, ≈ 0.9; only with momentum) and
δ_t = softplus(·) (Huber threshold, data-dependent as in Yaad, ≈ 1; only with loss=huber).  The
1/n bounds the step: the loss's curvature along W2 is ‖h‖² ≈ 0.36 n for SiLU of unit-variance
pre-activations, so θ ≤ 1/n keeps one step from overshooting the current pair.

KL retention (Memora).  Miras §5.2 derives, from the retention
(1/η_t) KL(W ‖ W_{t−1}) + (1/α_t) Σ W log W on the set {W ≥ 0, each slice sums to c}, the update
W_t = c · Softmax((1 − λ_t) log W_{t−1} − η'_t ∇ℓ(W_{t−1})), a softmax per slice of the network's
weights: entropic mirror descent (exponentiated gradient).  λ_t is the forgetting gate α_t.

Signed weights (EG±).  An MLP whose rows are nonnegative with a fixed mass cannot fit a value:
every output coordinate of W2 σ(W1 k) is c times an average of the same hidden units, so the
outputs share one common mode and reach at most c · min σ = −0.28 c below zero (with c = 1 the
memory cannot fit a unit-size value).  Miras's memory, x + LN(W1 σ(W2 x)), removes that common
mode and scale with a LayerNorm; here, without one, the weights carry their sign the standard
way for exponentiated gradient (Kivinen & Warmuth
1997, "Exponentiated gradient versus gradient descent for linear predictors", EG±): each weight
is W = W⁺ − W⁻ with W⁺, W⁻ ≥ 0, and the KL retention above acts on the nonnegative pair, a
slice being a row of W1 or W2 together with its twin, [W⁺ | W⁻], of mass c.  ∇_{W±} ℓ = ±∇_W ℓ,
so the exponent gets +S_t for W⁺ and −S_t for W⁻; momentum is kept once, on ∇_W.  Every row of
W then has ‖row‖₁ ≤ c (Memora's boundedness) and either sign.

Scale and step.  c (a learned scale per head and layer, constant within the recurrence as in the
paper) and the step are set from the l2 memory, so that Memora starts where Titans does:
* with logits N(0, 1) a weight is c (P⁺ − P⁻), P± = softmax entries over 2m (m the row length),
  of standard deviation c √(2(e − 1)) / (2m); c = m s √(2 / (e − 1)) makes it s, the l2 memory's
  (s = 1 for W1, 1/√n for W2), i.e. c1 ≈ 1.08 d and c2 ≈ 1.08 √n;
* to first order (no forgetting, no momentum) a KL step changes a row w of W, with gradient
  row g, by Δw = −η' (w⁺ + w⁻) ⊙ g + (η' / c) ⟨w, g⟩ w: a preconditioned gradient step plus a
  rescaling along w; w⁺ + w⁻ averages c / m per weight, so η'_t = θ_t m / c makes the step
  −θ_t g on average, the l2 memory's (for W1: θ_t d / c1, for W2: θ_t n / c2).
The state carries the row-normalised logarithms log(W± / c) (numerically safer than W± itself:
a weight that underflows to 0 would give log 0).  ∇ℓ is taken w.r.t. W itself, not the logits.

The initial memory (W1, W2, or the initial logits of W± for kl) is a learned parameter per head.

Chunks (``chunk=C``; Titans §3.2, "Parallelize the Long-term Memory Training").  Absent or 1:
the recurrence above, one gradient step per token, computed token by token.  With C > 1 the
sequence is cut into chunks of C tokens (the last one shorter when C does not divide T) and every
gradient of a chunk is taken at the memory of the chunk's start, W_0 (mini-batch gradient
descent); momentum, retention and the outputs stay per token.  For the tokens i = 1..L of a chunk:

    g_i = ∇_W ℓ(M_{W_0}(k_i), v_i)                         (θ'_i: lp's bound uses e_i at W_0 too)
    S_i = η_i S_{i−1} − θ'_i g_i,   W_i = (1 − α_i) W_{i−1} + S_i     (kl: W±_i as above, with S_i)
    y_i = M_{W_i}(q_i)

with S_0, W_0 carried from the previous chunk.  These are linear recurrences in (W, S), so with
a_i = 1 − α_i, A_i = Π_{l≤i} a_l, E_i = Π_{l≤i} η_l, D[i, j] = Π_{j<l≤i} a_l and
N[j, s] = Π_{s<l≤j} η_l (for j ≥ s, else 0; computed as exp of segment sums of log a and log η,
never as ratios of cumulative products):

    S_i = E_i S_0 − Σ_{s≤i} N[i, s] θ'_s g_s
    W_i = A_i W_0 + γ_i S_0 − Σ_{s≤i} K[i, s] θ'_s g_s,   γ = D E,  K = D N   (no momentum: γ = 0, K = D)

and, as each g_s is rank one (∇_{W1} = u_s k_sᵀ with u_s = (W2ᵀψ_s) ⊙ σ'(z_s), ∇_{W2} = ψ_s h_sᵀ,
all at W_0), the outputs never need W_i itself (the dual form, as in TTT's and Titans' parallel
training):

    W1_i q_i  = A_i W1_0 q_i + γ_i S1_0 q_i − Σ_{s≤i} K[i, s] θ'_s (k_s · q_i) u_s  =: z'_i
    W2_i h'_i = A_i W2_0 h'_i + γ_i S2_0 h'_i − Σ_{s≤i} K[i, s] θ'_s (h_s · h'_i) ψ_s,   h'_i = σ(z'_i)
    y_i = q_i + W2_i h'_i

— batched matrix products over the chunk, like a chunk of linear attention; the memory at the
chunk's end (W_L, S_L from the rows i = L above) is two (four with momentum) products of the
chunk's u, k, ψ, h.  kl retention (Memora) takes a row softmax after every token, which the dual
form cannot pass through: its gradients are batched at W_0 the same way, and the per-token mirror
steps then run in a loop over the chunk.

`forward` is the token loop for chunk 1 and the chunked form otherwise; `reference` is the token
loop for any chunk (the gradient of each token at the chunk-start memory, as `step` computes it),
which the contract compares with `forward` in outputs and gradients.  `step` carries the memory,
the momentum and, chunked, the chunk-start memory and the position in the chunk (an int), so
step == forward for every T.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.ops.chunks import causal_decay
from einsearch.primitives.base import Mixer, State, head_dim

LP_POWER = 3  # Moneta's p
HIDDEN_EXPANSION = 2  # n = 2 d per head
# c = m s √(2 / (e − 1)): a row of m signed KL weights c (P⁺ − P⁻) with N(0, 1) logits has entries
# of standard deviation s (see the module docstring)
KL_MASS_PER_STD = math.sqrt(2 / (math.e - 1))
GATE_INIT = {  # value of each gate at initialisation (before the 1/n of the learning rate)
    "forget": 0.01,
    "lr": 0.1,
    "momentum": 0.9,
    "delta": 1.0,
}


# ================================================================ the memory MLP and its gradient


def silu_derivative(z: Tensor) -> Tensor:
    """d/dz [z σ(z)] = σ(z) (1 + z (1 − σ(z)))."""
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def memory_forward(w1: Tensor, w2: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """M(k) = k + W2 σ(W1 k) per head.

    w1: (B, H, n, d), w2: (B, H, d, n), k: (B, H, d).  Returns (M(k) (B, H, d), z, h (B, H, n)).
    """
    z = torch.einsum("bhnd,bhd->bhn", w1, k)  # (B, H, n)
    h = F.silu(z)
    return k + torch.einsum("bhdn,bhn->bhd", w2, h), z, h


def loss_derivative(error: Tensor, loss: str, delta: Tensor | None = None) -> Tensor:
    """ψ = ∂ℓ/∂M(k) for the error e = M(k) − v: (B, H, d); delta: (B, H) for huber."""
    if loss == "l2":  # ½‖e‖²
        return error
    if loss == "lp":  # (1/p) Σ |e_i|^p with p = 3: sign(e) |e|^2
        return error * error.abs()
    if loss == "huber":  # Σ H_δ(e_i)
        delta = delta[..., None]
        return torch.maximum(torch.minimum(error, delta), -delta)
    raise ValueError(f"unknown attentional bias {loss!r}")


def memory_gradient(
    w1: Tensor, w2: Tensor, k: Tensor, v: Tensor, loss: str, delta: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form ∇_{W1} ℓ, ∇_{W2} ℓ of ℓ(M(k), v), shapes of w1 (B, H, n, d) and w2 (B, H, d, n),
    and the error e = M(k) − v (B, H, d)."""
    output, z, h = memory_forward(w1, w2, k)
    error = output - v
    psi = loss_derivative(error, loss, delta)  # (B, H, d)
    grad_w2 = psi[..., :, None] * h[..., None, :]  # (B, H, d, n)
    grad_h = torch.einsum("bhdn,bhd->bhn", w2, psi)  # (B, H, n)
    grad_z = grad_h * silu_derivative(z)
    grad_w1 = grad_z[..., :, None] * k[..., None, :]  # (B, H, n, d)
    return grad_w1, grad_w2, error


def lp_step_bound(error: Tensor) -> Tensor:
    """1 / max(1, ‖e‖_∞) per head: the factor that keeps Moneta's step no longer, per coordinate,
    than the l2 step (see the module docstring).  error (B, H, d) -> (B, H)."""
    return 1 / error.abs().amax(dim=-1).clamp_min(1.0)


# ================================================================ the module


class Titans(Mixer):
    """Titans' neural memory with Miras' attentional biases and retentions (see the module docstring).

    State per sequence: the memory (W1, W2), or for kl the row-normalised log-weights of
    [W1⁺ | W1⁻] and [W2⁺ | W2⁻], plus the momentum (S1, S2) when momentum is on, and with
    chunk > 1 the memory at the chunk's start and the position in the chunk; all per head,
    independent of the sequence length.
    """

    def __init__(self, d_model: int, heads: int, loss: str, retention: str, momentum: bool, chunk: int | None = None):
        super().__init__()
        if loss not in ("l2", "lp", "huber"):
            raise ValueError(f"mem(titans): unknown loss {loss!r}")
        if retention not in ("l2", "kl"):
            raise ValueError(f"mem(titans): unknown retention {retention!r}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"mem(titans): chunk must be positive, not {chunk}")
        self.d_model, self.heads = d_model, heads
        self.chunk = chunk or 1  # absent = 1: the per-token form
        self.loss, self.retention, self.momentum = loss, retention, momentum
        self.d_head = d = head_dim(d_model, heads, "mem(titans)")
        self.hidden = n = HIDDEN_EXPANSION * d
        self.gate_names = ["forget", "lr"] + ["momentum"] * momentum + ["delta"] * (loss == "huber")

        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.gates = nn.Linear(d_model, heads * len(self.gate_names), bias=True)  # columns (H, gate)
        self.out = nn.Linear(d_model, d_model, bias=False)
        if retention == "l2":
            # the initial memory: pre-activations W1 k ~ N(0, 1) for unit k; W2 h = O(1)
            self.init1 = nn.Parameter(torch.randn(heads, n, d))
            self.init2 = nn.Parameter(torch.randn(heads, d, n) / math.sqrt(n))
        else:
            # initial logits of the row softmax over [W⁺ | W⁻], and log c per head for (W1, W2):
            # c = m s √(2 / (e − 1)) with the l2 memory's spread s = 1 (W1, m = d) and 1/√n (W2, m = n)
            self.init1 = nn.Parameter(torch.randn(heads, n, 2 * d))
            self.init2 = nn.Parameter(torch.randn(heads, d, 2 * n))
            mass = [d * KL_MASS_PER_STD, math.sqrt(n) * KL_MASS_PER_STD]
            self.log_scale = nn.Parameter(torch.tensor(mass).log().repeat(heads, 1))  # (H, 2)
        with torch.no_grad():
            self.gates.weight.mul_(0.1)  # data-dependence starts mild; the bias sets the level
            bias = self.gates.bias.view(heads, len(self.gate_names))
            for i, name in enumerate(self.gate_names):
                value = GATE_INIT[name]
                bias[:, i] = math.log(math.expm1(value)) if name == "delta" else math.log(value / (1 - value))

    # ------------------------------------------------------------ inputs

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """x (B, T, D) -> q, k, v (B, T, H, d) with q, k unit-norm, and each gate (B, T, H)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.d_head).unbind(2)
        # (contiguous first: the same values, but normalising a strided view is twice as slow, backward included)
        q, k = F.normalize(q.contiguous(), dim=-1), F.normalize(k.contiguous(), dim=-1)
        raw = self.gates(x).view(B, T, self.heads, len(self.gate_names))
        gates = {}
        for i, name in enumerate(self.gate_names):
            if name == "delta":
                gates[name] = F.softplus(raw[..., i])
            elif name == "lr":
                gates[name] = torch.sigmoid(raw[..., i]) / self.hidden
            else:
                gates[name] = torch.sigmoid(raw[..., i])
        if self.chunk > 1:  # the chunked form's decays, as logarithms: log(1 − α_t), log η_t
            gates["log_keep"] = F.logsigmoid(-raw[..., self.gate_names.index("forget")])
            if self.momentum:
                gates["log_momentum"] = F.logsigmoid(raw[..., self.gate_names.index("momentum")])
        return q, k, v, gates

    # ------------------------------------------------------------ the recurrence

    def init_state(self, batch: int) -> State:
        if self.retention == "l2":
            memory = (self.init1, self.init2)
        else:
            memory = (F.log_softmax(self.init1, -1), F.log_softmax(self.init2, -1))
        # l2: (B, H, n, d), (B, H, d, n); kl: (B, H, n, 2d), (B, H, d, 2n)
        memory = tuple(m.expand(batch, *m.shape) for m in memory)
        momentum = tuple(torch.zeros_like(w) for w in self._weights(memory)) if self.momentum else ()
        if self.chunk == 1:
            return memory + momentum
        # chunked: also the memory at the start of the current chunk (where this chunk's gradients
        # are taken) and the position in the chunk (an int, not a number of the state)
        return memory + momentum + memory + (0,)

    def _weights(self, memory: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The MLP's weights from the memory state: itself (l2), or W⁺ − W⁻ with
        [W⁺ | W⁻] = c · exp(log-weights) (kl)."""
        if self.retention == "l2":
            return memory
        scale = self.log_scale.exp()  # (H, 2)
        weights = []
        for i, logits in enumerate(memory):
            plus, minus = logits.exp().chunk(2, dim=-1)
            weights.append(scale[:, i, None, None] * (plus - minus))
        return weights[0], weights[1]

    def _learning_rates(self, lr: Tensor) -> tuple[Tensor, Tensor]:
        """θ'_t for W1 and W2 from θ_t (B, H): θ_t (l2), or θ_t m / c (kl), each (B, H, 1, 1)."""
        lr = lr[..., None, None]
        if self.retention == "l2":
            return lr, lr
        scale = self.log_scale.exp()  # (H, 2)
        return lr * (self.d_head / scale[:, 0, None, None]), lr * (self.hidden / scale[:, 1, None, None])

    def _update(self, memory: State, momentum: State, grad1: Tensor, grad2: Tensor, lr: Tensor,
                gates: dict[str, Tensor]) -> tuple[State, State]:
        """S_t and W_t of one token from its gradient (B, H, ·, ·) and step θ_t (B, H)."""
        lr1, lr2 = self._learning_rates(lr)
        change = (-lr1 * grad1, -lr2 * grad2)  # S_t without momentum
        if self.momentum:
            eta = gates["momentum"][..., None, None]
            change = tuple(eta * s + c for s, c in zip(momentum, change))
        keep = 1 - gates["forget"][..., None, None]
        if self.retention == "l2":
            memory = tuple(keep * m + c for m, c in zip(memory, change))
        else:  # the exponent gets +S_t for W⁺ and −S_t for W⁻
            memory = tuple(F.log_softmax(keep * m + torch.cat([c, -c], dim=-1), dim=-1) for m, c in zip(memory, change))
        return memory, (change if self.momentum else ())

    def _recur(self, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor], state: State,
               start: State | None = None) -> tuple[Tensor, State]:
        """One token: q, k, v (B, H, d), gates (B, H) each -> (y_t (B, H, d), new memory + momentum).
        The gradient is taken at the memory `start` (the chunk's start), by default the current one."""
        memory, momentum = state[:2], state[2:4] if self.momentum else ()
        w1, w2 = self._weights(memory if start is None else start)
        grad1, grad2, error = memory_gradient(w1, w2, k, v, self.loss, gates.get("delta"))
        lr = gates["lr"]  # (B, H)
        if self.loss == "lp":
            lr = lr * lp_step_bound(error)
        memory, momentum = self._update(memory, momentum, grad1, grad2, lr, gates)
        y, _, _ = memory_forward(*self._weights(memory), q)
        return y, memory + momentum

    def _token(self, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor], state: State) -> tuple[Tensor, State]:
        """One token of the (chunked) recurrence, carrying the chunk-start memory and the position."""
        if self.chunk == 1:
            return self._recur(q, k, v, gates, state)
        size = 4 if self.momentum else 2
        current, start, position = state[:size], state[size : size + 2], state[-1]
        if position == 0:  # a chunk starts: its gradients are taken at the memory now
            start = current[:2]
        y, current = self._recur(q, k, v, gates, current, start)
        return y, current + tuple(start) + ((position + 1) % self.chunk,)

    def reference(self, x: Tensor) -> Tensor:
        """The recurrence one token at a time, as `step` runs it (the forward pass when chunk = 1)."""
        B, T, D = x.shape
        q, k, v, gates = self._project(x)
        state = self.init_state(B)
        outputs = []
        for t in range(T):
            y, state = self._token(q[:, t], k[:, t], v[:, t], {name: g[:, t] for name, g in gates.items()}, state)
            outputs.append(y)
        return self.out(torch.stack(outputs, dim=1).reshape(B, T, D))

    def forward(self, x: Tensor) -> Tensor:
        if self.chunk == 1:
            return self.reference(x)
        B, T, D = x.shape
        q, k, v, gates = self._project(x)
        chunks = self._chunks_l2 if self.retention == "l2" else self._chunks_kl
        y = chunks(q, k, v, gates)  # (B, H, T, d)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    # ------------------------------------------------------------ the chunked form

    def _chunk_gradients(self, w1: Tensor, w2: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor]):
        """The closed-form gradients of a chunk's tokens, all at the chunk-start weights w1 (..., n, d),
        w2 (..., d, n); k, v (..., L, d).  ∇_{W1} ℓ_i = u_i k_iᵀ and ∇_{W2} ℓ_i = ψ_i h_iᵀ are
        returned as their factors h, u (..., L, n), ψ (..., L, d), with the steps θ'_i (..., L)."""
        z = k @ w1.mT  # (..., L, n)
        h = F.silu(z)
        # e = M(k) − v = (k − v) + W2 h: one torch.baddbmm for the folded (3-d) tensors of the l2 path
        error = torch.baddbmm(k - v, h, w2.mT) if k.dim() == 3 else k + h @ w2.mT - v  # (..., L, d)
        psi = loss_derivative(error, self.loss, gates.get("delta"))
        # σ'(z) = s (1 + z (1 − s)) = s + h − h s with s = sigmoid(z): from h, in three operations, not five
        s = torch.sigmoid(z)
        u = (psi @ w2) * torch.addcmul(s + h, h, s, value=-1)  # (W2ᵀ ψ) ⊙ σ'(z)
        lr = gates["lr"]
        if self.loss == "lp":
            lr = lr * lp_step_bound(error)
        return h, psi, u, lr

    def _chunks_l2(self, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor]) -> Tensor:
        """The l2-retention memory chunk by chunk: q, k, v (B, T, H, d), gates (B, T, H) -> y (B, H, T, d)."""
        B, T, H, d = q.shape

        def by_chunk(a: Tensor) -> tuple[Tensor, ...]:
            """(B, T, H, ...) -> chunks of (B·H, C, ...): batch and heads folded into the one batch
            dimension of torch.bmm (contiguous), then cut along T (views; the last one shorter when C
            does not divide T)."""
            return a.transpose(1, 2).reshape(B * H, T, *a.shape[3:]).split(self.chunk, dim=1)

        q, k, v = by_chunk(q), by_chunk(k), by_chunk(v)
        gates = {name: by_chunk(g) for name, g in gates.items() if name in ("lr", "delta", "log_keep", "log_momentum")}
        w1, w2 = (w.reshape(B * H, *w.shape[2:]) for w in self.init_state(B)[:2])  # (B·H, n, d), (B·H, d, n)
        w1 = w1.mT.contiguous()  # W1 is carried transposed, (B·H, d, n): see `_chunk_l2`
        s1 = s2 = None  # the momentum (S1 transposed too): zero before the first chunk
        outputs = []
        for c in range(len(q)):
            y, (w1, w2, s1, s2) = self._chunk_l2(
                q[c], k[c], v[c], {name: g[c] for name, g in gates.items()}, w1, w2, s1, s2, last=c == len(q) - 1
            )
            outputs.append(y)
        return torch.cat(outputs, dim=1).view(B, H, T, d)

    def _chunk_l2(self, q, k, v, gates, w1, w2, s1, s2, last):
        """One chunk of the l2-retention memory in its dual form (module docstring, "Chunks"), batch and
        heads folded: q, k, v (BH, L, d), gates (BH, L) each, the chunk-start memory w1 = W1ᵀ (BH, d, n),
        w2 = W2 (BH, d, n) and momentum s1 = S1ᵀ, s2 = S2 (None: zero) -> y (BH, L, d) and the memory
        and momentum at the chunk's end (None after the last chunk).

        Written to make few passes over the (L, n) and (d, n) tensors: a sum acc + a @ b is one
        torch.baddbmm, acc + c ⊙ b one torch.addcmul, and a per-row scale of a product goes on its
        narrower factor (c ⊙ (a @ b) = (c ⊙ a) @ b, and d < n).  W1 is carried transposed so that the
        backward of its update, W1ᵀ += (c ⊙ k)ᵀ u, hands u a contiguous gradient (not a transposed
        view, which would make every elementwise operation of u's backward a strided one, several
        times slower)."""
        h, psi, u, lr = self._chunk_gradients(w1.mT, w2, k, v, gates)
        log_keep = gates["log_keep"].cumsum(-1)  # log A (BH, L)
        decay = causal_decay(log_keep[..., None])[..., 0]  # D (BH, L, L): Π_{l=j+1..i} keep_l for j ≤ i
        keep = log_keep.exp()[..., None]  # A (BH, L, 1)
        carried = s1 is not None  # a momentum from the previous chunk (zero before the first)
        if self.momentum:
            log_momentum = gates["log_momentum"].cumsum(-1)  # log E (BH, L)
            eta = causal_decay(log_momentum[..., None])[..., 0]  # N (BH, L, L)
            if carried:  # K = D N and γ = D E in one product, D [N | E]
                decayed = log_momentum.exp()[..., None]  # E (BH, L, 1)
                coef, carry = (decay @ torch.cat([eta, decayed], -1)).split([eta.shape[-1], 1], -1)  # (BH, L, L), (BH, L, 1)
            else:
                coef = decay @ eta  # K = D N
        else:
            coef = decay
        coef = coef * -lr[:, None, :]  # −K[i, s] θ'_s (BH, L, L): the sign on the small factor (alpha=-1
        # in torch.baddbmm would cost a pass over every gradient of the product in the backward)
        # z'_i = A_i W1_0 q_i + γ_i S1_0 q_i − Σ_s K[i, s] θ'_s (k_s · q_i) u_s
        z = torch.baddbmm((keep * q) @ w1, (q @ k.mT) * coef, u)  # (BH, L, n)
        if carried:
            z = torch.baddbmm(z, carry * q, s1)
        hq = F.silu(z)
        # y_i = q_i + A_i W2_0 h'_i + γ_i S2_0 h'_i − Σ_s K[i, s] θ'_s (h_s · h'_i) ψ_s
        y = torch.addcmul(q, keep, hq @ w2.mT)  # (BH, L, d)
        if carried:
            y = torch.addcmul(y, carry, hq @ s2.mT)
        y = torch.baddbmm(y, (hq @ h.mT) * coef, psi)
        if last:
            return y, (None, None, None, None)
        # the memory at the chunk's end, W_L = A_L W_0 + γ_L S_0 − Σ_s K[L, s] θ'_s g_s: the sums of
        # rank-one gradients are one product each, Σ_s c_s k_s u_sᵀ = (c ⊙ k)ᵀ u, Σ_s c_s ψ_s h_sᵀ = (c ⊙ ψ)ᵀ h
        end = coef[:, -1, :, None]  # −K[L, s] θ'_s (BH, L, 1)
        a = keep[:, -1, :, None]  # A_L (BH, 1, 1)
        w1_end, w2_end = a * w1, a * w2
        if carried:
            gamma = carry[:, -1, :, None]  # γ_L
            w1_end, w2_end = torch.addcmul(w1_end, gamma, s1), torch.addcmul(w2_end, gamma, s2)
        w1_end = torch.baddbmm(w1_end, (end * k).mT, u)  # W1ᵀ (BH, d, n)
        w2_end = torch.baddbmm(w2_end, (end * psi).mT, h)  # (BH, d, n)
        if not self.momentum:
            return y, (w1_end, w2_end, None, None)
        # and the momentum, S_L = E_L S_0 − Σ_s N[L, s] θ'_s g_s
        end = (eta[:, -1, :] * -lr)[..., None]  # −N[L, s] θ'_s (BH, L, 1)
        s1_end, s2_end = (end * k).mT @ u, (end * psi).mT @ h
        if carried:
            e = decayed[:, -1, :, None]  # E_L
            s1_end, s2_end = torch.addcmul(s1_end, e, s1), torch.addcmul(s2_end, e, s2)
        return y, (w1_end, w2_end, s1_end, s2_end)

    def _chunks_kl(self, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor]) -> Tensor:
        """The kl-retention memory chunk by chunk: q, k, v (B, T, H, d), gates (B, T, H) -> y (B, H, T, d)."""
        # (B, H, T, d) and (B, H, T), contiguous, cut into chunks of C tokens (views)
        q, k, v = (a.transpose(1, 2).contiguous().split(self.chunk, dim=2) for a in (q, k, v))
        gates = {name: g.transpose(1, 2).contiguous().split(self.chunk, dim=2) for name, g in gates.items()}
        memory, momentum = self.init_state(q[0].shape[0])[:2], None  # momentum None: zero (before the first chunk)
        outputs = []
        for c in range(len(q)):
            y, memory, momentum = self._chunk_kl(q[c], k[c], v[c], {name: g[c] for name, g in gates.items()}, memory, momentum)
            outputs.append(y)
        return torch.cat(outputs, dim=2)

    def _chunk_kl(self, q, k, v, gates, memory, momentum):
        """One chunk of the kl-retention memory: the gradients batched at the chunk start, then the
        per-token mirror steps (the row softmax of each token keeps them sequential)."""
        h, psi, u, lr = self._chunk_gradients(*self._weights(memory), k, v, gates)
        if self.momentum and momentum is None:
            momentum = tuple(torch.zeros_like(w) for w in self._weights(memory))
        outputs = []
        for i in range(q.shape[2]):
            grad1 = u[:, :, i, :, None] * k[:, :, i, None, :]
            grad2 = psi[:, :, i, :, None] * h[:, :, i, None, :]
            memory, momentum = self._update(memory, momentum or (), grad1, grad2, lr[..., i], {name: g[..., i] for name, g in gates.items()})
            outputs.append(memory_forward(*self._weights(memory), q[:, :, i])[0])
        return torch.stack(outputs, dim=2), memory, momentum or None

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        q, k, v, gates = self._project(x[:, None])
        y, state = self._token(q[:, 0], k[:, 0], v[:, 0], {name: g[:, 0] for name, g in gates.items()}, state)
        return self.out(y.reshape(x.shape[0], self.d_model)), state

    # ------------------------------------------------------------ costs

    def flops(self, seq_len: int) -> float:
        """Per token: the projections (q, k, v, out, gates) and, per head with m = n·d weights per
        layer, M on k (2m MACs), the backward (W2ᵀψ, ψhᵀ, (·)kᵀ: 3m MACs), the update (counted as
        one MAC per entry updated: the momentum equation 2m, the retention equation 2m, or 4m for
        kl, whose state holds W⁺ and W⁻) and M on q (2m MACs).  The chunked l2 form (chunk > 1)
        is counted as it computes, chunk by chunk (`_chunked_memory_macs`); the chunked kl form
        does the per-token work, its gradients batched."""
        m = self.hidden * self.d_head
        projections = 4 * self.d_model**2 + self.d_model * self.heads * len(self.gate_names)
        if self.chunk > 1 and self.retention == "l2":
            return 2.0 * (projections * seq_len + self.heads * self._chunked_memory_macs(seq_len))
        retention = 4 * m if self.retention == "kl" else 2 * m
        momentum = 2 * m if self.momentum else 0
        memory = self.heads * (2 * m + 3 * m + momentum + retention + 2 * m)
        return 2.0 * (projections + memory) * seq_len

    def _chunked_memory_macs(self, seq_len: int) -> int:
        """MACs of the dual form per head over a sequence (see `_chunk_l2`): per chunk of L tokens,
        the gradients at the chunk start (z, M(k), W2ᵀψ: 3Lm), the coefficients (K = D N: L³,
        γ = D E: L²), the outputs (W1 q and W2 h': 2Lm, and S1 q, S2 h' once momentum is carried:
        2Lm) and the in-chunk attention (q·k, h'·h: L²(d + n); their sums of u and ψ: L²(n + d));
        and, but for the last chunk, the memory at its end (Σ u kᵀ, Σ ψ hᵀ: 2Lm, decay 2m; the
        momentum likewise, and γ S, E S: 4m once momentum is carried)."""
        m, d, n, C = self.hidden * self.d_head, self.d_head, self.hidden, self.chunk
        total = 0
        for start in range(0, seq_len, C):
            L = min(C, seq_len - start)
            carried = self.momentum and start > 0  # momentum is zero before the first chunk
            total += 3 * L * m + (L**3 if self.momentum else 0) + (L**2 if carried else 0)
            total += (4 if carried else 2) * L * m + 2 * L**2 * (d + n)
            if start + L < seq_len:
                total += 2 * L * m + 2 * m
                if self.momentum:
                    total += 2 * L * m + (4 * m if carried else 0)
        return total

    def state_size(self, seq_len: int) -> int:
        """The memory and momentum; chunked (chunk > 1), also the memory of the chunk's start,
        where the chunk's gradients are taken."""
        weights = 2 * self.heads * self.hidden * self.d_head  # W1 and W2
        memory = 2 * weights if self.retention == "kl" else weights  # kl holds W⁺ and W⁻
        start = memory if self.chunk > 1 else 0
        return memory + start + (weights if self.momentum else 0)
