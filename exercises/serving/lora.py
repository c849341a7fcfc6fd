"""Exercises for Chapter 16: many LoRA adapters in one batch.

`MultiLoRALinear` (the reference's) computes the shared base product and adds `lora_delta`, each
row's own adapter update, which you write. The engine tests run `LLMEngine(..., lora_delta_fn=...)`
with your function on a batch mixing the base model and two adapters, against Chapter 15's
`generate` on each merged model. Grade with `llm-course grade 16`. Mirrors `reference/serving/lora.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def lora_delta(x: Tensor, row_slots: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: Tensor) -> Tensor:
    """Each row's own low-rank update, scaling[s_b] * B[s_b] A[s_b] x[b], s_b = row_slots[b].

    S-LoRA / Punica's gathered product (BGMV): the rows of one batch use different adapters, so each
    row's A and B are gathered from the stacks by its slot, then two batched products of size r
    follow. Slot 0 is the base model (its A and B are zeros); ranks below r are zero-padded.

    Args:
        x: (batch, ..., d_in), the layer's input.
        row_slots: (batch,) integer slot of each row's adapter.
        lora_A: (slots, r, d_in) stacked A matrices.
        lora_B: (slots, d_out, r) stacked B matrices.
        scaling: (slots,) alpha / r of each slot.

    Returns:
        (batch, ..., d_out) in lora_A's dtype: what row b adds to the base layer's output.
    """
    # Hint: index the stacks with the row slots (one A, B and scale per row), then contract x with A over d_in and the result with B over the rank.
    raise NotImplementedError("Exercise 16.9: per-row LoRA update (gathered adapters)")
