"""Ray as einsearch starts it: token authentication on, a private temp folder that goes away,
Ray's messages off stdout, and a bad cluster address refused in one line before anything exists."""

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from einsearch.cli import app
from einsearch.search import cluster
from tests.search.conftest import TINY_SPACE, TINY_TASK
from tests.search.test_ray import _stop_cluster

CLIENT = textwrap.dedent("""
    import sys, ray
    ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False)
    print("RAN", ray.get(ray.remote(lambda: 6 * 7).remote()))
""")


def _network_address() -> str | None:
    """This machine's own non-loopback IPv4 address, or None."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    candidates = [a for a in out if "." in a and not a.startswith("127.")]
    if not candidates:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
                candidates = [a for a in [s.getsockname()[0]] if not a.startswith("127.")]
        except OSError:
            pass
    return candidates[0] if candidates else None


def _token() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").read_text().strip()


def _client(address: str, home: Path, token: str | None) -> subprocess.CompletedProcess:
    """A Ray driver in a fresh process with no Ray settings and a HOME of its own (so no
    ~/.ray/auth_token), given `token` or none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)
    if token is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return subprocess.run([sys.executable, "-c", CLIENT, address], env=env, capture_output=True, text=True, timeout=120)


def test_a_client_without_the_token_is_refused(ray_local, tmp_path):
    ip = _network_address()
    if ip is None:
        pytest.skip("this machine has no non-loopback network address to connect from")
    port = ray_local.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    address = f"{ip}:{port}"
    (tmp_path / "home").mkdir()

    refused = _client(address, tmp_path / "home", token=None)
    assert refused.returncode != 0 and "RAN" not in refused.stdout
    assert "AuthenticationError" in refused.stderr or "InvalidAuthToken" in refused.stderr, refused.stderr[-2000:]

    # the same client with the session's token gets in: the address was reachable, the token was what mattered
    admitted = _client(address, tmp_path / "home", token=_token())
    assert "RAN 42" in admitted.stdout, admitted.stderr[-2000:]


def test_ray_error_messages_go_to_stderr_not_stdout(ray_local, capsys):
    @ray_local.remote(max_retries=0)
    def die() -> None:
        os.kill(os.getpid(), 9)

    with pytest.raises(ray_local.exceptions.WorkerCrashedError):
        ray_local.get(die.remote())
    deadline, out, err = time.monotonic() + 30, "", ""
    while "worker died" not in err.lower() and time.monotonic() < deadline:  # Ray's listener prints asynchronously
        time.sleep(0.5)
        captured = capsys.readouterr()
        out, err = out + captured.out, err + captured.err
    assert "worker died" in err.lower()
    assert "worker died" not in out.lower() and "(raylet)" not in out


SESSION = textwrap.dedent("""
    import os, ray
    from einsearch.search.cluster import ray_session
    with ray_session(workers=1):
        folder = os.path.dirname(ray._private.worker._global_node.get_temp_dir_path())
        st = os.stat(folder)
        print(folder, oct(st.st_mode & 0o777), st.st_uid == os.getuid(), ray.get(ray.remote(lambda: 1).remote()))
""")


def test_a_local_session_keeps_its_files_in_a_private_folder_and_removes_it(tmp_path):
    tmp = Path(tempfile.mkdtemp(prefix="est-", dir="/tmp"))  # TMPDIR of the session: short, for Ray's socket paths
    try:
        target = tmp_path / "target"
        target.mkdir(mode=0o700)
        planted = tmp / f"einsearch-ray-{os.getuid()}"  # the fixed path of earlier versions
        planted.symlink_to(target)
        env = {**os.environ, "TMPDIR": str(tmp), "OMP_WAIT_POLICY": "PASSIVE"}
        done = subprocess.run([sys.executable, "-c", SESSION], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        folder, mode, own, ran = done.stdout.split()[-4:]
        assert Path(folder).parent == tmp and Path(folder) != planted and (mode, own, ran) == ("0o700", "True", "1")
        assert not Path(folder).exists()
        assert list(tmp.iterdir()) == [planted]  # nothing left behind
        assert stat.S_IMODE(target.stat().st_mode) == 0o700 and list(target.iterdir()) == []  # the link was not followed
    finally:
        shutil.rmtree(tmp)  # removes the planted link, never what it points to


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["nothing listens", "silent port", "no token", "auth disabled"])
def test_a_bad_cluster_address_is_one_line_and_creates_nothing(tmp_path, monkeypatch, case):
    silent = socket.socket()  # accepts connections (the kernel's backlog) but never speaks Ray
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1] if case == "silent port" else _free_port()
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 3.0)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    if case != "no token":
        monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled" if case == "auth disabled" else "token")
    run = ["run", "--address", f"127.0.0.1:{port}", "--task", TINY_TASK, "--space", TINY_SPACE, "--trials", "2",
           "--trial-budget", "3steps", "--scheduler", "fifo", "--output", str(tmp_path / "run")]  # fmt: skip
    started = time.monotonic()
    with silent:
        result = CliRunner().invoke(app, run)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) <= 200, result.output
    expected = {"nothing listens": "no Ray cluster at", "silent port": "within 3 s", "no token": "token", "auth disabled": "RAY_AUTH_MODE"}
    assert expected[case] in lines[0]
    assert time.monotonic() - started < 15
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(shutil.which("ray") is None, reason="the ray command line is not installed")
def test_a_cluster_without_token_authentication_is_refused(tmp_path, monkeypatch):
    port = 6900 + os.getpid() % 500
    temp = tempfile.mkdtemp(prefix="einsearch-test-")
    head = ["ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp}"]
    subprocess.run(head, check=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True)
    try:
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 32)  # any token: this cluster asks for none
        run = ["run", "--address", f"127.0.0.1:{port}", "--task", TINY_TASK, "--space", TINY_SPACE, "--trials", "2",
               "--trial-budget", "3steps", "--scheduler", "fifo", "--output", str(tmp_path / "run")]  # fmt: skip
        result = CliRunner().invoke(app, run)
        assert result.exit_code == 2 and "lets in clients without its token" in result.output, result.output
        assert not (tmp_path / "run").exists()
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)
