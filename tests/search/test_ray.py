"""The search on Ray Tune: strategies, a killed worker, and a two-node cluster on loopback."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from einsearch.search import RunFolder, start
from tests.search.conftest import TINY_SPACE, TINY_TASK, tiny_config


# Two strategies stand for all four on Ray (each also runs inline, test_search.py): evolution
# (a population and parents' weights) and tpe (an Optuna sampler); random and nsga2 take the
# same paths, and every Ray search costs ~25 s of the suite's 10 minutes.
@pytest.mark.parametrize("strategy", ["evolution", "tpe"])
def test_strategies_run_on_ray(ray_local, tmp_path, strategy, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative run folder, as `einsearch run` makes: Tune runs trials elsewhere
    config = tiny_config(strategy=strategy, executor="ray", trials=4, seed_archs=("res(conv(k=2))",))
    outcome = start(config, RunFolder("run"), live=False)
    assert outcome.completed
    records = outcome.search.folder.trials()
    assert len(records) == 4 and len({r.number for r in records}) == 4
    assert any(r.status == "ok" for r in records)
    assert all(r.status in ("ok", "failed") and r.reason != "worker_crash" for r in records)
    assert (tmp_path / "run" / "best" / "weights.safetensors").exists()  # the workers' weights came back


def test_trials_and_final_trainings_ask_ray_for_the_runs_resources(tmp_path, monkeypatch):
    """What `tune.with_resources` and the finalists' `ray.remote` are given, without running Ray."""
    from ray import tune

    from einsearch.search import execute
    from einsearch.search.finalists import task_options
    from einsearch.search.run import Search

    passed = {}

    def with_resources(trainable, resources):
        passed["resources"] = resources
        return trainable

    class Tuner:  # records what it is given and trains nothing
        def __init__(self, trainable, **kwargs):
            passed["trainable"] = trainable

        def fit(self):
            return None

    monkeypatch.setattr(tune, "with_resources", with_resources)
    monkeypatch.setattr(tune, "Tuner", Tuner)
    config = tiny_config(executor="ray", device="cuda", cpus_per_trial=2.0, gpus_per_trial=0.5, resources_per_trial=(("gpu_stand_in", 1.0),))
    search = Search(config, RunFolder(tmp_path / "run"))
    search.folder.create(config.to_dict())
    search.attach()
    execute._tune(search, lambda: None)
    assert passed["trainable"] is execute._trainable
    assert passed["resources"].bundles == [{"CPU": 2.0, "GPU": 0.5, "gpu_stand_in": 1.0}]
    assert task_options(config) == {"num_cpus": 2.0, "num_gpus": 0.5, "resources": {"gpu_stand_in": 1.0}}
    assert task_options(tiny_config()) == {"num_cpus": 1.0, "num_gpus": 0, "resources": {}}  # as before these options


def test_a_run_asking_for_what_no_node_offers_is_one_line_and_creates_nothing(tmp_path, monkeypatch):
    """The nodes as `check_address`'s probe reports them (the loopback test checks the probe)."""
    from typer.testing import CliRunner

    from einsearch.cli import app
    from einsearch.search import cluster

    nodes = ({"id": "a", "resources": {"CPU": 1.0, "node:127.0.0.1": 1.0}}, {"id": "b", "resources": {"CPU": 2.0, "gpu_stand_in": 1.0}})
    monkeypatch.setattr(cluster, "check_address", lambda address: nodes)
    args = ["run", "--address", "127.0.0.1:1", "--output", str(tmp_path / "run"), "--task", TINY_TASK, "--space", TINY_SPACE]
    for extra, refused in [(["--resources-per-trial", '{"gpu_stand_in": 2}'], True), (["--cpus-per-trial", "3"], True),
                           (["--device", "cuda", "--gpus-per-trial", "1"], True), (["--resources-per-trial", '{"gpu_stand_in": 1}'], False)]:  # fmt: skip
        if not refused:  # offered: the run would start; stop it there
            monkeypatch.setattr("einsearch.search.start", lambda *a, **k: (_ for _ in ()).throw(FileExistsError("stop here")))
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        if refused:
            assert "no node of the Ray cluster at 127.0.0.1:1 offers what a trial asks for" in result.stderr, result.stderr
            assert "its nodes offer: CPU 1; CPU 2, gpu_stand_in 1" in result.stderr  # Ray's bookkeeping (node:<ip>) left out
        else:
            assert "stop here" in result.stderr
        assert not (tmp_path / "run").exists()


