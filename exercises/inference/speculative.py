"""Exercises for Chapter 15 (speculative decoding). Fill in each body that raises NotImplementedError; the
docstrings say what to do. Grade with `llm-course grade 15`. Mirrors `reference/inference/speculative.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reference.inference.generate import KVCache
from reference.inference.speculative import PromptLookupDraft, SpeculativeResult, TruncatedDraft  # noqa: F401
from reference.validation import check_float, check_int


def accept_draft(
    draft_tokens: Tensor, draft_probs: Tensor, target_probs: Tensor, generator: torch.Generator | None = None
) -> list[int]:
    """Leviathan et al.'s acceptance rule for one sequence.

    Args:
        draft_tokens: (k,) the draft's proposals x_1 .. x_k.
        draft_probs: (k, vocab) the distributions q_i they were drawn from.
        target_probs: (k + 1, vocab) the target's distributions p_i at the same positions, and
            p_{k+1} after the last draft token.
        generator: the torch.Generator the uniforms and the replacement are drawn from.
    Returns:
        The accepted draft tokens followed by one token from the target (the replacement at the
        first rejection, or a draw from p_{k+1}): between 1 and k + 1 ids.
    """
    # Hint: For each draft token draw u ~ U(0, 1) and accept when u < p(x) / q(x); at the first rejection draw from the normalised positive part of p - q and stop; if all pass, draw one more from the last target distribution.
    raise NotImplementedError("Exercise 15.9: speculative decoding acceptance rule")


def _distribution(logits: Tensor, temperature: float) -> Tensor:
    """softmax(z / T) in float32, one-hot of the argmax for T = 0; (..., vocab)."""
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    return torch.softmax(logits / temperature, dim=-1)


@torch.no_grad()
def speculative_generate(
    target: nn.Module,
    draft: PromptLookupDraft | TruncatedDraft,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    k: int = 4,
    temperature: float = 0.0,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> SpeculativeResult:
    """Decode one sequence speculatively: tokens distributed as the target's (equal to its greedy ones at T = 0).

    Args:
        target: the model whose distribution the output follows (TransformerLM-like, in eval mode).
        draft: a `PromptLookupDraft` or a `TruncatedDraft`.
        prompt: the prompt's ids.
        max_new_tokens: how many tokens to add (fewer at eos).
        k: draft tokens per round.
        temperature: 0 (greedy) or the softmax temperature of both target and draft.
        generator: what every draw comes from.
    """
    check_int("max_new_tokens", max_new_tokens, 0)
    check_int("k", k, 1)
    check_float("temperature", temperature, minimum=0.0)
    ids = list(prompt)
    if not ids:
        raise ValueError("prompt must hold at least one token")
    if len(ids) + max_new_tokens > target.context_length:
        raise ValueError(f"prompt of {len(ids)} + max_new_tokens={max_new_tokens} exceeds context_length={target.context_length}")
    device = next(target.parameters()).device
    vocab = target.config["vocab_size"]
    cache = KVCache.for_model(target, 1, len(ids) + max_new_tokens + k + 1)
    draft.reset()
    result = SpeculativeResult(tokens=[])
    while len(result.tokens) < max_new_tokens:
        room = max_new_tokens - len(result.tokens)
        proposal, q = draft.propose(ids, min(k, room - 1), vocab, temperature, generator) if room > 1 else ([], None)
        feed = ids[cache.length:] + proposal  # the tokens the target has not seen, then the draft's
        logits = target(torch.tensor([feed], device=device), cache=cache)[0, -(len(proposal) + 1):]
        result.target_forwards += 1
        p = _distribution(logits, temperature)  # (len(proposal) + 1, vocab)
        if proposal:
            new = accept_draft(torch.tensor(proposal), q.to(p.device), p, generator)
        else:
            new = [int(torch.multinomial(p[0], 1, generator=generator)) if temperature else int(p[0].argmax())]
        result.proposed += len(proposal)
        result.accepted += len(new) - 1
        result.accepted_per_round.append(len(new) - 1)
        new = new[:room]
        if eos_token_id is not None and eos_token_id in new:
            new = new[: new.index(eos_token_id) + 1]
        ids.extend(new)
        result.tokens.extend(new)
        cache.length = len(ids) - 1  # keep the accepted prefix; the newest token is fed next round
        if eos_token_id is not None and new[-1] == eos_token_id:
            break
    return result
