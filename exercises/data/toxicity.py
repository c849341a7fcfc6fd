"""Exercises for Chapter 4, toxicity filtering: the word-list score (exercises 4.8).

Fill in each body that raises NotImplementedError; the docstrings say what to return. The rest of
the module is the reference's own code, so that it runs on your functions. Grade with
`llm-course grade 4`. Mirrors `reference/data/toxicity.py`.
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
    # Hint: words_of(text), then count the ones in the list.
    raise NotImplementedError("Exercise 4.8: word-list toxicity score")


def train_toxicity_classifier(
    texts: Sequence[str], labels: Sequence[int], dim: int = 4096, epochs: int = 200, l2: float = 1e-3
) -> TextClassifier:
    """Logistic regression on hashed word unigrams and bigrams and character 4-grams, label 1 = hostile.

    The same model as the quality classifier (`reference.data.quality.train_classifier`), with
    character 4-grams (which see inside Shakespeare's compound insults) and a little more
    regularisation for a training set of a hundred-odd sentences.
    """
    return train_classifier(texts, labels, dim=dim, epochs=epochs, l2=l2, word_ngrams=(1, 2), char_ngrams=(4,))
