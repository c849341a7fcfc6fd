"""Privacy scrubbing: find personal data with patterns and replace it by typed placeholders.

Survey section 2.1(b), "Privacy scrubbing": personally identifiable information is removed
before training by anonymising, redacting or replacing it. This module does what the
rule-based scrubbers of BigScience's ROOTS corpus (Laurençon et al., 2022, section 3.2) and of
The Stack (Kocetkov et al., 2022) do: regular expressions for e-mail addresses, phone numbers,
IPv4 and IPv6 addresses, credit-card numbers (validated with the Luhn checksum, ISO/IEC 7812)
and URLs, each match replaced by a placeholder such as "<EMAIL>". Patterns miss what they were
not written for (an address spelled "alice at example dot com", a number in words) and catch
what merely looks like their target (a version number of four parts reads as an IPv4 address);
the chapter measures both on a planted set.
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
    # Anchored at the start of a run of local-part characters, so that a long run without an "@" is
    # scanned once, not once per position in it (`_candidates` then starts the address at the run's
    # first word edge, where a pattern opening with \b would have started it).
    "EMAIL": re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    "CREDIT_CARD": re.compile(r"(?=\d)(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
    "IPV4": re.compile(
        r"(?=\d)(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)"
    ),
    "IPV6": re.compile(r"(?=[0-9A-Fa-f]{0,4}:)(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
    "PHONE": re.compile(r"(?=[+(\d])(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,4}(?![\w-])"),
}


_WORD_EDGE = re.compile(r"\b")
_LOCAL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
_LOCAL_RUN = re.compile(r"[A-Za-z0-9._%+-]*")
_EMAIL_BODY = re.compile(PATTERNS["EMAIL"].pattern.removeprefix(r"(?<![A-Za-z0-9._%+-])"))


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
    digits = as_text(number, name="number").replace(" ", "").replace("-", "")
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        d = int(char)
        if position % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _candidates(text: str, kind: str) -> list[PiiSpan]:
    """Matches of one kind, each checked beyond its pattern (Luhn, a real IPv6 address, a phone's digit count)."""
    if kind == "URL":
        spans = []
        for m in PATTERNS["URL"].finditer(text):
            url = m.group().rstrip(".,;:!?)]'\"")
            spans.append(PiiSpan(m.start(), m.start() + len(url), kind))
        return spans
    if kind == "EMAIL":
        spans, position = [], 0
        while True:
            if 0 < position < len(text) and text[position - 1] in _LOCAL_CHARS and text[position] in _LOCAL_CHARS:
                m = _EMAIL_BODY.match(text, position)  # the rest of a run that the previous address ended in
                if m is None:
                    position = _LOCAL_RUN.match(text, position).end()
                    continue
            elif (m := PATTERNS["EMAIL"].search(text, position)) is None:
                return spans
            at = text.index("@", m.start())
            edge = _WORD_EDGE.search(text, m.start(), at)  # the address starts at the run's first word edge
            if edge is not None and edge.start() < at:
                spans.append(PiiSpan(edge.start(), m.end(), kind))
                position = m.end()
            else:
                position = at + 1  # no address starts in this run; one may start after its "@"
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
    text = as_text(text)
    unknown = [k for k in kinds if k not in PII_KINDS]
    if unknown or isinstance(kinds, str):
        raise ValueError(f"kinds must be a sequence of names from {PII_KINDS}, got {kinds!r}")
    accepted: list[PiiSpan] = []  # sorted by start, non-overlapping
    for kind in PII_KINDS:
        if kind not in kinds:
            continue
        accepted = _accept(accepted, _candidates(text, kind))
    return accepted


def _accept(accepted: list[PiiSpan], candidates: list[PiiSpan]) -> list[PiiSpan]:
    """`accepted` (sorted by start, non-overlapping) plus each candidate, taken in order, that overlaps
    no span accepted before it; sorted by start. Linear: the candidates come as a few sorted lists
    (one per pattern), each swept against `accepted` and merged into it."""
    run: list[PiiSpan] = []
    for span in candidates:
        if run and span.start < run[-1].end:  # out of order or overlapping: the next pattern's list
            accepted, run = _sweep(accepted, run), []
        run.append(span)
    return _sweep(accepted, run)


def _sweep(accepted: list[PiiSpan], run: list[PiiSpan]) -> list[PiiSpan]:
    """Merge into `accepted` the spans of `run` (sorted, non-overlapping) that overlap none of it."""
    merged: list[PiiSpan] = []
    k = 0
    for span in run:
        while k < len(accepted) and accepted[k].end <= span.start:
            merged.append(accepted[k])
            k += 1
        if k < len(accepted) and accepted[k].start < span.end:
            continue  # overlaps an earlier kind's span (or an earlier pattern's)
        merged.append(span)
    merged += accepted[k:]
    return merged


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
