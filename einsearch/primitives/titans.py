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
    S_t = η_t S_{t-1} − θ_t g_t      (momentum=true)   or   S_t = −θ_t g_t   (momentum=false)
    retention l2:  W_t = (1 − α_t) W_{t-1} + S_t                          (Titans eq. 13-14)
    retention kl:  W_t = c · softmax_rows((1 − α_t) log W_{t-1} + S_t)    (Miras eq. 21, Memora)
    y_t = M_{W_t}(q_t),   output = W_o [y_t of all heads]

Attentional biases, of the error e = M(k) − v, and their derivative ψ = ∂ℓ/∂M(k):

* l2:    ℓ = ½‖e‖²,                                      ψ = e
* lp:    ℓ = (1/p) Σ_i |e_i|^p with p = 3 (Moneta),      ψ = sign(e) |e|^{p−1} = e ⊙ |e|
* huber: ℓ = Σ_i H_δ(e_i), H_δ(a) = ½a² for |a| ≤ δ, δ(|a| − ½δ) otherwise (Miras eq. 14,
         the coordinate-wise Huber; Yaad),               ψ = clamp(e, −δ_t, δ_t)

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
weights.  Here a slice is a row of W1 and of W2 (the weights into one hidden unit, and into one
output coordinate); λ_t is the forgetting gate α_t and η'_t the learning rate θ_t.  The constant
log c drops out of a row softmax, so the state carries the row-normalised logarithms
P = log(W / c) (numerically safer than W itself: a weight that underflows to 0 would give
log 0) and W = c · exp(P) enters the MLP.  c is a learned positive scale per head and layer
(initialised to d for W1, so that the pre-activations are O(1), and to 1 for W2); within the
recurrence it is constant, as in the paper.  With momentum, S_t replaces −θ_t g_t inside the
softmax (momentum on the mirror-descent step).  ∇ℓ is taken w.r.t. W itself, not the logits.

The initial memory (W1, W2, or the initial logits for kl) is a learned parameter per head.

`forward` is the exact token-by-token recurrence (a loop over t, every operation batched over
batch and heads); `step` is one iteration of it.  Titans' chunked training form, which takes all
gradients of a chunk at the memory of the chunk start, is a different recurrence and is not
implemented, so there is no separate `reference`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch.primitives.base import Mixer, State, head_dim

LP_POWER = 3  # Moneta's p
HIDDEN_EXPANSION = 2  # n = 2 d per head
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
) -> tuple[Tensor, Tensor]:
    """Closed-form ∇_{W1} ℓ, ∇_{W2} ℓ of ℓ(M(k), v), shapes of w1 (B, H, n, d) and w2 (B, H, d, n)."""
    output, z, h = memory_forward(w1, w2, k)
    psi = loss_derivative(output - v, loss, delta)  # (B, H, d)
    grad_w2 = psi[..., :, None] * h[..., None, :]  # (B, H, d, n)
    grad_h = torch.einsum("bhdn,bhd->bhn", w2, psi)  # (B, H, n)
    grad_z = grad_h * silu_derivative(z)
    grad_w1 = grad_z[..., :, None] * k[..., None, :]  # (B, H, n, d)
    return grad_w1, grad_w2


# ================================================================ the module


