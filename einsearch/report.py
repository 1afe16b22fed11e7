"""Tables and plots of a run folder: leaderboard, best-so-far curves, cost scatter with the
Pareto front, which primitives the best candidates use, and the finalists' table and verdict;
and the curve of a trained model's test metric against length (`einsearch train --eval-lengths`,
and a run's with `einsearch run --eval-lengths`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from einsearch.grammar import parse
from einsearch.messages import clip
from einsearch.search.finalists import FinalRecord, Standing, Summary, read_records, verdict
from einsearch.search.record import Leader, RunFolder, TrialRecord, leaderboard, scored
from einsearch.train import TrainResult

COSTS = ("params", "flops_per_token", "state_size")


# ---------------------------------------------------------------------------------------------- costs and the leaderboard


def cost_cells(costs: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Parameters, FLOPs/token and state size (`Costs.as_dict`, a result's or a record's costs)
    as every table shows them; — where unknown."""
    costs = costs or {}
    formats = ("{:,}", "{:,.0f}", "{:,}")
    return tuple(form.format(costs[key]) if key in costs else "—" for key, form in zip(COSTS, formats))


def cost_rows(costs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The costs as the rows of a two-column table, at the sequence length they were measured at."""
    params, flops, state = cost_cells(costs)
    t = costs["seq_len"]
    return [("parameters", params), (f"FLOPs/token @ T={t}", flops), (f"state size @ T={t}", state)]


def leaderboard_table(title: str, board: list[Leader], metric: str, ladder: tuple[int, ...], top: int) -> Table:
    """The `top` rows of a run's leaderboard; with a ladder of several rungs, the rung each reached."""
    table = Table(title=title)
    rung_columns = ("rung", "steps") if len(ladder) > 1 else ()
    for column in ("rank", "trial", metric, *rung_columns, "params", "FLOPs/token", "state"):
        table.add_column(column, justify="right")
    for leader in board[:top]:
        r = leader.record
        rung = (f"{r.rung or 0}/{len(ladder)}", f"{r.steps:,}") if rung_columns else ()
        table.add_row(str(leader.rank), str(r.number), f"{r.objectives[0]:.4g}", *rung, *cost_cells(r.costs))
    return table


def run_lines(records: list[TrialRecord], board: list[Leader], ladder: tuple[int, ...], top: int) -> list[str]:
    """Below the leaderboard: how many trained trials reached each rung (successive halving), the
    `top` architectures in full (they are long), and why the others have no score."""
    lines = []
    if len(ladder) > 1:
        reached = [sum((r.rung or 0) >= k for r in records if r.reused_from is None) for k in range(1, len(ladder) + 1)]
        lines.append("rungs reached: " + ", ".join(f"{steps} steps ×{n}" for steps, n in zip(ladder, reached)))
    lines += [f"{leader.rank:>4}  {leader.record.arch}" for leader in board[:top]]
    ranked = {leader.record.number for leader in board}
    reasons = Counter(f"{r.status} ({(r.reason or '?').split(' ')[0]})" for r in records if r.status != "ok" and r.number not in ranked)
    if reasons:
        lines.append("not scored: " + ", ".join(f"{k} ×{v}" for k, v in sorted(reasons.items())))
    return lines


def best_so_far(values: list[float], maximize: bool) -> list[float]:
    best, out = None, []
    for v in values:
        best = v if best is None else (max(best, v) if maximize else min(best, v))
        out.append(best)
    return out


def pareto_front(points: list[tuple[float, float]], maximize: bool) -> list[int]:
    """Indices of the points not dominated in (metric: better is larger iff maximize, cost: smaller)."""
    sign = 1.0 if maximize else -1.0
    front = []
    for i, (mi, ci) in enumerate(points):
        dominated = any(
            (sign * mj >= sign * mi and cj <= ci) and (sign * mj > sign * mi or cj < ci)
            for j, (mj, cj) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][1])


