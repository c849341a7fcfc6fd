"""Every text stage is linear in its input, however long one line is.

`strip_markdown` and `find_pii` used to be quadratic on one long line (`"*args, " * 10000` took
20 s; doubling the length quadrupled it): a pattern that can start at every position of a line and
scan to its end from each. Each hostile line here is timed against ordinary Markdown prose of the
same length, in the same process (best of a few runs each), so the machine's speed and load cancel:
a linear stage spends at most a small constant factor more on the hostile line (under 6 when this
was written), a quadratic one hundreds of times more at this length (the old code: about 250 times
on `"*args, "`). Timing two lengths of the same line instead is fooled by the CPU caches, which
make one 4x longer line up to 14x slower for a linear regular expression. The rewritten stages must
also give exactly the old output: the old patterns are kept here as the specification and compared
on random strings.
"""

from __future__ import annotations

import random
import re
import time

import pytest

from reference.data.corpus import strip_markdown
from reference.data.privacy import find_pii

LENGTH = 50_000  # characters per hostile line
BOUND = 25  # the most a linear stage may spend on it, relative to prose of the same length


def _best_time(function, text: str, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function(text)
        best = min(best, time.perf_counter() - start)
    return best


def _prose(length: int, seed: int = 0) -> str:
    """Ordinary Markdown prose, 70-character lines, with the markup `strip_markdown` removes and no personal data."""
    rng = random.Random(seed)
    words = ["the", "king", "said", "*softly*", "**Enter**", "_aside_", "[link](#act-2)", "then", "<br>", "and",
             "went", "snake_case", "`code`", "exit,", "3", "\\[Aside]"]  # no personal data: no spans to resolve
    pieces, column, size = [], 0, 0
    while size < length:
        word = rng.choice(words)
        column, size = column + len(word) + 1, size + len(word) + 1
        pieces += [word, "\n" if column > 70 else " "]
        column = 0 if column > 70 else column
    return "".join(pieces)[:length]


_BASELINES: dict[object, float] = {}


def _relative_time(function, text: str) -> float:
    if function not in _BASELINES:
        _best_time(function, _prose(LENGTH), 1)  # warm up
        _BASELINES[function] = max(_best_time(function, _prose(LENGTH), 3), 1e-3)
    return _best_time(function, text) / _BASELINES[function]


LINES = {  # one long line each; the unit is repeated
    "args": lambda n: "*args, " * (n // 7),
    "brackets": lambda n: "[" * n,
    "unclosed links": lambda n: "[a](" * (n // 4),
    "tags": lambda n: "<a" * (n // 2),
    "stars at word starts": lambda n: "*a " * (n // 3),
    "underscores at word ends": lambda n: "a_ " * (n // 3),
    "underscores at word starts": lambda n: "_a " * (n // 3),
    "a long heading": lambda n: "# " + "# " * (n // 2) + "x",
    "underscores in a word": lambda n: "a" + "_" * n + "a",
    "spaces before a word": lambda n: "a" + " " * n + "x",
}
PII_LINES = {
    "ipv4": lambda n: "1.1.1.1 " * (n // 8),
    "urls": lambda n: "http://a " * (n // 9),
    "dotted words": lambda n: "a." * (n // 2),
    "dashed digits": lambda n: "1-" * (n // 2),
    "www": lambda n: "www." * (n // 4),
    "phone-like groups": lambda n: "12 " * (n // 3),
    "addresses without a top-level domain": lambda n: "a@b." * (n // 4),
    "args": lambda n: "*args, " * (n // 7),
}


@pytest.mark.parametrize("name", LINES)
def test_strip_markdown_is_linear_on_one_long_line(name):
    ratio = _relative_time(strip_markdown, LINES[name](LENGTH))
    assert ratio < BOUND, f"{name}: {ratio:.1f} times as long as prose of the same length"


@pytest.mark.parametrize("name", PII_LINES)
def test_find_pii_is_linear_on_one_long_line(name):
    ratio = _relative_time(find_pii, PII_LINES[name](LENGTH))
    assert ratio < BOUND, f"{name}: {ratio:.1f} times as long as prose of the same length"


def test_the_issue_example_is_fast_in_absolute_terms_too():
    """`"*args, " * 10000` took 20 s; a linear stage does it in well under a second even on a busy machine."""
    text = "*args, " * 10000
    assert _best_time(strip_markdown, text, 1) < 5 and _best_time(find_pii, text, 1) < 5


# ----------------------------------------------------------------------------------------------
# The same output as the patterns they replace
# ----------------------------------------------------------------------------------------------

_OLD_IMAGE_OR_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
_OLD_HTML_TAG = re.compile(r"</?[A-Za-z][^>\n]*>")
_OLD_EMPHASIS = re.compile(
    r"(?=[*_])(?:(?<!\\)(\*{1,3})(?=\S)(.+?)(?<=\S)(?<!\\)\1|(?<![\w\\])(_{1,3})(?=\S)(.+?)(?<=\S)(?<!\\)\3(?!\w))"
)
_OLD_STRAY_MARKER = re.compile(r"(?=[*_])(?:(?<![\w\\])[*_]+|(?<!\\)[*_]+(?!\w))")
_OLD_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)[ \t#]*$", re.M)
_OLD_TRAILING_SPACE = re.compile(r"[ \t]+$", re.M)


def _random_texts(seed: int, count: int):
    rng = random.Random(seed)
    alphabet = list("ab *_\\\n[]()!<>/`#>-~\t") + ["**", "__", "***", "](", "<a>", "é", "x_y", "*****", "*_", "# "]
    for _ in range(count):
        yield "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))


def test_the_linear_stages_match_the_patterns_they_replace():
    from reference.data import corpus

    for text in _random_texts(0, 20000):
        assert corpus._strip_links(text) == _OLD_IMAGE_OR_LINK.sub(r"\1", text), repr(text)
        assert corpus._strip_tags(text) == _OLD_HTML_TAG.sub("", text), repr(text)
        assert corpus._emphasis_pass(text) == _OLD_EMPHASIS.sub(lambda m: m.group(2) or m.group(4), text), repr(text)
        assert corpus._strip_stray_markers(text) == _OLD_STRAY_MARKER.sub("", text), repr(text)
        assert corpus._HEADING.sub(lambda m: m.group(1).rstrip(" \t#"), text) == _OLD_HEADING.sub(r"\1", text)
        assert corpus._TRAILING_SPACE.sub("", text) == _OLD_TRAILING_SPACE.sub("", text)


_OLD_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")


def test_email_candidates_match_the_word_edge_pattern():
    from reference.data import privacy

    rng = random.Random(1)
    alphabet = list("ab.-_@%+1 é\n") + ["@ex.org", "@a.bc", "-.", "x@y.com"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        expected = [(m.start(), m.end()) for m in _OLD_EMAIL.finditer(text)]
        assert [(s.start, s.end) for s in privacy._candidates(text, "EMAIL")] == expected, repr(text)


def test_find_pii_resolves_overlaps_by_kind_priority_as_before():
    """The sweep that replaced the all-pairs check keeps the earlier kind's span on an overlap."""
    text = "see http://10.0.0.1/x and 10.0.0.2, mail bob@10.0.0.3.example.com or call +1 (555) 123-4567"
    kinds = [s.kind for s in find_pii(text)]
    assert kinds == ["URL", "IP", "EMAIL", "PHONE"]
    assert [s.kind for s in find_pii(text, ["IP", "PHONE"])] == ["IP", "IP", "IP", "PHONE"]
