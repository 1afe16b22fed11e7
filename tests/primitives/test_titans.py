"""Titans / Miras neural memory (`mem(titans, ...)`): the shared contract, plus

* the closed-form gradient of the memory MLP against torch.autograd, for every loss;
* the whole recurrence against a naive loop written here from the published equations, one
  sequence and one head at a time, with each gradient taken by torch.autograd;
* a single step worked out by hand;
* test-time memorisation: a key/value pair seen repeatedly is learnt, by every variant at its
  default initialisation;
* Moneta's step bound: by hand, and the memory stays bounded on errors where the unbounded ℓ3
  step diverges;
* Memora: its weights stay on the scaled simplex, start with the l2 memory's spread, and its
  mirror step is the l2 step to first order; costs counted by hand.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import einsearch
from einsearch.primitives.titans import lp_step_bound, memory_forward, memory_gradient
from tests.contract import PrimitiveContract, run_steps


class TestTitans(PrimitiveContract):
    arch = "mem(titans, heads=2, loss=l2, retention=l2, momentum=true)"
    constant_state = True


class TestMoneta(PrimitiveContract):
    arch = "mem(titans, heads=1, loss=lp, retention=l2, momentum=false)"
    constant_state = True


class TestYaad(PrimitiveContract):
    arch = "mem(titans, heads=2, loss=huber, retention=l2, momentum=true)"
    constant_state = True

    def test_gradcheck_inputs_are_away_from_the_huber_kink(self):
        """The Huber derivative clamp(e, -δ, δ) has a kink at |e_i| = δ_t; the contract's
        gradcheck (finite differences with eps = 1e-6) is only meaningful away from it, so check
        that its deterministic inputs keep every error at least 1e-3 from the kink."""
        module = self.build(self.gradcheck_d).double()
        x = self.inputs(self.gradcheck_d, self.gradcheck_len).double()[:1]
        state = module.init_state(1)
        closest = math.inf
        with torch.no_grad():
            for t in range(x.shape[1]):
                _, k, v, gates = module._project(x[:, t : t + 1])
                output, _, _ = memory_forward(*module._weights(state[:2]), k[:, 0])
                gap = ((output - v[:, 0]).abs() - gates["delta"][:, 0, :, None]).abs()
                closest = min(closest, gap.min().item())
                _, state = module.step(x[:, t], state)
        assert closest > 1e-3


class TestMemora(PrimitiveContract):
    arch = "mem(titans, heads=2, loss=l2, retention=kl, momentum=true)"
    constant_state = True


class TestHuberKLNoMomentum(PrimitiveContract):
    arch = "mem(titans, heads=2, loss=huber, retention=kl, momentum=false)"
    constant_state = True


# The chunked (mini-batch) form: T = 13 is not a multiple of any of these chunks.  `reference` is
# the token loop with each gradient at the chunk-start memory, so the contract also compares the
# chunked forward with it (outputs, input and parameter gradients).
class TestTitansChunk4(PrimitiveContract):
    arch = "mem(titans, heads=2, loss=l2, retention=l2, momentum=true, chunk=4)"
    constant_state = True


class TestMonetaChunk5(PrimitiveContract):
    arch = "mem(titans, heads=1, loss=lp, retention=l2, momentum=false, chunk=5)"
    constant_state = True


class TestYaadChunk3(PrimitiveContract):
    arch = "mem(titans, heads=2, loss=huber, retention=l2, momentum=true, chunk=3)"
    constant_state = True


class TestMemoraChunk4(PrimitiveContract):
    arch = "mem(titans, heads=2, loss=l2, retention=kl, momentum=true, chunk=4)"
    constant_state = True


# ---------------------------------------------------------------- the closed-form gradient


def mlp_memory(w1, w2, k):
    """M(k) = k + W2 silu(W1 k) for one head: w1 (n, d), w2 (d, n), k (d,)."""
    return k + w2 @ F.silu(w1 @ k)


def attentional_bias(error, loss, delta):
    """The loss of one error vector, written from its definition (δ a tensor, so that the Huber
    loss is differentiable in it too)."""
    if loss == "l2":
        return 0.5 * error.square().sum()
    if loss == "lp":
        return error.abs().pow(3).sum() / 3
    size = error.abs()
    return torch.where(size <= delta, 0.5 * size.square(), delta * (size - 0.5 * delta)).sum()


@pytest.mark.parametrize("loss", ["l2", "lp", "huber"])
def test_closed_form_gradient_matches_autograd(loss):
    g = torch.Generator().manual_seed(0)
    B, H, n, d = 2, 3, 6, 4
    w1 = torch.randn(B, H, n, d, generator=g, dtype=torch.float64)
    w2 = torch.randn(B, H, d, n, generator=g, dtype=torch.float64) / 2
    k = F.normalize(torch.randn(B, H, d, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, d, generator=g, dtype=torch.float64) * 2
    delta = torch.rand(B, H, generator=g, dtype=torch.float64) + 0.3
    grad_w1, grad_w2, error = memory_gradient(w1, w2, k, v, loss, delta)
    torch.testing.assert_close(error, memory_forward(w1, w2, k)[0] - v)
    for b in range(B):
        for h in range(H):
            a1, a2 = w1[b, h].clone().requires_grad_(True), w2[b, h].clone().requires_grad_(True)
            error = mlp_memory(a1, a2, k[b, h]) - v[b, h]
            if loss == "huber":  # torch's own Huber loss
                value = F.huber_loss(error, torch.zeros_like(error), reduction="sum", delta=delta[b, h].item())
            else:
                value = attentional_bias(error, loss, None)
            expected1, expected2 = torch.autograd.grad(value, (a1, a2))
            torch.testing.assert_close(grad_w1[b, h], expected1)
            torch.testing.assert_close(grad_w2[b, h], expected2)


def test_huber_case_exercises_both_branches():
    """The data of the Huber gradient test puts errors on both sides of δ (else it proves little)."""
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64)
    w2 = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64) / 2
    k = F.normalize(torch.randn(2, 3, 4, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 2
    delta = torch.rand(2, 3, generator=g, dtype=torch.float64) + 0.3
    error = (memory_forward(w1, w2, k)[0] - v).abs()
    assert (error < delta[..., None]).any() and (error > delta[..., None]).any()


# ---------------------------------------------------------------- the recurrence from the paper


def naive_titans(module, x):
    """The module's output computed from the published recurrence, one sequence, one head and one
    token at a time, with g_t from torch.autograd (for kl, on the nonnegative weights W⁺ and W⁻
    themselves, the MLP using W = W⁺ − W⁻; each gets its own momentum).

    With chunk C > 1, Titans' mini-batch gradient descent (§3.2): the tokens are taken in chunks
    of C, every gradient of a chunk at the weights of the chunk's start, momentum and retention
    still applied token by token."""
    B, T, D = x.shape
    C = module.chunk
    H, d, n = module.heads, module.d_head, module.hidden
    q, k, v = module.qkv(x).view(B, T, 3, H, d).unbind(2)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    raw = module.gates(x).view(B, T, H, len(module.gate_names))
    gate = {name: raw[..., i] for i, name in enumerate(module.gate_names)}
    alpha, theta = torch.sigmoid(gate["forget"]), torch.sigmoid(gate["lr"]) / n
    eta = torch.sigmoid(gate["momentum"]) if module.momentum else None
    delta = F.softplus(gate["delta"]) if module.loss == "huber" else None
    row_length = [d, n]  # of W1 and W2
    y = torch.zeros(B, T, H, d, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            if module.retention == "l2":
                weights = [module.init1[h], module.init2[h]]
            else:  # W±, rows of [W⁺ | W⁻] of mass c
                c = module.log_scale[h].exp()
                pairs = [c[0] * torch.softmax(module.init1[h], -1), c[1] * torch.softmax(module.init2[h], -1)]
                weights = [part for pair in pairs for part in pair.chunk(2, -1)]  # W1⁺, W1⁻, W2⁺, W2⁻
            momentum = [torch.zeros_like(w) for w in weights]

            def memory(weights, key):
                if module.retention == "l2":
                    return mlp_memory(*weights, key)
                return mlp_memory(weights[0] - weights[1], weights[2] - weights[3], key)

            for t in range(T):
                if t % C == 0:  # a chunk starts: its gradients are taken at these weights
                    start = list(weights)
                error = memory(start, k[b, t, h]) - v[b, t, h]
                scale = delta[b, t, h] if delta is not None else None
                grads = torch.autograd.grad(attentional_bias(error, module.loss, scale), start, create_graph=True)
                step = theta[b, t, h]
                if module.loss == "lp":  # Moneta's step, no longer than the l2 one
                    step = step / torch.clamp(error.abs().max(), min=1.0)
                changes = []
                for i, grad in enumerate(grads):
                    layer = i if module.retention == "l2" else i // 2
                    rate = step if module.retention == "l2" else step * row_length[layer] / c[layer]
                    change = -rate * grad
                    if module.momentum:
                        change = eta[b, t, h] * momentum[i] + change
                        momentum[i] = change
                    changes.append(change)
                if module.retention == "l2":  # W_t = (1 - α_t) W_{t-1} + S_t
                    weights = [(1 - alpha[b, t, h]) * w + change for w, change in zip(weights, changes)]
                else:  # [W⁺ | W⁻]_t = c softmax((1 - α_t) log [W⁺ | W⁻]_{t-1} + [S⁺ | S⁻]_t), per row
                    for layer in range(2):
                        pair = torch.cat(weights[2 * layer : 2 * layer + 2], -1)
                        change = torch.cat(changes[2 * layer : 2 * layer + 2], -1)
                        pair = c[layer] * torch.softmax((1 - alpha[b, t, h]) * pair.log() + change, -1)
                        weights[2 * layer : 2 * layer + 2] = pair.chunk(2, -1)
                y[b, t, h] = memory(weights, q[b, t, h])
    return module.out(y.reshape(B, T, D))


@pytest.mark.parametrize("chunk", ["", ", chunk=3", ", chunk=4", ", chunk=8"])  # 8 > T: one chunk
@pytest.mark.parametrize(
    "arch",
    [
        "mem(titans, heads=2, loss=l2, retention=l2, momentum=true{})",
        "mem(titans, heads=1, loss=lp, retention=l2, momentum=false{})",
        "mem(titans, heads=2, loss=huber, retention=l2, momentum=true{})",
        "mem(titans, heads=2, loss=l2, retention=kl, momentum=true{})",
        "mem(titans, heads=2, loss=huber, retention=kl, momentum=false{})",
    ],
)
def test_forward_matches_the_published_recurrence(arch, chunk):
    """Outputs and parameter gradients against `naive_titans`, per token and in chunks (T = 7: a
    chunk of 3 or 4 leaves a partial last chunk)."""
    torch.manual_seed(0)
    module = einsearch.build(arch.format(chunk), 8).double()
    with torch.no_grad():  # livelier gates than at initialisation, so every term matters
        module.gates.bias.add_(torch.randn(module.gates.bias.shape, dtype=torch.float64))
        module.gates.weight.mul_(5)
    x = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = naive_titans(module, x)
    torch.testing.assert_close(module(x), expected)
    # and the gradients of the module's parameters through the recurrence
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = list(module.parameters())
    got = torch.autograd.grad((module(x) * weights).sum(), params)
    want = torch.autograd.grad((expected * weights).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- one step by hand


def silu(a: float) -> float:
    return a / (1 + math.exp(-a))


def test_single_step_by_hand():
    """d_model = 2, one head (d = 2, n = 4), l2 loss and retention, no momentum.

    q = k = x/‖x‖ = (0.6, 0.8), v = x = (3, 4); gates at sigmoid(0): α = 0.5, θ = 0.5/4 = 0.125;
    W1 = 0, W2 = [[1,0,0,0],[0,1,0,0]].  Then z = 0, h = 0, M(k) = k, e = k − v = (−2.4, −3.2),
    ∇W2 = e hᵀ = 0, W2ᵀe ⊙ silu'(0) = (−1.2, −1.6, 0, 0), ∇W1 = that ⊗ k =
    [[−0.72, −0.96], [−0.96, −1.28], 0, 0].  So W1' = −0.125 ∇W1 = [[0.09, 0.12], [0.12, 0.16], 0, 0],
    W2' = 0.5 W2, and W1' q = (0.15, 0.2): y = (0.6 + 0.5 silu(0.15), 0.8 + 0.5 silu(0.2)).
    """
    module = einsearch.build("mem(titans, heads=1, loss=l2, retention=l2, momentum=false)", 2).double()
    with torch.no_grad():
        module.qkv.weight.copy_(torch.eye(2).repeat(3, 1))
        module.gates.weight.zero_()
        module.gates.bias.zero_()
        module.out.weight.copy_(torch.eye(2))
        module.init1.zero_()
        module.init2.copy_(torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0]]]))
        x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
        y, (w1, w2) = module.step(x, module.init_state(1))
        y_forward = module(x[:, None])[:, 0]
    expected_w1 = torch.tensor([[0.09, 0.12], [0.12, 0.16], [0, 0], [0, 0]], dtype=torch.float64)
    expected_w2 = torch.tensor([[0.5, 0, 0, 0], [0, 0.5, 0, 0]], dtype=torch.float64)
    expected_y = torch.tensor([[0.6 + 0.5 * silu(0.15), 0.8 + 0.5 * silu(0.2)]], dtype=torch.float64)
    torch.testing.assert_close(w1[0, 0], expected_w1)
    torch.testing.assert_close(w2[0, 0], expected_w2)
    torch.testing.assert_close(y, expected_y)
    torch.testing.assert_close(y_forward, expected_y)


# ---------------------------------------------------------------- learning at test time


def memorisation_module(arch: str, value_scale: float = 1.0):
    """A module (d_model 16) with θ at its largest (1/n), α ≈ 0 and η = 0.5, its values scaled by
    value_scale, and one token x; returns (module, x, k, v) with k, v of shape (1, H, d)."""
    torch.manual_seed(0)
    module = einsearch.build(arch, 16)
    with torch.no_grad():
        module.gates.weight.zero_()
        bias = module.gates.bias.view(module.heads, -1)
        for i, name in enumerate(module.gate_names):
            bias[:, i] = {"forget": -30.0, "lr": 30.0, "momentum": 0.0, "delta": 0.0}[name]
        module.qkv.weight[2 * 16 :] *= value_scale
        x = torch.randn(1, 16, generator=torch.Generator().manual_seed(3))
        _, k, v, _ = module._project(x[:, None])
    return module, x, k[:, 0], v[:, 0]


def memorisation_errors(arch: str, steps: int, value_scale: float = 1.0) -> list[float]:
    """Feed one token repeatedly (see `memorisation_module`); return ‖M_t(k) − v‖ / ‖v‖ before
    each step."""
    module, x, k, v = memorisation_module(arch, value_scale)
    state, errors = module.init_state(1), []
    with torch.no_grad():
        for _ in range(steps):
            output, _, _ = memory_forward(*module._weights(state[:2]), k)
            errors.append(((output - v).norm() / v.norm()).item())
            _, state = module.step(x, state)
    return errors


@pytest.mark.parametrize(
    "arch",
    [
        "mem(titans, heads=2, loss=l2, retention=l2, momentum=false)",
        "mem(titans, heads=2, loss=l2, retention=l2, momentum=true)",
        "mem(titans, heads=2, loss=huber, retention=l2, momentum=true)",
    ],
)
def test_memory_learns_a_repeated_pair(arch):
    errors = memorisation_errors(arch, 60)
    assert errors[0] > 0.5
    assert errors[-1] < 1e-3 * errors[0]


def test_lp_memory_learns_a_repeated_pair():
    """With ψ = e|e| the steps shrink with the error, so convergence is sublinear: e_t ~ 1/t."""
    errors = memorisation_errors("mem(titans, heads=1, loss=lp, retention=l2, momentum=false)", 200)
    assert errors[-1] < 0.03 * errors[0]
    assert errors[199] < 0.6 * errors[99]  # still shrinking like 1/t, not stalled
    assert all(later <= earlier + 1e-6 for earlier, later in zip(errors[20:], errors[21:]))


def test_lp_step_bound_by_hand():
    """1 / max(1, ‖e‖_∞): Moneta's own step while every |e_i| ≤ 1, else shortened so that the
    step on each coordinate, |e_i| · e_i · bound, is at most the l2 step |e_i|."""
    error = torch.tensor([[[0.5, -0.2, 0.0]], [[-4.0, 2.0, 0.5]], [[1.0, -1.0, 0.3]]])  # (B=3, H=1, d=3)
    bound = lp_step_bound(error)
    torch.testing.assert_close(bound, torch.tensor([[1.0], [0.25], [1.0]]))
    step = error * error.abs() * bound[..., None]
    torch.testing.assert_close(step[1, 0], torch.tensor([-4.0, 1.0, 0.0625]))
    assert (step.abs() <= error.abs()).all()


def test_lp_memory_stays_bounded_on_large_errors():
    """Values 30× their usual size: the unbounded ℓ3 step (written here, with the same gradient and
    θ) overshoots and diverges, Moneta's bounded step still learns the pair."""
    arch = "mem(titans, heads=1, loss=lp, retention=l2, momentum=false)"
    errors = memorisation_errors(arch, 60, value_scale=30.0)
    assert all(map(math.isfinite, errors))
    assert max(errors) <= errors[0] and errors[-1] < 0.01 * errors[0]
    module, _, k, v = memorisation_module(arch, value_scale=30.0)
    with torch.no_grad():
        theta = module._project(torch.zeros(1, 1, 16))[3]["lr"][:, 0, :, None, None]  # gates from the bias alone
        w1, w2 = module.init_state(1)
        unbounded = []
        for _ in range(10):
            output, _, _ = memory_forward(w1, w2, k)
            unbounded.append(((output - v).norm() / v.norm()).item())
            grad1, grad2, _ = memory_gradient(w1, w2, k, v, "lp")
            w1, w2 = w1 - theta * grad1, w2 - theta * grad2
    assert not all(math.isfinite(e) and e < 10 * unbounded[0] for e in unbounded)


