"""Exercises for Chapter 13: open-domain question answering: SQuAD's exact match and token F1, BM25 retrieval, retrieve-then-read.

Implement normalize_answer (13.8), token_f1 (13.9), BM25 (13.10): fill in each body that raises NotImplementedError; the docstrings say
what to return. The rest of the module is the reference's own code, so that it runs on your
functions. Grade with `llm-course grade 13`. Mirrors `reference/evaluation/qa.py`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's answer normalisation: lowercase, drop ASCII punctuation, drop the articles a/an/the,
    collapse whitespace. "The  Eiffel-Tower!" -> "eiffeltower"."""
    # Hint: string.punctuation holds the characters SQuAD drops; articles go only as whole words (\b in a regex).
    raise NotImplementedError("Exercise 13.8: SQuAD answer normalisation")


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    if isinstance(golds, str) or not golds:
        raise ValueError("golds must be a non-empty sequence of answers (a list, not one str)")
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD's token F1 of a prediction, the maximum over the gold answers.

    Both sides are normalised and split on whitespace; the overlap is the size of the multiset
    intersection of the two bags of tokens; no overlap (or an empty side) gives 0.

    Args:
        prediction: the model's answer.
        golds: one or more acceptable answers.

    Returns:
        max over golds of 2PR / (P + R), in [0, 1].
    """
    # Hint: collections.Counter's & gives the multiset intersection.
    raise NotImplementedError("Exercise 13.9: SQuAD token F1")


def bm25_tokens(text: str) -> list[str]:
    """Lowercase word tokens for retrieval (letters and digits)."""
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25:
    """An Okapi BM25 index over a list of documents (k1 = 1.5, b = 0.75 by default)."""

    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        """Index `documents` (tokenised by `bm25_tokens`).

        Args:
            documents: the texts to search, at least one.
            k1: term-frequency saturation (>= 0); 0 ignores how often a term occurs.
            b: length normalisation in [0, 1]; 0 ignores document length.

        Raises ValueError for an empty corpus or k1, b out of range.
        """
        # Hint: keep, per document, a Counter of its bm25_tokens and its length; the document frequencies over all documents.
        raise NotImplementedError("Exercise 13.10: BM25 index and scores")

    def idf(self, term: str) -> float:
        """log(1 + (N - n(t) + 0.5) / (n(t) + 0.5)): N documents, n(t) of them contain the term; always > 0."""
        # Hint: n(t) documents hold the term; the + 1 inside the log keeps the idf positive.
        raise NotImplementedError("Exercise 13.10: BM25 index and scores")

    def scores(self, query: str) -> list[float]:
        """BM25 score of every document for `query` (eq. above); a query term repeated counts again.

        Returns:
            one float per document, in index order.
        """
        # Hint: the length normalisation uses the average document length; a term absent from a document adds nothing.
        raise NotImplementedError("Exercise 13.10: BM25 index and scores")

    def top(self, query: str, k: int = 3) -> list[int]:
        """Indices of the k best documents, best first (ties: lower index first)."""
        # Hint: sort the indices by score, best first; break ties by the index.
        raise NotImplementedError("Exercise 13.10: BM25 index and scores")


@dataclass(frozen=True)
class QAItem:
    question: str
    answers: tuple[str, ...]
    passage: int  # index of the passage that holds the answer


def qa_items(passages: Sequence[str], n: int = 20, seed: int = 0) -> list[QAItem]:
    """Cloze-style questions built from the passages: a sentence with one capitalised word blanked,
    "Fill in the blank: ... ___ ...", the blanked word the answer; deterministic in `seed`."""
    import random

    rng = random.Random(seed)
    items = []
    order = list(range(len(passages)))
    rng.shuffle(order)
    for index in order:
        sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", passages[index])]
        sentences = [s for s in sentences if 40 <= len(s) <= 160 and "**" not in s and s[-1] in ".!?"]
        rng.shuffle(sentences)
        for sentence in sentences:
            words = sentence.split()
            names = [i for i, w in enumerate(words[1:], start=1) if re.fullmatch(r"[A-Z][a-z]{3,}[,.;:]?", w)]
            if names:
                i = rng.choice(names)
                answer = words[i].rstrip(",.;:")
                blanked = " ".join(words[:i] + ["___" + words[i][len(answer):]] + words[i + 1 :])
                items.append(QAItem(f"Fill in the blank: {blanked}", (answer,), index))
                break
        if len(items) == n:
            break
    return items


def open_domain_qa(
    items: Sequence[QAItem], index: BM25, passages: Sequence[str], answer: Callable[[str, str], str], k: int = 1,
    join: Callable[[list[str], str], str] | None = None,
) -> dict[str, float]:
    """Retrieve-then-read: for each question, the top-k BM25 passages become the context (joined by
    newlines, or by `join(ranked_passages, question)`, e.g. `fit_context` for a short-context
    reader), `answer(question, context)` the model's reply; returns mean EM, mean F1 and retrieval
    recall@k (the answer's passage among the k)."""
    em, f1, hit = [], [], []
    for item in items:
        top = index.top(item.question.replace("___", " "), k)
        ranked = [passages[i] for i in top]
        context = "\n".join(ranked) if join is None else join(ranked, item.question)
        reply = answer(item.question, context)
        em.append(exact_match(reply, item.answers))
        f1.append(token_f1(reply, item.answers))
        hit.append(float(item.passage in top))
    n = max(len(items), 1)
    return {"exact_match": sum(em) / n, "f1": sum(f1) / n, "recall_at_k": sum(hit) / n, "n": len(items)}
