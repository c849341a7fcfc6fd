"""Where the course's code runs and how it is made repeatable: device choice, seeding, atomic files.

Every chapter runs on the CPU in float32 by default and uses a GPU when one is there.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """The device to compute on: `prefer` if given, else CUDA when available, else the CPU.

    Args:
        prefer: a device string such as "cpu", "cuda" or "cuda:1"; None chooses automatically. The
            environment variable LLM_COURSE_DEVICE, when set, takes the place of None.

    Returns:
        A `torch.device`. Asking for CUDA on a machine without it raises `ValueError`.
    """
    prefer = prefer or os.environ.get("LLM_COURSE_DEVICE") or None
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(prefer)
    except RuntimeError:
        raise ValueError(f"not a device: {prefer!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {prefer!r} asked for, but this machine has no CUDA GPU")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and PyTorch's generators (all devices); returns a CPU generator seeded alike."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on success it replaces `path` in one rename.

    A crash or an exception inside the `with` block leaves `path` as it was (or absent) and removes
    the temporary file, so readers never see half a file. The parent folder is created if needed;
    the finished file is flushed to disk and readable by everyone (0644), like files pip installs.

        with atomic_write("out/corpus.txt", "w", encoding="utf-8") as file:
            file.write(text)
    """
    if "w" not in mode:
        raise ValueError(f"mode must be a writing mode such as 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, encoding=encoding, newline="" if "b" not in mode else None) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a measurement ran on, for the JSON that a results-writing command stores beside its numbers.

    Returns platform, Python and torch versions, torch's CPU threads, the CPU count, and the device
    (with the GPU's name when it is a CUDA device).
    """
    import platform

    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
    }
    if device is not None:
        device = torch.device(device)
        info["device"] = str(device)
        if device.type == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write `payload` as indented JSON (a final newline, keys in the given order) atomically; returns the path."""
    import json

    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    with atomic_write(path, "w", encoding="utf-8") as file:
        file.write(text)
    return Path(path)


# --- progress bars that store clean in a notebook -----------------------------------------------


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, nbclient, nbval), False in a terminal or a test."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class _NotebookLine:
    """A file-like target for tqdm that draws the bar as one `text/plain` output updated in place.

    A text bar written to stderr is stored by Jupyter as one stream fragment per refresh (GitHub
    shows each as a red box); a display handle that is updated keeps a single output, whose last
    state (the finished bar) is what the saved notebook holds.
    """

    def __init__(self) -> None:
        from IPython.display import display

        self._handle = display({"text/plain": ""}, raw=True, display_id=True)
        self._last = ""

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip("\n")
        if line.strip() and line != self._last:
            self._last = line
            self._handle.update({"text/plain": line}, raw=True)
        return len(text)

    def clear(self) -> None:
        self._handle.update({"text/plain": ""}, raw=True)

    def flush(self) -> None:
        pass


def progress(iterable: Any = None, *, desc: str | None = None, total: int | None = None, disable: bool = False,
             leave: bool = True, **kwargs: Any) -> Any:
    """A tqdm progress bar that is live while it runs and stores at most one clean line in a notebook.

    In a terminal it is the ordinary tqdm bar on stderr. In a Jupyter kernel it is drawn as one
    plain-text output updated in place (no widgets needed, no stderr fragments in the saved
    notebook); `leave=False` blanks it when it closes. Arguments are tqdm's.

        for batch in progress(batches, desc="training"):
            ...
    """
    from tqdm.std import tqdm

    if disable or not in_notebook():
        return tqdm(iterable, desc=desc, total=total, disable=disable, leave=leave, **kwargs)
    line = _NotebookLine()

    class _Bar(tqdm):
        def close(self) -> None:
            if self.disable:
                return
            super().close()
            if not leave:
                line.clear()

    kwargs.setdefault("mininterval", 0.5)
    kwargs.setdefault("ncols", 100)
    kwargs.pop("dynamic_ncols", None)
    return _Bar(iterable, desc=desc, total=total, leave=leave, file=line, **kwargs)


# --- timings that one disturbance cannot spoil -------------------------------------------------


def time_interleaved(functions: dict[Any, Any], *, rounds: int = 7, repeats: int = 1, warmup: int = 1,
                     sync: Any = None) -> dict[Any, list[float]]:
    """Seconds per call of each function, measured in interleaved rounds.

    Every round calls each function in turn (`repeats` times, timed together and divided), so a
    short disturbance of the machine (another process, a browser redrawing) lands on one round of
    every function rather than spoiling all the measurements of one of them. Take the median of
    the returned lists; their spread says how noisy the machine was.

    Args:
        functions: key -> zero-argument callable, e.g. {seq_len: lambda: attention(q, k, v)}.
        rounds: how many interleaved rounds (each gives one sample per function).
        repeats: calls per sample, for functions too fast to time one call at a time.
        warmup: untimed calls of each function first (allocations, caches, lazy initialisation).
        sync: called before reading the clock, e.g. `torch.cuda.synchronize` on a GPU.

    Returns:
        key -> list of `rounds` samples in seconds per call.
    """
    import time

    from reference.validation import check_int

    check_int("rounds", rounds, minimum=1)
    check_int("repeats", repeats, minimum=1)
    check_int("warmup", warmup, minimum=0)
    if not isinstance(functions, dict) or not all(callable(f) for f in functions.values()):
        raise TypeError("functions must be a dict of zero-argument callables")
    for function in functions.values():
        for _ in range(warmup):
            function()
    samples: dict[Any, list[float]] = {key: [] for key in functions}
    for _ in range(rounds):
        for key, function in functions.items():
            if sync is not None:
                sync()
            start = time.perf_counter()
            for _ in range(repeats):
                function()
            if sync is not None:
                sync()
            samples[key].append((time.perf_counter() - start) / repeats)
    return samples
