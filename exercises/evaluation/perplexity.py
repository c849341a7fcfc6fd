"""Exercises for Chapter 13: perplexity of a causal language model over texts longer than its context: a sliding window with a

Implement sliding_window_nll (13.11): fill in each body that raises NotImplementedError; the docstrings say
what to return. The rest of the module is the reference's own code, so that it runs on your
functions. Grade with `llm-course grade 13`. Mirrors `reference/evaluation/perplexity.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reference.validation import check_int


@torch.no_grad()
def sliding_window_nll(model: nn.Module, ids: Sequence[int] | Tensor, window: int, stride: int) -> Tensor:
    """Negative log-likelihood (nats) of every token after the first, under strided windows.

    Window k covers ids[k*stride : k*stride + window]; it scores the targets from where the previous
    window ended (its last input position + 1) to its own end, and the windows stop at the window
    that reaches the last token. Token 0 is context only.

    Args:
        model: (1, seq) ids -> (1, seq, vocab) logits; a causal decoder.
        ids: T >= 2 token ids (a list or a 1-D integer tensor).
        window: tokens per forward pass, 2 <= window <= the model's context length.
        stride: how far each window moves, 1 <= stride < window (consecutive windows overlap by
            window - stride tokens, so the first token a window scores has context).

    Returns:
        (T - 1,) float32 tensor: entry t - 1 is -log p(ids[t] | the window's tokens before t).
    """
    # Hint: keep the position of the next unscored target; each window scores from there to its end, then moves by stride.
    raise NotImplementedError("Exercise 13.11: strided sliding-window NLL")


def perplexity(model: nn.Module, ids: Sequence[int] | Tensor, window: int, stride: int | None = None) -> float:
    """exp of the mean strided NLL (`sliding_window_nll`); stride defaults to window // 2."""
    stride = max(window // 2, 1) if stride is None else stride
    return math.exp(float(sliding_window_nll(model, ids, window, stride).mean()))


def token_bytes(tokenizer, ids: Sequence[int]) -> int:
    """UTF-8 bytes the tokens stand for: from `tokenizer.vocab` ({id: bytes}) when it has one, else by decoding."""
    vocab = getattr(tokenizer, "vocab", None)
    if isinstance(vocab, dict) and vocab and isinstance(next(iter(vocab.values())), bytes):
        return sum(len(vocab[int(i)]) for i in ids)
    return len(tokenizer.decode(list(ids)).encode("utf-8"))


def text_scores(model: nn.Module, tokenizer, text: str, window: int, stride: int) -> dict[str, float]:
    """Perplexity, mean NLL (nats/token), bits per byte, and the counts, of one text."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids = tokenizer.encode(text)
    nll = sliding_window_nll(model, ids, window, stride)
    nbytes = token_bytes(tokenizer, ids[1:])
    total = float(nll.sum())
    return {"perplexity": math.exp(total / nll.numel()), "nll_per_token": total / nll.numel(),
            "bits_per_byte": total / math.log(2) / nbytes, "tokens": int(nll.numel()), "bytes": nbytes}  # fmt: skip


def scores_by_source(
    model: nn.Module, tokenizer, texts: dict[str, Sequence[str]], window: int, stride: int, max_tokens: int | None = None
) -> dict[str, dict[str, float]]:
    """`text_scores` pooled over the texts of each source ({source: [text, ...]}): token-weighted
    perplexity and bits per byte, so that a long document counts in proportion to its length.
    `max_tokens` cuts each text's ids to keep the evaluation short."""
    out = {}
    for source, docs in texts.items():
        total, count, nbytes = 0.0, 0, 0
        for text in docs:
            ids = tokenizer.encode(text)[:max_tokens]
            if len(ids) < 2:
                continue
            nll = sliding_window_nll(model, ids, window, stride)
            total, count, nbytes = total + float(nll.sum()), count + nll.numel(), nbytes + token_bytes(tokenizer, ids[1:])
        if count:
            out[source] = {"perplexity": math.exp(total / count), "nll_per_token": total / count,
                           "bits_per_byte": total / math.log(2) / nbytes, "tokens": count, "bytes": nbytes}  # fmt: skip
    return out
