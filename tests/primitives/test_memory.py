"""Linear-recurrent memories (GLA, RetNet, DeltaNet, Gated DeltaNet) and linear attention.

The modules run under the shared contract.  Their functional cores are checked directly: the
chunked forms against the plain loops (outputs, final states and the gradients of every input) on
awkward sizes, and both against independent closed forms — the T×T masked formula of linear
attention, the decay-matrix form of GLA and RetNet, and the explicit product of
(I - β k kᵀ) matrices for the delta rule.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import einsearch
from einsearch.primitives.attention import rope
from einsearch.ops.delta import delta_rule_chunked, naive_delta_rule
from einsearch.ops.gla import gated_scores, gla_chunked, naive_gla
from tests.contract import PrimitiveContract

# ---------------------------------------------------------------- the modules under the contract


class TestGLA(PrimitiveContract):
    arch = "mem(gla, heads=2)"
    constant_state = True


class TestRetNet(PrimitiveContract):
    arch = "mem(retnet, heads=2)"
    constant_state = True


class TestDeltaNet(PrimitiveContract):
    arch = "mem(delta, heads=2, gated=false)"
    constant_state = True


class TestGatedDeltaNet(PrimitiveContract):
    arch = "mem(delta, heads=2, gated=true)"
    constant_state = True


class TestLinearAttentionElu(PrimitiveContract):
    arch = "attn(linear, heads=2, phi=elu1)"
    constant_state = True


class TestLinearAttentionRelu(PrimitiveContract):
    arch = "attn(linear, heads=2, phi=relu)"
    constant_state = True


class TestLinearAttentionIdentity(PrimitiveContract):
    arch = "attn(linear, heads=1, phi=identity)"
    constant_state = True


# ---------------------------------------------------------------- the functional cores

# (T, chunk): chunks that divide T, chunks that do not, a chunk longer than T, and T = 1.
SIZES = [(63, 7), (63, 16), (63, 64), (1, 1), (1, 4)]
B, H, DK, DV = 2, 3, 5, 4


def random_inputs(T: int, seed: int = 0, dtype=torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return {
        "q": randn(B, H, T, DK),
        "k": randn(B, H, T, DK),
        "v": randn(B, H, T, DV),
        "log_alpha": -torch.rand(B, H, T, DK, generator=g, dtype=dtype),
        "beta": torch.rand(B, H, T, generator=g, dtype=dtype),
        "h0": randn(B, H, DK, DV),
    }


def outputs_and_grads(core, inputs: dict, chunk: int) -> list[torch.Tensor]:
    """o, h_T and the gradient of a fixed random functional of both with respect to every input."""
    leaves = {name: t.clone().requires_grad_(True) for name, t in inputs.items()}
    o, h = core(**leaves, chunk=chunk)
    g = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (o, h))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return [o.detach(), h.detach(), *grads]


def gla_inputs(T: int, decay: str) -> dict:
    inputs = random_inputs(T)
    del inputs["beta"]
    if decay == "per_head":
        inputs["log_alpha"] = inputs["log_alpha"][..., :1].contiguous()
    return inputs


@pytest.mark.parametrize("T, chunk", SIZES)
@pytest.mark.parametrize("decay", ["per_channel", "per_head"])
def test_gla_chunked_matches_loop(T, chunk, decay):
    inputs = gla_inputs(T, decay)
    fast = outputs_and_grads(gla_chunked, inputs, chunk)
    slow = outputs_and_grads(naive_gla, inputs, chunk)
    for name, a, b in zip(["o", "h_T", *inputs], fast, slow):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("T, chunk", SIZES)
def test_gla_chunked_without_decay_matches_loop(T, chunk):
    inputs = gla_inputs(T, "per_channel")
    del inputs["log_alpha"]
    fast = outputs_and_grads(lambda **kw: gla_chunked(log_alpha=None, **kw), inputs, chunk)
    slow = outputs_and_grads(lambda **kw: naive_gla(log_alpha=None, **kw), inputs, chunk)
    for name, a, b in zip(["o", "h_T", *inputs], fast, slow):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("T, chunk", SIZES)
@pytest.mark.parametrize("gated", [False, True])
def test_delta_rule_chunked_matches_loop(T, chunk, gated):
    inputs = random_inputs(T)
    inputs["k"] = F.normalize(inputs["k"], dim=-1)  # as the module feeds it; keeps I - βkkᵀ a contraction
    if gated:
        inputs["log_alpha"] = inputs["log_alpha"][..., 0].contiguous()  # one decay per head
    else:
        del inputs["log_alpha"]
    fast = outputs_and_grads(delta_rule_chunked, inputs, chunk)
    slow = outputs_and_grads(naive_delta_rule, inputs, chunk)
    for name, a, b in zip(["o", "h_T", *inputs], fast, slow):
        torch.testing.assert_close(a, b, msg=name)


def test_gated_scores_gradcheck():
    """The hand-written backward of the (C, C, dk) intra-chunk scores, against finite differences."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = (-torch.rand(2, 6, 3, generator=g, dtype=torch.float64)).cumsum(1).requires_grad_(True)
    assert torch.autograd.gradcheck(gated_scores, (q, k, b))


