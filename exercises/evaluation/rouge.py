"""Exercises for Chapter 13: rOUGE-N, ROUGE-L and ROUGE-Lsum, as Google's `rouge-score` package computes them, with the

Implement lcs_table (13.4), porter_stem (13.5): fill in each body that raises NotImplementedError; the docstrings say
what to return. The rest of the module is the reference's own code, so that it runs on your
functions. Grade with `llm-course grade 13`. Mirrors `reference/evaluation/rouge.py`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


# ----------------------------------------------------------------------------------------------
# The Porter stemmer (1980), the original algorithm: steps 1a-5b
# ----------------------------------------------------------------------------------------------


def _is_consonant(word: str, i: int) -> bool:
    """A letter other than a, e, i, o, u, and other than a y that follows a consonant."""
    if word[i] in "aeiou":
        return False
    if word[i] == "y":
        return i == 0 or not _is_consonant(word, i - 1)
    return True


def _measure(stem: str) -> int:
    """m in [C](VC)^m[V]: how many vowel-consonant runs the stem has."""
    pattern = "".join("c" if _is_consonant(stem, i) else "v" for i in range(len(stem)))
    return len(re.findall(r"v+c+", pattern))


def _has_vowel(stem: str) -> bool:
    return any(not _is_consonant(stem, i) for i in range(len(stem)))


def _double_consonant(word: str) -> bool:
    return len(word) >= 2 and word[-1] == word[-2] and _is_consonant(word, len(word) - 1)


def _cvc(word: str) -> bool:
    """*o: the stem ends consonant-vowel-consonant, the last consonant not w, x or y."""
    return (len(word) >= 3 and _is_consonant(word, len(word) - 3) and not _is_consonant(word, len(word) - 2)
            and _is_consonant(word, len(word) - 1) and word[-1] not in "wxy")  # fmt: skip


def _replace(word: str, rules: Sequence[tuple[str, str]], minimum_m: int) -> str:
    """The first rule whose suffix ends the word applies if the stem's measure exceeds `minimum_m`; later rules never."""
    for suffix, replacement in rules:
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + replacement if _measure(stem) > minimum_m else word
    return word


