"""Ray start-up, in one place: a local Ray or a cluster, always with token authentication.

Ray 2.60's GCS, raylet and workers listen on all network interfaces, whatever node address is
passed (measured), so anyone who can reach a port could run code as this user unless Ray checks
a token.  `ray_session` therefore runs Ray only with ``RAY_AUTH_MODE=token``, as Ray documents it
(https://docs.ray.io/en/latest/ray-security/token-auth.html):

* a local Ray uses the token in ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``,
  and Ray generates the last if there is none;
* joining a cluster (``--address`` or ``RAY_ADDRESS``) needs that cluster's token from the same
  sources; `check_address` says so in one line, before anything is created, as it does when no
  Ray cluster answers at the address within `CONNECT_TIMEOUT_S` seconds.

``RAY_AUTH_MODE=disabled`` in the environment is refused, never followed.  A local Ray keeps its
session files in a fresh private folder (mode 0700), removed when the session ends.

`check_devices` says, also before anything is created, when a run asks for what it cannot get:
CUDA (``--device cuda``, ``--precision bf16``, ``--gpus-per-trial``) on a machine without it when
the trials run here (inline or a local Ray), or per-trial resources that no node of the cluster
offers (as `check_address`'s probe found the nodes); Ray would otherwise wait for them forever.
"""

from __future__ import annotations

import functools
import json
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from einsearch.search.config import RunConfig

CONNECT_TIMEOUT_S = 15.0  # how long `check_address` waits for a cluster to answer
DOCS = "https://docs.ray.io/en/latest/ray-security/token-auth.html"


class ClusterError(ValueError):
    """Ray cannot be started or joined safely; the message is one line for the user."""


@contextmanager
def ray_session(workers: int, address: str | None = None, cpus_per_worker: float = 1.0, resources: dict[str, float] | None = None) -> Iterator[None]:
    """Ray for the duration of the block: the one already initialised in this process if any
    (left running), else the cluster at `address` (default: RAY_ADDRESS), else a local Ray with
    `workers` × `cpus_per_worker` CPUs (and the GPUs Ray finds) in a private temp folder; token
    authentication on, Ray's error messages on stderr; shut down and cleaned up afterwards.
    With `resources` (what one trial asks for), ClusterError unless a live node offers them all."""
    import ray

    if ray.is_initialized():
        _check_nodes(_live_nodes(), resources or {}, "this Ray")
        yield
        return
    require_token_auth()
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    folder = None
    try:
        if address:
            check_address(address)
            ray.init(address=address, **kwargs)
        else:
            folder = private_temp_dir()
            cpus = math.ceil(workers * cpus_per_worker)
            ray.init(num_cpus=cpus, _temp_dir=str(folder / "r"), **kwargs)  # Ray makes "r" 0777; folder stays 0700
        _check_token_mode()
        _errors_to_stderr()
        _check_nodes(_live_nodes(), resources or {}, f"the Ray cluster at {_clip(address, 60)}" if address else "the local Ray")
        yield
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def require_token_auth() -> None:
    """Turn Ray's token authentication on for this process and the Ray processes it starts;
    refuse an environment that switches it off."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        raise ClusterError(
            f"RAY_AUTH_MODE={mode[:20]!r}: einsearch runs Ray only with token authentication; unset it or set "
            "RAY_AUTH_MODE=token (or use --executor inline)"
        )
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config

    Config.initialize("")  # Ray caches its config; re-read the environment, as Ray's own default does


def private_temp_dir() -> Path:
    """A fresh folder only this user can enter (mkdtemp: never an existing path or a symlink),
    with a short path: Ray's unix socket paths under it must fit in 107 characters."""
    base = tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="einsearch-", dir=base if len(base) <= 40 else "/tmp"))


