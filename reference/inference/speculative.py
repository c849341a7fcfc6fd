"""Speculative decoding: a cheap draft proposes k tokens, the target checks them in one forward.

Leviathan et al. (2023), "Fast Inference from Transformers via Speculative Decoding", and Chen et
al. (2023), "Accelerating Large Language Model Decoding with Speculative Sampling" (beyond the survey).
Decoding is memory-bound: one forward over k + 1 positions costs the target about as much as one
over a single position, so if the draft's guesses are often right, several tokens come out of each
target forward. The acceptance rule keeps the output distributed exactly as the target's:

    draft token x_i ~ q_i;  accept it with probability min(1, p_i(x_i) / q_i(x_i));
    at the first rejection draw the replacement from norm(max(0, p_i - q_i)) and stop;
    if all k are accepted, draw one more token from p_{k+1}.

(Leviathan et al., Theorem 1; Chen et al., Theorem 1.) With greedy decoding p and q are one-hot and
the rule accepts exactly the draft tokens that equal the target's argmax.

Two drafts that share the target's tokenizer and need no second model:
  - `PromptLookupDraft`: copy the k tokens that followed the latest earlier occurrence of the last
    n-gram (Saxena, 2023, "prompt lookup decoding"): a deterministic proposal, q one-hot;
  - `TruncatedDraft`: the target's first layers with its final norm and head (a self-speculative
    "early exit" draft, as in Zhang et al., 2023, "Draft & Verify"), sampled like the target.

Works with models shaped like `reference.models.llama.TransformerLM` (a forward with `cache=`),
one sequence at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from reference.inference.generate import KVCache
from reference.validation import check_float, check_int


# ----------------------------------------------------------------------------------------------
# The acceptance rule
# ----------------------------------------------------------------------------------------------


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
    k = draft_tokens.shape[0]
    out: list[int] = []
    for i in range(k):
        x = int(draft_tokens[i])
        p, q = target_probs[i, x], draft_probs[i, x]
        u = torch.rand((), generator=generator, device=target_probs.device)
        if u * q <= p:  # u < p / q, written without dividing (q > 0: x was drawn from q)
            out.append(x)
            continue
        residual = (target_probs[i] - draft_probs[i]).clamp(min=0)
        out.append(int(torch.multinomial(residual / residual.sum(), 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(target_probs[k], 1, generator=generator)))
    return out


def _distribution(logits: Tensor, temperature: float) -> Tensor:
    """softmax(z / T) in float32, one-hot of the argmax for T = 0; (..., vocab)."""
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    return torch.softmax(logits / temperature, dim=-1)


# ----------------------------------------------------------------------------------------------
# Drafts
# ----------------------------------------------------------------------------------------------


class PromptLookupDraft:
    """Propose the continuation of the latest earlier occurrence of the context's last n-gram.

    Tries n = max_ngram down to min_ngram; proposes nothing if no n-gram recurs. The proposal is
    deterministic, so its distribution q is one-hot.
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        self.max_ngram, self.min_ngram = check_int("max_ngram", max_ngram, 1), check_int("min_ngram", min_ngram, 1)
        if min_ngram > max_ngram:
            raise ValueError(f"min_ngram={min_ngram} must be <= max_ngram={max_ngram}")

    def reset(self) -> None:
        """Nothing to forget (the draft keeps no state)."""

    def propose(self, ids: Sequence[int], k: int, vocab: int, temperature: float, generator=None) -> tuple[list[int], Tensor]:
        """Up to k tokens and their (one-hot) distributions (len, vocab)."""
        tokens: list[int] = []
        for n in range(min(self.max_ngram, len(ids) - 1), self.min_ngram - 1, -1):
            tail = list(ids[-n:])
            for start in range(len(ids) - n - 1, -1, -1):  # the latest earlier occurrence first
                if list(ids[start:start + n]) == tail:
                    tokens = list(ids[start + n:start + n + k])
                    break
            if tokens:
                break
        probs = torch.zeros(len(tokens), vocab)
        if tokens:
            probs[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
        return tokens, probs


class TruncatedDraft:
    """The target's first `num_layers` blocks, its final norm and its head: a draft sharing its weights' start."""

    def __init__(self, target: nn.Module, num_layers: int) -> None:
        check_int("num_layers", num_layers, 1)
        if num_layers >= len(target.layers):
            raise ValueError(f"num_layers must be < the target's {len(target.layers)} layers, got {num_layers}")
        draft = copy.copy(target)  # a shallow copy: the same modules, fewer of them
        draft._modules = dict(target._modules)
        draft.layers = nn.ModuleList(list(target.layers)[:num_layers])
        draft.config = dict(target.config, num_layers=num_layers)
        self.model = draft
        self.cache: KVCache | None = None

    def reset(self) -> None:
        self.cache = None

    @torch.no_grad()
    def propose(self, ids: Sequence[int], k: int, vocab: int, temperature: float, generator=None) -> tuple[list[int], Tensor]:
        """k tokens sampled from the draft (its cache rolled back to the accepted prefix) and their q (k, vocab)."""
        model = self.model
        device = next(model.parameters()).device
        if self.cache is None:
            self.cache = KVCache.for_model(model, 1)
        cache = self.cache
        cache.length = min(cache.length, len(ids) - 1)  # forget rejected tokens
        k = min(k, model.context_length - len(ids))
        tokens, dists = [], []
        feed = list(ids[cache.length:])
        for _ in range(k):
            logits = model(torch.tensor([feed], device=device), cache=cache, last_only=True)[0, -1]
            q = _distribution(logits, temperature)
            token = int(torch.multinomial(q, 1, generator=generator)) if temperature else int(q.argmax())
            tokens.append(token)
            dists.append(q)
            feed = [token]
        return tokens, torch.stack(dists) if dists else torch.zeros(0, vocab)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


@dataclass
class SpeculativeResult:
    """tokens: the new tokens; target_forwards: how many times the target ran; proposed / accepted:
    draft tokens offered and kept (acceptance rate = accepted / proposed)."""

    tokens: list[int]
    target_forwards: int = 0
    proposed: int = 0
    accepted: int = 0
    accepted_per_round: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return len(self.tokens) / self.target_forwards if self.target_forwards else 0.0


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
