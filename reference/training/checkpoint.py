"""Checkpoints: everything a training run needs to stop and carry on as if it never had.

Survey section 2.4, "Model Training": long pre-training runs are interrupted (time limits,
failures), so they save their state periodically. A checkpoint holds the model's weights, the
optimiser's state (AdamW's two moments per parameter and its step count), the iteration, and the
random number generators' states, so that a resumed run draws the same batches (and dropout
masks) as the uninterrupted one and reproduces its losses bit for bit.

Saving writes a temporary file in the same folder and renames it over the target (`os.replace`
is atomic), so a crash mid-save leaves the previous checkpoint intact. Loading uses
`torch.load(weights_only=True)`, which rebuilds tensors and plain containers only and never
unpickles arbitrary objects: a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import copy
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
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise ValueError(f"iteration must be an int >= 0, got {iteration!r}")
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generator": None if generator is None else generator.get_state(),
        },
        "config": config,
    }
    if not isinstance(out, (str, os.PathLike)):
        torch.save(state, out)
        return
    path = Path(out)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    state = torch.load(src, map_location="cpu", weights_only=True)
    _check_state(state, src, model, optimizer, generator)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_optimizer = None if optimizer is None else copy.deepcopy(optimizer.state_dict())
    saved_rng = torch.get_rng_state(), generator.get_state() if generator is not None else None
    try:  # all or nothing: whatever fails below, the model, optimiser and RNGs are as they were
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if generator is not None:
            generator.set_state(rng["generator"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except BaseException:
        model.load_state_dict(saved_model)
        if optimizer is not None:
            optimizer.load_state_dict(saved_optimizer)
        torch.set_rng_state(saved_rng[0])
        if generator is not None:
            generator.set_state(saved_rng[1])
        raise
    return state["iteration"]


def _check_state(state: Any, src: object, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 generator: torch.Generator | None) -> None:
    """Everything `load_checkpoint` will restore is there and fits, before anything is changed."""
    where = f"the checkpoint {src!r}"
    if not isinstance(state, dict) or not {"model", "optimizer", "iteration", "rng"} <= state.keys():
        raise ValueError(f"src {src!r} is not a checkpoint written by save_checkpoint")
    iteration = state["iteration"]
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise ValueError(f"{where} holds iteration={iteration!r}, not an int >= 0")
    weights, expected = state["model"], model.state_dict()
    if not isinstance(weights, dict):
        raise ValueError(f"{where} holds no model state dict")
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{where} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[name].shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{where}: {name} is {shape}, the model's is {tuple(expected[name].shape)}")
    if optimizer is not None:
        saved = state["optimizer"]
        groups = saved.get("param_groups") if isinstance(saved, dict) else None
        if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != [
                len(g["params"]) for g in optimizer.param_groups]:
            raise ValueError(f"{where} holds an optimiser state that does not fit this optimiser's parameter groups")
    rng = state["rng"]
    if not isinstance(rng, dict) or not {"torch", "cuda", "generator"} <= rng.keys():
        raise ValueError(f"{where} holds no complete RNG state (torch, cuda, generator), got {rng!r}")
    if not isinstance(rng["torch"], torch.Tensor) or rng["torch"].dtype != torch.uint8:
        raise ValueError(f"{where} holds no CPU RNG state")
    if not isinstance(rng["cuda"], (list, tuple)):
        raise ValueError(f"{where} holds no list of CUDA RNG states")
    if generator is not None:
        if rng["generator"] is None:
            raise ValueError(f"a generator was passed, but the checkpoint {src!r} saved none")
        if not isinstance(rng["generator"], torch.Tensor) or rng["generator"].dtype != torch.uint8:
            raise ValueError(f"{where} holds no generator state")
