"""Executors: how jobs run. Both drive the same `Search`; neither knows what a job means.

* `run_inline`: one job at a time in this process (debugging, tests, tiny runs).
* `run_ray`: Ray Tune runs `workers` jobs at once, on a local Ray it starts or on a cluster
  (`address`, or the RAY_ADDRESS variable); a worker that dies is retried (`FailureConfig`), and
  with `scheduler="asha"` weak candidates are stopped early from their intermediate validation
  metric.  A Tune `Searcher` adapts the driver: `suggest` asks it for a job, `on_trial_complete`
  hands back the outcome.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from einsearch.search.run import Job, Search, evaluate

Update = Callable[[], None]  # called after every recorded trial (progress display)


def run_inline(search: Search, update: Update = lambda: None) -> bool:
    """Run jobs one by one until the search is done; returns False if interrupted (Ctrl-C)."""
    try:
        while (job := search.next_job()) is not None:
            update()
            outcome = evaluate(job.to_dict(), callback=None)
            search.finish(job, outcome)
            update()
    except KeyboardInterrupt:
        search.interrupt()
        return False
    return True


# ---------------------------------------------------------------------------------------------- Ray


def _trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: train one job, report intermediate and final results."""
    from ray import tune

    job = config["job"]

    def report(step: int, val: dict[str, float]) -> bool:
        tune.report({"objective": val.get(job["metric"], math.nan), "step": step})
        return False

    outcome = evaluate(job, callback=report if job["eval_every"] else None)
    value = outcome.get("metrics", {}).get(f"val/{job['metric']}")
    tune.report({"objective": math.nan if value is None else value, "outcome": json.dumps(outcome)})


def _driver_searcher_class():
    from ray.tune.search import Searcher

    class DriverSearcher(Searcher):
        """Tune's view of the driver: `suggest` asks it for a job, `on_trial_complete` records one."""

        def __init__(self, search: Search, update: Update):
            super().__init__(metric="objective", mode="max" if search.maximize else "min")
            self.search, self.update = search, update
            self.jobs: dict[str, Job] = {}

        def suggest(self, trial_id: str) -> dict | None:
            job = self.search.next_job()
            self.update()
            if job is None:
                return Searcher.FINISHED
            self.jobs[trial_id] = job
            return {"job": {**job.to_dict(), "metric": self.search.task.metric}}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            job = self.jobs.pop(trial_id)
            if error:
                self.search.finish(job, None, error="worker_crash")
            elif result is None or "outcome" not in result:
                self.search.finish(job, None, error="stopped")
            else:
                self.search.finish(job, json.loads(result["outcome"]))
            self.update()

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: a run resumes from its own folder (trials.jsonl and the study)."""

        def restore(self, checkpoint_path: str) -> None:
            """See `save`."""

        def __getstate__(self) -> dict:
            # Tune pickles its searcher with the experiment, for Tuner.restore; einsearch resumes
            # from its own run folder instead, so the live driver (locks, files) stays out.
            return {k: v for k, v in self.__dict__.items() if k not in ("search", "update", "jobs")}

    return DriverSearcher


def run_ray(search: Search, update: Update = lambda: None) -> bool:
    """Run the search on Ray Tune; returns False if it was interrupted before finishing."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    logging.getLogger("ray.tune").setLevel(logging.ERROR)  # einsearch shows its own progress
    config = search.config
    mode = "max" if search.maximize else "min"

    started_here = not ray.is_initialized()
    if started_here:
        address = config.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=config.workers, _temp_dir=_ray_temp_dir(), **kwargs)
    scheduler = (
        ASHAScheduler(
            metric="objective", mode=mode, time_attr="step", grace_period=config.eval_interval or 1, reduction_factor=3, max_t=10**9
        )
        if config.scheduler == "asha"
        else FIFOScheduler()
    )
    session = sum(1 for _ in (search.folder.path / "tune").glob("session-*")) if (search.folder.path / "tune").exists() else 0
    tuner = tune.Tuner(
        tune.with_resources(_trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            search_alg=_driver_searcher_class()(search, update),
            scheduler=scheduler,
            num_samples=-1,
            max_concurrent_trials=config.workers,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            storage_path=str((search.folder.path / "tune").resolve()),
            name=f"session-{session}",
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )
    try:
        tuner.fit()
    except KeyboardInterrupt:
        search.interrupt()
        return False
    finally:
        if started_here:
            ray.shutdown()
    if search.running:  # Tune stopped early (Ctrl-C is handled by Tune itself)
        search.interrupt()
        return False
    return True


def _ray_temp_dir() -> str:
    """Ray's session files; a short path, since Ray's socket paths must fit in 107 characters."""
    path = Path(tempfile.gettempdir()) / f"einsearch-ray-{os.getuid()}"
    path.mkdir(exist_ok=True)
    return str(path)