def test_strong_decay_stays_finite():
    """log α ≈ -30 per token: float32 chunked forms stay finite (a factorisation through
    exp(-b_j) would overflow) and agree with the loops, gradients included."""
    inputs = random_inputs(40, dtype=torch.float32)
    inputs["log_alpha"] = -30 + 0.5 * inputs["log_alpha"]
    gla = {name: inputs[name] for name in ("q", "k", "v", "log_alpha", "h0")}
    delta = dict(gla, k=F.normalize(inputs["k"], dim=-1), beta=inputs["beta"], log_alpha=inputs["log_alpha"][..., 0])
    cases = [
        (gla_chunked, naive_gla, gla),
        (gla_chunked, naive_gla, dict(gla, log_alpha=gla["log_alpha"][..., :1])),
        (delta_rule_chunked, naive_delta_rule, delta),
    ]
    for fast_core, slow_core, case in cases:
        fast = outputs_and_grads(fast_core, case, chunk=16)
        slow = outputs_and_grads(slow_core, case, chunk=16)
        for a, b in zip(fast, slow):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- independent closed forms


def test_gla_matches_decay_matrix_form():
    """o_i = Σ_{j≤i} Σ_d q_id k_jd (Π_{j<s≤i} α_sd) v_j + (q_i ⊙ Π_{s≤i} α_s)ᵀ h0, with the
    products of α multiplied out (not from cumulative logs)."""
    T = 6
    inputs = gla_inputs(T, "per_channel")
    q, k, v, log_alpha, h0 = (inputs[n][0, 0] for n in ("q", "k", "v", "log_alpha", "h0"))
    alpha = log_alpha.exp()  # (T, dk)
    expected = torch.zeros(T, DV, dtype=q.dtype)
    for i in range(T):
        expected[i] += (q[i] * torch.prod(alpha[: i + 1], dim=0)) @ h0
        for j in range(i + 1):
            decay = torch.prod(alpha[j + 1 : i + 1], dim=0)  # empty product = 1
            expected[i] += (q[i] * k[j] * decay).sum() * v[j]
    for core in (gla_chunked, naive_gla):
        o, _ = core(**inputs, chunk=4)
        torch.testing.assert_close(o[0, 0], expected, msg=core.__name__)


def test_retnet_matches_parallel_retention():
    """Retention's parallel form (Sun et al. 2023, eq. 5): (Q Kᵀ ⊙ D) V with D_ij = γ^(i-j) for
    j ≤ i, Q and K rotated by position, each head's output RMS-normalised (the paper's group
    norm, parameter-free, ε = 1e-5), then the output projection."""
    torch.manual_seed(0)
    module = einsearch.build("mem(retnet, heads=2)", 8)
    x = torch.randn(1, 9, 8)
    T, d = 9, 4
    q, k, v = module.qkv(x).view(1, T, 3, 2, d).permute(2, 0, 3, 1, 4)  # (1, H, T, d)
    positions = torch.arange(T)
    q, k = rope(q, positions) / math.sqrt(d), rope(k, positions)
    gamma = 1 - 2.0 ** (-5 - torch.arange(2.0))  # (H,)
    i, j = positions[:, None], positions[None, :]
    D = torch.where(j <= i, gamma[:, None, None] ** (i - j).clamp(min=0), 0.0)  # (H, T, T)
    y = (((q @ k.transpose(-1, -2)) * D) @ v).transpose(1, 2)  # (1, T, H, d)
    y = y / (y.square().mean(-1, keepdim=True) + 1e-5).sqrt()
    expected = module.out(y.reshape(1, T, 8))
    torch.testing.assert_close(module(x), expected)


def test_delta_rule_matches_explicit_matrix_products():
    """T = 3, S (dv × dk) written out: S_t = α_t S_{t-1} (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ, so
    S_t = S_0 Π_{s≤t} α_s P_s + Σ_{r≤t} β_r v_r k_rᵀ Π_{r<s≤t} α_s P_s with P_s = I - β_s k_s k_sᵀ,
    and o_t = S_t q_t."""
    T = 3
    inputs = random_inputs(T)
    inputs["k"] = F.normalize(inputs["k"], dim=-1)
    inputs["log_alpha"] = inputs["log_alpha"][..., 0].contiguous()
    q, k, v, beta, log_alpha, h0 = (inputs[n][1, 2] for n in ("q", "k", "v", "beta", "log_alpha", "h0"))
    eye = torch.eye(DK, dtype=q.dtype)
    factor = [log_alpha[s].exp() * (eye - beta[s] * torch.outer(k[s], k[s])) for s in range(T)]

    def product(first: int, last: int) -> torch.Tensor:  # Π_{first ≤ s ≤ last} α_s P_s, in order
        return torch.linalg.multi_dot([eye, eye, *factor[first : last + 1]])

    outputs = {core.__name__: core(**inputs, chunk=2) for core in (delta_rule_chunked, naive_delta_rule)}
    for t in range(T):
        S = h0.T @ product(0, t)
        for r in range(t + 1):
            S = S + beta[r] * torch.outer(v[r], k[r]) @ product(r + 1, t)
        for name, (o, h) in outputs.items():
            torch.testing.assert_close(o[1, 2, t], S @ q[t], msg=f"{name}: o_{t}")
    for name, (o, h) in outputs.items():
        torch.testing.assert_close(h[1, 2].T, S, msg=f"{name}: S_T")