_STEP2 = (("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
          ("abli", "able"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"), ("ization", "ize"),
          ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"),
          ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"))  # fmt: skip
_STEP3 = (("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""), ("ness", ""))
_STEP4 = ("al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism", "ate",
          "iti", "ous", "ive", "ize")  # fmt: skip


def porter_stem(word: str) -> str:
    """The Porter (1980) stem of a lowercase word: "running" -> "run", "generalizations" -> "gener".

    Equal to NLTK's `PorterStemmer(PorterStemmer.ORIGINAL_ALGORITHM).stem` (tested on the course corpus's vocabulary).
    """
    # Hint: write helpers for 'is consonant at i' (mind the y) and the measure m; then steps 1a, 1b, 1c, 2, 3, 4, 5a, 5b in order.
    raise NotImplementedError("Exercise 13.5: Porter stemmer")


# ----------------------------------------------------------------------------------------------
# Tokens, n-grams, the longest common subsequence
# ----------------------------------------------------------------------------------------------


def rouge_tokens(text: str, stemmer: Callable[[str], str] | None = None) -> list[str]:
    """rouge-score's tokenisation: lowercase, split at every run of characters outside [a-z0-9],
    stem the tokens longer than three characters with `stemmer`."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    tokens = [t for t in _NON_ALNUM.split(text.lower()) if t]
    if stemmer is not None:
        tokens = [stemmer(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if t and _NON_ALNUM.search(t) is None]


def lcs_table(a: Sequence[str], b: Sequence[str]) -> list[list[int]]:
    """The dynamic-programming table of longest common subsequences: entry [i][j] is LCS(a[:i], b[:j]).

    table[i][j] = table[i-1][j-1] + 1 if a[i-1] == b[j-1], else max(table[i-1][j], table[i][j-1]);
    row and column 0 are zeros. Shape (len(a) + 1, len(b) + 1); LCS(a, b) is table[-1][-1].
    """
    # Hint: a (len(a) + 1) x (len(b) + 1) table of zeros, filled row by row.
    raise NotImplementedError("Exercise 13.4: longest common subsequence table")


def lcs_indices(ref: Sequence[str], hyp: Sequence[str]) -> list[int]:
    """Positions in `ref` of one longest common subsequence, read back from the table (rouge-score's tie rule)."""
    table = lcs_table(ref, hyp)
    i, j, found = len(ref), len(hyp), []
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            found.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return found[::-1]


@dataclass(frozen=True)
class RougeScore:
    precision: float
    recall: float
    fmeasure: float


def _prf(hits: float, hyp_total: int, ref_total: int) -> RougeScore:
    precision = hits / max(hyp_total, 1)
    recall = hits / max(ref_total, 1)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return RougeScore(precision, recall, f)


def rouge_n(ref_tokens: Sequence[str], hyp_tokens: Sequence[str], n: int) -> RougeScore:
    """ROUGE-N (Lin, 2004, eq. 1) of token lists: clipped n-gram overlap over the n-grams of each side."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    ref = Counter(tuple(ref_tokens[i : i + n]) for i in range(len(ref_tokens) - n + 1))
    hyp = Counter(tuple(hyp_tokens[i : i + n]) for i in range(len(hyp_tokens) - n + 1))
    hits = sum(min(count, hyp[g]) for g, count in ref.items())
    return _prf(hits, sum(hyp.values()), sum(ref.values()))


def rouge_l(ref_tokens: Sequence[str], hyp_tokens: Sequence[str]) -> RougeScore:
    """ROUGE-L (Lin, 2004, sec. 3.1): P = LCS / |hyp|, R = LCS / |ref|, F their harmonic mean (beta = 1)."""
    if not ref_tokens or not hyp_tokens:
        return RougeScore(0.0, 0.0, 0.0)
    lcs = lcs_table(ref_tokens, hyp_tokens)[-1][-1]
    return _prf(lcs, len(hyp_tokens), len(ref_tokens))


def rouge_lsum(ref_sentences: Sequence[Sequence[str]], hyp_sentences: Sequence[Sequence[str]]) -> RougeScore:
    """Summary-level ROUGE-L (Lin, 2004, sec. 3.2): for every reference sentence, the union of the
    LCS positions it shares with each hypothesis sentence; a token is a hit at most as often as it
    occurs on both sides (ROUGE 1.5.5), over the total tokens of each summary."""
    m, n = sum(map(len, ref_sentences)), sum(map(len, hyp_sentences))
    if not m or not n:
        return RougeScore(0.0, 0.0, 0.0)
    ref_left = Counter(t for s in ref_sentences for t in s)
    hyp_left = Counter(t for s in hyp_sentences for t in s)
    hits = 0
    for ref in ref_sentences:
        union = sorted(set().union(*(lcs_indices(ref, hyp) for hyp in hyp_sentences)))
        for token in (ref[i] for i in union):
            if ref_left[token] > 0 and hyp_left[token] > 0:
                hits += 1
                ref_left[token] -= 1
                hyp_left[token] -= 1
    return _prf(hits, n, m)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(
    reference: str, hypothesis: str, types: Sequence[str] = ROUGE_TYPES, use_stemmer: bool = False,
    stemmer: Callable[[str], str] | None = None,
) -> dict[str, RougeScore]:  # fmt: skip
    """ROUGE scores of one hypothesis against one reference, as `rouge_scorer.RougeScorer(types, use_stemmer).score`.

    Args:
        reference, hypothesis: texts; for "rougeLsum" their sentences are separated by newlines.
        types: any of "rouge1".."rouge9", "rougeL", "rougeLsum".
        use_stemmer: stem with `porter_stem` (the course's Porter stemmer).
        stemmer: another stemmer instead (e.g. NLTK's `PorterStemmer().stem`, the one rouge-score uses).
    """
    stem = stemmer if stemmer is not None else (porter_stem if use_stemmer else None)
    ref, hyp = rouge_tokens(reference, stem), rouge_tokens(hypothesis, stem)
    scores = {}
    for kind in types:
        if kind == "rougeL":
            scores[kind] = rouge_l(ref, hyp)
        elif kind == "rougeLsum":
            def sentences(text: str) -> list[list[str]]:
                return [rouge_tokens(s, stem) for s in text.split("\n") if s]

            scores[kind] = rouge_lsum(sentences(reference), sentences(hypothesis))
        elif re.fullmatch(r"rouge[1-9]", kind):
            scores[kind] = rouge_n(ref, hyp, int(kind[5:]))
        else:
            raise ValueError(f"unknown ROUGE type {kind!r}; use rouge1..rouge9, rougeL or rougeLsum")
    return scores
