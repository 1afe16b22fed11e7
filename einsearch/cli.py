"""The `einsearch` command line: argument handling only; the work lives in the package."""

from __future__ import annotations

import re
import sys
from collections import Counter
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from einsearch.arch import Arch, format_value
from einsearch.build import build
from einsearch.costs import costs
from einsearch.grammar import ArchSyntaxError, to_text
from einsearch.grammar.seeds import resolve, seeds
from einsearch.messages import clip
from einsearch.primitives.base import BuildError

if TYPE_CHECKING:
    from einsearch.search.finalists import Summary
    from einsearch.tasks import Task
    from einsearch.train import TrainResult

app = typer.Typer(
    help="Search for sequence-mixer architectures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
# Tables go to a terminal at its width; to a file or a pipe at 120 columns, so that no number is cut.
console = Console(width=None if sys.stdout.isatty() else 120)


@app.callback()
def _commands() -> None:
    """Search for sequence-mixer architectures."""


MAX_ERROR = 240  # characters of an error line: the messages clip echoed input; this is the backstop


def fail(message: str) -> NoReturn:
    """One clear line on stderr and exit status 2: the CLI's answer to bad input."""
    line = " ".join(message.splitlines())
    typer.echo(f"error: {line if len(line) <= MAX_ERROR else line[: MAX_ERROR - 3] + '...'}", err=True)
    raise typer.Exit(2)


def _arch(text: str) -> Arch:
    try:
        return resolve(text)
    except ArchSyntaxError as e:
        fail(str(e))


def _tree(arch: Arch, depth: int = 0) -> list[str]:
    head = arch.op + (f"({arch.variant})" if arch.variant else "")
    params = " ".join(f"{k}={format_value(v)}" for k, v in arch.params)
    lines = ["  " * depth + head + (f"  {params}" if params else "")]
    for child in arch.children:
        lines += _tree(child, depth + 1)
    return lines


@app.command()
def show(
    arch: Annotated[str, typer.Argument(help="Architecture text, a seed name, or - to read one architecture per line from stdin.")],
    d_model: Annotated[int, typer.Option(help="Model width to build at.", min=1)] = 64,
    seq_len: Annotated[int, typer.Option(help="Sequence length for FLOPs and state size.", min=1)] = 1024,
    max_memory: MaxMemoryOption = None,
) -> None:
    """Print an architecture's canonical text, its tree and its costs."""
    texts = [line for line in sys.stdin.read().splitlines() if line.strip()] if arch == "-" else [arch]
    ceiling = _ceiling(max_memory)
    for i, text in enumerate(texts):
        if i:
            console.print()
        _show(_arch(text), d_model, seq_len, ceiling)


def _show(tree: Arch, d_model: int, seq_len: int, ceiling: int) -> None:
    from einsearch.footprint import OverCeiling, check_ceiling, estimate_block

    try:
        check_ceiling(estimate_block(tree, d_model), ceiling)  # before anything is allocated
        module = build(tree, d_model)
    except (BuildError, OverCeiling) as e:
        fail(str(e))
    c = costs(module, seq_len)
    console.print(to_text(tree), markup=False, highlight=False, soft_wrap=True)
    console.print(f"id {tree.id}", markup=False, highlight=False)
    console.print("\n".join(_tree(tree)), markup=False, highlight=False)
    table = Table(show_header=False, box=None)
    table.add_row("d_model", str(d_model))
    table.add_row("parameters", f"{c.params:,}")
    table.add_row(f"FLOPs/token @ T={seq_len}", f"{c.flops_per_token:,.0f}")
    table.add_row(f"state size @ T={seq_len}", f"{c.state_size:,}")
    console.print(table)


@app.command("seeds")
def list_seeds(
    d_model: Annotated[int, typer.Option(help="Model width to build at.", min=1)] = 64,
    seq_len: Annotated[int, typer.Option(help="Sequence length for FLOPs and state size.", min=1)] = 1024,
) -> None:
    """List the seed zoo with parameters, FLOPs/token and state size (one block)."""
    table = Table(title=f"seed zoo at d_model={d_model}, T={seq_len} (one block)")
    for column in ("name", "parameters", "FLOPs/token", "state size"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for name, tree in seeds.items():
        try:
            c = costs(build(tree, d_model), seq_len)
        except BuildError as e:
            fail(f"seed {name}: {e}")
        table.add_row(name, f"{c.params:,}", f"{c.flops_per_token:,.0f}", f"{c.state_size:,}")
    console.print(table)


MaxMemoryOption = Annotated[str | None, typer.Option(help="Memory a candidate may need, estimated before it is built, e.g. 4GB (default: half the machine's).")]


def _ceiling(text: str | None) -> int:
    """The memory ceiling in bytes: `text` (e.g. 4GB) or half the machine's memory."""
    from einsearch.footprint import default_memory_limit, parse_bytes

    try:
        return default_memory_limit() if text is None else parse_bytes(text)
    except ValueError as e:
        fail(str(e))


# ---------------------------------------------------------------- spaces: sample, space list, space stats
SpaceOption = Annotated[str, typer.Option(help="A built-in space (see `einsearch space list`) or a space file.")]


def _space(name: str):
    from einsearch.grammar import SpaceError, load_space

    try:
        return load_space(name)
    except SpaceError as e:
        fail(str(e))


@app.command("sample")
def sample_command(
    space: SpaceOption = "full",
    n: Annotated[int, typer.Option("-n", "--n", help="How many architectures.", min=1)] = 1,
    seed: Annotated[int | None, typer.Option(help="Random seed; the same seed prints the same list.")] = None,
) -> None:
    """Print architectures drawn from a space, one per line (pipe them into `einsearch show -`)."""
    import numpy as np

    from einsearch.grammar import sample

    pcfg, rng = _space(space), np.random.default_rng(seed)
    for _ in range(n):
        typer.echo(to_text(sample(pcfg, rng)))


space_app = typer.Typer(help="Search spaces: list them and print their statistics.", no_args_is_help=True)
app.add_typer(space_app, name="space")


@space_app.command("list")
def space_list() -> None:
    """The built-in spaces, with their limits and mean offspring."""
    from einsearch.grammar import builtin_spaces

    for name in builtin_spaces():
        typer.echo(_space(name).summary())


@space_app.command("stats")
def space_stats_command(
    space: SpaceOption = "full",
    samples: Annotated[int, typer.Option(help="How many samples to draw.", min=1)] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    d_model: Annotated[int, typer.Option(help="Width to build the samples at.", min=1)] = 32,
    build_check: Annotated[bool, typer.Option("--build/--no-build", help="Build and check every sample.")] = True,
) -> None:
    """Expected size, depth distribution, primitive frequencies and the share of samples that
    build, run forward and backward, and pass the causality check."""
    from einsearch.grammar.stats import space_stats

    stats = space_stats(_space(space), samples=samples, seed=seed, check=build_check, d_model=d_model)
    typer.echo("\n".join(stats.lines()))


# ---------------------------------------------------------------- tasks and training: train, tasks
@app.command("train")
def train_command(
    arch: Annotated[str, typer.Argument(help="Architecture text or a seed name.")],
    task: Annotated[str, typer.Option(help="Task with options, e.g. mqar:vocab=256,seq_len=64,pairs=8 (see `einsearch tasks`).")] = "mqar",
    budget: Annotated[str | None, typer.Option(help="Optimiser steps (500steps), or time (60s, 2m: the result then depends on the machine's load) (default: the task's).")] = None,
    d_model: Annotated[int, typer.Option(help="Model width.", min=1)] = 64,
    layers: Annotated[int, typer.Option(help="Copies of the block (independent weights).", min=1)] = 2,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: the task's).", min=0.0)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default: the task's).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation and the batch order.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    max_memory: MaxMemoryOption = None,
    time_limit: Annotated[float | None, typer.Option(help="Seconds before the candidate is stopped as timeout (default: 1 hour for a budget in steps).", min=0)] = None,
    eval_lengths: Annotated[str | None, typer.Option(help="After training, also test at these multiples of the task's length, e.g. 1,2,4,8 (tasks with a length option: mqar, passkey, lm).")] = None,
    plot: Annotated[str | None, typer.Option(help="With --eval-lengths: write the test metric against length here (PNG).")] = None,
) -> None:
    """Train one architecture on one task within a budget; print its metrics and costs.
    Exit status 1 when the candidate fails (NaN, divergence, out of memory, time limit, build error)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from einsearch.tasks import Budget, TaskError, get_task
    from einsearch.limits import train_limited
    from einsearch.train import TrainConfig

    tree = _arch(arch)
    try:
        limit = Budget.parse(budget) if budget else None
    except ValueError as e:
        fail(str(e))
    factors = _factors(eval_lengths) if eval_lengths is not None else ()
    if plot is not None:
        _check_plot(plot, factors)
    config = TrainConfig(d_model=d_model, layers=layers, budget=limit, lr=lr, batch_size=batch_size, seed=seed,
                         max_memory=_ceiling(max_memory), time_limit=time_limit, eval_lengths=factors)  # fmt: skip
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=json_output, transient=True,
    )  # fmt: skip
    try:
        the_task = get_task(task)
        _check_lengths(the_task, factors)
        with bar:
            handle = bar.add_task("preparing data", total=1.0)
            show_step = lambda info: bar.update(handle, completed=info.fraction, description=f"step {info.step}  loss {info.loss:.4g}")  # noqa: E731
            result = train_limited(tree, the_task, config, progress=show_step)  # in a child process it can be killed
    except TaskError as e:
        fail(str(e))
    if json_output:
        typer.echo(result.to_json())
    else:
        table = Table(show_header=False, box=None)
        table.add_row("status", result.status + (f" ({result.reason})" if result.reason else ""))
        if result.detail:
            table.add_row("detail", result.detail)
        table.add_row("task", result.task)
        table.add_row("steps", f"{result.steps:,}")
        if result.ok and result.selected_step != result.steps:
            table.add_row("tested weights", f"of step {result.selected_step:,} (the best validation evaluation)")
        table.add_row("seconds", f"{result.seconds:.1f}")
        for name, value in result.metrics.items():
            table.add_row(name, f"{value:.4f}")
        if result.costs:
            table.add_row("parameters", f"{result.costs['params']:,}")
            table.add_row(f"FLOPs/token @ T={result.costs['seq_len']}", f"{result.costs['flops_per_token']:,.0f}")
            table.add_row(f"state size @ T={result.costs['seq_len']}", f"{result.costs['state_size']:,}")
        console.print(table)
        if result.lengths:
            console.print(_lengths_table(result))
    if plot is not None and result.lengths:
        from pathlib import Path

        from einsearch.report import length_plot

        trained = result.costs["seq_len"] if result.costs else None
        written = length_plot({clip(arch, 40, quote=False): result.lengths}, result.metric, Path(plot), trained=trained)
        typer.echo(f"wrote {written}", err=json_output)  # --json: stdout holds the JSON only
    if not result.ok:
        raise typer.Exit(1)


def _factors(text: str) -> tuple[int, ...]:
    """--eval-lengths: whole multiples of the task's length, at least 1, e.g. 1,2,4,8 (sorted, once each)."""
    parts = [part.strip() for part in text.split(",")]
    if not all(re.fullmatch(r"[0-9]{1,9}", part) and int(part) >= 1 for part in parts):
        fail(f"--eval-lengths {clip(text, 40)}: expected whole numbers of at least 1 separated by commas, e.g. 1,2,4,8")
    return tuple(sorted({int(part) for part in parts}))


def _check_plot(path: str, factors: tuple[int, ...]) -> None:
    from pathlib import Path

    if not factors:
        fail("--plot draws the test metric against length: it needs --eval-lengths, e.g. --eval-lengths 1,2,4,8")
    if not Path(path).parent.is_dir():
        fail(f"--plot {clip(path, 60)}: no such folder {clip(str(Path(path).parent), 60)}")


def _check_lengths(task: Task, factors: tuple[int, ...]) -> None:
    """Exit 2 now, before training, if `task` cannot be tested at one of `factors` × its length."""
    from einsearch.tasks import TaskError
    from einsearch.tasks.registry import TASKS
    from einsearch.train import length_task

    for factor in factors:
        try:
            length_task(task, factor)
        except TaskError as e:
            if task.length_option is None:
                with_length = ", ".join(name for name, cls in TASKS.items() if cls.length_option is not None)
                fail(f"--eval-lengths: {e} (tasks with a length option: {with_length})")
            fail(f"--eval-lengths {factor}: {e}")


def _lengths_table(result: TrainResult) -> Table:
    """The test metric at each length that `--eval-lengths` asked for (or why that length failed)."""
    metric = result.metric
    table = Table(title=f"test {metric} against length", box=None)
    for column in ("× length", "tokens", metric):
        table.add_column(column, justify="right")
    for row in result.lengths:
        value = f"{row[metric]:.4f}" if metric in row else f"failed ({row['reason']}): {clip(row['detail'], 60, quote=False)}"
        table.add_row(f"×{row['factor']}", f"{row['tokens']:,}", value)
    return table


@app.command("tasks")
def tasks_command() -> None:
    """List the tasks, their primary metric, default budget and options."""
    from einsearch.tasks import describe_tasks

    for info in describe_tasks():
        typer.echo(f"{info.name}  {info.summary}  [{info.metric}, {info.mode}imise; budget {info.budget}, in a search {info.search_budget}]")
        for option in info.options:
            bare = "  (may be given bare: " + info.name + ":<" + option.name + ">)" if option.name == info.positional else ""
            typer.echo(f"    {option.name + '=' + str(option.default):<22} {option.help}{bare}")


# ---------------------------------------------------------------- the search: run, report, export
@app.command("run")
def run_command(
    space: Annotated[str, typer.Option(help="Search space: a built-in name (see `einsearch space list`) or a space file.")] = "full",
    task: Annotated[str, typer.Option(help="Task with options (see `einsearch tasks`).")] = "mqar",
    strategy: Annotated[str, typer.Option(help="random | evolution | tpe | nsga2.")] = "evolution",
    seed_arch: Annotated[list[str] | None, typer.Option("--seed-arch", help="Seed name or architecture text to start from (repeatable).")] = None,
    trials: Annotated[int | None, typer.Option(help="Candidates to train (with --resume: the new total); duplicates and candidates over a --max-* limit are recorded but not counted.", min=1)] = None,
    time_budget: Annotated[str | None, typer.Option(help="Wall clock for the whole search, e.g. 90s, 30m, 2h.")] = None,
    trial_budget: Annotated[str | None, typer.Option(help="Each candidate's full training budget in optimiser steps (e.g. 1500steps), never seconds (default: the task's search budget, see `einsearch tasks`).")] = None,
    time_limit: Annotated[float | None, typer.Option(help="Seconds before a candidate fails as timeout: a safety limit, not a budget (default: 1 s per step of the trial budget + 60 s).", min=0)] = None,
    workers: Annotated[int | None, typer.Option(help="Candidates trained at once (default: 2; with --resume: the run's).", min=1)] = None,
    executor: Annotated[str | None, typer.Option(help="ray (local Ray or --address) | inline (in this process) (default: ray; with --resume: the run's).")] = None,
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster (default: RAY_ADDRESS, else a local Ray; --resume never takes it from the run folder).")] = None,
    scheduler: Annotated[str, typer.Option(help="asha (successive halving: weak candidates stop at a rung) | fifo (all train the full budget).")] = "asha",
    rungs: Annotated[int, typer.Option(help="asha: rungs of the ladder, at full/eta^(rungs-1), ..., full/eta, full steps.", min=1)] = 3,
    eta: Annotated[int, typer.Option(help="asha: reduction factor: about 1/eta of a rung's candidates go on.", min=2)] = 3,
    objectives: Annotated[str, typer.Option(help="metric, optionally with params, flops, state: e.g. metric,params.")] = "metric",
    max_params: Annotated[int | None, typer.Option(help="Reject candidates with more parameters, untrained.", min=1)] = None,
    max_flops: Annotated[float | None, typer.Option(help="Reject candidates with more FLOPs per token, untrained.", min=0)] = None,
    max_state: Annotated[int | None, typer.Option(help="Reject candidates with more floats of inference state at the task's length, untrained.", min=0)] = None,
    max_memory: MaxMemoryOption = None,
    finalists: Annotated[int, typer.Option(help="At the end, retrain the top K and the comparison seeds (0: skip).", min=0)] = 3,
    final_seeds: Annotated[int, typer.Option(help="Training seeds per finalist and comparison seed.", min=2)] = 3,
    inherit: Annotated[bool, typer.Option("--inherit", help="Evolution: a child starts from its parent's trained weights wherever their trees agree.")] = False,
    d_model: Annotated[int, typer.Option(help="Model width.", min=1)] = 64,
    layers: Annotated[int, typer.Option(help="Copies of the block.", min=1)] = 2,
    output: Annotated[str | None, typer.Option(help="Run folder (default: a new dated folder under runs/).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the search and of every candidate's training.")] = 0,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: a journal file in the run folder; --resume takes it only from here).")] = None,
    resume: Annotated[str | None, typer.Option(help="Continue the run in this folder.")] = None,
) -> None:
    """Search the space for the best block on a task; Ctrl-C stops cleanly, --resume continues."""
    from einsearch.grammar import SpaceError
    from einsearch.search import (
        Execution,
        RunConfig,
        RunFolder,
        new_run_folder,
        parse_duration,
        start,
    )
    from einsearch.search import resume as resume_run
    from einsearch.search.cluster import check_executor
    from einsearch.tasks import TaskError, get_task

    try:
        if resume is not None:
            execution = Execution(executor=executor, workers=workers, address=address, storage=storage)
            outcome = resume_run(RunFolder(resume), trials=trials, execution=execution)
        else:
            config = RunConfig(
                task=task, space=space, strategy=strategy, seed_archs=tuple(seed_arch or ()),
                trials=trials or RunConfig.trials,
                time_budget=parse_duration(time_budget) if time_budget else None,
                trial_budget=trial_budget or str(get_task(task).trial_budget()), time_limit=time_limit, workers=workers or RunConfig.workers,
                executor=executor or RunConfig.executor, address=address,
                scheduler=scheduler, rungs=rungs, eta=eta, objectives=tuple(o.strip() for o in objectives.split(",")),
                max_params=max_params, max_flops=max_flops, max_state=max_state, d_model=d_model, layers=layers,
                max_memory=None if max_memory is None else _ceiling(max_memory),
                seed=seed, storage=storage, finalists=finalists, final_seeds=final_seeds, inherit=inherit,
            )  # fmt: skip
            check_executor(config.executor, config.address)  # a bad --address fails here, before the run folder exists
            outcome = start(config, RunFolder(output) if output else new_run_folder())
    except (ValueError, TaskError, SpaceError, ArchSyntaxError, FileNotFoundError, FileExistsError) as e:
        fail(str(e))
    folder = outcome.search.folder.path
    if not outcome.completed:
        typer.echo(f"stopped; finished trials are recorded. Continue with: einsearch run --resume {folder}", err=True)
        raise typer.Exit(130)
    typer.echo(f"done: {len(outcome.search.records)} trials in {folder}. See: einsearch report {folder}")
    if outcome.final is not None:
        from einsearch.report import verdict_line

        typer.echo(verdict_line(outcome.final))


