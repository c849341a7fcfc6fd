"""Where the course's code runs and how it is made repeatable: device choice and seeding.

Every chapter runs on the CPU in float32 by default and uses a GPU when one is there.
"""

from __future__ import annotations

import os
import random

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
