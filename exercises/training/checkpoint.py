"""Exercises for Chapter 6, checkpoints: save atomically, load safely (`weights_only=True`), resume bit for bit.

Fill in each body that raises NotImplementedError; the docstrings say what to return. Grade with
`llm-course grade 6`. Mirrors `reference/training/checkpoint.py`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn


def save_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    out: str | os.PathLike | IO[bytes],
    generator: torch.Generator | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """Save model, optimiser, iteration and RNG states to `out`, atomically when it is a path.

    The file holds one dict: {"model": state_dict, "optimizer": state_dict, "iteration": int,
    "rng": {"torch": CPU state, "cuda": [one state per GPU], "generator": state or None},
    "config": dict or None}; every value is a tensor, a number, a string or a container of them,
    so `torch.load(..., weights_only=True)` reads it.

    Args:
        model: the module whose `state_dict()` is saved.
        optimizer: the optimiser whose `state_dict()` is saved.
        iteration: the number of iterations done (>= 0).
        out: a path, or a binary file object opened for writing.
        generator: a `torch.Generator` (e.g. the one `get_batch` draws from) whose state is saved too.
        config: plain data describing the run (numbers, strings, lists, dicts), kept for reference.
    """
    # Hint: a reader must never see half a file: write somewhere else on the same file system, make sure the bytes
    # reach the disk, then swap the file into place in one atomic step; clean up if anything fails.
    raise NotImplementedError("Exercise 6.12: save a checkpoint atomically")


def load_checkpoint(
    src: str | os.PathLike | IO[bytes],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Restore what `save_checkpoint` wrote into `model` (and `optimizer`, RNGs); return the iteration.

    Loads with `weights_only=True` onto the CPU; `load_state_dict` then copies the weights onto
    the model's device, and the optimiser moves its state next to its parameters. PyTorch's global
    RNGs (CPU, and CUDA when present) are restored, and `generator`'s state when given. All or
    nothing: the checkpoint is checked whole (its keys, the weights' shapes, an iteration >= 0, the
    RNG states) before anything changes, and a failure part-way restores what was there, so a bad
    checkpoint raises a ValueError and leaves the model, optimiser and generators untouched.

    Args:
        src: a path, or a binary file object opened for reading.
        model: a module of the same architecture as the saved one.
        optimizer: an optimiser over `model`'s parameters, or None to load the weights only.
        generator: the generator whose state was saved, to restore it.

    Returns:
        The saved iteration.
    """
    # Hint: a checkpoint is a pickle: load it so that it can rebuild tensors but never call code. Then restore
    # everything the next iteration depends on (the same keys save_checkpoint writes).
    raise NotImplementedError("Exercise 6.13: load a checkpoint safely")
