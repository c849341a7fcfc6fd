"""The attention masks that tell the architecture families apart.

Survey section 2.2: an encoder lets every token see every token; a causal decoder lets a token see
only itself and what came before; a prefix decoder (Raffel et al., 2020, section 3.2.1; GLM, Du et
al., 2022; U-PaLM) sees its prefix bidirectionally and is causal after it; an encoder-decoder's
cross-attention lets every decoder token see every (non-padding) encoder token.

All masks are boolean, True where a query may attend to a key, and broadcast against scores of
shape (batch, heads, seq_q, seq_k).
"""

from __future__ import annotations

import torch
from torch import Tensor

from reference.attention import causal_mask, padding_mask

__all__ = ["bidirectional_mask", "causal_mask", "prefix_mask", "cross_mask", "padding_mask"]


def bidirectional_mask(seq_len: int, *, device: torch.device | str | None = None) -> Tensor:
    """An encoder's mask: everyone sees everyone; (seq_len, seq_len), all True."""
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device)


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
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    lengths = torch.as_tensor(prefix_length, device=device)
    if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.dim() > 1:
        raise ValueError(f"prefix_length must be an int or an integer tensor (batch,), got {prefix_length!r}")
    if ((lengths < 0) | (lengths > seq_len)).any():
        raise ValueError(f"prefix_length must lie in [0, seq_len={seq_len}], got {prefix_length!r}")
    i = torch.arange(seq_len, device=device)
    causal = i[None, :] <= i[:, None]  # (seq_q, seq_k)
    if lengths.dim() == 0:
        return causal | (i[None, :] < lengths)
    in_prefix = i[None, :] < lengths[:, None]  # (batch, seq_k)
    return (causal[None] | in_prefix[:, None, :])[:, None]  # (batch, 1, seq_q, seq_k)


def cross_mask(encoder_lengths: Tensor, seq_q: int, seq_k: int | None = None) -> Tensor:
    """Cross-attention's mask: every decoder token sees every real encoder token, no padding.

    Args:
        encoder_lengths: integer tensor (batch,), the number of real encoder tokens per sequence.
        seq_q: decoder length.
        seq_k: encoder length (padded); defaults to the longest length.

    Returns:
        Boolean mask (batch, 1, seq_q, seq_k).
    """
    if seq_q < 0:
        raise ValueError(f"seq_q must be >= 0, got {seq_q}")
    keep = padding_mask(encoder_lengths, seq_k)  # (batch, 1, 1, seq_k)
    return keep.expand(-1, -1, seq_q, -1)
