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
original exception, with the rank and its remote traceback attached; an exception that cannot be
rebuilt in the parent, or a result that does not unpickle there, raises `RankError` with the rank
and its formatted traceback. A call that outlives its timeout kills the processes and raises
`TimeoutError` naming the ranks still running. A killed cluster starts afresh on its next call, and
every message carries its call's number, so no failed call can leave a message that a later call
reads. No process outlives the cluster: each rank is a child subreaper whose own processes
(detached or not) are killed when a call returns and with the rank; ranks die with the process that
started them (`PR_SET_PDEATHSIG` and a watchdog), and a small janitor process removes the
rendezvous folder and what is left if that process is SIGKILLed. Each cluster rendezvous through a
file in its own temporary folder (no port can clash), and each worker uses one thread.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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


_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parents() -> dict[int, int]:
    """{pid: parent pid} of every process (Linux /proc; empty elsewhere)."""
    found: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        found[int(entry)] = int(f.read().rsplit(b")", 1)[1].split()[1])
    return found


def _descendants(pid: int) -> list[int]:
    parents = _parents()
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def _kill_descendants(pid: int, keep: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """SIGKILL every descendant of `pid` but `keep` (again while orphans reparent to a subreaper `pid`)."""
    for _ in range(20):
        victims = [child for child in _descendants(pid) if child not in keep]
        if not victims:
            return
        for child in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        if pid == os.getpid():
            for child in victims:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(child, os.WNOHANG)
        time.sleep(0.01)


def _watch_parent(parent: int) -> None:
    """In a rank: die, with the processes it started, as soon as the process that started it is gone."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            _kill_descendants(os.getpid())
            os._exit(1)


# Started beside the ranks: reads their pids on stdin; at end of input without "done" (the parent
# died, even by SIGKILL), it kills the ranks and what they started, and removes the folder.
JANITOR = """
import os, shutil, signal, sys
folder, pids = sys.argv[1], []
for line in sys.stdin:
    if line.strip() == "done":
        sys.exit(0)
    pids.append(int(line))
def tree(pid):
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parents[int(entry)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += [c for c, q in parents.items() if q == p]
    return found
for pid in pids:
    for p in tree(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
shutil.rmtree(folder, ignore_errors=True)
"""


def _message(kind: str, call: int, text: str = "", payload: bytes = b"") -> bytes:
    """A message from a rank: a header of plain types that always unpickles, and the pickled payload."""
    return pickle.dumps((kind, call, text, payload))


def _join(rank: int, world_size: int, init_file: str, backend: str, timeout_s: float) -> None:
    dist.init_process_group(
        backend,
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def _worker(
    rank: int, world_size: int, init_file: str, backend: str, timeout_s: float, conn: Connection, parent: int, deathsig: bool
) -> None:
    """A rank's main loop: join the group, then obey ("run", call, fn, args, kwargs) and ("regroup", call, file) until None."""
    if deathsig:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="llm-course-watchdog").start()
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # what fn starts stays below this rank, detached or not
    own = set(_descendants(os.getpid()))
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    if backend == "nccl":
        torch.cuda.set_device(device_for_rank(rank, backend))
    _join(rank, world_size, init_file, backend, timeout_s)
    conn.send_bytes(_message("ready", 0))
    try:
        while (data := conn.recv_bytes()) != b"":  # b"": shut down
            call = int.from_bytes(data[:8], "little")
            try:
                task = pickle.loads(data[8:])
            except Exception:  # noqa: BLE001 - a function or argument that does not unpickle here
                conn.send_bytes(_message("error", call, traceback.format_exc()))
                continue
            if task[0] == "regroup":  # a fresh group: no message of a failed call can leak into the next
                dist.destroy_process_group()
                _join(rank, world_size, task[1], backend, timeout_s)
                conn.send_bytes(_message("ready", call))
                continue
            _, fn, args, kwargs = task
            try:
                result = fn(*args, **kwargs)
                try:
                    reply = _message("ok", call, "", pickle.dumps(result))
                except Exception:  # noqa: BLE001 - the result does not pickle
                    reply = _message("error", call, f"the return value of rank {rank} could not be pickled:\n{traceback.format_exc()}")
            except BaseException as error:  # noqa: BLE001 - reported to the parent, which decides
                text = traceback.format_exc()
                try:
                    payload = pickle.dumps(error)
                    pickle.loads(payload)  # it must rebuild, or the parent gets the text alone
                except Exception:  # noqa: BLE001
                    payload = b""
                reply = _message("error", call, text, payload)
            _kill_descendants(os.getpid(), own)  # the processes fn started end with the call
            conn.send_bytes(reply)
    except EOFError:
        pass
    finally:
        _kill_descendants(os.getpid(), own)
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
        self._call = 0  # every message names its call: one of an earlier call is never read as this one's
        self._janitor: subprocess.Popen[bytes] | None = None
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
        self._call = 0
        try:
            init_file = self._rendezvous_file()
            if sys.platform.startswith("linux"):
                self._janitor = subprocess.Popen(
                    [sys.executable, "-c", JANITOR, self._folder], stdin=subprocess.PIPE, start_new_session=True
                )
            deathsig = threading.current_thread() is threading.main_thread()  # PDEATHSIG follows the starting thread
            for rank in range(self.world_size):
                parent, child = ctx.Pipe()
                process = ctx.Process(
                    target=_worker,
                    args=(rank, self.world_size, init_file, self.backend, self.timeout, child, os.getpid(), deathsig),
                    daemon=True,
                    name=f"llm-course-rank-{rank}",
                )
                self._conns.append(parent)
                process.start()
                self._processes.append(process)
                child.close()
                if self._janitor is not None and self._janitor.stdin is not None:
                    self._janitor.stdin.write(f"{process.pid}\n".encode())
                    self._janitor.stdin.flush()
        except BaseException:
            self.close(kill=True)  # no process, no folder left behind
            raise
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
        call = self._call
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
                        data = conn.recv_bytes()
                    except (EOFError, OSError):
                        data = None
                    if data is not None:
                        message = self._decode(rank, data)
                        if message[1] == call:  # anything else belongs to an earlier call
                            messages[rank] = message
                            del waiting[rank]
                        continue
                if not self._processes[rank].is_alive() or item is conn:  # it died, or its pipe closed
                    self._processes[rank].join(timeout=1)
                    code = self._processes[rank].exitcode
                    self.close(kill=True)
                    raise RankError(rank, f"the process died (exit code {code}) while trying to {what}")
            if any(m[0] not in ("ok", "ready") for m in messages.values()):
                deadline = min(deadline, time.monotonic() + ERROR_GRACE_SECONDS)  # the others may be blocked
        return messages, sorted(waiting)

    def _decode(self, rank: int, data: bytes) -> tuple:
        """(kind, call, text, value) from a rank's message; a payload that does not unpickle here
        becomes an error carrying the rank's text and why."""
        try:
            kind, call, text, payload = pickle.loads(data)
        except Exception as error:  # noqa: BLE001 - never a partial read: the whole message was consumed
            return ("error", self._call, f"rank {rank} sent a message that could not be read: {error!r}", None)
        if not payload:
            return (kind, call, text, None)
        try:
            return (kind, call, text, pickle.loads(payload))
        except Exception:  # noqa: BLE001 - e.g. a class that exists only on the rank, or needs arguments
            why = traceback.format_exc()
            if kind == "ok":
                return ("error", call, f"the return value of rank {rank} could not be unpickled here:\n{why}", None)
            return ("error", call, f"{text}\n(the exception could not be rebuilt here: {why.strip().splitlines()[-1]})", None)

    def _send(self, task: tuple) -> None:
        self._call += 1
        data = self._call.to_bytes(8, "little") + pickle.dumps(task)  # pickled once, before any rank gets it
        for conn in self._conns:
            conn.send_bytes(data)

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> list[Any]:
        """Call `fn(*args, **kwargs)` on every rank at once; returns the results in rank order."""
        timeout = self.timeout if timeout is None else timeout
        self.start()
        name = getattr(fn, "__qualname__", repr(fn))
        try:
            self._send(("run", fn, args, kwargs))
            messages, silent = self._collect(f"run {name}", timeout)
        except (RankError, TimeoutError):
            raise
        except BaseException:  # an interrupt, a function that does not pickle: nothing may linger for the next call
            self.close(kill=True)
            raise
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
            _, _, text, error = messages[failed[0]]
            if not isinstance(error, BaseException):
                raise RankError(failed[0], f"failed while running {name}; its traceback:\n{text}")
            error.add_note(f"(raised on rank {failed[0]} of {self.world_size} while running {name}; its traceback is above)")
            error.rank = failed[0]  # type: ignore[attr-defined]
            raise error from RemoteTraceback(text)
        return [messages[rank][3] for rank in range(self.world_size)]

    def _regroup(self) -> None:
        self._send(("regroup", self._rendezvous_file()))
        messages, silent = self._collect("rejoin the group", STARTUP_SECONDS)
        if silent or any(m[0] != "ready" for m in messages.values()):
            self.close(kill=True)

    def close(self, kill: bool = False) -> None:
        """Stop the processes: politely (they leave the group), or at once with `kill=True`."""
        if not kill:
            for conn in self._conns:
                try:
                    conn.send_bytes(b"")
                except (BrokenPipeError, OSError):
                    pass
            for process in self._processes:
                process.join(timeout=10)
        for process in self._processes:
            if process.pid is not None and process.is_alive():
                _kill_descendants(process.pid)  # the rank is their subreaper: detached ones are below it too
                process.kill()
            if process.pid is not None:
                process.join(timeout=10)
        for conn in self._conns:
            conn.close()
        self._processes, self._conns = [], []
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        if self._janitor is not None:
            with contextlib.suppress(OSError, ValueError):
                if self._janitor.stdin is not None:
                    self._janitor.stdin.write(b"done\n")
                    self._janitor.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._janitor.wait(timeout=10)
            if self._janitor.poll() is None:
                self._janitor.kill()
                self._janitor.wait()
            self._janitor = None

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=exc[0] is not None)

    def __del__(self) -> None:
        if getattr(self, "_processes", None) or getattr(self, "_janitor", None):  # absent when __init__ rejected its arguments
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
