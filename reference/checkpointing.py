"""Activation checkpointing: keep a few activations, recompute the rest during the backward pass.

Survey section 2.4(e), "Checkpoint". Chen et al., 2016, "Training Deep Nets with Sublinear Memory
Cost", section 3: split a chain of n layers into k segments and keep only each segment's input
during the forward pass; in the backward pass, run each segment's forward again (with gradients)
just before its backward. The saved memory is about k * (one boundary) + (n / k) * (one layer's
activations), smallest near k = sqrt(n), for the price of one extra forward pass.

`checkpoint` is the recompute wrapper (an autograd Function, like PyTorch's reentrant variant);
`SavedTensorMeter` measures what autograd keeps for the backward pass with
`torch.autograd.graph.saved_tensors_hooks`, live bytes over time and their peak.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reference.validation import check_int

__all__ = ["SavedTensorMeter", "checkpoint", "checkpointed_forward", "memory_theory", "segment_boundaries"]


class _Recompute(torch.autograd.Function):
    """Forward without a graph; backward recomputes the forward with a graph, then backpropagates through it."""

    @staticmethod
    def forward(ctx: Any, function: Callable[..., Tensor], rng_state: Tensor, *args: Any) -> Tensor:
        ctx.function, ctx.rng_state = function, rng_state
        tensors = [a for a in args if isinstance(a, Tensor)]
        ctx.save_for_backward(*tensors)
        ctx.layout = [isinstance(a, Tensor) for a in args]
        ctx.others = [a for a in args if not isinstance(a, Tensor)]
        with torch.no_grad():
            return function(*args)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        tensors, others = iter(ctx.saved_tensors), iter(ctx.others)
        inputs = []
        for is_tensor in ctx.layout:
            if is_tensor:
                saved = next(tensors)
                inputs.append(saved.detach().requires_grad_(saved.requires_grad))
            else:
                inputs.append(next(others))
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.set_rng_state(ctx.rng_state)  # dropout draws the same mask again
            output = ctx.function(*inputs)
        torch.autograd.backward(output, grad_output)  # accumulates into the parameters' .grad
        grads = [x.grad if isinstance(x, Tensor) and x.requires_grad else None for x in inputs]
        return (None, None, *grads)


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
    if not callable(function):
        raise TypeError(f"function must be callable, got {type(function).__name__}")
    return _Recompute.apply(function, torch.get_rng_state(), *args)


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
    check_int("num_layers", num_layers, 1)
    if num_segments is None:
        num_segments = math.isqrt(num_layers - 1) + 1  # ceil(sqrt(n))
    check_int("num_segments", num_segments, 1)
    if num_segments > num_layers:
        raise ValueError(f"num_segments must be <= num_layers={num_layers}, got {num_segments}")
    size, longer = divmod(num_layers, num_segments)
    bounds, start = [], 0
    for i in range(num_segments):
        stop = start + size + (1 if i < longer else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


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
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._holders: dict[int, int] = {}  # storage pointer -> how many packed handles hold it
        self.live = self.peak = self.saved = 0
        self._hooks: Any = None

    def _release(self, pointer: int, nbytes: int) -> None:
        self._holders[pointer] -= 1
        if self._holders[pointer] == 0:
            del self._holders[pointer]
            self.live -= nbytes

    def pack(self, tensor: Tensor) -> Any:
        """The pack hook: count the tensor's storage if it is new, and watch the handle that holds it."""
        storage = tensor.untyped_storage()
        pointer, nbytes = storage.data_ptr(), storage.nbytes()
        handle = _Handle(tensor)
        if pointer in self._excluded or nbytes == 0:
            return handle
        if pointer not in self._holders:
            self._holders[pointer] = 0
            self.live += nbytes
            self.saved += nbytes
            self.peak = max(self.peak, self.live)
        self._holders[pointer] += 1
        weakref.finalize(handle, self._release, pointer, nbytes)
        return handle

    @staticmethod
    def unpack(handle: Any) -> Tensor:
        """The unpack hook: the tensor the handle holds."""
        return handle.tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


class _Handle:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


def checkpointed_forward(model: nn.Module, token_ids: Tensor, boundaries: Sequence[tuple[int, int]] | None,
                         checkpoint_fn: Callable[..., Tensor] = checkpoint) -> Tensor:
    """The logits of a `reference.models.TransformerLM` (causal, no cache) with each segment of layers checkpointed.

    Args:
        model: a TransformerLM.
        token_ids: (batch, seq) ids.
        boundaries: segments from `segment_boundaries` (each run under `checkpoint_fn`), or None for
            no checkpointing (the plain forward, every activation kept).
        checkpoint_fn: `checkpoint`, or e.g. `functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)`.

    Returns:
        (batch, seq, vocab_size) logits, equal to `model(token_ids)`.
    """
    from reference.models.masks import causal_mask

    seq = token_ids.shape[1]
    mask, positions = causal_mask(seq, device=token_ids.device), torch.arange(seq, device=token_ids.device)
    x = model.token_embeddings(token_ids)  # (batch, seq, d_model)
    layers = list(model.layers)

    def run(start: int, stop: int) -> Callable[[Tensor], Tensor]:
        def segment(h: Tensor) -> Tensor:
            for layer in layers[start:stop]:
                h = layer(h, mask=mask, positions=positions, cache=None)
            return h

        return segment

    if boundaries is None:
        x = run(0, len(layers))(x)
    else:
        covered = [i for start, stop in boundaries for i in range(start, stop)]
        if covered != list(range(len(layers))):
            raise ValueError(f"boundaries must cover layers 0..{len(layers) - 1} in order, got {list(boundaries)}")
        for start, stop in boundaries:
            x = checkpoint_fn(run(start, stop), x)
    return model.lm_head(model.ln_final(x))


def memory_theory(num_layers: int, boundaries: Sequence[tuple[int, int]] | None, layer_bytes: int, boundary_bytes: int,
                  other_bytes: int = 0) -> int:
    """Peak saved-activation bytes predicted for a chain of identical layers (Chen et al., 2016, section 3).

    No checkpointing: every layer's activations and the rest of the model's, n * layer_bytes +
    other_bytes (the peak is at the end of the forward pass). With k segments the peak comes in
    the backward pass of the longest segment: the k segment inputs are still saved, and the
    recomputed segment holds its layers' activations, among which its own input (the same storage
    as its saved boundary, so counted once), while the output layer's activations are already
    freed: (k - 1) * boundary_bytes + longest * layer_bytes.
    """
    if boundaries is None:
        return num_layers * layer_bytes + other_bytes
    longest = max(stop - start for start, stop in boundaries)
    return (len(boundaries) - 1) * boundary_bytes + longest * layer_bytes
