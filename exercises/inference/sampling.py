"""Exercises for Chapter 15 (the logits processors). Fill in each body that raises NotImplementedError; the
docstrings say what to do. Grade with `llm-course grade 15`. Mirrors `reference/inference/sampling.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reference.inference.sampling import SamplingParams, TokenHistory  # noqa: F401


def repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019, eq. 1 as Hugging Face implements it).

    For every token that occurs in the row (`seen` True), z -> z / penalty if z > 0 else z * penalty:
    with penalty > 1 a seen token always becomes less likely, whatever the sign of its logit.

    Args:
        logits: (batch, vocab).
        seen: (batch, vocab) bool, True where the token occurs in the prompt or the output.
        penalty: rho > 0 (1: no change).
    Returns:
        (batch, vocab) logits, a new tensor.
    """
    # Hint: Positive and negative logits are treated differently, so that a seen token always loses probability.
    raise NotImplementedError("Exercise 15.5: repetition penalty")


def frequency_presence_penalty(logits: Tensor, counts: Tensor, frequency: float, presence: float) -> Tensor:
    """OpenAI's penalties: z_j - frequency * c_j - presence * [c_j > 0], c_j the count of j in the output.

    Args:
        logits: (batch, vocab).
        counts: (batch, vocab) how often each token was generated so far (not counting the prompt).
    Returns:
        (batch, vocab) logits, a new tensor.
    """
    # Hint: One term scales with the count, the other only asks whether the count is positive.
    raise NotImplementedError("Exercise 15.6: frequency and presence penalties")


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties with the k-th kept too), -inf elsewhere; (..., vocab)."""
    # Hint: Find the k-th largest value of each row; everything strictly below it becomes -inf (ties stay). k may exceed the vocabulary.
    raise NotImplementedError("Exercise 15.2: top-k filter")


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most probable tokens whose probability sums to >= p.

    Sort each row by decreasing probability; a token stays if the probability of the tokens before
    it is still < p (so the most probable token always stays). -inf elsewhere; (..., vocab).
    """
    # Hint: Sort by decreasing probability; a token stays while the mass of the tokens before it is still below p. Scatter the decision back to vocabulary order.
    raise NotImplementedError("Exercise 15.3: top-p (nucleus) filter")


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Min-p filtering (Nguyen et al., 2024): keep the tokens whose probability is >= min_p * max p.

    The threshold scales with the model's confidence: a peaked distribution keeps few tokens, a flat
    one many; the most probable token always stays. In logits: z_j >= z_max + log(min_p).

    Args:
        logits: (..., vocab) (after temperature).
        min_p: in [0, 1]; 0 keeps everything.
    Returns:
        (..., vocab), -inf at the removed tokens.
    """
    # Hint: Compare each token's probability with min_p times the row's largest probability.
    raise NotImplementedError("Exercise 15.4: min-p filter")
