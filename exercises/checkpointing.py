"""Exercises for Chapter 10, activation checkpointing: the recompute-in-backward wrapper, sqrt(n)
segments and a meter of the bytes autograd saves.

Fill in each body that raises NotImplementedError; the docstrings say what to return. Grade with
`llm-course grade 10`. Mirrors `reference/checkpointing.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from reference.checkpointing import checkpointed_forward, memory_theory  # noqa: F401
from reference.validation import check_int  # noqa: F401


def checkpoint(function: Callable[..., Tensor], *args: Any) -> Tensor:
    """`function(*args)` whose intermediate activations are not kept: recomputed in the backward pass.

    The forward pass runs under `torch.no_grad()` and saves only the tensor arguments (and the CPU
    random state, so that a dropout inside draws the same mask when recomputed). In the backward
    pass the function runs again with gradients enabled on detached copies of the inputs, and
    `torch.autograd.backward` through that fresh graph gives the inputs' gradients and accumulates
    the parameters' `.grad` (use `loss.backward()`, not `torch.autograd.grad`, with parameters).
    Chen et al., 2016, algorithm 1.

    Args:
        function: returns one tensor; may use parameters of modules it closes over.
        args: its arguments (tensors and other values).

    Returns:
        function(*args), differentiable with respect to the tensor arguments and the parameters.
    """
    # Hint: a torch.autograd.Function: forward under torch.no_grad() saving only the inputs; backward re-runs the function with gradients on detached inputs and calls torch.autograd.backward on it. Keep the random state.
    raise NotImplementedError("Exercise 10.7: recompute-in-backward checkpoint")


def segment_boundaries(num_layers: int, num_segments: int | None = None) -> list[tuple[int, int]]:
    """Split layers 0 .. num_layers - 1 into `num_segments` consecutive runs as equal as possible.

    The default is ceil(sqrt(num_layers)) segments (Chen et al., 2016, section 4.1). The first
    num_layers % num_segments segments are one layer longer. num_segments = num_layers checkpoints
    every layer; num_segments = 1 recomputes the whole chain at once.

    Args:
        num_layers: >= 1.
        num_segments: in [1, num_layers], or None for ceil(sqrt(num_layers)).

    Returns:
        [(start, stop), ...] half-open ranges that cover 0 .. num_layers - 1 in order.
    """
    # Hint: math.isqrt gives floor(sqrt(n)); divmod shares the layers out.
    raise NotImplementedError("Exercise 10.8: sqrt(n) segments")


class SavedTensorMeter:
    """Count the bytes that autograd saves for the backward pass, as they live and die.

    Inside `with SavedTensorMeter(exclude=model.parameters()) as meter:` every tensor that autograd
    saves is counted once per storage (two saved views of one tensor count once) while some node
    still holds it: `live` is the current total, `peak` the largest it reached, `saved` the sum of
    everything saved (counted once each). Storages of `exclude` (the parameters: weights, not
    activations) are not counted. The forward and the backward pass (recomputation included) must
    both run inside the block to see the peak of a checkpointed run.

    Args:
        exclude: tensors whose storages are not counted.
    """

    def __init__(self, exclude: Sequence[Tensor] | Any = ()) -> None:
        """Nothing counted yet."""
        raise NotImplementedError("Exercise 10.9: saved-activation meter")

    def pack(self, tensor: Tensor) -> Any:
        """The pack hook: count the tensor's storage if it is new, and watch the handle that holds it."""
        # Hint: count a storage once (its data_ptr), and watch the handle you return with weakref.finalize: when autograd drops it, the bytes are freed.
        raise NotImplementedError("Exercise 10.9: saved-activation meter")

    @staticmethod
    def unpack(handle: Any) -> Tensor:
        """The unpack hook: the tensor the handle holds."""
        raise NotImplementedError("Exercise 10.9: saved-activation meter")

    def __enter__(self) -> SavedTensorMeter:
        raise NotImplementedError("Exercise 10.9: saved-activation meter")

    def __exit__(self, *exc: Any) -> None:
        raise NotImplementedError("Exercise 10.9: saved-activation meter")


class _Handle:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor
