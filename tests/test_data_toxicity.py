"""Chapter 4: toxicity filtering — the word-list score and its trade-off on the labelled set.

Oracles: scores counted by hand; the course's small synthetic hostile/neutral set
(`reference.data.samples.hostile_neutral_set`), on which the word list's recall and clean loss
are measured against `reference.data.quality.tradeoff_curve` (harness, not under test here).
"""

from __future__ import annotations

import numpy as np
import pytest

from reference.data import samples
from reference.data.quality import tradeoff_curve


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
def test_word_list_tradeoff_on_the_labelled_set(impl):
    texts, labels = samples.hostile_neutral_set()
    scores = [impl.data.toxicity.word_list_score(t) for t in texts]
    curve = tradeoff_curve(scores, labels, thresholds=[1e-9, 0.1, 0.5])
    # the reference: any listed word catches 0.68 of the hostile sentences and 0.20 of the neutral ones
    assert 0.6 <= curve["recall"][0] <= 0.8 and 0.1 <= curve["clean_loss"][0] <= 0.3
    assert np.all(np.diff(curve["recall"]) <= 0) and np.all(np.diff(curve["clean_loss"]) <= 0)
    assert curve["clean_loss"][-1] == 0.0
