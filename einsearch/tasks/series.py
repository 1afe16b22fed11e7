"""Long-horizon forecasting on a CSV file in the layout of the standard benchmarks (ETT, Weather,
Electricity, Traffic; Zhou et al. 2021 "Informer", Wu et al. 2021 "Autoformer"): a header row,
a date column first, then one numeric column per channel, one row per time step.

Splits follow the reference data loaders of those papers:

* ETT files (name starting ``ETTh`` or ``ETTm``): 12 / 4 / 4 months of 30 days: rows
  [0, 12M), [12M, 16M), [16M, 20M) with M = 720 rows per month for hourly ``ETTh`` files
  (8640 / 2880 / 2880 rows) and 2880 for 15-minute ``ETTm`` files;
* any other file: 70 % / 10 % / 20 % of the rows, the test part taken from the end.

The validation and test windows may start ``lookback`` rows before their part, so that their
first forecast is of the part's first row.  Every channel is standardised with the mean and
standard deviation of the training rows; MSE and MAE are reported on standardised values over
every window (stride 1) of the split, none dropped.  The model (`shell.ForecastModel`) reads
``lookback`` rows and forecasts the next ``horizon`` rows at once, in the shell of PatchTST and
DLinear: RevIN, channel independence, patches of 16 rows every 8, a flatten head (each an
option).  Training keeps the weights of the best validation evaluation and tests those (the
protocol of the forecasting literature: early stopping, here by selection within the budget).

Problems with the file raise `TaskError` with one clear line: missing file, a file that is not
UTF-8 text or larger than `MAX_CSV_BYTES`, no channels, a first column of numbers that do not
increase (a channel where the dates belong: a file without a date column), a non-numeric cell
(column, row and value), a missing value / NaN (its row), too few rows for the splits.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from einsearch.arch import Arch
from einsearch.messages import clip, shown
from einsearch.tasks.base import MAX_DATA_BYTES, Budget, Splits, Task, TaskError, model_device, option
from einsearch.tasks.files import read_text
from einsearch.tasks.shell import ForecastModel, build_blocks, patch_count

ROWS_PER_MONTH = {"ETTh": 30 * 24, "ETTm": 30 * 24 * 4}
MIXINGS = ("independent", "mixed")
HEADS = ("flatten", "last")
MAX_CSV_BYTES = MAX_DATA_BYTES // 8  # parsed cells take several times the file's size (Traffic: 130 MB)
TIME_NAMES = ("date", "time", "datetime", "timestamp", "index")  # first-column headers taken as time as they are


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]  # the channel names (the date column excluded)
    values: np.ndarray  # (rows, channels) float64


def read_table(path: str) -> Table:
    """Read a CSV in benchmark layout; every problem is a `TaskError` naming the file (see
    `files.read_text`, which also keeps it in memory while the file is unchanged)."""
    return read_text("csv", path, MAX_CSV_BYTES, _table_from)


def _table_from(f: IO[str], path: str) -> Table:
    return _parse_table(csv.reader(f), path)


def _parse_table(reader, path: str) -> Table:
    """The rows of `reader` as a `Table`; `path` names the file in messages."""
    header = next(reader, None)
    if header is None:
        raise TaskError(f"csv: {path} is empty")
    if len(header) < 2:
        raise TaskError(f"csv: {path} needs a date column and at least one channel, found columns {clip(str(header), 60)}")
    columns = tuple(name.strip() for name in header[1:])
    rows, times = [], []
    for line, row in enumerate(reader, start=2):  # line numbers as an editor shows them
        if not row:
            continue
        if len(row) != len(header):
            raise TaskError(f"csv: {path} row {line} has {len(row)} cells, the header has {len(header)}")
        values = []
        for name, cell in zip(columns, row[1:]):
            text = cell.strip()
            if text == "" or text.lower() in ("nan", "na", "null", "none"):
                raise TaskError(f"csv: {path} row {line}: missing value (NaN) in column {clip(name, 40)}")
            try:
                value = float(text)
            except ValueError:
                raise TaskError(f"csv: {path} row {line}: column {clip(name, 40)} is not numeric ({clip(text, 40)})") from None
            if not math.isfinite(value):
                raise TaskError(f"csv: {path} row {line}: non-finite value {clip(text, 40)} in column {clip(name, 40)}")
            values.append(value)
        rows.append(values)
        times.append(row[0].strip())
    if not rows:
        raise TaskError(f"csv: {path} has a header but no rows")
    check_time_column(header[0].strip(), times, path)
    return Table(columns=columns, values=np.array(rows, dtype=np.float64))


def check_time_column(name: str, cells: list[str], path: str) -> None:
    """The first column must hold the time of each row: dates (any text that is not a number), or
    numbers that increase (a time index).  A first column of numbers that do not increase is a
    channel standing where the dates belong: such a file has no date column, and reading it would
    silently drop that channel, so it is refused."""
    if name.lower() in TIME_NAMES:
        return
    numbers = []
    for cell in cells:
        try:
            numbers.append(float(cell))
        except ValueError:
            return  # text: dates
    if all(a < b for a, b in zip(numbers, numbers[1:])):
        return
    raise TaskError(
        f"csv: {path} has no date column: its first column {clip(name, 30)} holds numbers that do not increase "
        "(a channel?); the layout is a date column, then one column per channel"
    )


def split_borders(name: str, rows: int, lookback: int) -> list[tuple[int, int]]:
    """(start, end) rows of train / val / test; val and test start `lookback` rows early."""
    per_month = next((n for prefix, n in ROWS_PER_MONTH.items() if name.startswith(prefix)), None)
    if per_month is not None:
        train_end, val_end, test_end = 12 * per_month, 16 * per_month, 20 * per_month
        if rows < test_end:
            raise TaskError(f"csv: {name} is an ETT file but has {rows} rows, fewer than the 20 months ({test_end} rows) its splits need")
    else:
        n_train, n_test = int(rows * 0.7), int(rows * 0.2)
        train_end, val_end, test_end = n_train, rows - n_test, rows
    return [(0, train_end), (train_end - lookback, val_end), (val_end - lookback, test_end)]


class Windows:
    """All (lookback, horizon) windows of a standardised series (T, C), stride 1."""

    def __init__(self, series: Tensor, lookback: int, horizon: int):
        self.series, self.lookback, self.horizon = series, lookback, horizon
        self.count = len(series) - lookback - horizon + 1

    def _windows(self, starts: Tensor) -> tuple[Tensor, Tensor]:
        past = self.series[starts[:, None] + torch.arange(self.lookback)]  # (B, lookback, C)
        future = self.series[starts[:, None] + self.lookback + torch.arange(self.horizon)]  # (B, horizon, C)
        return past, future

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self._windows(torch.randint(self.count, (batch_size,), generator=generator))

    def batches(self, batch_size: int):
        for first in range(0, self.count, batch_size):
            yield self._windows(torch.arange(first, min(first + batch_size, self.count)))


@dataclass(frozen=True)
class CSVSeries(Task):
    name: ClassVar[str] = "csv"
    summary: ClassVar[str] = "long-horizon forecasting on a CSV in ETT layout (standardised MSE/MAE)"
    metric: ClassVar[str] = "mse"
    mode: ClassVar[str] = "min"
    budget: ClassVar[Budget] = Budget(steps=1000)  # ETTh1: the best validation comes by ~400 steps (transformer), ~1000 (linear)
    batch_size: ClassVar[int] = 32
    lr: ClassVar[float] = 1e-3
    positional: ClassVar[str | None] = "path"
    selection: ClassVar[str] = "best"

    path: str = option("", "the CSV file (required)")
    lookback: int = option(96, "rows the model reads", at_least=1, at_most=2**20)
    horizon: int = option(96, "rows forecast at once (the benchmarks use 96, 192, 336, 720)", at_least=1, at_most=2**20)
    patch: int = option(16, "rows per input token (PatchTST: 16)", at_least=1, at_most=2**20)
    stride: int = option(8, "rows between the starts of consecutive patches (PatchTST: 8)", at_least=1, at_most=2**20)
    mixing: str = option("independent", "independent: each channel its own sequence (PatchTST); mixed: one sequence of all channels", choices=MIXINGS)
    head: str = option("flatten", "flatten: every position's features to the horizon (PatchTST); last: the last position's only", choices=HEADS)
    revin: bool = option(True, "reversible instance normalisation of each window (Kim et al. 2022)")
    decomp: int = option(0, "moving-average rows of DLinear's trend/seasonal decomposition (odd; 0: none; DLinear: 25)", at_least=0, at_most=2**20)

    def __post_init__(self) -> None:
        if not self.path:
            raise TaskError("csv: give the file, e.g. csv:data/ETTh1.csv,horizon=96")
        if self.lookback < 1 or self.horizon < 1:
            raise TaskError(f"csv: lookback and horizon must be positive, got {self.lookback}, {self.horizon}")
        if not 1 <= self.patch <= self.lookback:
            raise TaskError(f"csv: patch must be between 1 and lookback ({self.lookback}), got {self.patch}")
        if not 1 <= self.stride <= self.patch:
            raise TaskError(f"csv: stride must be between 1 and patch ({self.patch}), got {self.stride}")
        for name, allowed in (("mixing", MIXINGS), ("head", HEADS)):
            if getattr(self, name) not in allowed:
                raise TaskError(f"csv: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.decomp < 0 or (self.decomp and self.decomp % 2 == 0):
            raise TaskError(f"csv: decomp must be 0 or an odd number of rows (DLinear: 25), got {self.decomp}")

    @property
    def tokens(self) -> int:
        return patch_count(self.lookback, self.patch, self.stride)

    def table(self) -> Table:
        return read_table(self.path)

    def make_data(self) -> Splits:
        table = self.table()
        rows = len(table.values)
        borders = split_borders(Path(self.path).name, rows, self.lookback)
        need = self.lookback + self.horizon
        for split, (start, end) in zip(("train", "validation", "test"), borders):
            if start < 0 or end - start < need:
                raise TaskError(
                    f"csv: {shown(self.path)} has {rows} rows: its {split} part has {max(0, end - max(start, 0))} rows, "
                    f"fewer than lookback + horizon = {need}"
                )
        train = table.values[borders[0][0] : borders[0][1]]
        mean, std = train.mean(axis=0), train.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # a constant training channel stays as it is, centred
        series = torch.from_numpy((table.values - mean) / std).float()
        return Splits(*(Windows(series[a:b], self.lookback, self.horizon) for a, b in borders))

    def model(self, arch: Arch, d_model: int, layers: int) -> nn.Module:
        channels = len(self.table().columns)
        blocks = build_blocks(arch, d_model, layers * (2 if self.decomp else 1))  # decomp: a trend and a seasonal stack
        return ForecastModel(
            blocks, d_model, channels, self.lookback, self.horizon, self.patch, self.stride,
            head=self.head, revin=self.revin, mixing=self.mixing, decomp=self.decomp,
        )  # fmt: skip

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        past, future = batch
        return (model(past) - future).pow(2).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Windows) -> dict[str, float]:
        device = model_device(model)
        squared, absolute, count = 0.0, 0.0, 0
        for past, future in split.batches(256):
            error = model(past.to(device)).float() - future.to(device)
            squared += error.pow(2).sum().item()
            absolute += error.abs().sum().item()
            count += error.numel()
        return {"mse": squared / count, "mae": absolute / count}

    def info(self) -> dict[str, object]:
        table = self.table()
        return {"file": str(Path(self.path).expanduser()), "rows": len(table.values), "channels": len(table.columns)}
