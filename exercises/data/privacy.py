"""Exercises for Chapter 4, privacy scrubbing: the Luhn check and finding personal data (exercises 4.6, 4.7).

Fill in each body that raises NotImplementedError; the docstrings say what to return. The rest of
the module is the reference's own code, so that it runs on your functions. Grade with
`llm-course grade 4`. Mirrors `reference/data/privacy.py`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import NamedTuple

from reference.data.corpus import as_text

PII_KINDS: tuple[str, ...] = ("URL", "EMAIL", "CREDIT_CARD", "IP", "PHONE")  # also the priority on overlaps

# Each pattern opens with a lookahead for its first character, so the scan skips most positions fast.
PATTERNS: dict[str, re.Pattern[str]] = {
    "URL": re.compile(r"(?=[hfw])\b(?:https?|ftp)://[^\s<>\"']+|\bwww\.[A-Za-z0-9-]+\.[^\s<>\"']+"),
    "EMAIL": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    "CREDIT_CARD": re.compile(r"(?=\d)(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
    "IPV4": re.compile(
        r"(?=\d)(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)"
    ),
    "IPV6": re.compile(r"(?=[0-9A-Fa-f]{0,4}:)(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
    "PHONE": re.compile(r"(?=[+(\d])(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,4}(?![\w-])"),
}


class PiiSpan(NamedTuple):
    """One item of personal data: text[start:end] is of this kind (one of PII_KINDS)."""

    start: int
    end: int
    kind: str


def luhn_valid(number: str) -> bool:
    """Whether the digits of `number` pass the Luhn checksum (spaces and dashes are ignored).

    From the rightmost digit leftwards, double every second digit, subtracting 9 from any
    result above 9; the number is valid when the sum of all digits is a multiple of 10. A string
    with another character, or with no digits, is not valid.
    Example: "79927398713" is valid.
    """
    # Hint: first keep only the digits (spaces and dashes allowed, anything else invalid); the check digit,
    # the rightmost one, is not doubled, the one left of it is, and so on alternately.
    raise NotImplementedError("Exercise 4.6: Luhn check")


def _candidates(text: str, kind: str) -> list[PiiSpan]:
    """Matches of one kind, each checked beyond its pattern (Luhn, a real IPv6 address, a phone's digit count)."""
    if kind == "URL":
        spans = []
        for m in PATTERNS["URL"].finditer(text):
            url = m.group().rstrip(".,;:!?)]'\"")
            spans.append(PiiSpan(m.start(), m.start() + len(url), kind))
        return spans
    if kind == "EMAIL":
        return [PiiSpan(m.start(), m.end(), kind) for m in PATTERNS["EMAIL"].finditer(text)]
    if kind == "CREDIT_CARD":
        return [
            PiiSpan(m.start(), m.end(), kind)
            for m in PATTERNS["CREDIT_CARD"].finditer(text)
            if 13 <= sum(c.isdigit() for c in m.group()) <= 19 and luhn_valid(m.group())
        ]
    if kind == "IP":
        spans = [PiiSpan(m.start(), m.end(), kind) for m in PATTERNS["IPV4"].finditer(text)]
        for m in PATTERNS["IPV6"].finditer(text):
            if not m.group().strip(":"):  # the bare "::" of grammars (::=), slices ([::-1]) and regexes ((?::)
                continue
            try:
                ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            spans.append(PiiSpan(m.start(), m.end(), kind))
        return spans
    return [
        PiiSpan(m.start(), m.end(), kind)
        for m in PATTERNS["PHONE"].finditer(text)
        if 10 <= sum(c.isdigit() for c in m.group()) <= 13
    ]


def find_pii(text: str, kinds: Sequence[str] = PII_KINDS) -> list[PiiSpan]:
    """Every item of personal data of the given kinds in `text`, as spans sorted by start.

    Each kind has a pattern in PATTERNS and a check: a CREDIT_CARD has 13 to 19 digits
    (optionally grouped by spaces or dashes) and passes `luhn_valid`; an IP is an IPv4 address
    with four octets of 0..255, or an IPv6 address that `ipaddress.IPv6Address` accepts (but not the
    bare "::", which grammar notation and slices are full of); a PHONE
    has 10 to 13 digits in groups (optionally "+country", "(area)"); a URL loses trailing
    punctuation (the full stop that ends its sentence). Where spans of different kinds overlap,
    the kind earlier in PII_KINDS wins (a URL that contains an address stays one URL).

    Args:
        text: str or UTF-8 bytes.
        kinds: which of PII_KINDS to look for.

    Returns:
        list of PiiSpan(start, end, kind), non-overlapping, by increasing start.
    """
    # Hint: _candidates(text, kind) for each kind in PII_KINDS order; accept a span only if it overlaps none accepted.
    raise NotImplementedError("Exercise 4.7: find personal data")


def scrub(text: str, kinds: Sequence[str] = PII_KINDS) -> str:
    """`text` with every span of `find_pii(text, kinds)` replaced by "<KIND>", e.g. "<EMAIL>"."""
    text = as_text(text)
    pieces, position = [], 0
    for span in find_pii(text, kinds):
        pieces += [text[position : span.start], f"<{span.kind}>"]
        position = span.end
    return "".join(pieces) + text[position:]


def pii_precision_recall(
    items: Sequence[tuple[str, Sequence[tuple[int, int, str]]]], kinds: Sequence[str] = PII_KINDS
) -> dict[str, dict[str, float]]:
    """Span-level scores of `find_pii` on labelled items [(text, [(start, end, kind), ...]), ...].

    A found span counts as a true positive only if a true span has the same start, end and kind.
    Per kind and for "all": {"precision", "recall", "true_positives", "false_positives",
    "false_negatives"} (precision or recall is 1.0 when its denominator is 0).
    """
    counts = {kind: [0, 0, 0] for kind in (*kinds, "all")}  # tp, fp, fn
    for text, truth in items:
        found = {tuple(s) for s in find_pii(text, kinds)}
        true = {tuple(s) for s in truth if s[2] in kinds}
        for kind in (*kinds, "all"):
            f = {s for s in found if kind in ("all", s[2])}
            t = {s for s in true if kind in ("all", s[2])}
            counts[kind][0] += len(f & t)
            counts[kind][1] += len(f - t)
            counts[kind][2] += len(t - f)
    return {
        kind: {
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / (tp + fn) if tp + fn else 1.0,
            "true_positives": tp,
            "false_positives": fp,
            "false_negatives": fn,
        }
        for kind, (tp, fp, fn) in counts.items()
    }
