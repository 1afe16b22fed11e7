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
    README says); the CLI joins with --address and that token, and is refused with another."""
    port = 6400 + os.getpid() % 500
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    temp = tempfile.mkdtemp(prefix="einsearch-test-")
    head = ["ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp}"]
    subprocess.run(head, check=True, env=env, capture_output=True)
    try:
        worker = ["ray", "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--resources={\"second_node\": 1}"]
        subprocess.run(worker, check=True, env=env, capture_output=True)
        run = [
            sys.executable, "-m", "einsearch.cli", "run", "--address", f"127.0.0.1:{port}", "--task", TINY_TASK,
            "--space", TINY_SPACE, "--strategy", "random", "--trials", "3", "--trial-budget", "3steps", "--scheduler", "fifo",
            "--workers", "2", "--d-model", "16", "--layers", "1", "--output",
        ]  # fmt: skip
        refused = subprocess.run([*run, str(tmp_path / "other")], env={**env, "RAY_AUTH_TOKEN": "0" * 32}, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "refused the Ray token" in refused.stderr, refused.stdout + refused.stderr
        assert not (tmp_path / "other").exists()
        done = subprocess.run([*run, str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(RunFolder(tmp_path / "run").trials()) == 3
        status = subprocess.run(["ray", "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True, text=True)
        assert "second_node" in status.stdout  # the second node really was part of the cluster
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)