@pytest.mark.parametrize("phi", ["elu1", "relu", "identity"])
def test_linear_attention_matches_masked_formula(phi):
    """Katharopoulos et al. 2020, eq. 6 in matrix form: y = (φ(Q)φ(K)ᵀ ⊙ causal) V / row sums
    (identity: no denominator, each head's output RMS-normalised)."""
    torch.manual_seed(0)
    heads, d, T = 2, 4, 11
    module = einsearch.build(f"attn(linear, heads={heads}, phi={phi})", heads * d)
    x = torch.randn(2, T, heads * d)
    q, k, v = module.qkv(x).view(2, T, 3, heads, d).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
    feature = {"elu1": lambda z: F.elu(z) + 1, "relu": F.relu, "identity": lambda z: z}[phi]
    scores = (feature(q) @ feature(k).transpose(-1, -2)).tril()  # (B, H, T, T)
    if phi == "identity":
        y = scores @ v
        y = y / (y.square().mean(-1, keepdim=True) + 1e-6).sqrt()
    else:
        y = (scores @ v) / (scores.sum(-1, keepdim=True) + 1e-6)
    expected = module.out(y.transpose(1, 2).reshape(2, T, heads * d))
    torch.testing.assert_close(module(x), expected)


# ---------------------------------------------------------------- costs and initialisation


@pytest.mark.parametrize(
    "arch, flops_per_token, state",
    [
        # 4 projections 4·8² = 256, rank-16 gate 2·16·8 = 256; per head (dk = dv = 4) update + read 2·16
        ("mem(gla, heads=2)", 2 * (256 + 256 + 2 * 2 * 16), 2 * 16),
        ("mem(retnet, heads=2)", 2 * (256 + 2 * 2 * 16), 2 * 16),
        # β: 8·2; removal read, write and read: 3·16 per head
        ("mem(delta, heads=2, gated=false)", 2 * (256 + 16 + 3 * 2 * 16), 2 * 16),
        ("mem(delta, heads=2, gated=true)", 2 * (256 + 2 * 16 + 3 * 2 * 16), 2 * 16),
        # S | z is 4 × 5 per head; update and read
        ("attn(linear, heads=2, phi=elu1)", 2 * (256 + 2 * 2 * 20), 2 * 20),
        ("attn(linear, heads=2, phi=identity)", 2 * (256 + 2 * 2 * 16), 2 * 16),
    ],
)
def test_costs_by_hand(arch, flops_per_token, state):
    c = einsearch.costs(einsearch.build(arch, 8), seq_len=100)
    assert c.flops_per_token == flops_per_token
    assert c.state_size == state


@pytest.mark.parametrize(
    "arch",
    [
        "mem(gla, heads=4)",
        "mem(retnet, heads=4)",
        "mem(delta, heads=4, gated=false)",
        "mem(delta, heads=4, gated=true)",
        "attn(linear, heads=4, phi=elu1)",
        "attn(linear, heads=4, phi=relu)",
        "attn(linear, heads=4, phi=identity)",
    ],
)
def test_fresh_module_outputs_are_order_one(arch):
    torch.manual_seed(0)
    module = einsearch.build(arch, 64)
    with torch.no_grad():
        y = module(torch.randn(2, 256, 64))
    assert 0.02 < y.std().item() < 5.0


def test_fresh_decays_are_in_a_sane_range():
    """GLA: α = sigmoid(·)^(1/16) ≈ 0.96 (a memory of tens of tokens); Gated DeltaNet: Mamba2's
    α = exp(-A·dt) with A ∈ [1, 16], dt ∈ [0.001, 0.1]."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 64)
    gla = einsearch.build("mem(gla, heads=4)", 64)
    alpha = gla._project(x)[3].exp()
    assert 0.8 < alpha.min() and alpha.max() < 0.99
    gated = einsearch.build("mem(delta, heads=4, gated=true)", 64)
    alpha = gated._project(x)[4].exp()
    assert 0.01 < alpha.min() and alpha.max() < 1.0
    assert 0.5 < alpha.median() < 0.999