def primitive_names(arch_text: str) -> set[str]:
    """The primitives (op or op(variant)) an architecture uses; combinators included."""
    return {node.op + (f"({node.variant})" if node.variant else "") for node in parse(arch_text).walk()}


def primitive_frequencies(records: list[TrialRecord]) -> Counter:
    counts: Counter = Counter()
    for r in records:
        counts.update(primitive_names(r.arch))
    return counts


def write_plots(folder: RunFolder, records: list[TrialRecord], metric: str, maximize: bool) -> list[Path]:
    """best_so_far.png, cost_scatter.png, primitives.png in the run folder; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = scored(records)
    paths = []
    if ok:
        in_order = sorted(ok, key=lambda r: r.number)
        fig, (by_trial, by_time) = plt.subplots(1, 2, figsize=(10, 4))
        values = [r.objectives[0] for r in in_order]
        by_trial.plot([r.number for r in in_order], best_so_far(values, maximize), drawstyle="steps-post")
        by_trial.scatter([r.number for r in in_order], values, s=8, alpha=0.4)
        by_trial.set(xlabel="trial", ylabel=metric, title="best so far vs trials")
        in_time = sorted(ok, key=lambda r: r.finished_at)
        by_time.plot(
            [r.finished_at / 60 for r in in_time],
            best_so_far([r.objectives[0] for r in in_time], maximize),
            drawstyle="steps-post",
        )
        by_time.set(xlabel="minutes", ylabel=metric, title="best so far vs time")
        paths.append(_save(fig, folder.path / "best_so_far.png"))

        fig, ax = plt.subplots(figsize=(5, 4))
        points = [(r.objectives[0], float(r.costs.get("params", 0))) for r in ok]
        ax.scatter([c for _, c in points], [m for m, _ in points], s=10, alpha=0.5, label="trials")
        front = pareto_front(points, maximize)
        ax.plot([points[i][1] for i in front], [points[i][0] for i in front], "r.-", label="Pareto front")
        ax.set(xscale="log", xlabel="parameters", ylabel=metric, title="metric vs cost")
        ax.legend()
        paths.append(_save(fig, folder.path / "cost_scatter.png"))

        board = leaderboard(records, maximize)
        top = [leader.record for leader in board[: max(1, len(board) // 10)]]
        everyone, best = primitive_frequencies(ok), primitive_frequencies(top)
        names = sorted(everyone, key=lambda n: -everyone[n])
        fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.45), 4))
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [everyone[n] / len(ok) for n in names], width=0.4, label="all trials")
        ax.bar([x + 0.2 for x in xs], [best[n] / len(top) for n in names], width=0.4, label="top decile")
        ax.set_xticks(list(xs), names, rotation=60, ha="right", fontsize=8)
        ax.set(ylabel="share of architectures using it", title="primitives: top decile vs all")
        ax.legend()
        paths.append(_save(fig, folder.path / "primitives.png"))
    return paths


def length_plot(curves: dict[str, Sequence[dict]], metric: str, path: Path, trained: int | None = None) -> Path:
    """The test metric against the test length in tokens (log scale), one line per curve (e.g.
    one per architecture) from `TrainResult.lengths` rows; lengths that failed are left out.
    `trained`: the training length, marked by a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for label, rows in curves.items():
        tested = [row for row in rows if metric in row]
        ax.plot([row["tokens"] for row in tested], [row[metric] for row in tested], "o-", label=label)
    if trained is not None:
        ax.axvline(trained, color="grey", linestyle=":", label="training length")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="test length (tokens)", ylabel=f"test {metric}", title=f"test {metric} against length")
    ax.legend(fontsize=8)
    return _save(fig, path)


