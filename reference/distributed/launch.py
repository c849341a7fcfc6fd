"""Run a function on several processes that form one `torch.distributed` group.

Survey section 2.4(a), parallel training: every parallel scheme of Chapters 7-9 runs as real
processes that talk through `torch.distributed`. On one CPU machine the course starts them itself,
with the gloo backend (one thread each); on GPUs the same functions run under `torchrun` with NCCL.

    with Cluster(world_size=4) as cluster:          # four processes, started once
        results = cluster.run(my_function, x)       # my_function(x) on every rank; a list by rank

    results = launch(my_function, 4, x)             # the same, for a single call

`my_function` must be importable (defined in a module, not in a notebook cell), since the processes
are started with "spawn". Inside it, `torch.distributed.get_rank()` and `get_world_size()` work.

Safety: a rank that raises stops every rank (they are killed) and the parent re-raises the
original exception, with the rank and its remote traceback attached; a call that outlives its
timeout kills the processes and raises `TimeoutError` naming the ranks still running. A killed
cluster starts afresh on its next call. No process outlives the cluster, each cluster rendezvous
through a file in its own temporary folder (no port can clash), and each worker uses one thread.
"""

from __future__ import annotations

import atexit
import datetime
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import traceback
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
import torch.distributed as dist

_LIVE_CLUSTERS: weakref.WeakSet[Cluster] = weakref.WeakSet()
STARTUP_SECONDS = 120.0  # time the processes get to start, import torch and join the group
ERROR_GRACE_SECONDS = 2.0  # after one rank fails, how long the others get to finish before being killed


