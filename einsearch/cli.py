"""The `einsearch` command line: argument handling only; the work lives in the package."""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from einsearch.arch import Arch, to_text
from einsearch.build import build
from einsearch.costs import costs
from einsearch.grammar import ArchSyntaxError
from einsearch.grammar.seeds import resolve, seeds
from einsearch.inspect import ActConfig
from einsearch.messages import clip
from einsearch.primitives.base import BuildError
from einsearch.report import cost_cells, cost_rows, lengths_table
from einsearch.search.config import RunConfig
from einsearch.settings import help_of
from einsearch.tasks import DEFAULT_TASK
from einsearch.train import TrainConfig

if TYPE_CHECKING:
    from einsearch.search.finalists import Summary
    from einsearch.tasks import Task

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


@app.command()
def show(
    arch: Annotated[str, typer.Argument(help="Architecture text, a seed name, or - to read one architecture per line from stdin.")],
    d_model: Annotated[int, typer.Option(help="Model width to build at.", min=1)] = TrainConfig.d_model,
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
    console.print(to_text(tree), markup=False, highlight=False, soft_wrap=True)
    console.print(f"id {tree.id}", markup=False, highlight=False)
    if tree.children:  # the tree, laid out by the canonical printer (it parses to the same tree)
        console.print(to_text(tree, indent=2), markup=False, highlight=False, soft_wrap=True)
    table = Table(show_header=False, box=None)
    for row in [("d_model", str(d_model)), *cost_rows(costs(module, seq_len).as_dict())]:
        table.add_row(*row)
    console.print(table)


@app.command("seeds")
def list_seeds(
    d_model: Annotated[int, typer.Option(help="Model width to build at.", min=1)] = TrainConfig.d_model,
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
        table.add_row(name, *cost_cells(c.as_dict()))
    console.print(table)


MaxMemoryOption = Annotated[str | None, typer.Option(help=help_of(TrainConfig, "max_memory"))]


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
    task: Annotated[str, typer.Option(help="Task with options, e.g. mqar:vocab=256,seq_len=64,pairs=8 (see `einsearch tasks`).")] = DEFAULT_TASK,
    budget: Annotated[str | None, typer.Option(help=help_of(TrainConfig, "budget"))] = None,
    d_model: Annotated[int, typer.Option(help=help_of(TrainConfig, "d_model"), min=1)] = TrainConfig.d_model,
    layers: Annotated[int, typer.Option(help=help_of(TrainConfig, "layers"), min=1)] = TrainConfig.layers,
    lr: Annotated[float | None, typer.Option(help=help_of(TrainConfig, "lr"), min=0.0)] = None,
    batch_size: Annotated[int | None, typer.Option(help=help_of(TrainConfig, "batch_size"), min=1)] = None,
    seed: Annotated[int, typer.Option(help=help_of(TrainConfig, "seed"))] = TrainConfig.seed,
    device: Annotated[str, typer.Option(help=help_of(TrainConfig, "device"))] = TrainConfig.device,
    precision: Annotated[str, typer.Option(help=help_of(TrainConfig, "precision"))] = TrainConfig.precision,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    max_memory: MaxMemoryOption = None,
    time_limit: Annotated[float | None, typer.Option(help=help_of(TrainConfig, "time_limit"), min=0)] = None,
    eval_lengths: Annotated[str | None, typer.Option(help=help_of(TrainConfig, "eval_lengths"))] = None,
    plot: Annotated[str | None, typer.Option(help="With --eval-lengths: write the test metric against length here (PNG).")] = None,
) -> None:
    """Train one architecture on one task within a budget; print its metrics and costs.
    Exit status 1 when the candidate fails (NaN, divergence, out of memory, time limit, build error)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from einsearch.limits import train_limited
    from einsearch.tasks import Budget, TaskError, get_task
    from einsearch.train import on_device

    tree = _arch(arch)
    try:
        limit = Budget.parse(budget) if budget else None
    except ValueError as e:
        fail(str(e))
    factors = _factors(eval_lengths) if eval_lengths is not None else ()
    if plot is not None:
        _check_plot(plot, factors)
    try:  # the device is this machine's: one line and status 2 before any work if it cannot give it
        config = on_device(TrainConfig(d_model=d_model, layers=layers, budget=limit, lr=lr, batch_size=batch_size, seed=seed,
                                       max_memory=_ceiling(max_memory), time_limit=time_limit, eval_lengths=factors,
                                       device=device, precision=precision))  # fmt: skip
    except ValueError as e:
        fail(str(e))
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
        for row in cost_rows(result.costs) if result.costs else ():
            table.add_row(*row)
        console.print(table)
        if result.lengths:
            console.print(lengths_table(result))
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
    from einsearch.train import LENGTH_TASKS, length_task

    for factor in factors:
        try:
            length_task(task, factor)
        except TaskError as e:
            if task.length_option is None:
                fail(f"--eval-lengths: {e} (tasks with a length option: {', '.join(LENGTH_TASKS)})")
            fail(f"--eval-lengths {factor}: {e}")


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
    space: Annotated[str, typer.Option(help=help_of(RunConfig, "space"))] = RunConfig.space,
    task: Annotated[str, typer.Option(help=help_of(RunConfig, "task"))] = RunConfig.task,
    strategy: Annotated[str, typer.Option(help=help_of(RunConfig, "strategy"))] = RunConfig.strategy,
    seed_arch: Annotated[list[str] | None, typer.Option("--seed-arch", help=help_of(RunConfig, "seed_archs"))] = None,
    trials: Annotated[int | None, typer.Option(help=help_of(RunConfig, "trials", "{}; with --resume: the new total"), min=1)] = None,
    time_budget: Annotated[str | None, typer.Option(help=help_of(RunConfig, "time_budget"))] = None,
    trial_budget: Annotated[str | None, typer.Option(help=help_of(RunConfig, "trial_budget", "the task's search budget, see `einsearch tasks`"))] = None,
    time_limit: Annotated[float | None, typer.Option(help=help_of(RunConfig, "time_limit"), min=0)] = None,
    workers: Annotated[int | None, typer.Option(help=help_of(RunConfig, "workers", "{}; with --resume: the run's"), min=1)] = None,
    executor: Annotated[str | None, typer.Option(help=help_of(RunConfig, "executor", "{}; with --resume: the run's"))] = None,
    address: Annotated[str | None, typer.Option(help=help_of(RunConfig, "address"))] = None,
    device: Annotated[str, typer.Option(help=help_of(RunConfig, "device"))] = RunConfig.device,
    precision: Annotated[str, typer.Option(help=help_of(RunConfig, "precision"))] = RunConfig.precision,
    cpus_per_trial: Annotated[float, typer.Option(help=help_of(RunConfig, "cpus_per_trial"))] = RunConfig.cpus_per_trial,
    gpus_per_trial: Annotated[float, typer.Option(help=help_of(RunConfig, "gpus_per_trial"))] = RunConfig.gpus_per_trial,
    resources_per_trial: Annotated[str | None, typer.Option(help=help_of(RunConfig, "resources_per_trial"))] = None,
    scheduler: Annotated[str, typer.Option(help=help_of(RunConfig, "scheduler"))] = RunConfig.scheduler,
    rungs: Annotated[int, typer.Option(help=help_of(RunConfig, "rungs"), min=1)] = RunConfig.rungs,
    eta: Annotated[int, typer.Option(help=help_of(RunConfig, "eta"), min=2)] = RunConfig.eta,
    objectives: Annotated[str, typer.Option(help=help_of(RunConfig, "objectives"))] = ",".join(RunConfig.objectives),
    max_params: Annotated[int | None, typer.Option(help=help_of(RunConfig, "max_params"), min=1)] = None,
    max_flops: Annotated[float | None, typer.Option(help=help_of(RunConfig, "max_flops"), min=0)] = None,
    max_state: Annotated[int | None, typer.Option(help=help_of(RunConfig, "max_state"), min=0)] = None,
    max_memory: MaxMemoryOption = None,
    finalists: Annotated[int, typer.Option(help=help_of(RunConfig, "finalists"), min=0)] = RunConfig.finalists,
    final_seeds: Annotated[int, typer.Option(help=help_of(RunConfig, "final_seeds"), min=2)] = RunConfig.final_seeds,
    eval_lengths: Annotated[str | None, typer.Option(help=help_of(RunConfig, "eval_lengths"))] = None,
    inherit: Annotated[bool, typer.Option("--inherit", help=help_of(RunConfig, "inherit"))] = RunConfig.inherit,
    d_model: Annotated[int, typer.Option(help=help_of(RunConfig, "d_model"), min=1)] = RunConfig.d_model,
    layers: Annotated[int, typer.Option(help=help_of(RunConfig, "layers"), min=1)] = RunConfig.layers,
    output: Annotated[str | None, typer.Option(help="Run folder (default: a new dated folder under runs/).")] = None,
    seed: Annotated[int, typer.Option(help=help_of(RunConfig, "seed"))] = RunConfig.seed,
    storage: Annotated[str | None, typer.Option(help=help_of(RunConfig, "storage"))] = None,
    resume: Annotated[str | None, typer.Option(help="Continue the run in this folder.")] = None,
) -> None:
    """Search the space for the best block on a task; Ctrl-C stops cleanly, --resume continues."""
    from einsearch.grammar import SpaceError
    from einsearch.search import (
        Execution,
        RunFolder,
        new_run_folder,
        parse_duration,
        start,
    )
    from einsearch.search import resume as resume_run
    from einsearch.search.cluster import check_devices, check_executor
    from einsearch.search.config import parse_resources
    from einsearch.tasks import TaskError, get_task

    try:
        if resume is not None:
            execution = Execution(executor=executor, workers=workers, address=address, storage=storage)
            outcome = resume_run(RunFolder(resume), trials=trials, execution=execution)
        else:
            factors = _factors(eval_lengths) if eval_lengths is not None else ()
            _check_lengths(get_task(task), factors)  # before the run folder exists, as `train` checks them
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
                device=device, precision=precision, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                resources_per_trial=parse_resources(resources_per_trial) if resources_per_trial else (), eval_lengths=factors,
            )  # fmt: skip
            check_executor(config.executor, config.address)  # a bad --address fails here, before the run folder exists
            check_devices(config)  # and so does a device or resource that no machine offers
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
    from einsearch.report import final_report

    _print(final_report(summary, run))


def _print(items: list[Table | str]) -> None:
    """Tables through rich, lines as they are."""
    for item in items:
        console.print(item) if isinstance(item, Table) else typer.echo(item)


@app.command("report")
def report_command(
    run: Annotated[str, typer.Argument(help="A run folder.")],
    top: Annotated[int, typer.Option(help="Rows of the leaderboard.", min=1)] = 10,
) -> None:
    """Print a run's leaderboard, its finalists and verdict, and write its plots (PNG) into the run
    folder; with --eval-lengths, also the test metric against length (lengths.png and a table)."""
    from einsearch.report import leaderboard, leaderboard_table, run_lines, write_length_report, write_plots
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
    title = f"{run}: {len(records)} trials, {len(board)} scored (val/{task.metric})"
    _print([leaderboard_table(title, board, f"val/{task.metric}", ladder, top), *run_lines(records, board, ladder, top)])
    _print_finalists(read_summary(folder), run)
    paths = write_plots(folder, records, f"val/{task.metric}", maximize=task.mode == "max")
    lengths = write_length_report(folder, records, task.metric, maximize=task.mode == "max")  # a run with --eval-lengths
    if lengths is not None:
        console.print(lengths[0])
        paths.append(lengths[1])
    for path in paths:
        typer.echo(f"wrote {path}")


def _ladder(config: dict) -> tuple[int, ...]:
    """A run's rung ladder in steps from its config.json (one rung: no successive halving; a run
    from before budgets in steps has none)."""
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
    d_model: Annotated[int, typer.Option(help="Architecture: the model width the weights were trained at.", min=1)] = TrainConfig.d_model,
    layers: Annotated[int, typer.Option(help="Architecture: the copies of the block the weights were trained with.", min=1)] = TrainConfig.layers,
    out: Annotated[str | None, typer.Option(help="Folder for attention.png (default: the run folder, else the current folder).")] = None,
    examples: Annotated[int, typer.Option(help="Test examples whose attention is captured and averaged.", min=1)] = 64,
    alpha: Annotated[float, typer.Option(help="A key is a sink when its mean received attention exceeds alpha/T (alpha > 0).")] = ActConfig.alpha,
    beta: Annotated[float, typer.Option(help="--calibrate: the share of a sink's attention a calibrated head keeps.", min=0.0, max=1.0)] = ActConfig.beta,
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
            loaded = look.load_arch(_arch(arch_or_run), the_task or get_task(DEFAULT_TASK), weights, d_model, layers)
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
