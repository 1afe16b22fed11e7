"""The loop the benchmark scripts share: run the jobs not yet recorded in a JSON-lines file, in
worker processes (spawned, so each sets its own torch threads), and append each result as soon
as it arrives — an interrupted benchmark continues where it stopped."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path


def run_pending(
    jobs: list[dict], key: Callable[[dict], Hashable], run_one: Callable[[dict], dict], results: str | Path,
    workers: int, describe: Callable[[dict], str],
) -> dict[Hashable, dict]:  # fmt: skip
    """Every recorded row by `key` (a result row carries its job's fields), after running the
    `jobs` whose key is not in `results` yet with `run_one` (a module-level function)."""
    path = Path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {key(row): row for row in map(json.loads, path.read_text().splitlines())} if path.exists() else {}
    todo = [job for job in jobs if key(job) not in done]
    if todo:
        print(f"{len(todo)} runs to do ({len(jobs) - len(todo)} already in {path}), {workers} at a time", flush=True)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(run_one, job) for job in todo]):
                row = future.result()
                done[key(row)] = row
                with open(path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print("  " + describe(row), flush=True)
    return done
