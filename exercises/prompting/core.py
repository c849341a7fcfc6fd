"""Exercises for Chapter 3: label-word scoring, calibration, AutoPrompt candidates, answer extraction.

Fill in each body that raises NotImplementedError; the docstrings say what to return. Grade with
`llm-course grade 3`. Mirrors `reference/prompting/core.py`.
"""

from __future__ import annotations

import re  # noqa: F401
from collections.abc import Sequence

import torch  # noqa: F401
from torch import Tensor

from reference.prompting.core import _NUMBER  # noqa: F401  the number pattern
from reference.validation import check_int  # noqa: F401


def word_logprobs(logits: Tensor, token_ids: Tensor, word_start: Tensor, word_length: Tensor) -> Tensor:
    """Summed log-probability of a label word that follows a prompt in each row (causal models).

    Row b of `token_ids` is [prompt; word; padding]: the word's tokens sit at positions
    word_start[b] .. word_start[b] + word_length[b] - 1, and token t is predicted by the logits at
    position t - 1. Returns sum_j log softmax(logits[b, s + j - 1])[token_ids[b, s + j]].

    Args:
        logits: (batch, seq, vocab) from the model on `token_ids`.
        token_ids: (batch, seq).
        word_start: (batch,) integer, >= 1 (the prompt is not empty).
        word_length: (batch,) integer, >= 1.

    Returns:
        (batch,) float log-probabilities (<= 0), in float32 or wider.
    """
    # Hint: token t is predicted at position t - 1; sum, over the word's positions only, the log-probabilities of the tokens there.
    raise NotImplementedError("Exercise 3.3: label-word log-probability")


def calibrate(probs: Tensor, content_free: Tensor) -> Tensor:
    """Contextual calibration (Zhao et al., 2021): q = normalise(p / p_cf) over the classes.

    Args:
        probs: (..., num_classes) class probabilities of the real inputs (each row sums to 1).
        content_free: (num_classes,) the class probabilities of a content-free input, > 0.

    Returns:
        (..., num_classes) calibrated probabilities, each row summing to 1. A content-free input
        itself comes out uniform.
    """
    # Hint: W = diag(p_cf)^-1 is a division; the result must be a distribution again.
    raise NotImplementedError("Exercise 3.4: contextual calibration")


def autoprompt_candidates(grad: Tensor, embeddings: Tensor, k: int, exclude: Sequence[int] = ()) -> Tensor:
    """AutoPrompt's candidate tokens for each trigger slot (Shin et al., 2020, eq. 2).

    Swapping slot i's embedding for token w's changes the loss by about (e_w - e_{t_i}) . g_i, so the
    tokens that lower it most are the top-k of -e_w . g_i.

    Args:
        grad: (num_slots, d_model) gradient of the loss with respect to each slot's input embedding.
        embeddings: (vocab, d_model) the model's input embedding table.
        k: candidates per slot (1 <= k <= vocab).
        exclude: token ids never proposed (special tokens), scored -inf.

    Returns:
        (num_slots, k) long tensor of token ids, best first.
    """
    # Hint: the loss goes down most for tokens whose embedding points against the gradient.
    raise NotImplementedError("Exercise 3.5: AutoPrompt candidates")


def extract_answer(text: str) -> float | None:
    """The number a (chain-of-thought) answer ends on.

    The number after the last "answer is" / "answer:" if there is one, otherwise the last number in
    the text; thousands separators ("1,234") are read, a leading minus sign is kept, a sentence's
    final period is not part of the number. None when the text holds no number.
    """
    # Hint: prefer an explicit 'answer is' cue; otherwise the last number counts, with its sign and separators.
    raise NotImplementedError("Exercise 3.6: answer extraction")
