"""Exercise for Chapter 5: the prefix decoder's attention mask.

Fill in the body that raises NotImplementedError. Grade with `llm-course grade 5`. Mirrors
`reference/models/masks.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def prefix_mask(seq_len: int, prefix_length: int | Tensor, *, device: torch.device | str | None = None) -> Tensor:
    """A prefix decoder's mask: bidirectional inside the prefix, causal after it.

    Query i may attend to key j when j <= i (causal) or when j < prefix_length (the prefix is
    visible to everyone, and the prefix sees all of itself).

    Args:
        seq_len: sequence length.
        prefix_length: the number of prefix tokens, an int in [0, seq_len] shared by the batch,
            or an integer tensor (batch,) with one length per sequence.

    Returns:
        Boolean mask (seq_len, seq_len) for an int, (batch, 1, seq_len, seq_len) for a tensor.
        prefix_length 0 gives the causal mask; prefix_length seq_len gives the all-True one.
    """
    # Hint: start from the causal rule and add the prefix's columns; build it by broadcasting position indices
    # (rows: queries, columns: keys), no loop. A tensor of lengths adds a batch dimension, and a head dimension of 1.
    raise NotImplementedError("Exercise 5.6: prefix-decoder mask")

