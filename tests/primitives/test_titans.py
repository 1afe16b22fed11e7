"""Titans / Miras neural memory (`mem(titans, ...)`): the shared contract, plus

* the closed-form gradient of the memory MLP against torch.autograd, for every loss;
* the whole recurrence against a naive loop written here from the published equations, one
  sequence and one head at a time, with each gradient taken by torch.autograd;
* a single step worked out by hand;
* test-time memorisation: a key/value pair seen repeatedly is learnt;
* Memora's weights stay on the scaled simplex; costs counted by hand.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import einsearch
from einsearch.primitives.titans import memory_forward, memory_gradient
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
    grad_w1, grad_w2 = memory_gradient(w1, w2, k, v, loss, delta)
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
    token at a time, with g_t from torch.autograd (for kl, on the weights W themselves)."""
    B, T, D = x.shape
    H, d, n = module.heads, module.d_head, module.hidden
    q, k, v = module.qkv(x).view(B, T, 3, H, d).unbind(2)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    raw = module.gates(x).view(B, T, H, len(module.gate_names))
    gate = {name: raw[..., i] for i, name in enumerate(module.gate_names)}
    alpha, theta = torch.sigmoid(gate["forget"]), torch.sigmoid(gate["lr"]) / n
    eta = torch.sigmoid(gate["momentum"]) if module.momentum else None
    delta = F.softplus(gate["delta"]) if module.loss == "huber" else None
    y = torch.zeros(B, T, H, d, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            if module.retention == "l2":
                weights = [module.init1[h], module.init2[h]]
            else:
                c = module.log_scale[h].exp()
                weights = [c[0] * torch.softmax(module.init1[h], -1), c[1] * torch.softmax(module.init2[h], -1)]
            momentum = [torch.zeros_like(w) for w in weights]
            for t in range(T):
                error = mlp_memory(*weights, k[b, t, h]) - v[b, t, h]
                scale = delta[b, t, h] if delta is not None else None
                grads = torch.autograd.grad(attentional_bias(error, module.loss, scale), weights, create_graph=True)
                for i in range(2):
                    change = -theta[b, t, h] * grads[i]
                    if module.momentum:
                        change = eta[b, t, h] * momentum[i] + change
                        momentum[i] = change
                    if module.retention == "l2":  # W_t = (1 - α_t) W_{t-1} + S_t
                        weights[i] = (1 - alpha[b, t, h]) * weights[i] + change
                    else:  # W_t = c softmax((1 - α_t) log W_{t-1} + S_t), per row
                        weights[i] = c[i] * torch.softmax((1 - alpha[b, t, h]) * weights[i].log() + change, -1)
                y[b, t, h] = mlp_memory(*weights, q[b, t, h])
    return module.out(y.reshape(B, T, D))


@pytest.mark.parametrize(
    "arch",
    [
        "mem(titans, heads=2, loss=l2, retention=l2, momentum=true)",
        "mem(titans, heads=1, loss=lp, retention=l2, momentum=false)",
        "mem(titans, heads=2, loss=huber, retention=l2, momentum=true)",
        "mem(titans, heads=2, loss=l2, retention=kl, momentum=true)",
        "mem(titans, heads=2, loss=huber, retention=kl, momentum=false)",
    ],
)
def test_forward_matches_the_published_recurrence(arch):
    torch.manual_seed(0)
    module = einsearch.build(arch, 8).double()
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


def memorisation_errors(arch: str, steps: int, w2_mass: float | None = None) -> list[float]:
    """Feed one token repeatedly with θ at its largest (1/n), α ≈ 0 and η = 0.5; return
    ‖M_t(k) − v‖ / ‖v‖ before each step."""
    torch.manual_seed(0)
    module = einsearch.build(arch, 16)
    with torch.no_grad():
        module.gates.weight.zero_()
        bias = module.gates.bias.view(module.heads, -1)
        for i, name in enumerate(module.gate_names):
            bias[:, i] = {"forget": -30.0, "lr": 30.0, "momentum": 0.0, "delta": 0.0}[name]
        if w2_mass is not None:
            module.log_scale[:, 1] = math.log(w2_mass)
        x = torch.randn(1, 16, generator=torch.Generator().manual_seed(3))
        _, k, v, _ = module._project(x[:, None])
        k, v = k[:, 0], v[:, 0]
        state, errors = module.init_state(1), []
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


def test_kl_memory_learns_a_repeated_pair():
    """Memora's W2 rows are nonnegative with mass c2, so M(k) − k is c2 times an average of the
    hidden units: a value is within reach only if c2 is large enough; with c2 = 8 it is learnt."""
    errors = memorisation_errors("mem(titans, heads=2, loss=l2, retention=kl, momentum=false)", 300, w2_mass=8.0)
    assert errors[-1] < 1e-3 * errors[0]


def test_kl_weights_stay_on_the_scaled_simplex():
    torch.manual_seed(0)
    module = einsearch.build("mem(titans, heads=2, loss=l2, retention=kl, momentum=true)", 8)
    x = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(1)) * 3
    state = module.init_state(2)
    with torch.no_grad():
        for t in range(9):
            _, state = module.step(x[:, t], state)
        w1, w2 = module._weights(state[:2])
        scale = module.log_scale.exp()  # (H, 2)
    assert (w1 > 0).all() and (w2 > 0).all()
    torch.testing.assert_close(w1.sum(-1), scale[:, 0, None].expand(2, 2, 8))
    torch.testing.assert_close(w2.sum(-1), scale[:, 1, None].expand(2, 2, 4))
    assert not torch.allclose(w1, module._weights(module.init_state(2)[:2])[0])  # it did move


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
