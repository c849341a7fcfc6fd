"""Exercises for Chapter 6, data feeding: random windows of a (memmapped) token array as inputs and
next-token targets.

Fill in each body that raises NotImplementedError; the docstrings say what to return. Grade with
`llm-course grade 6`. Mirrors `reference/training/data.py`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from reference.validation import check_int


def get_batch(
    dataset: npt.NDArray[np.integer],
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample `batch_size` random windows of a token array: inputs and their next-token targets.

    Each window starts at an index drawn uniformly from [0, len(dataset) - context_length - 1], so
    that every window holds context_length + 1 tokens: inputs are its first context_length tokens,
    targets its last context_length (the inputs shifted left by one).

    Args:
        dataset: a 1-D integer array of token ids (a `numpy.ndarray` or `numpy.memmap`; uint16, int32, ...).
        batch_size: the number of windows (>= 1).
        context_length: tokens per window (>= 1, < len(dataset)).
        device: where the batch goes, e.g. "cpu" or "cuda:0".
        generator: a CPU `torch.Generator` that draws the starts, for repeatable batches; None uses
            PyTorch's global generator.

    Returns:
        inputs and targets, each a long tensor of shape (batch_size, context_length) on `device`.
    """
    # Hint: draw the start positions from `generator` so that every valid start is equally likely (what is the last
    # start whose window of context_length + 1 tokens still fits?). Targets are the inputs shifted by one.
    raise NotImplementedError("Exercise 6.11: random batches of a token array")
