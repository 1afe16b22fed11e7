"""Hard limits on a training run: it runs in a child process that is killed when its time is up.

The trainer checks its own time limit between steps; a single step can still run for hours (a
``repeat`` a million deep) and nothing in the process can interrupt it.  `train_limited` runs
`einsearch.train.train` in a child process instead, and

* kills it `grace` seconds after the trainer's own limit (`TrainConfig.limit`), reporting
  ``timeout``; the trainer's own check usually ends it first, with its steps and a clearer detail;
* caps the child's address space at what it had after start-up plus the memory ceiling
  (``RLIMIT_AS``; torch maps ~0.5 GB more than it touches, which the start-up figure includes):
  an allocation beyond it fails inside the child, and the trainer reports ``oom``;
* relays `callback` and `progress` to the parent, where they run (an Optuna pruner, a Ray Tune
  report, a progress bar), and the child waits for each answer.

On CUDA (`TrainConfig.device`, resolved here in the parent: `einsearch.train.on_device`) the
address space is not capped (CUDA reserves far more virtual memory than it uses, and fails under
a cap); the memory estimate is checked against the device's memory instead, and running out of
it is ``oom``.  The child sees the parent's ``CUDA_VISIBLE_DEVICES`` as it is at the call (a Ray
worker's GPU, which can change between the tasks one worker runs), not the forkserver's.

Children are forked from a forkserver that has imported the trainer once, so a run after the
first starts in milliseconds.  A child that dies (the kernel's OOM killer, a crash) is a failed
result too; an exception that is the caller's (a `TaskError`) is raised again in the parent.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from collections.abc import Callable
from typing import Any

from einsearch.footprint import default_memory_limit
from einsearch.train import StepInfo, TrainConfig, TrainResult, on_device

PRELOAD = ["einsearch.train", "einsearch.footprint", "torch._dynamo"]  # torch._dynamo: meta tensors import it (4 s)
POLL = 0.1  # seconds between checks of the child


def hard_limit(soft: float | None) -> float | None:
    """When the child is killed: the trainer's own limit plus 10% and 2 seconds."""
    return None if soft is None else 1.1 * soft + 2.0


def train_limited(
    arch: Any,
    task: Any,
    config: TrainConfig = TrainConfig(),
    *,
    callback: Callable[[int, dict[str, float]], bool] | None = None,
    progress: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """`einsearch.train.train` in a child process under a hard time limit and a memory cap."""
    from einsearch.tasks import get_task

    task = get_task(task)
    config = on_device(config)  # a device this machine lacks raises here, in the caller's process
    limit = hard_limit(config.limit(config.budget or task.budget))
    relays = {name: fn for name, fn in (("callback", callback), ("progress", progress)) if fn is not None}
    memory = None if config.device == "cuda" else config.max_memory or default_memory_limit()
    started = time.perf_counter()
    try:
        return run_in_child(_train, (arch, task, config), relays, limit, memory)
    except ChildFailed as failed:
        text = arch if isinstance(arch, str) else arch.text
        return TrainResult(status="failed", reason=failed.reason, detail=failed.detail, metrics={}, costs=None, steps=0,
                           seconds=time.perf_counter() - started, task=task.spec, arch=text, metric=task.metric, mode=task.mode)  # fmt: skip


def _train(arch: Any, task: Any, config: TrainConfig, **relays: Callable) -> TrainResult:
    from einsearch.train import train

    return train(arch, task, config, **relays)


class ChildFailed(Exception):
    """The child was killed or died: `reason` is a failure kind of `TrainResult`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def run_in_child(fn: Callable, args: tuple, relays: dict[str, Callable], time_limit: float | None, memory: int | None) -> Any:
    """``fn(*args, **proxies)`` in a child process, where each proxy calls the relay of its name
    here and returns its answer.  Returns fn's value or raises what fn raised; raises ChildFailed
    when the child passes `time_limit` seconds (it is killed) or dies."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    parent, child = context.Pipe()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    process = context.Process(target=_child_main, args=(child, fn, args, tuple(relays), memory, visible), daemon=True)
    deadline = None if time_limit is None else time.monotonic() + time_limit
    process.start()
    child.close()
    try:
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise ChildFailed("timeout", f"killed after the hard time limit of {time_limit:g}s")
            if not parent.poll(POLL):
                if not process.is_alive() and not parent.poll():
                    raise ChildFailed(*_death(process.exitcode))
                continue
            try:
                kind, payload = parent.recv()
            except EOFError:
                process.join(1.0)
                raise ChildFailed(*_death(process.exitcode)) from None
            if kind == "call":
                name, call_args = payload
                parent.send(relays[name](*call_args))
            elif kind == "done":
                return payload
            else:  # "raised"
                raise payload
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        parent.close()


def _death(exitcode: int | None) -> tuple[str, str]:
    if exitcode == -9:  # SIGKILL from outside: most likely the kernel's out-of-memory killer
        return "oom", "the training process was killed (SIGKILL; likely out of memory)"
    return "error", f"the training process died (exit code {exitcode})"


def _child_main(conn: Any, fn: Callable, args: tuple, relay_names: tuple[str, ...], memory: int | None, visible: str | None) -> None:
    if visible is None:  # before anything initialises CUDA in this process
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    if memory is not None:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        cap = _address_space() + memory
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))

    def proxy(name: str) -> Callable:
        def call(*call_args: Any) -> Any:
            conn.send(("call", (name, call_args)))
            return conn.recv()

        return call

    try:
        value = fn(*args, **{name: proxy(name) for name in relay_names})
    except BaseException as error:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            conn.send(("raised", error))
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            conn.send(("raised", RuntimeError(f"{type(error).__name__}: {error}")))
        return
    conn.send(("done", value))


def _address_space() -> int:
    """This process's virtual memory size in bytes (VmSize)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0