def lengths_table(result: TrainResult) -> Table:
    """The test metric at each length that `--eval-lengths` asked for (or why that length failed)."""
    metric = result.metric
    table = Table(title=f"test {metric} against length", box=None)
    for column in ("× length", "tokens", metric):
        table.add_column(column, justify="right")
    for row in result.lengths:
        value = f"{row[metric]:.4f}" if metric in row else f"failed ({row['reason']}): {clip(row['detail'], 60, quote=False)}"
        table.add_row(f"×{row['factor']}", f"{row['tokens']:,}", value)
    return table


def length_curves(
    records: list[TrialRecord], finals: list[FinalRecord], metric: str, maximize: bool, top: int = 5
) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """A run's test `metric` against length (`RunConfig.eval_lengths`), one curve per
    architecture: the finalists' and comparison seeds' (each length's mean over the training
    seeds that have it) where the final recorded length rows, else the `top` trials of the
    leaderboard that have them (trained to the full budget).  Returns what the curves are and
    the curves (label -> rows of factor, tokens, the metric's mean, ``n`` and ``failed``, and a
    ``reason`` where every training failed at that length); no curves when nothing was tested."""
    groups: dict[str, list[tuple[dict[str, Any], ...]]] = {}
    if any(f.lengths for f in finals):
        what = "the finalists and seeds, mean over training seeds"
        for final in sorted((f for f in finals if f.lengths), key=lambda f: f.role != "candidate"):  # stable: candidates first
            groups.setdefault(clip(final.entrant.label, 40, quote=False), []).append(final.lengths)
    else:
        what = "the best trials trained to the full budget"
        for leader in leaderboard(records, maximize):
            if leader.record.lengths and len(groups) < top:
                groups[f"trial {leader.record.number}"] = [leader.record.lengths]
    return what, {label: _mean_rows(runs, metric) for label, runs in groups.items()}


def _mean_rows(runs: list[tuple[dict[str, Any], ...]], metric: str) -> list[dict[str, Any]]:
    """Length rows of several trainings of one architecture, one row per factor: the mean of the
    metric where it was measured, how many measured it and how many failed (and the first reason)."""
    by_factor: dict[int, list[dict[str, Any]]] = {}
    for rows in runs:
        for row in rows:
            by_factor.setdefault(row["factor"], []).append(row)
    out = []
    for factor, rows in sorted(by_factor.items()):
        values = [row[metric] for row in rows if isinstance(row.get(metric), (int, float)) and row[metric] == row[metric]]
        mean: dict[str, Any] = {"factor": factor, "tokens": rows[0]["tokens"], "n": len(values), "failed": len(rows) - len(values)}
        if values:
            mean[metric] = sum(values) / len(values)
        else:
            mean["reason"] = next((row.get("reason") for row in rows if row.get("reason")), "nan")
        out.append(mean)
    return out


def length_curves_table(title: str, curves: dict[str, list[dict[str, Any]]], metric: str) -> Table:
    """One row per curve, one column per factor of the length (its tokens below): the metric, or
    why that length failed."""
    columns = sorted({(row["factor"], row["tokens"]) for rows in curves.values() for row in rows})
    table = Table(title=title, box=None, min_width=len(title))  # the title on one line
    table.add_column("arch", overflow="ellipsis", no_wrap=True, max_width=24)
    for factor, tokens in columns:
        table.add_column(f"×{factor} ({tokens:,})", justify="right")
    for label, rows in curves.items():
        cells = {row["factor"]: row for row in rows}
        table.add_row(label, *(_length_cell(cells.get(factor), metric) for factor, _ in columns))
    return table


def _length_cell(row: dict[str, Any] | None, metric: str) -> str:
    if row is None:
        return "—"
    if metric not in row:
        return f"failed ({row['reason']})"
    return f"{row[metric]:.4f}" + (f" ({row['failed']} failed)" if row["failed"] else "")


