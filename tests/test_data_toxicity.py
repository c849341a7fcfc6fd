"""Chapter 4: toxicity filtering — the word-list score and its trade-off on the labelled set.

Oracles: scores counted by hand; on the course's small synthetic hostile/neutral set
(`reference.data.samples.hostile_neutral_set`) every score against one computed here with an
independently written word splitter.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 4`):
- 4.8 case not ignored; whitespace words with punctuation attached; a count instead of a fraction;
  the fraction of whitespace-separated words.
"""

from __future__ import annotations

import re

import pytest

from reference.data import samples


@pytest.mark.exercise("4.8")
@pytest.mark.points(1)
@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("You are an idiot.", 1 / 4),
        ("You IDIOT, you fool!", 2 / 4),  # case is ignored
        ("The fool in King Lear speaks truth.", 1 / 7),  # the word list is blind to context
        ("Thank you for the detailed answer.", 0.0),
        ("", 0.0),
        ("42 + 17", 0.0),
        ("Fool - 100 times!", 1 / 2),  # "-" and "100" are not words: 1 of the 2 words is listed
    ],
)
def test_word_list_score_by_hand(impl, text, score):
    assert impl.data.toxicity.word_list_score(text) == pytest.approx(score)


@pytest.mark.exercise("4.8")
@pytest.mark.points(1)
def test_word_list_score_with_own_list_and_bad_bytes(impl):
    assert impl.data.toxicity.word_list_score("Spam, spam, eggs and SPAM", frozenset({"spam"})) == pytest.approx(3 / 5)
    assert impl.data.toxicity.word_list_score("lily-livered boy", frozenset({"lily-livered"})) == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="UTF-8"):
        impl.data.toxicity.word_list_score(b"\xc3(")


@pytest.mark.exercise("4.8")
@pytest.mark.points(2)
def test_word_list_scores_on_the_labelled_set(impl):
    """Each sentence's score is the fraction of its words (letter runs joined by inner apostrophes or
    hyphens, lower-cased) on the list, computed here without the code under test."""
    texts, labels = samples.hostile_neutral_set()
    listed = samples.hostile_words()
    word = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
    for text in texts:
        words = word.findall(text.lower())
        expected = sum(w in listed for w in words) / len(words) if words else 0.0
        assert impl.data.toxicity.word_list_score(text) == pytest.approx(expected, abs=1e-12), text
    assert any(impl.data.toxicity.word_list_score(t) > 0 for t, y in zip(texts, labels) if y == 0), (
        "the word list is blind to context: some neutral sentences score above 0"
    )