class Titans(Mixer):
    """Titans' neural memory with Miras' attentional biases and retentions (see the module docstring).

    State per sequence: the memory (W1, W2), or its row-normalised log-weights for kl, plus the
    momentum (S1, S2) when momentum is on; all per head, independent of the sequence length.
    """

    def __init__(self, d_model: int, heads: int, loss: str, retention: str, momentum: bool):
        super().__init__()
        if loss not in ("l2", "lp", "huber"):
            raise ValueError(f"mem(titans): unknown loss {loss!r}")
        if retention not in ("l2", "kl"):
            raise ValueError(f"mem(titans): unknown retention {retention!r}")
        self.d_model, self.heads = d_model, heads
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
            # initial logits of the row-softmax weights, and log c per head for (W1, W2)
            self.init1 = nn.Parameter(torch.randn(heads, n, d))
            self.init2 = nn.Parameter(torch.randn(heads, d, n))
            self.log_scale = nn.Parameter(torch.tensor([math.log(d), 0.0]).repeat(heads, 1))  # (H, 2)
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
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        raw = self.gates(x).view(B, T, self.heads, len(self.gate_names))
        gates = {}
        for i, name in enumerate(self.gate_names):
            if name == "delta":
                gates[name] = F.softplus(raw[..., i])
            elif name == "lr":
                gates[name] = torch.sigmoid(raw[..., i]) / self.hidden
            else:
                gates[name] = torch.sigmoid(raw[..., i])
        return q, k, v, gates

    # ------------------------------------------------------------ the recurrence

    def init_state(self, batch: int) -> State:
        if self.retention == "l2":
            memory = (self.init1, self.init2)
        else:
            memory = (F.log_softmax(self.init1, -1), F.log_softmax(self.init2, -1))
        memory = tuple(m.expand(batch, *m.shape) for m in memory)  # (B, H, n, d), (B, H, d, n)
        momentum = tuple(torch.zeros_like(m) for m in memory) if self.momentum else ()
        return memory + momentum

    def _weights(self, memory: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The MLP's weights from the memory state: itself (l2), or c · exp(log-weights) (kl)."""
        if self.retention == "l2":
            return memory
        scale = self.log_scale.exp()  # (H, 2)
        return scale[:, 0, None, None] * memory[0].exp(), scale[:, 1, None, None] * memory[1].exp()

    def _recur(self, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor], state: State) -> tuple[Tensor, State]:
        """One token: q, k, v (B, H, d), gates (B, H) each -> (y_t (B, H, d), new state)."""
        memory, momentum = state[:2], state[2:]
        w1, w2 = self._weights(memory)
        grads = memory_gradient(w1, w2, k, v, self.loss, gates.get("delta"))
        lr = gates["lr"][..., None, None]  # (B, H, 1, 1)
        change = tuple(-lr * g for g in grads)  # S_t without momentum
        if self.momentum:
            eta = gates["momentum"][..., None, None]
            change = tuple(eta * s + c for s, c in zip(momentum, change))
        keep = 1 - gates["forget"][..., None, None]
        if self.retention == "l2":
            memory = tuple(keep * m + c for m, c in zip(memory, change))
        else:
            memory = tuple(F.log_softmax(keep * m + c, dim=-1) for m, c in zip(memory, change))
        y, _, _ = memory_forward(*self._weights(memory), q)
        return y, memory + (change if self.momentum else ())

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v, gates = self._project(x)
        state = self.init_state(B)
        outputs = []
        for t in range(T):
            y, state = self._recur(q[:, t], k[:, t], v[:, t], {name: g[:, t] for name, g in gates.items()}, state)
            outputs.append(y)
        return self.out(torch.stack(outputs, dim=1).reshape(B, T, D))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        q, k, v, gates = self._project(x[:, None])
        y, state = self._recur(q[:, 0], k[:, 0], v[:, 0], {name: g[:, 0] for name, g in gates.items()}, state)
        return self.out(y.reshape(x.shape[0], self.d_model)), state

    # ------------------------------------------------------------ costs

    def flops(self, seq_len: int) -> float:
        """Per token: the projections (q, k, v, out, gates) and, per head with m = n·d weights per
        layer, M on k (2m MACs), the backward (W2ᵀψ, ψhᵀ, (·)kᵀ: 3m MACs), the update (2m weights
        per equation, counted as one MAC each: the momentum and the retention equations) and M on q
        (2m MACs)."""
        m = self.hidden * self.d_head
        equations = 2 if self.momentum else 1
        memory = self.heads * (2 * m + 3 * m + equations * 2 * m + 2 * m)
        projections = 4 * self.d_model**2 + self.d_model * self.heads * len(self.gate_names)
        return 2.0 * (projections + memory) * seq_len

    def state_size(self, seq_len: int) -> int:
        weights = 2 * self.heads * self.hidden * self.d_head
        return weights * (2 if self.momentum else 1)
