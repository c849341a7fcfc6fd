"""Exercises for Chapter 6, pre-training objectives: next-token prediction, masked language modelling
(80/10/10), T5's random noise spans and span corruption, the prefix language model.

Fill in each body that raises NotImplementedError; the docstrings say what to return. Grade with
`llm-course grade 6`. Mirrors `reference/training/objectives.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reference.validation import check_int


def next_token_prediction(ids: Tensor, pad_id: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Causal language modelling: predict token t + 1 from tokens 0 .. t.

    The inputs are every token but the last, the targets every token but the first, so that
    position t of the model's output is scored against ids[t + 1].

    Args:
        ids: (seq,) or (batch, seq) integer token ids, seq >= 2.
        pad_id: if given, targets equal to it do not count (their loss_mask is False).

    Returns:
        inputs (..., seq - 1), targets (..., seq - 1), loss_mask (..., seq - 1) bool.
    """
    # Hint: position t reads tokens up to t and is scored on token t + 1; padded targets are not scored. Work on the
    # last dimension so that a batch works too.
    raise NotImplementedError("Exercise 6.1: next-token prediction")


def masked_language_modeling(
    ids: Tensor,
    generator: torch.Generator,
    mask_token_id: int,
    vocab_size: int,
    mask_probability: float = 0.15,
    special_ids: Sequence[int] = (),
) -> tuple[Tensor, Tensor, Tensor]:
    """BERT's masked language modelling: choose 15% of the tokens and ask for them back.

    Each token that is not special is chosen independently with probability `mask_probability`.
    A chosen token is replaced by `mask_token_id` with probability 0.8, by a token drawn uniformly
    from [0, vocab_size) with probability 0.1, and left as it is with probability 0.1 (Devlin et al.,
    2019, section 3.1 and appendix C.2): the model cannot tell which unmasked tokens it will be
    asked about, so it must represent every token well.

    Args:
        ids: (seq,) or (batch, seq) integer token ids.
        generator: the source of randomness (a CPU `torch.Generator`).
        mask_token_id: the id of [MASK].
        vocab_size: the number of ids random replacements are drawn from.
        mask_probability: the chance that a token is chosen (in [0, 1]).
        special_ids: ids that are never chosen ([CLS], [SEP], padding, ...).

    Returns:
        inputs (the corrupted ids), targets (the original ids) and loss_mask (the chosen
        positions, bool), each of ids' shape.
    """
    # Hint: every random draw comes from `generator`. Special ids are never chosen; a chosen token becomes [MASK],
    # a random id or itself with probabilities 0.8, 0.1, 0.1, decided independently per token, without a Python loop.
    raise NotImplementedError("Exercise 6.2: masked language modelling (80/10/10)")


def random_spans_noise_mask(
    length: int, generator: torch.Generator, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> Tensor:
    """T5's noise mask: which of `length` tokens to drop, in spans alternating with kept spans.

    As `random_spans_noise_mask` in T5's preprocessors (without its random roll). The counts are
    fixed by the arguments:

        num_noise = round(length * noise_density), clamped to [1, length - 1]
        num_spans = max(1, round(num_noise / mean_noise_span_length))

    The kept tokens are cut into `num_spans` non-empty spans and so are the noise tokens, every
    such cut equally likely; the spans alternate kept, noise, kept, noise, ..., so the first token
    is always kept and the last always noise.

    Args:
        length: the number of tokens (>= 2).
        generator: the source of randomness (a CPU `torch.Generator`).
        noise_density: the fraction of tokens to drop, in (0, 1).
        mean_noise_span_length: the mean length of a dropped span (> 0).

    Returns:
        bool tensor of shape (length,), True at the noise tokens.
    """
    # Hint: the counts come from the length alone (see the docstring); only the placement is random. Split the noise
    # tokens and the kept tokens each into the same number of non-empty runs, then alternate them.
    raise NotImplementedError("Exercise 6.3: T5 random noise spans")


def span_corruption(
    ids: Tensor,
    generator: torch.Generator,
    sentinel_ids: Sequence[int],
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """T5's span corruption: drop random spans, mark each with a sentinel, ask for the spans back.

    For ids "a b c d e f g" with noise spans "c d" and "g", and sentinels <0>, <1>:

        inputs  = a b <0> e f <1>          (each noise span becomes one sentinel)
        targets = <0> c d <1> g            (each noise span, after its sentinel)

    Noise spans come from `random_spans_noise_mask`, one draw per sequence; since the counts
    depend only on the length, every row of a batch has the same input and target lengths.

    Args:
        ids: (seq,) or (batch, seq) integer token ids, seq >= 2.
        generator: the source of randomness (a CPU `torch.Generator`).
        sentinel_ids: the ids of the sentinels, in the order they are used (T5: <extra_id_0> =
            vocab_size - 1, <extra_id_1> = vocab_size - 2, ...); at least as many as spans.
        noise_density: the fraction of tokens to drop.
        mean_noise_span_length: the mean length of a dropped span.

    Returns:
        inputs (..., seq - num_noise + num_spans), targets (..., num_noise + num_spans) and
        loss_mask (all True, the shape of targets).
    """
    # Hint: one noise mask per row; each noise span becomes one sentinel in the inputs, and the targets list each
    # sentinel followed by the span it replaced. Check: putting the spans back gives the row.
    raise NotImplementedError("Exercise 6.4: span corruption with sentinels")


def prefix_language_modeling(
    ids: Tensor, generator: torch.Generator | None = None, prefix_length: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Prefix LM: read a prefix with full (bidirectional) attention, then predict the rest causally.

    The inputs and targets are those of `next_token_prediction`, but only the suffix is scored:
    input position t (which predicts ids[t + 1]) counts when t + 1 >= prefix length. The model
    needs a prefix-LM attention mask: query i may attend key j when j <= i or j < prefix length
    (the prefix sees all of itself; nothing sees a suffix token ahead of it). The prefix length of
    each row is returned so that the model can build that mask.

    Args:
        ids: (seq,) or (batch, seq) integer token ids, seq >= 2.
        generator: draws each row's prefix length uniformly from [1, seq - 1] when `prefix_length`
            is None.
        prefix_length: the same prefix length for every row, in [1, seq - 1].

    Returns:
        inputs (..., seq - 1), targets (..., seq - 1), loss_mask (..., seq - 1) bool, and
        prefix_lengths (...) long: (batch,) for batched ids, a 0-d tensor otherwise.
    """
    # Hint: reuse next-token prediction; only targets after the prefix are scored. Which target index is the first
    # one past a prefix of length P?
    raise NotImplementedError("Exercise 6.5: prefix language model")
