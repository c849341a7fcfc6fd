"""Exercises for Chapter 16: one step of beam search as the serving engine runs it.

`LLMEngine` keeps a request's beams as sequences of one group (their blocks shared, copied on
write); after each forward pass it asks `beam_step` which candidates continue and which hypotheses
finish. The engine tests run `LLMEngine(..., beam_step_fn=...)` with your `beam_step` and compare
its beams with Chapter 15's `beam_search`. Grade with `llm-course grade 16`. Mirrors
`reference/serving/beam.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reference.validation import check_float, check_int


def beam_step(
    beam_scores: Sequence[float],
    logprobs: Tensor,
    num_beams: int,
    *,
    new_len: int,
    length_penalty: float = 1.0,
    eos_token_ids: Sequence[int] = (),
    last: bool = False,
) -> tuple[list[tuple[int, int, float]], list[tuple[int, int, float]]]:
    """Choose the next beams and the newly finished hypotheses from every beam's next-token log-probabilities.

    Args:
        beam_scores: (rows,) each live beam's sum of log-probabilities so far (0 before the first token).
        logprobs: (rows, vocab) log-softmax of each beam's next-token logits.
        num_beams: B, the beams kept (>= 1).
        new_len: the new tokens a candidate has, its own included (>= 1).
        length_penalty: exponent of new_len in a finished hypothesis's score.
        eos_token_ids: ids that end a hypothesis.
        last: this step reaches the length limit: every candidate ends.

    Returns:
        (live, finished): live is up to B (beam row, token, sum of log-probabilities) of the
        candidates that do not end, best first (fewer than B only when `last` or the candidates run
        out); finished is (beam row, token, length-normalised score) of those among the first B
        candidates that end, in candidate order.
    """
    # Hint: add each beam's score to its row, take the top max(2, 1 + #end ids) * B over the flattened (rows x vocab);
    # a flat index gives the row and the token; only the first B candidates may finish.
    raise NotImplementedError("Exercise 16.8: one beam-search step (Hugging Face's candidate rules)")