def test_asha_stops_or_finishes_every_trial(ray_local, tmp_path):
    config = tiny_config(strategy="random", executor="ray", trials=4, scheduler="asha", rungs=2, eta=2, trial_budget="8steps")
    outcome = start(config, RunFolder(tmp_path / "run"), live=False)
    assert outcome.completed
    records = outcome.search.folder.trials()
    assert len(records) == 4 and all(r.status in ("ok", "stopped", "failed") for r in records)


def _pids_whose_command_has(*needles: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(needle in command for needle in needles):
                pids.append(int(entry.name))
    return pids


def _trial_worker_pids() -> list[int]:
    """Ray worker processes currently running a trial (their process title names the trainable)."""
    return _pids_whose_command_has("ray::ImplicitFunc", "ray::_trainable")


def _stop_cluster(temp_dir: str) -> None:
    """Stop only this test's cluster (`ray stop` would also stop the session's local Ray)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _pids_whose_command_has(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1.0)


def test_a_killed_worker_is_retried_and_the_search_finishes(ray_local, tmp_path):
    config = tiny_config(strategy="random", executor="ray", trials=3, workers=1, trial_budget="1000steps")  # seconds of work each
    earlier = set(_trial_worker_pids())  # workers of earlier tests, possibly still exiting
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("outcome", start(config, RunFolder(tmp_path / "run"), live=False)))
    thread.start()
    killed, deadline = None, time.monotonic() + 180  # generous: a loaded machine starts workers slowly
    while killed is None and time.monotonic() < deadline:
        pids = [pid for pid in _trial_worker_pids() if pid not in earlier]
        if pids:
            time.sleep(1.0)  # mid-trial
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.2)
    thread.join(timeout=120)
    assert killed is not None, "no trial worker appeared"
    outcome = result["outcome"]
    assert outcome.completed
    records = outcome.search.folder.trials()
    assert len(records) == 3 and len({r.number for r in records}) == 3
    assert all(r.status == "ok" for r in records), [(r.status, r.reason) for r in records]


@pytest.mark.skipif(shutil.which("ray") is None, reason="the ray command line is not installed")
def test_two_node_cluster_on_loopback(tmp_path):
    """`ray start --head` plus a second node with its own resources, all with one token (as the
    README says); the CLI joins with --address and that token, and is refused with another.
    Only the second node offers the custom resource ``gpu_stand_in`` (standing in for a GPU, so
    scheduling by resources is tested without one); the run's trials ask for half of it each
    (as --gpus-per-trial 0.5 asks for half a GPU), and every trial ran on that node."""
    from einsearch.search.cluster import _probe

    port = 6400 + os.getpid() % 500
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    temp = tempfile.mkdtemp(prefix="einsearch-test-")
    head = ["ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp}"]
    subprocess.run(head, check=True, env=env, capture_output=True)
    try:
        worker = ["ray", "start", f"--address={address}", "--num-cpus=2", '--resources={"gpu_stand_in": 1}']
        subprocess.run(worker, check=True, env=env, capture_output=True)
        run = [
            sys.executable, "-m", "einsearch.cli", "run", "--address", address, "--task", TINY_TASK,
            "--space", TINY_SPACE, "--strategy", "random", "--trials", "3", "--trial-budget", "3steps", "--scheduler", "fifo",
            "--workers", "2", "--d-model", "16", "--layers", "1", "--output",
        ]  # fmt: skip
        refused = subprocess.run([*run, str(tmp_path / "other")], env={**env, "RAY_AUTH_TOKEN": "0" * 32}, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "refused the Ray token" in refused.stderr, refused.stdout + refused.stderr
        assert not (tmp_path / "other").exists()
        done = subprocess.run([*run, str(tmp_path / "run"), "--resources-per-trial", '{"gpu_stand_in": 0.5}'], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        records = RunFolder(tmp_path / "run").trials()
        assert len(records) == 3

        failure, nodes = _probe(address, 60.0, env=env)  # the probe `einsearch run` joins with: live nodes, their resources
        assert failure is None and len(nodes) == 2
        (stand_in,) = [node["id"] for node in nodes if "gpu_stand_in" in node["resources"]]
        trained = [r for r in records if r.reused_from is None]
        assert trained and all(r.node == stand_in for r in trained), [(r.number, r.node) for r in records]
        assert all(r.device == "cpu" for r in trained if r.status == "ok")  # auto: Ray gave these trials no GPU
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)
