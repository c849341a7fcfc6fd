"""Exercises for Chapter 13: bLEU: clipped n-gram precision with a brevity penalty, as sacreBLEU computes it.

Implement brevity_penalty (13.1), modified_precision_stats (13.2), bleu_from_stats (13.3): fill in each body that raises NotImplementedError; the docstrings say
what to return. The rest of the module is the reference's own code, so that it runs on your
functions. Grade with `llm-course grade 13`. Mirrors `reference/evaluation/bleu.py`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

SMOOTH_METHODS: dict[str, float | None] = {"none": None, "floor": 0.1, "add-k": 1.0, "exp": None}

# mteval-v13a's punctuation rules, in order: split most ASCII symbols off, then "." and "," unless
# they sit between digits, then a "-" that follows a digit.
_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)


def tokenize_13a(line: str) -> str:
    """WMT's "13a" tokenisation (mteval-v13a.pl): unescape four HTML entities, join lines, put
    spaces around punctuation (keeping 3.5 and 1,000 whole); returns the tokens joined by single spaces."""
    if not isinstance(line, str):
        raise TypeError(f"line must be a str, got {type(line).__name__}")
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def ngrams(tokens: Sequence[str], max_order: int = 4) -> Counter:
    """Counts of every n-gram of `tokens` for n = 1..max_order, keyed by tuples of tokens."""
    counts: Counter = Counter()
    for n in range(1, max_order + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def closest_reference_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length nearest to the hypothesis length; on a tie the shorter one (mteval's rule)."""
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def modified_precision_stats(
    hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 4
) -> tuple[list[int], list[int]]:
    """Clipped n-gram matches and hypothesis n-gram totals of one segment (Papineni et al., 2002, eq. 1).

    Each hypothesis n-gram counts at most as often as it occurs in the single reference where it
    occurs most: matches_n = sum_g min(count_hyp(g), max_ref count_ref(g)) over the n-grams g of order n.

    Args:
        hypothesis: the hypothesis tokens.
        references: one or more token lists.
        max_order: the largest n.

    Returns:
        (matches, totals), two lists of length `max_order`, index n-1 for order n.
    """
    # Hint: count every n-gram of each reference, keep the largest count per n-gram over the references, then clip.
    raise NotImplementedError("Exercise 13.2: clipped n-gram matches")


def brevity_penalty(hyp_len: int, ref_len: int) -> float:
    """BLEU's brevity penalty (Papineni et al., 2002, sec. 2.2.2): 1 if hyp_len >= ref_len, else
    exp(1 - ref_len / hyp_len), and 0 for an empty hypothesis. Lengths are summed over the corpus."""
    # Hint: compare the two lengths first; an empty hypothesis cannot be divided by.
    raise NotImplementedError("Exercise 13.1: BLEU brevity penalty")


@dataclass(frozen=True)
class BLEUScore:
    """A BLEU score (0-100) with what it was made of: precisions in percent, the brevity penalty, the lengths."""

    score: float
    precisions: tuple[float, ...]
    bp: float
    hyp_len: int
    ref_len: int
    matches: tuple[int, ...]
    totals: tuple[int, ...]


def bleu_from_stats(
    matches: Sequence[float],
    totals: Sequence[float],
    hyp_len: int,
    ref_len: int,
    smooth_method: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool = False,
) -> BLEUScore:
    """BLEU from its sufficient statistics, with the smoothing of Chen and Cherry (2014).

    - "none": no smoothing: one order without a match makes BLEU 0.
    - "floor" (method 1): a zero count of matches becomes `smooth_value` (0.1).
    - "add-k" (method 2): add `smooth_value` (1) to matches and totals of every order n >= 2.
    - "exp" (method 3, mteval's NIST smoothing): the k-th order without a match gets precision 1 / (2^k total_n).

    With `effective_order`, orders that have no n-gram at all (a hypothesis shorter than 4 tokens)
    drop out of the geometric mean instead of zeroing it (what sentence-level BLEU needs).
    """
    # Hint: work in percent like sacreBLEU; add-k touches orders n >= 2 only; 'exp' halves once more for each order without a match.
    raise NotImplementedError("Exercise 13.3: BLEU from statistics, with smoothing")


def _check_texts(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    if isinstance(hypotheses, str) or not all(isinstance(h, str) for h in hypotheses):
        raise TypeError("hypotheses must be a sequence of str")
    if isinstance(references, str) or not references:
        raise ValueError("references must be a non-empty sequence of reference streams (lists of str)")
    streams = [list(stream) for stream in references]
    for stream in streams:
        if len(stream) != len(hypotheses):
            raise ValueError(f"every reference stream must have one reference per hypothesis ({len(hypotheses)}), got {len(stream)}")
        if not all(isinstance(r, str) for r in stream):
            raise TypeError("references must hold str")
    return [list(refs) for refs in zip(*streams)] if streams else []


def _tokens(text: str, tokenize: str, lowercase: bool) -> list[str]:
    text = text.lower() if lowercase else text
    if tokenize == "13a":
        return tokenize_13a(text.rstrip()).split()
    if tokenize == "none":
        return text.rstrip().split()
    raise ValueError(f"tokenize must be '13a' or 'none', got {tokenize!r}")


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    smooth_method: str = "exp",
    smooth_value: float | None = None,
    tokenize: str = "13a",
    lowercase: bool = False,
    max_order: int = 4,
    effective_order: bool = False,
) -> BLEUScore:
    """Corpus-level BLEU (0-100), as `sacrebleu.corpus_bleu(hypotheses, references)`.

    The statistics are summed over segments before the precisions and the brevity penalty are taken:
    corpus BLEU is not the mean of sentence BLEUs.

    Args:
        hypotheses: one string per segment.
        references: reference streams, sacreBLEU's layout: `references[k][i]` is the k-th reference of segment i.
        smooth_method, smooth_value, effective_order: see `bleu_from_stats`.
        tokenize: "13a" (WMT's default) or "none" (split on whitespace).
        lowercase: compare lowercased text.
        max_order: the largest n-gram order (4).
    """
    segments = _check_texts(hypotheses, references)
    matches, totals, hyp_len, ref_len = [0] * max_order, [0] * max_order, 0, 0
    for hyp, refs in zip(hypotheses, segments):
        hyp_tokens = _tokens(hyp, tokenize, lowercase)
        ref_tokens = [_tokens(r, tokenize, lowercase) for r in refs]
        m, t = modified_precision_stats(hyp_tokens, ref_tokens, max_order)
        matches = [a + b for a, b in zip(matches, m)]
        totals = [a + b for a, b in zip(totals, t)]
        hyp_len += len(hyp_tokens)
        ref_len += closest_reference_length(len(hyp_tokens), [len(r) for r in ref_tokens])
    return bleu_from_stats(matches, totals, hyp_len, ref_len, smooth_method, smooth_value, effective_order)


def sentence_bleu(
    hypothesis: str,
    references: Sequence[str],
    smooth_method: str = "exp",
    smooth_value: float | None = None,
    tokenize: str = "13a",
    lowercase: bool = False,
    effective_order: bool = True,
) -> BLEUScore:
    """BLEU of one segment against its references, as `sacrebleu.sentence_bleu` (effective order on)."""
    if isinstance(references, str):
        raise TypeError("references must be a sequence of str, not one str")
    return corpus_bleu([hypothesis], [[r] for r in references], smooth_method, smooth_value, tokenize, lowercase,
                       effective_order=effective_order)  # fmt: skip