@pytest.mark.parametrize("momentum", ["false", "true"])
def test_kl_memory_learns_a_repeated_pair(momentum):
    """Memora at its default initialisation (signed weights W⁺ − W⁻, c from the l2 memory's spread)."""
    errors = memorisation_errors(f"mem(titans, heads=2, loss=l2, retention=kl, momentum={momentum})", 100)
    assert errors[0] > 0.5
    assert errors[-1] < 1e-3 * errors[0]


def test_kl_weights_stay_on_the_scaled_simplex():
    """Each row of [W⁺ | W⁻] is positive with mass c, so each row of W = W⁺ − W⁻ has ‖row‖₁ ≤ c."""
    torch.manual_seed(0)
    module = einsearch.build("mem(titans, heads=2, loss=l2, retention=kl, momentum=true)", 8)
    x = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(1)) * 3
    state = module.init_state(2)
    with torch.no_grad():
        for t in range(9):
            _, state = module.step(x[:, t], state)
        scale = module.log_scale.exp()  # (H, 2)
        pairs = [scale[:, i, None, None] * state[i].exp() for i in range(2)]
        w1, w2 = module._weights(state[:2])
    for pair, weights, layer in zip(pairs, (w1, w2), range(2)):
        assert (pair > 0).all()
        torch.testing.assert_close(pair.sum(-1), scale[:, layer, None].expand(pair.shape[:-1]))
        plus, minus = pair.chunk(2, -1)
        torch.testing.assert_close(weights, plus - minus)
        assert (weights.abs().sum(-1) <= scale[:, layer, None] * (1 + 1e-6)).all()
    assert (w1 < 0).any() and (w2 < 0).any()  # signed
    assert not torch.allclose(w1, module._weights(module.init_state(2)[:2])[0])  # it did move


