"""CSV forecasting in the benchmark layout: ETT and 70/10/20 splits, train-statistics
standardisation, windows, MSE/MAE, and one clear error per malformed file."""

import csv
from datetime import datetime, timedelta

import numpy as np
import pytest
import torch

import einsearch
from einsearch.tasks import TaskError, get_task


def write_csv(path, rows, channels=3, every=timedelta(hours=1), seed=0, edit=None):
    values = np.random.default_rng(seed).normal(5.0, 2.0, size=(rows, channels)).cumsum(axis=0) * 0.1
    start = datetime(2016, 7, 1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["date"] + [f"c{i}" for i in range(channels - 1)] + ["OT"])
        for i, row in enumerate(values):
            cells = [f"{v:.6f}" for v in row]
            if edit is not None:
                edit(i, cells)
            writer.writerow([(start + i * every).strftime("%Y-%m-%d %H:%M:%S")] + cells)
    return values


@pytest.fixture(scope="module")
def ett(tmp_path_factory):
    path = tmp_path_factory.mktemp("ett") / "ETTh1.csv"
    values = write_csv(path, 20 * 720 + 50)  # a little more than the 20 months the splits use
    return path, values


def test_ett_hourly_splits_are_12_4_4_months_and_standardised_with_train_statistics(ett):
    path, values = ett
    lookback, horizon = 48, 24
    task = get_task(f"csv:{path},lookback={lookback},horizon={horizon}")
    splits = task.data()
    train = values[:8640]
    mean, std = train.mean(axis=0), train.std(axis=0)
    assert len(splits.train.series) == 8640
    assert len(splits.val.series) == 2880 + lookback and len(splits.test.series) == 2880 + lookback
    assert np.allclose(splits.val.series.numpy(), (values[8640 - lookback : 11520] - mean) / std, atol=1e-5)
    assert np.allclose(splits.test.series.numpy(), (values[11520 - lookback : 14400] - mean) / std, atol=1e-5)
    assert abs(splits.train.series.mean(0)).max() < 1e-4
    assert np.allclose(splits.train.series.std(0, unbiased=False).numpy(), 1.0, atol=1e-4)
    assert splits.test.count == 2880 + lookback - lookback - horizon + 1
    past, future = next(splits.test.batches(4))
    assert past.shape == (4, lookback, 3) and future.shape == (4, horizon, 3)
    assert torch.equal(future[0], splits.test.series[lookback : lookback + horizon])


def test_other_files_split_70_10_20(tmp_path):
    path = tmp_path / "weather.csv"
    values = write_csv(path, 1000, every=timedelta(minutes=10))
    splits = get_task(f"csv:{path},lookback=20,horizon=10").data()
    assert len(splits.train.series) == 700
    assert len(splits.val.series) == 100 + 20 and len(splits.test.series) == 200 + 20
    mean, std = values[:700].mean(0), values[:700].std(0)
    assert np.allclose(splits.test.series.numpy(), (values[780:] - mean) / std, atol=1e-5)


def test_a_fresh_model_forecasts_the_window_mean_and_mse_mae_match_numpy(tmp_path):
    path = tmp_path / "series.csv"
    write_csv(path, 300)
    task = get_task(f"csv:{path},lookback=16,horizon=8,patch=4,stride=4")
    model = task.model(einsearch.parse("mlp(expand=1, act=relu)"), 8, 1)
    split = task.data().test
    metrics = task.evaluate(model, split)
    series = split.series.numpy()
    errors = np.stack([series[s + 16 : s + 24] - series[s : s + 16].mean(0) for s in range(split.count)])
    assert metrics["mse"] == pytest.approx((errors**2).mean(), rel=1e-5)
    assert metrics["mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-5)
    assert task.tokens == 5  # (16 + 4 - 4) / 4 + 1 patches after PatchTST's end padding


def test_every_test_window_is_evaluated_none_dropped(tmp_path):
    """Evaluation covers each of the split's windows once, also when they do not fill the last batch."""
    path = tmp_path / "series.csv"
    write_csv(path, 700)
    task = get_task(f"csv:{path},lookback=16,horizon=8,patch=4,stride=4")
    split = task.data().test
    assert split.count == 140 + 16 - 16 - 8 + 1 and split.count % 256 != 0
    seen = torch.cat([past[:, 0] for past, _ in split.batches(256)])
    assert torch.equal(seen, split.series[: split.count])


def test_missing_file(tmp_path):
    with pytest.raises(TaskError, match="no such file"):
        get_task(f"csv:{tmp_path}/absent.csv").data()


def test_non_numeric_column_names_column_and_row(tmp_path):
    path = tmp_path / "bad.csv"
    write_csv(path, 50, edit=lambda i, cells: cells.__setitem__(2, "high") if i == 9 else None)
    with pytest.raises(TaskError, match=r"row 11: column 'OT' is not numeric \('high'\)"):
        get_task(f"csv:{path},lookback=4,horizon=2,patch=2,stride=1").data()


@pytest.mark.parametrize("missing", ["nan", "NaN", ""])
def test_nan_names_its_row(tmp_path, missing):
    path = tmp_path / "nan.csv"
    write_csv(path, 50, edit=lambda i, cells: cells.__setitem__(0, missing) if i == 20 else None)
    with pytest.raises(TaskError, match=r"row 22: missing value \(NaN\) in column 'c0'"):
        get_task(f"csv:{path},lookback=4,horizon=2,patch=2,stride=1").data()


def test_too_short_series(tmp_path):
    path = tmp_path / "short.csv"
    write_csv(path, 60)
    with pytest.raises(TaskError, match="fewer than lookback \\+ horizon"):
        get_task(f"csv:{path},lookback=24,horizon=12,patch=4,stride=2").data()
    ett = tmp_path / "ETTh2.csv"
    write_csv(ett, 500)
    with pytest.raises(TaskError, match="20 months"):
        get_task(f"csv:{ett}").data()


def test_bad_options():
    with pytest.raises(TaskError, match="give the file"):
        get_task("csv")
    with pytest.raises(TaskError, match="patch must be between 1 and lookback"):
        get_task("csv:x.csv,lookback=10,patch=12")
    with pytest.raises(TaskError, match="stride must be between 1 and patch"):
        get_task("csv:x.csv,patch=4,stride=8")
    with pytest.raises(TaskError, match="mixing must be one of independent, mixed"):
        get_task("csv:x.csv,mixing=both")
    with pytest.raises(TaskError, match="head must be one of flatten, last"):
        get_task("csv:x.csv,head=mean")
    with pytest.raises(TaskError, match="decomp must be 0 or an odd number"):
        get_task("csv:x.csv,decomp=24")
