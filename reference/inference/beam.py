"""Beam search with a length penalty, step for step as Hugging Face's `generate(num_beams=...)`.

Keep the B highest-scoring partial sequences (beams), score s = sum of the tokens' log-probabilities.
At each step every beam is extended by every token, the best candidates over all B * V extensions
are kept, and a candidate that ends (an end id, or the length limit) joins the finished hypotheses
with the length-normalised score (Wu et al., 2016, section 7; Hugging Face's definition)

    score(y) = sum_t log p(y_t | y_<t, x) / |y| ** length_penalty,   |y| = new tokens, the end id included

(length_penalty > 0 favours longer outputs, < 0 shorter ones, 0 is the raw sum). Hugging Face's
rules are followed exactly, so that the beams agree with `generate(num_beams=B, early_stopping=False)`:
  - 2 B candidates are kept per step (more with several end ids: max(2, 1 + #end ids) * B);
  - only the first B candidates may finish; the next beams are the best B candidates that do not;
  - the search stops when B hypotheses are finished and the best running beam, normalised by the
    current length, cannot beat the worst of them, or at the length limit.

The KV cache holds one row per beam and is reordered (gathered along the batch) when beams are
chosen, so each step feeds one token per beam.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from reference.inference.generate import KVCache
from reference.validation import check_float, check_int


@dataclass
class BeamSearchResult:
    """sequences: the new tokens of each returned hypothesis, best first (end id included);
    scores: their length-normalised scores."""

    sequences: list[list[int]]
    scores: list[float]


def _reorder(cache: KVCache, rows: torch.Tensor) -> None:
    """Make cache row b hold what row rows[b] held (the beams chosen this step)."""
    cache.keys[:, :] = cache.keys[:, rows]
    cache.values[:, :] = cache.values[:, rows]


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
    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("num_beams", num_beams, 1)
    check_float("length_penalty", length_penalty)
    check_int("num_return_sequences", num_return_sequences, 1)
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences} must be <= num_beams={num_beams}")
    eos = set() if eos_token_id is None else {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    prompt = list(prompt)
    if not prompt or len(prompt) + max_new_tokens > model.context_length:
        raise ValueError(f"the prompt ({len(prompt)} tokens) + max_new_tokens must be within context_length={model.context_length}")
    device = next(model.parameters()).device
    keep = max(2, 1 + len(eos)) * num_beams
    cache = KVCache.for_model(model, num_beams, len(prompt) + max_new_tokens)
    logits = model(torch.tensor([prompt] * num_beams, device=device), cache=cache, last_only=True)[:, -1]
    running = torch.full((num_beams,), -1.0e9, device=device)  # only the first beam is live at the start
    running[0] = 0.0
    beams: list[list[int]] = [[] for _ in range(num_beams)]
    finished: list[tuple[float, list[int]]] = []  # (normalised score, tokens), best first
    for step in range(max_new_tokens):
        new_len = step + 1
        total = running[:, None] + torch.log_softmax(logits.float(), dim=-1)  # (B, V)
        vocab = total.shape[-1]
        top_scores, top_index = total.flatten().topk(min(keep, total.numel()))
        rows, tokens = (top_index // vocab).tolist(), (top_index % vocab).tolist()
        scores = top_scores.tolist()
        ends = [t in eos or new_len == max_new_tokens for t in tokens]
        # the first B candidates that end become finished hypotheses (if they make the best B)
        for r in range(min(num_beams, len(tokens))):
            if ends[r]:
                finished.append((scores[r] / new_len**length_penalty, beams[rows[r]] + [tokens[r]]))
        finished = sorted(finished, key=lambda h: -h[0])[:num_beams]
        live = [r for r in range(len(tokens)) if not ends[r]][:num_beams]
        if len(live) < num_beams:  # only at the length limit: nothing left to extend
            break
        beams = [beams[rows[r]] + [tokens[r]] for r in live]
        running = torch.tensor([scores[r] for r in live], device=device)
        if len(finished) == num_beams and running.max().item() / new_len**length_penalty <= finished[-1][0]:
            break  # no running beam can still beat the worst finished one (Hugging Face's heuristic)
        _reorder(cache, torch.tensor([rows[r] for r in live], device=device))
        step_tokens = torch.tensor([[tokens[r]] for r in live], device=device)
        logits = model(step_tokens, cache=cache, last_only=True)[:, -1]
    return BeamSearchResult([h[1] for h in finished[:num_return_sequences]], [h[0] for h in finished[:num_return_sequences]])
