"""Toxic and biased text filtering: a word list and a trained classifier, and the trade-off between them.

Survey section 2.1(b), "Filtering out toxic and biased text". Two common approaches: a list of
offending words (C4's "List of Dirty, Naughty, Obscene, and Otherwise Bad Words", Raffel et al.,
2020, section 2.2, drops any page that contains one), and a classifier of toxicity (Gopher's
and LLaMA's corpora are scored with Perspective API or similar classifiers, Rae et al., 2021,
appendix A.1.1; Welbl et al., 2021, "Challenges in Detoxifying Language Models", show that such
filtering also removes text about, and by, the groups it should protect). A word list is blind
to context ("the fool in King Lear" is not an insult); a classifier sees a little context but
knows only what it was trained on. Both give a score, and the threshold trades the recall of
hostile text against the clean text lost with it (`reference.data.quality.tradeoff_curve`).

The course's word list and labelled sentences are small, mild and synthetic
(`reference.data.samples.hostile_words`, `hostile_neutral_set`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from reference.data.corpus import as_text
from reference.data.quality import TextClassifier, train_classifier
from reference.data.samples import hostile_words

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


def words_of(text: str) -> list[str]:
    """The lower-cased words of `text`: runs of letters, joined by inner apostrophes or hyphens ("lily-livered")."""
    return _WORD.findall(as_text(text).lower())


def word_list_score(text: str, words: frozenset[str] | None = None) -> float:
    """The fraction of the words of `text` (as `words_of` splits them) that are in the word list.

    Args:
        text: the document, str or UTF-8 bytes.
        words: the list of lower-case words; None for the course's list, `hostile_words()`.

    Returns:
        a float in [0, 1]; 0.0 for a text without words.
    """
    listed = hostile_words() if words is None else words
    tokens = words_of(text)
    return sum(token in listed for token in tokens) / len(tokens) if tokens else 0.0


def train_toxicity_classifier(
    texts: Sequence[str], labels: Sequence[int], dim: int = 4096, epochs: int = 200, l2: float = 1e-3
) -> TextClassifier:
    """Logistic regression on hashed word unigrams and bigrams and character 4-grams, label 1 = hostile.

    The same model as the quality classifier (`reference.data.quality.train_classifier`), with
    character 4-grams (which see inside Shakespeare's compound insults) and a little more
    regularisation for a training set of a hundred-odd sentences.
    """
    return train_classifier(texts, labels, dim=dim, epochs=epochs, l2=l2, word_ngrams=(1, 2), char_ngrams=(4,))
