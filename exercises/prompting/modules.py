"""Exercises for Chapter 3: the tensor operations under soft prompts and prefix tuning.

Fill in each body that raises NotImplementedError; the docstrings say what to return. Grade with
`llm-course grade 3`. Mirrors `reference/prompting/modules.py`; the modules themselves (SoftPrompt,
PrefixTuning, PromptedLM, ...) are the reference's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reference.prompting.modules import (  # noqa: F401  the non-exercise parts
    PrefixTuning, PromptedLM, PromptEncoder, SoftPrompt, attention_layers, count_parameters, freeze,
)
from reference.validation import check_int  # noqa: F401


def prepend_prompt(embeddings: Tensor, prompt: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Put a soft prompt in front of a batch of input embeddings: x_0 = [P; E[ids]] (Lester et al., 2021).

    Args:
        embeddings: the text's embeddings, (batch, seq, d_model).
        prompt: the prompt, (n, d_model) shared by every row, or (batch, n, d_model) per row.
        attention_mask: None, or (batch, seq) with 1/True at real tokens and 0/False at padding.

    Returns:
        (batch, n + seq, d_model) embeddings (the prompt cast to the embeddings' dtype), and the mask
        widened to (batch, n + seq) with the prompt's positions real (None stays None), in the
        mask's dtype.
    """
    # Hint: give a shared (n, d) prompt a batch dimension first; the prompt's positions are real tokens of the mask.
    raise NotImplementedError("Exercise 3.1: prepend a soft prompt")


def prefix_key_values(flat: Tensor, num_layers: int, num_kv_heads: int, head_dim: int, batch: int) -> list[tuple[Tensor, Tensor]]:
    """Cut a flat prefix into every layer's keys and values (peft's `PrefixTuning` layout).

    Row t of `flat` is virtual token t's keys and values at every layer, laid out as
    (num_layers, 2, num_kv_heads, head_dim): index [l, 0] is its key at layer l, [l, 1] its value.

    Args:
        flat: (n, num_layers * 2 * num_kv_heads * head_dim).
        num_layers, num_kv_heads, head_dim: the model's attention shape.
        batch: rows to broadcast to (>= 1).

    Returns:
        num_layers pairs (keys, values), each (batch, num_kv_heads, n, head_dim): the layout that
        attention's key/value cache holds, the same prefix in every row.
    """
    # Hint: view each row as (layers, key|value, heads, head_dim), then move the virtual-token axis next to head_dim.
    raise NotImplementedError("Exercise 3.2: prefix keys and values")
