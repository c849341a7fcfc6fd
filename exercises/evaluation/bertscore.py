"""Exercises for Chapter 13: bERTScore: greedy cosine matching of contextual token embeddings, with optional IDF weights.

Implement greedy_match (13.6), idf_weights (13.7): fill in each body that raises NotImplementedError; the docstrings say
what to return. The rest of the module is the reference's own code, so that it runs on your
functions. Grade with `llm-course grade 13`. Mirrors `reference/evaluation/bertscore.py`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def greedy_match(cand: Tensor, ref: Tensor, cand_weights: Tensor, ref_weights: Tensor) -> tuple[float, float, float]:
    """Precision, recall and F1 of one candidate against one reference by greedy cosine matching.

    Every token is matched to its most similar token on the other side (no one-to-one constraint);
    precision averages the candidate tokens' best similarities, recall the reference tokens', each
    weighted by its token's weight (all ones for plain BERTScore, IDF for the weighted variant).

    Args:
        cand: (n, d) candidate token embeddings (not necessarily unit length).
        ref: (m, d) reference token embeddings.
        cand_weights: (n,) weights >= 0 of the candidate tokens, at least one positive.
        ref_weights: (m,) weights >= 0 of the reference tokens, at least one positive.

    Returns:
        (P, R, F1) as floats; F1 is 0 when P + R is 0.
    """
    # Hint: normalise the rows to unit length; one matrix product gives every cosine; max over one axis for P, the other for R.
    raise NotImplementedError("Exercise 13.6: BERTScore greedy matching")


def encode(tokenizer, sentence: str) -> list[int]:
    """Ids of a sentence with [CLS] and [SEP], as bert-score encodes it (stripped, truncated to the model's length)."""
    return tokenizer.encode(sentence.strip(), add_special_tokens=True, truncation=True,
                            max_length=min(tokenizer.model_max_length, 512))  # fmt: skip


def idf_weights(references: Sequence[Sequence[int]], special_ids: Sequence[int] = ()) -> dict[int, float]:
    """IDF of every token id over `references` (lists of ids): log((M + 1) / (df + 1)), where df is
    the number of references that contain the id; the special ids get 0. An id never seen in a
    reference gets log(M + 1) (look it up with `.get(id, math.log(M + 1))`)."""
    # Hint: count each id once per reference (a set), then the smoothed log; the special ids weigh nothing.
    raise NotImplementedError("Exercise 13.7: IDF weights")


@torch.no_grad()
def embed(model: nn.Module, ids: Sequence[Sequence[int]], layer: int, pad_id: int = 0, batch_size: int = 32) -> list[Tensor]:
    """Contextual embeddings of each id list from the hidden states after `layer` layers; a list of (len, d) tensors."""
    device = next(model.parameters()).device
    out: list[Tensor] = []
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        width = max(len(x) for x in batch)
        x = torch.tensor([list(row) + [pad_id] * (width - len(row)) for row in batch], device=device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch], device=device)
        hidden = model(input_ids=x, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
        out.extend(hidden[i, : len(row)].float().cpu() for i, row in enumerate(batch))
    return out


def bertscore(
    candidates: Sequence[str],
    references: Sequence[str],
    model: nn.Module | None = None,
    tokenizer=None,
    layer: int | None = None,
    idf: bool = False,
    batch_size: int = 32,
) -> dict[str, list[float]]:
    """BERTScore P, R, F1 of each candidate against its reference.

    Args:
        candidates, references: parallel lists of sentences.
        model, tokenizer: a Hugging Face encoder and its tokenizer; all-MiniLM-L6-v2 when omitted.
        layer: which hidden state to use (0 = the embeddings); the last layer when omitted.
        idf: weigh tokens by their IDF over `references` (Zhang et al., 2020, sec. 3).

    Returns:
        {"precision": [...], "recall": [...], "f1": [...]}, one float per pair.
    """
    if isinstance(candidates, str) or isinstance(references, str):
        raise TypeError("candidates and references must be sequences of str, not one str")
    if len(candidates) != len(references):
        raise ValueError(f"candidates and references must pair up, got {len(candidates)} and {len(references)}")
    if model is None or tokenizer is None:
        from reference.pretrained import minilm

        model, tokenizer = minilm()
    layer = model.config.num_hidden_layers if layer is None else layer
    if not isinstance(layer, int) or not 0 <= layer <= model.config.num_hidden_layers:
        raise ValueError(f"layer must be an int in [0, {model.config.num_hidden_layers}], got {layer!r}")
    special = [tokenizer.cls_token_id, tokenizer.sep_token_id]
    cand_ids = [encode(tokenizer, s) for s in candidates]
    ref_ids = [encode(tokenizer, s) for s in references]
    weights = idf_weights(ref_ids, special) if idf else {i: 0.0 for i in special}
    default = math.log(len(ref_ids) + 1) if idf else 1.0
    cand_emb = embed(model, cand_ids, layer, tokenizer.pad_token_id, batch_size)
    ref_emb = embed(model, ref_ids, layer, tokenizer.pad_token_id, batch_size)
    scores: dict[str, list[float]] = {"precision": [], "recall": [], "f1": []}
    for c_ids, r_ids, c, r in zip(cand_ids, ref_ids, cand_emb, ref_emb):
        cw = torch.tensor([weights.get(i, default) for i in c_ids])
        rw = torch.tensor([weights.get(i, default) for i in r_ids])
        if cw.sum() == 0 or rw.sum() == 0:  # an empty sentence: bert-score gives 0
            p = r_ = f = 0.0
        else:
            p, r_, f = greedy_match(c, r, cw, rw)
        scores["precision"].append(p)
        scores["recall"].append(r_)
        scores["f1"].append(f)
    return scores
