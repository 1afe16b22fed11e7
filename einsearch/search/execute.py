"""Executors: how jobs run. Both drive the same `Search`; neither knows what a job means.

* `run_inline`: one job at a time in this process (debugging, tests, tiny runs); with rungs,
  Optuna's successive-halving pruner stops weak candidates at a rung (`Search.pruning_callback`).
* `run_ray`: Ray Tune runs `workers` jobs at once, on a local Ray it starts or on a cluster
  (`address`, or the RAY_ADDRESS variable); a worker that dies is retried (`FailureConfig`) and
  continues from the Tune checkpoint of its last rung.  With rungs, Ray Tune's `ASHAScheduler`
  (time attribute: steps) stops weak candidates at a rung; the others keep training.  A Tune
  `Searcher` adapts the driver: `suggest` asks it for a job, `on_trial_result` passes on rung
  scores, `on_trial_complete` hands back the outcome (a stopped trial's: its last rung report).
  Each trial asks Ray for `RunConfig.trial_resources` (``--cpus-per-trial``, ``--gpus-per-trial``,
  ``--resources-per-trial``) and reports the node it ran on, which its record keeps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from einsearch.search.cluster import ray_session
from einsearch.search.run import Job, Search, evaluate, model_costs

Update = Callable[[], None]  # called after every recorded trial (progress display)


def run_inline(search: Search, update: Update = lambda: None) -> bool:
    """Run jobs one by one until the search is done; returns False if interrupted (Ctrl-C)."""
    try:
        while (job := search.next_job()) is not None:
            update()
            outcome = evaluate(job, callback=_updating(search.pruning_callback(job), update))
            search.finish(job, outcome)
            update()
    except KeyboardInterrupt:
        search.interrupt()
        return False
    return True


def _updating(callback, update: Update):
    """`callback`, followed by a refresh of the progress view; None stays None."""
    if callback is None:
        return None

    def wrapped(step: int, val: dict[str, float]) -> bool:
        stop = callback(step, val)
        update()
        return stop

    return wrapped


# ---------------------------------------------------------------------------------------------- Ray


def _trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: train one job; at each rung report its score (`step` is
    Tune's time attribute) with a checkpoint of the training state, then the final result.

    ASHA stops a weak trial after a rung report, so each rung report also carries the trial's
    record so far (``partial``); a promoted trial just goes on training.  A retried trial (its
    worker died) continues from the checkpoint of its last rung."""
    from ray import tune

    import ray

    job, metric = Job.from_dict(config["job"]), config["job"]["metric"]  # the job crossed as text: read it once
    node = ray.get_runtime_context().get_node_id()
    rungs = set(job.train.rungs)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="einsearch-trial-") as work:
        state_path = os.path.join(work, "state.pt")
        scores: list[dict[str, float]] = []
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as saved:
                shutil.copy(os.path.join(saved, "state.pt"), state_path)
                scores = json.loads(Path(saved, "rungs.json").read_text())
        costs = _costs(job) if rungs else None

        def report(step: int, val: dict[str, float]) -> bool:
            if step not in rungs:
                return False
            scores.append({"step": step, **val})
            partial = dict(
                status="ok", reason="stopped", metrics={f"val/{k}": v for k, v in val.items()}, costs=costs,
                steps=step, seconds=time.perf_counter() - started, task=job.task, arch=job.arch.text, rungs=scores,
            )  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="einsearch-rung-") as folder:
                shutil.copy(state_path, os.path.join(folder, "state.pt"))
                Path(folder, "rungs.json").write_text(json.dumps(scores))
                metrics = {"objective": val.get(metric, math.nan), "step": step, "partial": json.dumps(partial), "node": node}
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            return False

        outcome = evaluate(job, callback=report if rungs else None, state_path=state_path if rungs else None, ray_worker=True)
    value = outcome.get("metrics", {}).get(f"val/{metric}")
    tune.report({"objective": math.nan if value is None else value, "outcome": json.dumps(outcome), "node": node})


def _costs(job: Job) -> dict[str, Any] | None:
    """The candidate's costs, for the record of a trial stopped at a rung (None if it does not
    build: the trainer reports that)."""
    from einsearch.tasks import get_task

    try:
        return model_costs(get_task(job.task), job.arch, job.train.d_model, job.train.layers)
    except Exception:  # noqa: BLE001
        return None


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

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            job = self.jobs.get(trial_id)
            if job is not None and "partial" in result:
                self.search.rung_reached(job, result["step"], result["objective"])
                self.update()

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            job = self.jobs.pop(trial_id)
            node = (result or {}).get("node", "")
            if error:
                self.search.finish(job, None, error="worker_crash", node=node)
            elif result is not None and "outcome" in result:
                self.search.finish(job, json.loads(result["outcome"]), node=node)
            elif result is not None and "partial" in result:  # stopped by the scheduler after this rung
                self.search.finish(job, json.loads(result["partial"]), node=node)
            else:
                self.search.finish(job, None, error="stopped", node=node)
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
    config = search.config
    with ray_session(config.workers, config.address, config.cpus_per_trial, config.trial_resources):
        return _tune(search, update)


def _tune(search: Search, update: Update) -> bool:
    """The search as one `Tuner.fit` on the Ray of this process."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    logging.getLogger("ray.tune").setLevel(logging.ERROR)  # einsearch shows its own progress
    config = search.config
    mode = "max" if search.maximize else "min"
    ladder = search.ladder
    if len(ladder) > 1:
        scheduler = ASHAScheduler(
            metric="objective", mode=mode, time_attr="step", grace_period=ladder[0], reduction_factor=config.eta, max_t=ladder[-1]
        )
        _remember_earlier_rungs(scheduler, search)
    else:
        scheduler = FIFOScheduler()
    session = sum(1 for _ in (search.folder.path / "tune").glob("session-*")) if (search.folder.path / "tune").exists() else 0
    tuner = tune.Tuner(
        tune.with_resources(_trainable, tune.PlacementGroupFactory([config.trial_resources])),
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
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # a trial's last rung is all a retry needs
        ),
    )
    try:
        tuner.fit()
    except KeyboardInterrupt:
        search.interrupt()
        return False
    if search.running:  # Tune stopped early (Ctrl-C is handled by Tune itself)
        search.interrupt()
        return False
    return True


def _remember_earlier_rungs(scheduler: Any, search: Search) -> None:
    """Give ASHA the rung scores of a resumed run's earlier sessions, so that new trials compete
    with them too (Tune keeps a scheduler's state only within one `Tuner.fit`).  Uses ASHA's
    bracket bookkeeping (`_brackets`, `_rungs`: milestone and {trial: score × mode sign})."""
    sign = 1.0 if search.maximize else -1.0
    rungs = search.ladder[:-1]
    for bracket in getattr(scheduler, "_brackets", ()):
        for milestone, recorded in getattr(bracket, "_rungs", ()):
            if int(milestone) not in rungs:
                continue
            k = rungs.index(int(milestone))
            for r in search.records:
                if r.reused_from is None and k < len(r.rung_scores) and math.isfinite(r.rung_scores[k]):
                    recorded[f"earlier-{r.number}"] = sign * r.rung_scores[k]

