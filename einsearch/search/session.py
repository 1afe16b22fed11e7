"""Start, resume and watch a search: the glue between the CLI and the driver."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from einsearch.search.config import RunConfig
from einsearch.search.execute import run_inline, run_ray
from einsearch.search.record import RunFolder
from einsearch.search.run import Search


@dataclass
class Outcome:
    search: Search
    completed: bool  # False: interrupted; `einsearch run --resume` continues it


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressView:
    """A live summary of the search, rebuilt from the driver's state at every refresh."""

    def __init__(self, search: Search):
        self.search = search

    def __rich__(self) -> Group:
        s, c = self.search, self.search.config
        counts = {status: sum(r.status == status for r in s.records) for status in ("ok", "failed", "rejected", "stopped")}
        reused = sum(r.reused_from is not None for r in s.records)
        best = s.best()
        lines = [
            Text(f"{s.folder.path}  ·  {c.strategy} on {c.space}  ·  task {s.task.spec}", style="bold"),
            Text(
                f"trials {len(s.records)}/{c.trials} done: {counts['ok']} ok, {counts['failed']} failed, "
                f"{counts['rejected']} rejected, {counts['stopped']} stopped, {reused} reused  ·  {len(s.running)} running"
            ),
            Text(
                "best: none yet"
                if best is None
                else f"best val/{s.task.metric} {best.objectives[0]:.4g}  (trial {best.number}: {best.arch})",
                overflow="ellipsis",
                no_wrap=True,
            ),
            Text(
                f"elapsed {_duration(s.elapsed)}"
                + ("" if s.remaining_time is None else f"  ·  time budget left {_duration(s.remaining_time)}")
            ),
        ]
        return Group(*lines)


def execute(search: Search, console: Console | None = None, live: bool = True) -> Outcome:
    """Run `search` with its configured executor, showing progress unless `live` is False."""
    executor = run_inline if search.config.executor == "inline" else run_ray
    if not live:
        return Outcome(search, executor(search))
    view = ProgressView(search)
    with Live(view, console=console or Console(stderr=True), refresh_per_second=2, transient=False) as display:
        completed = executor(search, lambda: display.refresh())
    return Outcome(search, completed)


def start(config: RunConfig, folder: RunFolder, live: bool = True) -> Outcome:
    """A new search in a new run folder."""
    if folder.exists():
        raise FileExistsError(f"{folder.path} already holds a run; use --resume {folder.path} to continue it")
    search = Search(config, folder)  # validates the task and space before anything is written
    folder.create(config.to_dict())
    search.attach()
    return execute(search, live=live)


def resume(folder: RunFolder, trials: int | None = None, live: bool = True) -> Outcome:
    """Continue a run where it stopped, optionally to a larger trial count."""
    config = RunConfig.from_dict(folder.read_config())
    if trials is not None:
        config = config.replace(trials=trials)
        folder.create(config.to_dict())
    search = Search(config, folder)
    search.attach()
    return execute(search, live=live)