@app.command("final")
def final_command(
    run: Annotated[str, typer.Argument(help="A run folder.")],
    finalists: Annotated[int | None, typer.Option(help="How many of the best architectures (default: the run's).", min=1)] = None,
    final_seeds: Annotated[int | None, typer.Option(help="Training seeds each (default: the run's).", min=2)] = None,
) -> None:
    """Retrain a run's top architectures and its comparison seeds at the full trial budget with
    several training seeds, and say whether a candidate beats the best seed (mean ± std, Welch
    test). Trainings already recorded are not repeated, so this also continues an interrupted final."""
    from einsearch.search import RunFolder, final
    from einsearch.tasks import TaskError

    try:
        summary = final(RunFolder(run), k=finalists, n=final_seeds)
    except (ValueError, TaskError, ArchSyntaxError, FileNotFoundError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        typer.echo(f"stopped; finished trainings are recorded. Continue with: einsearch final {run}", err=True)
        raise typer.Exit(130) from None
    if summary is None:  # the run's config says finalists=0
        typer.echo("no finalists: this run asks for none (use --finalists K)")
        return
    _print_finalists(summary, run)


def _print_finalists(summary: Summary | None, run: str) -> None:
    """The finalists' table, their architectures in full, the seeds left out, and the verdict."""
    from einsearch.report import finalists_table, verdict_line

    if summary is not None and summary.candidates:
        console.print(finalists_table(summary))
        for s in summary.standings:  # whole, on their own lines: architectures are long
            if s.entrant.name is None:
                typer.echo(f"{s.entrant.label if s.entrant.trial is not None else 'seed':>10}  {s.entrant.arch}")
        for name, why in summary.excluded.items():
            typer.echo(f"seed {name} left out: {why}")
        if not summary.complete:
            typer.echo(f"(unfinished: einsearch final {run} continues it)")
    typer.echo(verdict_line(summary))


@app.command("report")
def report_command(
    run: Annotated[str, typer.Argument(help="A run folder.")],
    top: Annotated[int, typer.Option(help="Rows of the leaderboard.", min=1)] = 10,
) -> None:
    """Print a run's leaderboard, its finalists and verdict, and write its plots (PNG) into the run folder."""
    from einsearch.report import leaderboard, write_plots
    from einsearch.search import RunFolder
    from einsearch.search.finalists import read_summary
    from einsearch.tasks import get_task

    folder = RunFolder(run)
    try:
        config = folder.read_config()
    except FileNotFoundError as e:
        fail(str(e))
    task = get_task(config["task"])
    records = folder.trials()
    board = leaderboard(records, maximize=task.mode == "max")
    ladder = _ladder(config) if any(r.rung is not None for r in records) else ()  # a suite has no rungs
    table = Table(title=f"{run}: {len(records)} trials, {len(board)} scored (val/{task.metric})")
    rung_columns = ("rung", "steps") if len(ladder) > 1 else ()
    for column in ("rank", "trial", f"val/{task.metric}", *rung_columns, "params", "FLOPs/token", "state"):
        table.add_column(column, justify="right")
    for leader in board[:top]:
        r = leader.record
        rung = (f"{r.rung or 0}/{len(ladder)}", f"{r.steps:,}") if rung_columns else ()
        table.add_row(
            str(leader.rank), str(r.number), f"{r.objectives[0]:.4g}", *rung, f"{r.costs.get('params', 0):,}",
            f"{r.costs.get('flops_per_token', 0):,.0f}", f"{r.costs.get('state_size', 0):,}",
        )  # fmt: skip
    console.print(table)
    if len(ladder) > 1:  # successive halving: how many trained trials reached each rung
        reached = [sum((r.rung or 0) >= k for r in records if r.reused_from is None) for k in range(1, len(ladder) + 1)]
        typer.echo("rungs reached: " + ", ".join(f"{steps} steps ×{n}" for steps, n in zip(ladder, reached)))
    for leader in board[:top]:  # whole, on their own lines: architectures are long
        typer.echo(f"{leader.rank:>4}  {leader.record.arch}")
    ranked = {leader.record.number for leader in board}
    reasons = Counter(f"{r.status} ({(r.reason or '?').split(' ')[0]})" for r in records if r.status != "ok" and r.number not in ranked)
    if reasons:
        typer.echo("not scored: " + ", ".join(f"{k} ×{v}" for k, v in sorted(reasons.items())))
    _print_finalists(read_summary(folder), run)
    for path in write_plots(folder, records, f"val/{task.metric}", maximize=task.mode == "max"):
        typer.echo(f"wrote {path}")


def _ladder(config: dict) -> tuple[int, ...]:
    """A run's rung ladder in steps from its config.json (one rung: no successive halving; a run
    from before budgets in steps has none)."""
    from einsearch.search import RunConfig

    try:
        return RunConfig.from_dict(config).ladder
    except (ValueError, TypeError):
        return ()


@app.command("export")
def export_command(
    run: Annotated[str, typer.Argument(help="A run folder.")],
    output: Annotated[str, typer.Option("-o", "--output", help="The Python file to write.")] = "candidate.py",
    rank: Annotated[int, typer.Option(help="Which candidate of the leaderboard.", min=1)] = 1,
    weights: Annotated[bool, typer.Option("--weights", help="Also write the trained weights beside it (.safetensors).")] = False,
) -> None:
    """Write a trained candidate as a standalone PyTorch module (needs only torch)."""
    from einsearch.export import ExportError, export_trial

    try:
        written = export_trial(run, rank, output, weights)
    except (ExportError, FileNotFoundError) as e:
        fail(str(e))
    for path in written:
        typer.echo(f"wrote {path}")


@app.command("inspect")
def inspect_command(
    arch_or_run: Annotated[str, typer.Argument(help="A run folder, or architecture text / a seed name together with --weights.")],
    task: Annotated[str | None, typer.Option(help="Task with options (default: a run's own task; with an architecture: mqar).")] = None,
    rank: Annotated[int, typer.Option(help="Run folder: which candidate of the leaderboard.", min=1)] = 1,
    weights: Annotated[str | None, typer.Option(help="Architecture: its trained weights (.safetensors, e.g. from `einsearch export RUN --weights`).")] = None,
    d_model: Annotated[int, typer.Option(help="Architecture: the model width the weights were trained at.", min=1)] = 64,
    layers: Annotated[int, typer.Option(help="Architecture: the copies of the block the weights were trained with.", min=1)] = 2,
    out: Annotated[str | None, typer.Option(help="Folder for attention.png (default: the run folder, else the current folder).")] = None,
    examples: Annotated[int, typer.Option(help="Test examples whose attention is captured and averaged.", min=1)] = 64,
    alpha: Annotated[float, typer.Option(help="A key is a sink when its mean received attention exceeds alpha/T (alpha > 0).")] = 5.0,
    beta: Annotated[float, typer.Option(help="--calibrate: the share of a sink's attention a calibrated head keeps.", min=0.0, max=1.0)] = 0.4,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="ACT (Yu et al. 2024): choose heads on validation examples, print the test metric before/after.")] = False,
    samples: Annotated[int, typer.Option(help="--calibrate: validation examples the heads are chosen on.", min=1)] = 256,
) -> None:
    """Softmax attention of a trained model: per-head attention sinks (share on the first token and
    on other sink tokens), a PNG grid of attention maps, and with --calibrate the attention
    calibration technique (ACT). `einsearch train` keeps no weights: inspect a run folder's
    candidate, or an architecture with the weights `einsearch export RUN --weights` wrote."""
    from pathlib import Path

    from einsearch import inspect as look
    from einsearch.messages import shown
    from einsearch.tasks import TaskError, get_task

    is_run = Path(arch_or_run).is_dir()
    if not is_run and weights is None:
        fail(f"{clip(arch_or_run, 40)} is not a run folder; an architecture needs --weights FILE (.safetensors): "
             "`einsearch train` keeps no weights, `einsearch export RUN --weights` writes them")  # fmt: skip
    folder = Path(out) if out is not None else Path(arch_or_run) if is_run else Path(".")
    if not folder.is_dir():
        fail(f"--out {shown(str(folder), 60)}: no such folder")
    try:
        the_task = get_task(task) if task is not None else None
        if is_run:
            loaded = look.load_trial(arch_or_run, rank, the_task)
        else:
            loaded = look.load_arch(_arch(arch_or_run), the_task or get_task("mqar"), weights, d_model, layers)
        batch = next(iter(loaded.task.data().test.batches(examples)))
        maps = look.capture(loaded.model, loaded.task, batch)
        config = look.ActConfig(alpha=alpha, beta=beta)
        result = look.calibrate(loaded.model, loaded.task, config, samples) if calibrate else None
    except (look.InspectError, TaskError, BuildError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    typer.echo(f"{loaded.note}: {to_text(loaded.arch)} on {loaded.task.spec}")
    table = Table(title=f"attention sinks, {len(batch[0])} test examples (a sink receives > {alpha:g}/T)")
    for column in ("attention", "head", "first token", "other sinks", "sinks/example"):
        table.add_column(column, justify="left" if column == "attention" else "right")
    for s in look.sink_scores(maps, alpha):
        table.add_row(s.site, str(s.head), f"{s.first:.3f}", f"{s.other:.3f}", f"{s.sinks:.2f}")
    console.print(table)
    typer.echo(f"wrote {look.plot_attention(maps, folder / 'attention.png', alpha=alpha)}")
    if result is not None:
        _print_calibration(result)


def _print_calibration(result) -> None:
    """ACT's head search (each head calibrated alone) and the test metric before and after."""
    metric = result.metric
    on = f"{result.samples} validation examples" if result.samples is not None else "the validation split"
    table = Table(title=f"ACT (beta={result.config.beta:g}), one head at a time: {metric} on {on}, {result.baseline:.4f} uncalibrated")
    for column in ("attention", "head", metric, "gain", "chosen"):
        table.add_column(column, justify="left" if column == "attention" else "right")
    chosen = set(result.heads)
    for t in result.trials:
        table.add_row(t.site, str(t.head), f"{t.metric:.4f}", f"{t.gain:+.4f}", "yes" if (t.site, t.head) in chosen else "")
    console.print(table)
    heads = ", ".join(f"{site} h{head}" for site, head in result.heads) or "none (no head improves alone)"
    typer.echo(f"calibrated heads: {heads}")
    typer.echo(f"test {metric}: {result.before[metric]:.4f} without, {result.after[metric]:.4f} with ACT")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
