"""Perplexity of a causal language model over texts longer than its context: a sliding window with a
stride, per corpus source, and bits per byte so that models with different tokenizers compare.

Survey section 2.6(a), static test sets (language modelling). Jelinek et al., 1977, "Perplexity, a
measure of the difficulty of speech recognition tasks"; the strided evaluation of Press et al.,
2021, "Shortformer" (sec. 3) and of Hugging Face's "Perplexity of fixed-length models"; bits per
byte as in Gao et al., 2020, "The Pile" (sec. 5).

    PPL = exp( (1 / (T - 1)) sum_{t=1}^{T-1} -log p(x_t | x_{s(t)} .. x_{t-1}) )
    bpb = sum_t -log2 p(x_t | ...) / (UTF-8 bytes of x_1 .. x_{T-1})

Windows of `window` tokens start every `stride` tokens; each scores only the tokens the previous
window did not reach, so every token is scored once, with at least window - stride tokens of
context (except in the first window). stride = window - 1 gives chunks that overlap by one token (cheap, little context);
stride = 1 gives every token a full window (T forward passes).
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
    ids = torch.as_tensor(list(ids) if not isinstance(ids, Tensor) else ids, dtype=torch.long).flatten()
    check_int("window", window, minimum=2)
    check_int("stride", stride, minimum=1)
    if window > getattr(model, "context_length", window):
        raise ValueError(f"window must be at most the model's context length {model.context_length}, got {window}")
    if stride >= window:
        raise ValueError(f"stride must be less than window ({window}), got {stride}")
    if ids.numel() < 2:
        raise ValueError(f"ids must hold at least two tokens, got {ids.numel()}")
    device = next(model.parameters()).device
    total = ids.numel()
    nll = torch.empty(total - 1)
    scored_to = 1  # the next target position not yet scored
    begin = 0
    while scored_to < total:
        end = min(begin + window, total)
        x = ids[begin:end].to(device)[None]
        logp = model(x).float().log_softmax(-1)[0]  # (end - begin, vocab); row j predicts ids[begin + j + 1]
        first = max(scored_to, begin + 1)  # the window's first target: position 0 of a window has no context
        targets = ids[first:end].to(device)
        rows = logp[first - begin - 1 : end - begin - 1]
        nll[first - 1 : end - 1] = -rows.gather(-1, targets[:, None])[:, 0].cpu()
        scored_to = end
        begin += stride
    return nll


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
