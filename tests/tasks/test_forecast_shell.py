"""The forecasting shell (PatchTST / DLinear tradition) against hand-written references: RevIN,
channel independence, strided patches, the flatten head, the decomposition; and the literature's
protocol of testing the weights of the best validation evaluation."""

import numpy as np
import pytest
import torch

import einsearch
from einsearch.tasks import get_task
from einsearch.tasks.shell import ForecastModel, decompose, instance_statistics, patches
from einsearch.train import TrainConfig, train
from tests.tasks.test_series import write_csv

IDENTITY = einsearch.parse("identity()")
MIXER = einsearch.parse("res(seq(norm(rms), attn(softmax, heads=2, pos=rope)))")


def model(arch=MIXER, channels=3, lookback=20, horizon=6, patch=4, stride=2, head="flatten", revin=True,
          mixing="independent", decomp=0, d_model=8, layers=1, seed=0):  # fmt: skip
    torch.manual_seed(seed)
    blocks = [einsearch.build(arch, d_model) for _ in range(layers * (2 if decomp else 1))]
    m = ForecastModel(blocks, d_model, channels, lookback, horizon, patch, stride, head, revin, mixing, decomp)
    for head_layer in m.heads:  # a fresh head is zero; give it weights so that outputs depend on inputs
        torch.nn.init.normal_(head_layer.weight, std=0.1)
        torch.nn.init.normal_(head_layer.bias, std=0.1)
    return m.double()


def test_revin_round_trips_exactly():
    x = torch.randn(4, 30, 3, dtype=torch.float64) * 5 + 7
    mean, std = instance_statistics(x)
    assert torch.allclose(((x - mean) / std) * std + mean, x, rtol=0, atol=1e-12)
    assert torch.allclose(mean, x.mean(1, keepdim=True)) and torch.allclose(std**2, x.var(1, unbiased=False, keepdim=True) + 1e-5)


