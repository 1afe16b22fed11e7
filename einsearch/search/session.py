"""Start, resume and watch a search: the glue between the CLI and the driver.

A search that completes (not one stopped by Ctrl-C) ends with its finalists stage
(`einsearch.search.finalists`); `final` (re)runs that stage alone on a run folder."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from einsearch.search.cluster import check_devices
from einsearch.search.config import Execution, RunConfig
from einsearch.search.execute import run_inline, run_ray
from einsearch.search.finalists import FinalRecord, Summary, run_finalists
from einsearch.search.record import RunFolder, RunFolderError, shorten
from einsearch.search.run import Search
from einsearch.tasks import get_task


@dataclass
class Outcome:
    search: Search
    completed: bool  # False: interrupted; `einsearch run --resume` continues it
    final: Summary | None = None  # the finalists stage's summary, when it ran


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
                f"trials {s.counted}/{c.trials} done: {counts['ok']} ok, {counts['failed']} failed, {counts['stopped']} stopped"
                f"  ·  not counted: {counts['rejected']} rejected, {reused} reused  ·  {len(s.running)} running"
            ),
            *([Text(rung_line(s))] if len(s.ladder) > 1 else []),
            Text(
                "best: none yet"
                if best is None
                else f"best val/{s.task.metric} {best.objectives[0]:.4g}{at_rung(best.rung, s.ladder)}  (trial {best.number}: {best.arch})",
                overflow="ellipsis",
                no_wrap=True,
            ),
            Text(
                f"elapsed {_duration(s.elapsed)}"
                + ("" if s.remaining_time is None else f"  ·  time budget left {_duration(s.remaining_time)}")
            ),
        ]
        return Group(*lines)


def rung_line(search: Search) -> str:
    """How many trials reached each rung of the ladder (trained ones; running ones in brackets)."""
    parts = []
    for k, steps in enumerate(search.ladder, start=1):
        done = sum((r.rung or 0) >= k for r in search.records if r.reused_from is None)
        running = sum(reached >= k for reached in search.reached.values())
        parts.append(f"{steps} steps: {done}" + (f" (+{running} running)" if running else ""))
    return "rungs reached  ·  " + "  ·  ".join(parts)


def at_rung(rung: int | None, ladder: tuple[int, ...]) -> str:
    """' at rung k/n (steps)', or nothing without rungs."""
    if rung is None or len(ladder) == 1 or not 1 <= rung <= len(ladder):
        return ""
    return f" at rung {rung}/{len(ladder)} ({ladder[rung - 1]} steps)"


def execute(search: Search, console: Console | None = None, live: bool = True) -> Outcome:
    """Run `search` with its configured executor, showing progress unless `live` is False; a
    completed search goes on to its finalists."""
    executor = run_inline if search.config.executor == "inline" else run_ray
    if not live:
        completed = executor(search)
    else:
        view = ProgressView(search)
        with Live(view, console=console or Console(stderr=True), refresh_per_second=2, transient=False) as display:
            completed = executor(search, lambda: display.refresh())
    if not completed:
        return Outcome(search, False)
    try:
        summary = final_stage(search.config, search.folder, live=live)
    except KeyboardInterrupt:
        return Outcome(search, False)  # finished trainings are recorded; a resume continues them
    return Outcome(search, True, summary)


def final_stage(config: RunConfig, folder: RunFolder, live: bool = True) -> Summary | None:
    """The finalists stage of a run, printing a line per finished training when `live`."""
    console, metric = Console(stderr=True), f"test/{get_task(config.task).metric}"

    def show(r: FinalRecord) -> None:
        result = f"{r.metrics.get(metric, float('nan')):.4g}" if r.status == "ok" else f"failed ({r.reason})"
        console.print(f"final: {r.role} {r.entrant.label}, training seed {r.seed}: {metric} {result}", markup=False, highlight=False)

    if live and config.finalists:
        console.print(f"final: the top {config.finalists} and the comparison seeds, {config.final_seeds} training seeds each", markup=False)
    return run_finalists(config, folder, on_record=show if live else lambda r: None)


def final(folder: RunFolder, k: int | None = None, n: int | None = None, live: bool = True) -> Summary | None:
    """(Re)run the finalists stage of an existing run, optionally with another number of
    finalists `k` or of training seeds `n` (kept in its config); trainings already recorded are
    not repeated.  A Ray cluster is joined only through RAY_ADDRESS, never an address in config.json."""
    config = RunConfig.from_dict(folder.read_config()).replace(address=None)
    folder.check_writable(journal=False)
    check_devices(config, probe=False)
    changes = {key: v for key, v in (("finalists", k), ("final_seeds", n)) if v is not None}
    if changes:
        config = config.replace(**changes)
        folder.write_config(config.to_dict())
    return final_stage(config, folder, live=live)


def start(config: RunConfig, folder: RunFolder, live: bool = True) -> Outcome:
    """A new search in a new run folder; its study is named after the folder, once and for all."""
    if folder.exists():
        raise FileExistsError(f"{folder.path} already holds a run; use --resume {folder.path} to continue it")
    config = config.replace(study=config.study or folder.path.name)
    search = Search(config, folder)  # validates the task and space before anything is written
    folder.check_writable()
    folder.create(config.to_dict())
    search.attach()
    return execute(search, live=live)


def resume(
    folder: RunFolder, trials: int | None = None, live: bool = True, execution: Execution = Execution(),
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> Outcome:
    """Continue a run where it stopped, optionally to a larger trial count, wherever its folder
    is now.  Where it executes comes from `execution` (the command line), never from the folder
    (see `Execution`); `say` gets one line saying what it will use.  The device, precision and
    per-trial resources are the run's own, from its config.json, checked here before anything is
    written (`check_devices`)."""
    config = resumed_config(folder, trials, execution)
    check_devices(config, probe=False)  # a cluster's nodes are checked when the run joins it
    search = Search(config, folder)
    folder.write_config(config.to_dict())
    say(execution_line(config, folder))
    search.attach()
    return execute(search, live=live)


def resumed_config(folder: RunFolder, trials: int | None, execution: Execution) -> RunConfig:
    """The run's config with `trials`, the command line's execution settings and the name of
    its study (named by the study itself in a folder from before names were kept), after checking
    that the folder can be written."""
    config = RunConfig.from_dict(folder.read_config())
    if config.storage is not None and execution.storage is None:
        raise RunFolderError(
            f"this run keeps its study in storage {shorten(config.storage, 60)!r}, and resume takes storage only from "
            "the command line: pass --storage with that URL if you trust it"
        )
    if config.storage is None and execution.storage is not None:
        raise RunFolderError(f"run folder {shorten(str(folder.path))} keeps its study in its journal file; --storage would start another study elsewhere")
    config = config.replace(
        trials=trials or config.trials,
        executor=execution.executor or config.executor,
        workers=execution.workers or config.workers,
        address=execution.address,
        storage=execution.storage,
    )
    folder.check_writable(journal=config.storage is None)
    return config.replace(study=config.study or folder.study_name(config.storage))


def execution_line(config: RunConfig, folder: RunFolder) -> str:
    """One line: what a resumed run will use (study, storage, executor, workers, cluster)."""
    where = shorten(config.storage, 120) if config.storage else str(folder.journal_path)
    line = f"resuming {folder.path}: study {config.study!r} in {where}; {config.executor} executor, {config.workers} workers"
    if config.executor == "ray":
        address = config.address or os.environ.get("RAY_ADDRESS")
        line += f", Ray cluster at {shorten(address, 60)}" if address else ", a local Ray"
    return line
