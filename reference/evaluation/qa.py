"""Open-domain question answering: SQuAD's exact match and token F1, BM25 retrieval, retrieve-then-read.

Survey section 2.6(b), open-domain QA evaluation. Rajpurkar et al., 2016, "SQuAD" (the v1.1
evaluation script's normalisation and metrics); Robertson and Zaragoza, 2009, "The probabilistic
relevance framework: BM25 and beyond" (eq. 3.20, the Lucene-style idf that stays positive);
Chen et al., 2017, "Reading Wikipedia to answer open-domain questions" (retrieve, then read).

    normalise(s) = remove articles(remove punctuation(lowercase(s))), whitespace collapsed
    EM = max_gold [normalise(pred) == normalise(gold)]
    F1 = max_gold 2PR / (P + R),  P = |common tokens| / |pred tokens|,  R = |common tokens| / |gold tokens|  (bag of tokens)
    BM25(q, d) = sum_{t in q} idf(t) * f(t, d) (k1 + 1) / (f(t, d) + k1 (1 - b + b |d| / avgdl)),
    idf(t) = log(1 + (N - n(t) + 0.5) / (n(t) + 0.5))
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
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


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
    if isinstance(golds, str) or not golds:
        raise ValueError("golds must be a non-empty sequence of answers (a list, not one str)")
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common == 0:
            continue
        precision, recall = common / len(pred), common / len(ref)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


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
        if isinstance(documents, str) or not documents:
            raise ValueError("documents must be a non-empty sequence of str")
        if not k1 >= 0 or not 0 <= b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1!r}, b={b!r}")
        self.k1, self.b = float(k1), float(b)
        self.docs = [Counter(bm25_tokens(d)) for d in documents]
        self.lengths = [sum(c.values()) for c in self.docs]
        self.avgdl = sum(self.lengths) / len(self.docs)
        self.df = Counter(t for c in self.docs for t in c)

    def idf(self, term: str) -> float:
        """log(1 + (N - n(t) + 0.5) / (n(t) + 0.5)): N documents, n(t) of them contain the term; always > 0."""
        n, big_n = self.df.get(term, 0), len(self.docs)
        return math.log(1 + (big_n - n + 0.5) / (n + 0.5))

    def scores(self, query: str) -> list[float]:
        """BM25 score of every document for `query` (eq. above); a query term repeated counts again.

        Returns:
            one float per document, in index order.
        """
        terms = bm25_tokens(query)
        out = []
        for counts, length in zip(self.docs, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.avgdl) if self.avgdl > 0 else self.k1
            total = 0.0
            for t in terms:
                f = counts.get(t, 0)
                if f:
                    total += self.idf(t) * f * (self.k1 + 1) / (f + norm)
            out.append(total)
        return out

    def top(self, query: str, k: int = 3) -> list[int]:
        """Indices of the k best documents, best first (ties: lower index first)."""
        s = self.scores(query)
        return sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]


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


def _sentences(text: str) -> list[str]:
    return [x for x in re.split(r"(?<=[.!?:])\s+", " ".join(text.split())) if x]


def fit_context(ranked: Sequence[str], question: str, tokenizer, budget: int) -> str:
    """The retrieved passages (best first) cut to at most `budget` tokens, for a reader whose context
    is short.

    The top-ranked passage comes first and is never dropped for a lower one. If it is longer than
    the budget, the sentence that shares the most BM25 tokens with the question is kept (ties: the
    earlier one), and its neighbours are added, the one with more shared tokens first, while the text
    still fits; a sentence longer than the budget alone is cut to its first `budget` tokens. The
    lower-ranked passages then follow whole, in rank order, while they fit. Passages are joined by
    newlines and cut only between sentences, never inside a word.
    """
    if not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive int of tokens, got {budget!r}")
    if not ranked:
        return ""
    size = lambda text: len(tokenizer.encode(text))  # noqa: E731
    q = set(bm25_tokens(question))
    top = " ".join(ranked[0].split())
    if size(top) > budget:
        sents = _sentences(ranked[0])
        overlap = [len(q & set(bm25_tokens(x))) for x in sents]
        best = max(range(len(sents)), key=lambda i: (overlap[i], -i))
        lo = hi = best
        while True:
            options = [j for j in (lo - 1, hi + 1) if 0 <= j < len(sents)]
            grown = None
            for j in sorted(options, key=lambda j: -overlap[j]):
                a, b = min(lo, j), max(hi, j)
                if size(" ".join(sents[a : b + 1])) <= budget:
                    grown = (a, b)
                    break
            if grown is None:
                break
            lo, hi = grown
        top = " ".join(sents[lo : hi + 1])
        if size(top) > budget:
            top = tokenizer.decode(tokenizer.encode(top)[:budget]).rsplit(" ", 1)[0]
    parts = [top]
    for passage in ranked[1:]:
        if size("\n".join([*parts, passage])) > budget:
            break
        parts.append(passage)
    return "\n".join(parts)


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
