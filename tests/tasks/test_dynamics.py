"""Lorenz-96 and Kuramoto–Sivashinsky: integrators against scipy's high-accuracy solvers, bounded
KS energy, deterministic cached data, and the rollout metrics on hand-checked cases."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import einsearch
from einsearch.tasks import TaskError, get_task
from einsearch.tasks.dynamics import ETDRK4, lorenz96, lorenz96_rhs, nrmse_curve, valid_time
from einsearch.tasks.shell import NextStepModel


def naive_lorenz96_rhs(x, forcing):
    n = len(x)
    return np.array([(x[(i + 1) % n] - x[(i - 2) % n]) * x[(i - 1) % n] - x[i] + forcing for i in range(n)])


@pytest.fixture(scope="module")
def l96_state():
    x0 = 8.0 + np.random.default_rng(0).standard_normal((1, 40))
    return lorenz96(x0, 8.0, 0.01, 500, 1)[:, -1]  # on the attractor


def test_lorenz96_rhs_matches_the_definition(l96_state):
    assert np.allclose(lorenz96_rhs(l96_state[0], 8.0), naive_lorenz96_rhs(l96_state[0], 8.0))


def test_lorenz96_rk4_matches_solve_ivp_and_converges_at_fourth_order(l96_state):
    reference = solve_ivp(
        lambda t, x: lorenz96_rhs(x, 8.0), (0, 1.0), l96_state[0], method="DOP853", rtol=1e-10, atol=1e-12, t_eval=[0.5, 1.0]
    ).y.T
    coarse = lorenz96(l96_state, 8.0, 0.01, 50, 2)[0]  # samples at t = 0.5 and 1.0
    fine = lorenz96(l96_state, 8.0, 0.005, 100, 2)[0]
    error, fine_error = np.abs(coarse - reference).max(), np.abs(fine - reference).max()
    assert error < 1e-4  # states are O(10)
    assert error / fine_error > 10  # 2^4 = 16 for a fourth-order method


def ks_reference_rhs(size, modes):
    """The Fourier–Galerkin KS right-hand side on the grid: u_t = -(u²/2)_x - u_xx - u_xxxx."""
    k = 2 * np.pi / size * np.fft.fftfreq(modes, 1 / modes)
    k[modes // 2] = 0.0  # Kassam & Trefethen's convention for the Nyquist mode

    def rhs(t, u):
        return np.real(np.fft.ifft((k**2 - k**4) * np.fft.fft(u) - 0.5j * k * np.fft.fft(u * u)))

    return rhs


@pytest.fixture(scope="module")
def ks_state():
    u0 = 0.1 * np.random.default_rng(0).standard_normal((1, 64))
    u0 -= u0.mean()
    return ETDRK4(22.0, 64, 0.25).run(u0, 400, 1)[:, -1]  # after 100 time units


def test_ks_etdrk4_matches_a_stiff_solve_ivp(ks_state):
    reference = solve_ivp(ks_reference_rhs(22.0, 64), (0, 5.0), ks_state[0], method="BDF", rtol=1e-10, atol=1e-12).y[:, -1]
    coarse = ETDRK4(22.0, 64, 0.25).run(ks_state, 20, 1)[0, 0]
    fine = ETDRK4(22.0, 64, 0.125).run(ks_state, 40, 1)[0, 0]
    error, fine_error = np.abs(coarse - reference).max(), np.abs(fine - reference).max()
    assert error < 2e-3  # u is O(1)
    assert error / fine_error > 6


def test_ks_energy_stays_bounded_and_chaotic_and_the_mean_is_conserved(ks_state):
    fields = ETDRK4(22.0, 64, 0.25).run(ks_state, 4, 500)  # 500 time units
    energy = (fields**2).mean(axis=2)[0]
    assert energy.max() < 5.0 and energy.min() > 0.2  # neither blowing up nor dying out
    assert np.abs(fields.mean(axis=2)).max() < 1e-10


def test_data_is_deterministic_cached_standardised_and_split_by_trajectory(tmp_path):
    spec = "lorenz96:trajectories=2,val=1,test=1,length=60,context=8,horizon=10,spinup=1"
    task = get_task(spec)
    splits = task.make_data()
    assert list((tmp_path / "cache").glob("lorenz96-*.npz"))
    again = get_task(spec).make_data()  # read back from the cache
    assert torch.equal(splits.test.states, again.test.states)
    fresh = get_task(spec + ",seed=1").make_data()
    assert not torch.equal(fresh.train.states, splits.train.states)
    train = splits.train.states
    assert train.shape == (2, 60, 40) and splits.val.states.shape == (1, 60, 40)
    assert abs(train.mean().item()) < 1e-5 and train.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    inputs, targets = splits.train.sample(5, torch.Generator().manual_seed(0))
    assert inputs.shape == (5, 8, 40) and torch.equal(inputs[:, 1:], targets[:, :-1])


def test_valid_time_counts_samples_before_the_threshold():
    curve = torch.tensor([[0.1, 0.2, 0.6, 0.3], [0.1, 0.1, 0.1, 0.1], [0.9, 0.1, 0.1, 0.1]])
    assert valid_time(curve, 0.5).tolist() == [2.0, 4.0, 0.0]


def test_a_fresh_model_is_the_persistence_forecast_and_metrics_agree_with_a_hand_computation():
    task = get_task("ks:trajectories=1,val=1,test=1,length=40,context=8,horizon=10,spinup=50,score_time=0.043")
    assert task.score_steps == 4  # 0.043 Lyapunov times = 1 time unit = 4 samples
    model = task.model(einsearch.parse("mlp(expand=1, act=relu)"), 8, 1)
    assert isinstance(model, NextStepModel)
    split = task.data().test
    metrics = task.evaluate(model, split)
    assert metrics["nrmse"] == pytest.approx(metrics["persistence_nrmse"])
    states = split.states[0].numpy()
    curves = []
    for start in (8, 18, 28):  # rollouts every `horizon` samples after a full context
        future, last = states[start : start + 10], states[start - 1]
        curves.append(np.sqrt(((future - last) ** 2).mean(axis=1)))
    assert metrics["nrmse_horizon"] == pytest.approx(np.mean(curves), rel=1e-5)
    assert metrics["nrmse"] == pytest.approx(np.mean([c[:4] for c in curves]), rel=1e-5)
    first = [np.flatnonzero(c > 0.5)[0] if (c > 0.5).any() else 10 for c in curves]
    assert metrics["vpt"] == pytest.approx(np.mean(first) * 0.25 * 0.043, rel=1e-5)
    assert torch.allclose(nrmse_curve(torch.ones(1, 2, 4), torch.zeros(1, 2, 4)), torch.ones(1, 2))


def test_bad_options_are_task_errors():
    with pytest.raises(TaskError):
        get_task("lorenz96:every=0.033")
    with pytest.raises(TaskError):
        get_task("ks:length=10,context=8,horizon=10")
