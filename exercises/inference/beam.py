"""Exercises for Chapter 15 (beam search). Fill in each body that raises NotImplementedError; the
docstrings say what to do. Grade with `llm-course grade 15`. Mirrors `reference/inference/beam.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reference.inference.beam import BeamSearchResult, _reorder  # noqa: F401
from reference.inference.generate import KVCache
from reference.validation import check_float, check_int


@torch.no_grad()
def beam_search(
    model: nn.Module,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    num_return_sequences: int = 1,
) -> BeamSearchResult:
    """Beam search for one prompt (Hugging Face's rules, see the module docstring).

    Args:
        model: a TransformerLM-like causal model in eval mode (forward with `cache=`).
        prompt: the prompt's ids.
        max_new_tokens: the length limit (new tokens).
        num_beams: B, beams kept (>= 1).
        length_penalty: the exponent of the length in the finished score.
        eos_token_id: id(s) that end a hypothesis.
        num_return_sequences: how many of the finished hypotheses to return (<= num_beams).
    Returns:
        A `BeamSearchResult`, best hypothesis first.
    """
    # Hint: Keep B running beams with their summed log-probabilities; per step take the best max(2, 1 + #eos) * B extensions over all beams; only the first B may finish (score / new_len ** length_penalty); the next beams are the best B that did not; reorder the cache rows; stop by the module docstring's rule.
    raise NotImplementedError("Exercise 15.10: beam search with length penalty")