def write_length_report(folder: RunFolder, records: list[TrialRecord], metric: str, maximize: bool) -> tuple[Table, Path] | None:
    """`einsearch report` on a run with `--eval-lengths`: lengths.png in the run folder (test
    `metric` against length, `length_curves`) and its table; None when the run has no length rows."""
    what, curves = length_curves(records, read_records(folder), metric, maximize)
    if not curves:
        return None
    trained = next((r.costs["seq_len"] for r in records if "seq_len" in r.costs), None)
    path = length_plot(curves, metric, folder.path / "lengths.png", trained=trained)
    return length_curves_table(f"test {metric} against length ({what})", curves, metric), path


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- finalists


def _mean_std(s: Standing) -> str:
    if s.mean is None:
        return "—"
    return f"{s.mean:.3g} ± {s.std:.2g}" if s.std is not None else f"{s.mean:.3g}"


def _short(text: str, width: int = 30) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def finalists_table(summary: Summary) -> Table:
    """One row per architecture in the final (candidates by their search trial, seeds by name):
    mean ± std of the test metric over the training seeds, Welch's p against the best seed, and
    the costs."""
    best = summary.best
    title = (
        f"finalists: {summary.metric}, mean ± std over {summary.training_seeds} training seeds at {summary.budget}; "
        f"p: Welch vs the best seed{'' if best is None else ' ' + best.entrant.label}"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    table.add_column("arch", overflow="ellipsis", no_wrap=True, max_width=12)
    table.add_column("role", no_wrap=True)
    for column in ("n", summary.metric, "p", "params", "FLOPs/token", "state"):
        table.add_column(column, justify="right", no_wrap=True)
    for s in summary.standings:
        table.add_row(
            _short(s.entrant.label), s.entrant.role if s is not best else "best seed",
            str(s.n) + (f" ({s.failed} failed)" if s.failed else ""), _mean_std(s),
            "—" if s.p is None else f"{s.p:.2g}",
            *cost_cells(s.costs),
        )  # fmt: skip
    return table


def _ratio(name: str, mine: float, theirs: float) -> str:
    if theirs == 0:
        return f"{name} ×1" if mine == 0 else f"{name} {mine:,.0f} vs 0"
    return f"{name} ×{mine / theirs:.2g}"


def verdict_line(summary: Summary | None) -> str:
    """One line: does the found architecture beat the best seed, on the finalists' evidence?"""
    if summary is None:
        return "verdict: no finalists yet (einsearch final RUN trains them)"
    if not summary.candidates:
        return "verdict: no finalists — the search has no scored trial yet"
    found = verdict(summary)
    if found is None:
        return "verdict: none yet — no finalist and no comparison seed has finished a training"
    mine, theirs = found.candidate, found.seed
    p = "Welch p undefined" if mine.p is None else f"Welch p={mine.p:.2g}"
    beats = "beats" if found.wins else "does not beat"
    costs = ""
    if mine.costs and theirs.costs:
        costs = ", " + ", ".join(
            _ratio(name, mine.costs[key], theirs.costs[key])
            for name, key in (("params", "params"), ("FLOPs", "flops_per_token"), ("state", "state_size"))
        )
    return (
        f"verdict: {mine.entrant.arch} {beats} the best seed {theirs.entrant.label}: "
        f"{summary.metric} {_mean_std(mine)} vs {_mean_std(theirs)} ({p}){costs}"
    )


def final_report(summary: Summary | None, run: str) -> list[Table | str]:
    """What `einsearch final` and `report` print of a run's final: the finalists' table, their
    architectures in full, the seeds left out, whether it is unfinished, and the verdict."""
    out: list[Table | str] = []
    if summary is not None and summary.candidates:
        out.append(finalists_table(summary))
        out += [f"{s.entrant.label if s.entrant.trial is not None else 'seed':>10}  {s.entrant.arch}"
                for s in summary.standings if s.entrant.name is None]  # fmt: skip  (whole: architectures are long)
        out += [f"seed {name} left out: {why}" for name, why in summary.excluded.items()]
        if not summary.complete:
            out.append(f"(unfinished: einsearch final {run} continues it)")
    out.append(verdict_line(summary))
    return out
