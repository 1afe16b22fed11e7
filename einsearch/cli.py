"""The `einsearch` command line: argument handling only; the work lives in the package."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from einsearch.arch import Arch
from einsearch.build import build
from einsearch.costs import costs
from einsearch.grammar import ArchSyntaxError, to_text
from einsearch.grammar.seeds import resolve, seeds
from einsearch.primitives.base import BuildError

app = typer.Typer(
    help="Search for sequence-mixer architectures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()



@app.callback()
def _commands() -> None:
    """Search for sequence-mixer architectures."""


def fail(message: str) -> NoReturn:
    """One clear line on stderr and exit status 2: the CLI's answer to bad input."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _arch(text: str) -> Arch:
    try:
        return resolve(text)
    except ArchSyntaxError as e:
        fail(str(e))


def _tree(arch: Arch, depth: int = 0) -> list[str]:
    head = arch.op + (f"({arch.variant})" if arch.variant else "")
    params = " ".join(f"{k}={v}" for k, v in arch.params)
    lines = ["  " * depth + head + (f"  {params}" if params else "")]
    for child in arch.children:
        lines += _tree(child, depth + 1)
    return lines


@app.command()
def show(
    arch: Annotated[str, typer.Argument(help="Architecture text or a seed name.")],
    d_model: Annotated[int, typer.Option(help="Model width to build at.", min=1)] = 64,
    seq_len: Annotated[int, typer.Option(help="Sequence length for FLOPs and state size.", min=1)] = 1024,
) -> None:
    """Print an architecture's canonical text, its tree and its costs."""
    tree = _arch(arch)
    try:
        module = build(tree, d_model)
    except BuildError as e:
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
    """Print architectures drawn from a space, one per line (pipe one into `einsearch show`)."""
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


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