def default_backend() -> str:
    """"nccl" when CUDA GPUs are present, else "gloo"."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def device_for_rank(rank: int, backend: str | None = None) -> torch.device:
    """The device a rank computes on: its own GPU with NCCL (rank modulo the GPU count), else the CPU."""
    if (backend or default_backend()) == "nccl":
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


class RemoteTraceback(Exception):
    """The traceback of an exception raised on another rank (set as the `__cause__` of its re-raise)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class RankError(RuntimeError):
    """A rank failed in a way that cannot be re-raised as its own exception (unpicklable, or it died)."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(f"rank {rank}: {message}")
        self.rank = rank


def _join(rank: int, world_size: int, init_file: str, backend: str, timeout_s: float) -> None:
    dist.init_process_group(
        backend,
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def _worker(rank: int, world_size: int, init_file: str, backend: str, timeout_s: float, conn: Connection) -> None:
    """A rank's main loop: join the group, then obey ("run", fn, args, kwargs) and ("regroup", file) until None."""
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    if backend == "nccl":
        torch.cuda.set_device(device_for_rank(rank, backend))
    _join(rank, world_size, init_file, backend, timeout_s)
    conn.send(("ready", None))
    try:
        while (task := conn.recv()) is not None:
            if task[0] == "regroup":  # a fresh group: no message of a failed call can leak into the next
                dist.destroy_process_group()
                _join(rank, world_size, task[1], backend, timeout_s)
                conn.send(("ready", None))
                continue
            _, fn, args, kwargs = task
            try:
                conn.send(("ok", fn(*args, **kwargs)))
            except BaseException as error:  # noqa: BLE001 - reported to the parent, which decides
                text = traceback.format_exc()
                try:
                    conn.send(("error", error, text))
                except Exception:  # the exception itself does not pickle
                    conn.send(("error", None, text))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class Cluster:
    """`world_size` processes in one process group, kept alive between calls of `run`.

    Args:
        world_size: number of ranks (>= 1).
        backend: "gloo" or "nccl"; defaults to `default_backend()`.
        timeout: seconds one call of `run` may take before the processes are killed.
    """

    def __init__(self, world_size: int, backend: str | None = None, timeout: float = 60.0) -> None:
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.world_size = world_size
        self.backend = backend or default_backend()
        if self.backend == "nccl" and torch.cuda.device_count() < 1:
            raise ValueError("backend 'nccl' needs CUDA GPUs")
        self.timeout = timeout
        self._processes: list[mp.process.BaseProcess] = []
        self._conns: list[Connection] = []
        self._folder: str | None = None
        self._groups = 0
        _LIVE_CLUSTERS.add(self)

    def _rendezvous_file(self) -> str:
        assert self._folder is not None
        self._groups += 1
        return os.path.join(self._folder, f"rendezvous-{self._groups}")

    def start(self) -> None:
        """Start the processes (done by the first `run` if needed)."""
        if self._processes:
            return
        ctx = mp.get_context("spawn")
        self._folder = tempfile.mkdtemp(prefix="llm-course-dist-")
        init_file = self._rendezvous_file()
        for rank in range(self.world_size):
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=_worker,
                args=(rank, self.world_size, init_file, self.backend, self.timeout, child),
                daemon=True,
                name=f"llm-course-rank-{rank}",
            )
            process.start()
            child.close()
            self._processes.append(process)
            self._conns.append(parent)
        _, silent = self._collect("join the group", STARTUP_SECONDS)
        if silent:
            self.close(kill=True)
            raise TimeoutError(f"rank(s) {silent} did not join the process group within {STARTUP_SECONDS:g} s")

    def _collect(self, what: str, timeout: float) -> tuple[dict[int, tuple], list[int]]:
        """Wait for one message from every rank; returns ({rank: message}, ranks still silent).

        A rank whose process dies first makes this kill the cluster and raise `RankError`. Once a
        rank reports an error, the others get ERROR_GRACE_SECONDS more to report.
        """
        messages: dict[int, tuple] = {}
        waiting = dict(enumerate(self._conns))  # rank -> connection
        deadline = time.monotonic() + timeout
        while waiting and (left := deadline - time.monotonic()) > 0:
            watched = {**{conn: rank for rank, conn in waiting.items()}, **{self._processes[rank].sentinel: rank for rank in waiting}}
            for item in wait(list(watched), timeout=left):
                rank = watched[item]
                if rank not in waiting:
                    continue
                conn = waiting[rank]
                if conn.poll():
                    try:
                        messages[rank] = conn.recv()
                        del waiting[rank]
                        continue
                    except EOFError:
                        pass
                if not self._processes[rank].is_alive() or item is conn:  # it died, or its pipe closed
                    self._processes[rank].join(timeout=1)
                    code = self._processes[rank].exitcode
                    self.close(kill=True)
                    raise RankError(rank, f"the process died (exit code {code}) while trying to {what}")
            if any(m[0] not in ("ok", "ready") for m in messages.values()):
                deadline = min(deadline, time.monotonic() + ERROR_GRACE_SECONDS)  # the others may be blocked
        return messages, sorted(waiting)

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> list[Any]:
        """Call `fn(*args, **kwargs)` on every rank at once; returns the results in rank order."""
        timeout = self.timeout if timeout is None else timeout
        self.start()
        name = getattr(fn, "__qualname__", repr(fn))
        for conn in self._conns:
            conn.send(("run", fn, args, kwargs))
        messages, silent = self._collect(f"run {name}", timeout)
        failed = sorted(rank for rank, m in messages.items() if m[0] != "ok")
        if not failed and silent:
            self.close(kill=True)
            raise TimeoutError(
                f"{name} did not finish within {timeout:g} s on rank(s) {silent}; all ranks were stopped "
                "(a deadlock, such as a receive whose send never comes?)"
            )
        if failed:
            if silent:  # some ranks are stuck waiting for the failed one: only killing frees them
                self.close(kill=True)
            else:
                self._regroup()
            _, error, text = messages[failed[0]]
            if error is None:
                raise RankError(failed[0], f"raised an exception that could not be sent back:\n{text}")
            error.add_note(f"(raised on rank {failed[0]} of {self.world_size} while running {name}; its traceback is above)")
            error.rank = failed[0]  # type: ignore[attr-defined]
            raise error from RemoteTraceback(text)
        return [messages[rank][1] for rank in range(self.world_size)]

    def _regroup(self) -> None:
        init_file = self._rendezvous_file()
        for conn in self._conns:
            conn.send(("regroup", init_file))
        messages, silent = self._collect("rejoin the group", STARTUP_SECONDS)
        if silent or any(m[0] != "ready" for m in messages.values()):
            self.close(kill=True)

    def close(self, kill: bool = False) -> None:
        """Stop the processes: politely (they leave the group), or at once with `kill=True`."""
        if not kill:
            for conn in self._conns:
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
            for process in self._processes:
                process.join(timeout=10)
        for process in self._processes:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)
        for conn in self._conns:
            conn.close()
        self._processes, self._conns = [], []
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=exc[0] is not None)

    def __del__(self) -> None:
        if getattr(self, "_processes", None):  # absent when __init__ rejected its arguments
            self.close(kill=True)


@atexit.register
def _close_all() -> None:
    for cluster in list(_LIVE_CLUSTERS):
        cluster.close(kill=True)


def launch(fn: Callable[..., Any], world_size: int, *args: Any, backend: str | None = None, timeout: float = 60.0, **kwargs: Any) -> list[Any]:
    """Run `fn(*args, **kwargs)` once on `world_size` fresh processes; returns the results by rank."""
    with Cluster(world_size, backend, timeout) as cluster:
        return cluster.run(fn, *args, **kwargs)


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group that `torchrun` describes in the environment; returns (rank, world_size).

    `torchrun --nproc_per_node=N -m some.module` sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
    with NCCL each rank also takes its own GPU (LOCAL_RANK).
    """
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ValueError(f"not started by torchrun: environment variables {missing} are missing")
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    else:
        torch.set_num_threads(1)
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()
