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