def test_kl_memory_starts_with_the_l2_memorys_spread():
    """c = m s √(2/(e−1)): with N(0, 1) logits the weights have the l2 memory's standard deviation
    (1 for W1, 1/√n for W2) and mean 0 (one head, d = 64, n = 128: 8192 weights a layer)."""
    torch.manual_seed(0)
    module = einsearch.build("mem(titans, heads=1, loss=l2, retention=kl, momentum=false)", 64)
    with torch.no_grad():
        w1, w2 = module._weights(module.init_state(1)[:2])
    for weights, std in ((w1, 1.0), (w2, 1 / math.sqrt(128))):
        assert abs(weights.std().item() / std - 1) < 0.1
        assert abs(weights.mean().item()) < 0.05 * std


def test_kl_step_is_the_l2_step_to_first_order():
    """One small KL step, no forgetting or momentum: each row w of W moves by
    −η' (w⁺ + w⁻) ⊙ g + (η'/c) ⟨w, g⟩ w with η' = θ m / c (the softmax expanded to first order by
    hand), whose preconditioner η' (w⁺ + w⁻) averages exactly θ over a row: the l2 step's."""
    torch.manual_seed(0)
    module = einsearch.build("mem(titans, heads=2, loss=l2, retention=kl, momentum=false)", 16).double()
    with torch.no_grad():
        module.gates.weight.zero_()
        bias = module.gates.bias.view(module.heads, -1)
        bias[:, 0] = -40.0  # α ≈ 0
        bias[:, 1] = math.log(1e-5)  # θ ≈ 1e-5 / n
        x = torch.randn(1, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        _, k, v, gates = module._project(x[:, None])
        theta = gates["lr"][0, 0]  # (H,)
        state = module.init_state(1)
        before = module._weights(state)
        grads = memory_gradient(*before, k[:, 0], v[:, 0], "l2")[:2]
        scale = module.log_scale.exp()  # (H, 2)
        pairs = [scale[:, i, None, None] * state[i].exp() for i in range(2)]  # [W⁺ | W⁻] before the step
        _, state = module.step(x, state)
        after = module._weights(state)
    for layer, row_length in enumerate((module.d_head, module.hidden)):
        c = scale[:, layer, None, None]
        rate = theta[:, None, None] * row_length / c  # η', (H, 1, 1)
        plus, minus = pairs[layer][0].chunk(2, -1)
        w, g = before[layer][0], grads[layer][0]
        expected = -rate * (plus + minus) * g + rate / c * (w * g).sum(-1, keepdim=True) * w
        torch.testing.assert_close(after[layer][0] - w, expected, rtol=1e-3, atol=1e-12)
        torch.testing.assert_close((rate * (plus + minus)).mean(-1), theta[:, None].expand(w.shape[:-1]))


# ---------------------------------------------------------------- costs


def test_costs_counted_by_hand():
    """d_model 16, 2 heads: d = 8, n = 16, m = n·d = 128 weights per layer per head.

    Per token: projections q, k, v, out 4·16² = 1024 MACs, gates 16·(2 heads·3 gates) = 96 MACs;
    per head M(k) 2m, backward 3m, momentum + retention updates 2·2m, M(q) 2m = 11m = 1408 MACs,
    two heads 2816.  FLOPs = 2·(1024 + 96 + 2816) = 7872.  State: W1, W2, S1, S2 = 4·128 per head."""
    module = einsearch.build("mem(titans, heads=2, loss=l2, retention=l2, momentum=true)", 16)
    costs = einsearch.costs(module, 10)
    assert costs.flops_per_token == 7872
    assert costs.state_size == 2 * 4 * 128
    no_momentum = einsearch.build("mem(titans, heads=2, loss=l2, retention=l2, momentum=false)", 16)
    # gates 16·(2·2); per head 9m
    assert einsearch.costs(no_momentum, 10).flops_per_token == 2 * (1024 + 64 + 2 * 9 * 128)
    assert einsearch.costs(no_momentum, 10).state_size == 2 * 2 * 128
    _, largest = run_steps(no_momentum, torch.randn(1, 3, 16))
    assert largest == 2 * 2 * 128


def test_kl_costs_counted_by_hand():
    """Memora, d_model 16, 2 heads: d = 8, n = 16, m = 128.  The state holds W1⁺, W1⁻, W2⁺, W2⁻
    (4m) and the momentum S1, S2 (2m): 6m = 768 per head.  Per token per head: M(k) 2m, backward
    3m, momentum 2m, retention on W± 4m, M(q) 2m = 13m = 1664 MACs; gates 16·(2·3) = 96 MACs.
    FLOPs = 2·(1024 + 96 + 2·1664) = 8896."""
    module = einsearch.build("mem(titans, heads=2, loss=l2, retention=kl, momentum=true)", 16)
    costs = einsearch.costs(module, 10)
    assert costs.flops_per_token == 8896
    assert costs.state_size == 2 * 6 * 128
    _, largest = run_steps(module, torch.randn(1, 3, 16))
    assert largest == 2 * 6 * 128


def test_chunked_costs_counted_by_hand():
    """chunk=4, d_model 16, 2 heads (d = 8, n = 16, m = 128), T = 10: chunks of 4, 4 and 2 tokens.
    Per head, per chunk of L (see `Titans._chunked_memory_macs`): gradients 3Lm, K = D N L³,
    γ = D E L² (once momentum is carried), outputs 2Lm (+2Lm carried), in-chunk attention
    2L²(d + n); not last: W_end 2Lm + 2m, S_end 2Lm (+4m carried).
    chunk 1: 1536 + 64 + 1024 + 768 + 1280 + 1024 = 5696;
    chunk 2: 1536 + 64 + 16 + 2048 + 768 + 1280 + 1024 + 512 = 7248;
    chunk 3 (last): 768 + 8 + 4 + 1024 + 192 = 1996.  Two heads: 29880; projections 10·1120.
    State: W1, W2, S1, S2 and the chunk-start W1, W2: 6·128 per head."""
    module = einsearch.build("mem(titans, heads=2, loss=l2, retention=l2, momentum=true, chunk=4)", 16)
    assert module.flops(10) == 2 * (10 * 1120 + 29880)
    assert module.state_size(10) == 2 * 6 * 128
    kl = einsearch.build("mem(titans, heads=2, loss=l2, retention=kl, momentum=true, chunk=4)", 16)
    per_token = einsearch.build("mem(titans, heads=2, loss=l2, retention=kl, momentum=true)", 16)
    assert kl.flops(10) == per_token.flops(10)  # the same work, its gradients batched
    assert kl.state_size(10) == per_token.state_size(10) + 2 * 4 * 128  # + the chunk-start W±


@pytest.mark.parametrize("arch", ["mem(titans, heads=2, loss=l2, retention=l2, momentum=true{})",
                                  "mem(titans, heads=2, loss=huber, retention=kl, momentum=false{})"])
def test_chunk_1_is_the_per_token_form_bit_for_bit(arch):
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))
    outputs = []
    for chunk in ("", ", chunk=1"):
        torch.manual_seed(0)
        module = einsearch.build(arch.format(chunk), 16)
        y = module(x)
        outputs.append((y, torch.autograd.grad(y.square().sum(), list(module.parameters()))))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outputs[0][1], outputs[1][1]))
    assert einsearch.parse(arch.format(", chunk=1")).text.endswith("chunk=1)")  # written as given


def test_chunked_form_differs_from_the_per_token_form():
    """The mini-batch gradient is a different recurrence (not a rounding of the same one)."""
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))
    outputs = []
    for chunk in ("", ", chunk=4"):
        torch.manual_seed(0)
        outputs.append(einsearch.build(f"mem(titans, heads=2, loss=l2, retention=l2, momentum=true{chunk})", 16)(x))
    torch.testing.assert_close(outputs[0][:, :1], outputs[1][:, :1])  # the first token: the same step
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3