def token_available() -> bool:
    """Whether Ray will find a token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path or Path.home() / ".ray" / "auth_token").is_file()


@functools.cache  # one successful check per address and process (the CLI checks before the run folder exists)
def check_address(address: str, timeout: float | None = None) -> tuple[dict[str, Any], ...]:
    """Raise ClusterError unless a Ray cluster at `address` accepts this machine's token within
    `timeout` seconds (default CONNECT_TIMEOUT_S) and refuses a client without it; checked from
    separate processes, killed at the deadline (a bad address makes `ray.init` wait for minutes).
    Returns the cluster's live nodes as the probe saw them: ``{"id": node id, "resources": {name:
    amount}}`` each."""
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    where = _clip(address, 60)
    require_token_auth()
    if not token_available():
        raise ClusterError(
            f"the Ray cluster at {where} needs its token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or copy "
            "~/.ray/auth_token from the head (`ray get-auth-token` there prints it)"
        )
    _check_reachable(address, where, timeout)
    failure, nodes = _probe(address, timeout)
    if failure == "timeout":
        raise ClusterError(f"no Ray cluster answered at {where} within {timeout:g} s (is it a Ray head's GCS address, host:port?)")
    if failure is not None:
        raise ClusterError(f"cannot join the Ray cluster at {where}: {_clip(failure, 100)}")
    with tempfile.TemporaryDirectory(prefix="einsearch-") as home:  # a HOME with no ~/.ray/auth_token
        anyone = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": home}
        if _probe(address, timeout, env=anyone)[0] is None:
            raise ClusterError(f"the Ray cluster at {where} lets in clients without its token: start its nodes with RAY_AUTH_MODE=token")
    return nodes


def check_executor(executor: str, address: str | None) -> None:
    """Before a run creates anything: Ray can run with token authentication here and, when it
    joins a cluster (`address`, default RAY_ADDRESS), that cluster answers and takes the token."""
    if executor != "ray":
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
    else:
        require_token_auth()


def check_devices(config: RunConfig, probe: bool = True) -> None:
    """Before a run creates anything: the trials can get what they ask for.  Where they run on
    this machine (inline, or a local Ray), CUDA must be here if they need it, and a local Ray
    has no custom resources; on a cluster, some live node must offer a whole trial's resources
    (`RunConfig.trial_resources`, all on one node, as Ray places a trial), as `check_address`'s
    probe finds them (not with `probe` False: `ray_session` checks the nodes when it joins)."""
    address = (config.address or os.environ.get("RAY_ADDRESS")) if config.executor == "ray" else None
    if not address:
        needs = [(what, instead) for what, instead, needed in (
            ("--device cuda", "--device auto or cpu", config.device == "cuda"),
            ("--precision bf16", "--precision fp32", config.precision == "bf16"),
            (f"--gpus-per-trial {config.gpus_per_trial:g}", "--gpus-per-trial 0", config.gpus_per_trial > 0),
        ) if needed]  # fmt: skip
        if needs:
            import torch

            if not torch.cuda.is_available():
                what, instead = needs[0]
                raise ClusterError(f"{what}: no CUDA device on this machine (torch.cuda.is_available() is False); use {instead} "
                                   "here, or join a cluster with GPUs (--address)")  # fmt: skip
        if config.executor == "ray" and config.resources_per_trial:
            names = ", ".join(name for name, _ in config.resources_per_trial)
            raise ClusterError(f"--resources-per-trial {_clip(names, 40)}: a local Ray offers no such resource; join a cluster whose "
                               "nodes offer it (--address)")  # fmt: skip
        return
    if probe:
        _check_nodes(check_address(address), config.trial_resources, f"the Ray cluster at {_clip(address, 60)}")


def _live_nodes() -> tuple[dict[str, Any], ...]:
    """The live nodes of the Ray this process is connected to, as `check_address` returns them."""
    import ray

    return tuple({"id": n["NodeID"], "resources": n["Resources"]} for n in ray.nodes() if n["Alive"])


def _check_nodes(nodes: tuple[dict[str, Any], ...], wanted: dict[str, float], where: str) -> None:
    """ClusterError unless one of `nodes` offers all of `wanted` (Ray places a trial on one node)."""
    if not wanted or any(all(node["resources"].get(name, 0.0) >= amount for name, amount in wanted.items()) for node in nodes):
        return
    asked = ", ".join(f"{name} {amount:g}" for name, amount in wanted.items())
    offered = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(n["resources"].items()) if _shown_resource(k)) for n in nodes)
    raise ClusterError(f"no node of {where} offers what a trial asks for ({_clip(asked, 60)}); its nodes offer: "
                       f"{_clip(offered or 'nothing', 100)}")  # fmt: skip


def _shown_resource(name: str) -> bool:
    """Resources worth naming to a user (not Ray's per-node bookkeeping such as node:<ip>)."""
    return not name.startswith("node:") and name not in ("object_store_memory", "memory")


def _probe(address: str, timeout: float, env: dict[str, str] | None = None) -> tuple[str | None, tuple[dict[str, Any], ...]]:
    """Connect to `address` from a separate process with environment `env` (default: this
    one's, as the search will connect): (None, its live nodes) if it joins, else (why not, or
    "timeout", ()).  Ray retries a refused token for about 20 s while logging each refusal, so
    the first one ends it."""
    probe = subprocess.Popen(
        [sys.executable, "-c", _PROBE, address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env=env,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(probe.stdout, lines), daemon=True).start()
    deadline, failure, nodes = time.monotonic() + timeout, "timeout", ()
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return "timeout", ()
            if line is None:
                break
            if "InvalidAuthToken" in line:
                return _REFUSED, ()
            if line.startswith("einsearch-probe: "):
                failure = line.removeprefix("einsearch-probe: ").strip()
            if line.startswith("einsearch-nodes: "):
                nodes = tuple(json.loads(line.removeprefix("einsearch-nodes: ")))
        return (None, nodes) if probe.wait() == 0 else (failure, ())
    finally:
        if probe.poll() is None:
            os.killpg(probe.pid, signal.SIGKILL)
        probe.wait()


_REFUSED = "it refused the Ray token found here (`ray get-auth-token` on the head prints its own)"
_PROBE = f"""
import json
import sys
import ray
try:
    ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, configure_logging=False)
except BaseException as error:
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    if any(type(e).__name__ == "AuthenticationError" for e in chain):
        print("einsearch-probe: {_REFUSED}", flush=True)
    else:
        print("einsearch-probe: " + type(error).__name__ + ": " + (str(error).splitlines() or [""])[0], flush=True)
    sys.exit(1)
nodes = [{{"id": n["NodeID"], "resources": n["Resources"]}} for n in ray.nodes() if n["Alive"]]
print("einsearch-nodes: " + json.dumps(nodes), flush=True)
ray.shutdown()
"""


def _read_lines(stream: Any, lines: queue.Queue) -> None:
    """Every line of `stream` into `lines`, then None."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def _check_reachable(address: str, where: str, timeout: float) -> None:
    """Fail at once for an address nothing listens at (the probe would wait out its timeout)."""
    host_port = address.removeprefix("ray://")
    if address == "auto" or ":" not in host_port:
        return  # Ray's own forms (a local cluster found by Ray); the probe checks them
    host, _, port = host_port.rpartition(":")
    if not port.isdigit():
        raise ClusterError(f"Ray address {where} is not host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise ClusterError(f"no Ray cluster at {where}: {_clip(error.strerror or str(error) or type(error).__name__, 60)}") from None


def _check_token_mode() -> None:
    """Ray really runs with token authentication (a safeguard against a changed default)."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    if get_authentication_mode() != AuthenticationMode.TOKEN:
        raise ClusterError(f"Ray started without token authentication; einsearch refuses to run on it (see {DOCS})")


def _errors_to_stderr() -> None:
    """Ray's driver prints the cluster's error messages ("(raylet) A worker died ...") on stdout
    whatever `log_to_driver` says; einsearch keeps stdout for its own output, so they go to
    stderr.  (Ray's driver calls `ray._private.worker.print_to_stdstream` for each message.)"""
    from ray._private import worker

    original = worker.print_to_stdstream
    if getattr(original, "to_stderr", False):
        return

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr.to_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def _clip(text: str, limit: int) -> str:
    """`text` on one line, at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