def test_revin_makes_the_forecast_follow_shifts_and_scales_of_each_window():
    """With instance normalisation f(a·x + b) = a·f(x) + b per channel: the defining property."""
    m = model()
    x = torch.randn(2, 20, 3, dtype=torch.float64)
    a, b = torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64), torch.tensor([-1.0, 4.0, 10.0], dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(m(a * x + b), a * m(x) + b, atol=1e-3)  # RevIN's eps makes it approximate
        assert not torch.allclose(model(revin=False)(a * x + b), a * model(revin=False)(x) + b, atol=1e-3)


@pytest.mark.parametrize("head", ["flatten", "last"])
def test_independent_channels_do_not_see_each_other(head):
    m = model(head=head)
    x = torch.randn(2, 20, 3, dtype=torch.float64)
    changed = x.clone()
    changed[..., 1:] = torch.randn(2, 20, 2, dtype=torch.float64) * 10
    with torch.no_grad():
        assert torch.equal(m(x)[..., 0], m(changed)[..., 0])
        assert not torch.allclose(m(x)[..., 1], m(changed)[..., 1])
        mixed = model(mixing="mixed", head=head)
        assert not torch.allclose(mixed(x)[..., 0], mixed(changed)[..., 0])


def naive_patches(x, patch, stride):
    """PatchTST by hand: repeat the last row `stride` times, then windows every `stride` rows,
    the last one ending at the last row."""
    B, L, C = x.shape
    padded = np.concatenate([x, np.repeat(x[:, -1:], stride, axis=1)], axis=1)
    ends = list(range(L + stride, patch - 1, -stride))[::-1]
    return np.stack([[[padded[b, e - patch : e, c] for e in ends] for c in range(C)] for b in range(B)])


@pytest.mark.parametrize("lookback,patch,stride", [(20, 4, 2), (21, 4, 2), (16, 16, 8), (12, 1, 1), (336, 16, 8)])
def test_patches_match_a_hand_written_loop(lookback, patch, stride):
    x = np.random.default_rng(0).normal(size=(2, lookback, 3))
    expected = naive_patches(x, patch, stride)
    assert np.array_equal(patches(torch.from_numpy(x), patch, stride).numpy(), expected)
    if (lookback, patch, stride) == (336, 16, 8):
        assert expected.shape[2] == 42  # PatchTST/42's token count


def test_flatten_head_matches_a_hand_written_model():
    """The identity block leaves a linear model: per channel, window -> RevIN -> patches -> W_e ->
    flatten -> W_h + b -> RevIN⁻¹, computed here with numpy from the model's own weights."""
    m = model(arch=IDENTITY, lookback=20, horizon=6, patch=4, stride=2)
    x = np.random.default_rng(1).normal(size=(2, 20, 3))
    W_e, W_h, b_h = (t.detach().numpy() for t in (m.embeds[0].weight, m.heads[0].weight, m.heads[0].bias))
    mean = x.mean(1, keepdims=True)
    std = np.sqrt(x.var(1, keepdims=True) + 1e-5)
    tokens = naive_patches((x - mean) / std, 4, 2)  # (B, C, N, P)
    features = (tokens @ W_e.T).reshape(2, 3, -1)  # (B, C, N*D), position-major as flatten(1) gives
    expected = (features @ W_h.T + b_h).transpose(0, 2, 1) * std + mean  # (B, H, C)
    with torch.no_grad():
        assert np.allclose(m(torch.from_numpy(x)).numpy(), expected, atol=1e-10)


def test_last_head_reads_only_the_last_position():
    m = model(head="last", lookback=20, patch=4, stride=4, revin=False)
    x = torch.randn(1, 20, 3, dtype=torch.float64)
    with torch.no_grad():
        assert m.heads[0].in_features == 8
        h = m.embeds[0](patches(x, 4, 4).reshape(3, -1, 4))  # (C, N, D)
        h = m.blocks[0](h)[:, -1]  # (C, D)
        assert torch.allclose(m(x)[0], m.heads[0](h).T)


def test_decomposition_matches_a_moving_average_by_hand():
    x = np.random.default_rng(2).normal(size=(2, 30, 3))
    seasonal, trend = (t.numpy() for t in decompose(torch.from_numpy(x), 5))
    padded = np.concatenate([np.repeat(x[:, :1], 2, 1), x, np.repeat(x[:, -1:], 2, 1)], axis=1)
    expected = np.stack([padded[:, t : t + 5].mean(1) for t in range(30)], axis=1)
    assert np.allclose(trend, expected) and np.allclose(seasonal + trend, x)


def test_decomposition_runs_two_branches_and_adds_them():
    m = model(arch=IDENTITY, decomp=5, revin=False)
    x = torch.randn(2, 20, 3, dtype=torch.float64)
    seasonal, trend = decompose(x, 5)
    with torch.no_grad():
        assert torch.allclose(m(x), m._branch(0, seasonal) + m._branch(1, trend))
    assert len(m.embeds) == len(m.heads) == 2


def test_costs_count_every_channel_sequence():
    independent, mixed = model(channels=3), model(channels=3, mixing="mixed")
    blocks = sum(b.flops(10) for b in independent.blocks)
    assert independent.flops(10) - independent.io_flops(10) == pytest.approx(3 * blocks)
    assert mixed.flops(10) - mixed.io_flops(10) == pytest.approx(sum(b.flops(10) for b in mixed.blocks))


def test_best_validation_selection_tests_the_weights_of_the_best_evaluation(tmp_path):
    """Saved weights are the selected ones: their validation MSE is the minimum over every
    evaluation during training and at the end, and the recorded step is that evaluation's."""
    path = tmp_path / "series.csv"
    write_csv(path, 600)
    spec = f"csv:{path},lookback=16,horizon=4,patch=4,stride=4"
    weights = tmp_path / "w.safetensors"
    config = TrainConfig(d_model=8, layers=1, budget=einsearch.Budget(steps=40), eval_every=4, lr=3e-2, weights_path=str(weights))
    result = train("res(seq(norm(rms), attn(softmax, heads=2, pos=rope)))", spec, config)
    assert result.ok and len(result.history) == 9  # steps 4, 8, ..., 36; step 40 is the final evaluation
    final = train("res(seq(norm(rms), attn(softmax, heads=2, pos=rope)))", spec, TrainConfig(**{**config.__dict__, "selection": "last", "weights_path": None}))
    values = [h["mse"] for h in result.history] + [final.metrics["val/mse"]]
    steps = [h["step"] for h in result.history] + [40]
    assert result.metrics["val/mse"] == pytest.approx(min(values))
    assert result.selected_step == steps[int(np.argmin(values))]
    task = get_task(spec)
    m = task.model(MIXER, 8, 1)
    from safetensors.torch import load_file

    m.load_state_dict(load_file(weights))
    m.eval()
    with torch.no_grad():
        assert task.evaluate(m, task.data().val)["mse"] == pytest.approx(min(values), rel=1e-5)
        assert task.evaluate(m, task.data().test)["mse"] == pytest.approx(result.metrics["test/mse"], rel=1e-5)
