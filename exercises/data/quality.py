"""Exercises for Chapter 4, quality filtering: the rule signals of Gopher and the survey, and the logistic-regression
step of the quality classifier (exercises 4.1, 4.2).

Fill in each body that raises NotImplementedError; the docstrings say what to return. The rest of
the module is the reference's own code, so that it runs on your functions. Grade with
`llm-course grade 4`. Mirrors `reference/data/quality.py`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reference.data.corpus import as_text
from reference.validation import check_int

GOPHER_STOP_WORDS: frozenset[str] = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS: tuple[str, ...] = ("•", "‣", "◦", "⁃", "-", "*", "·")
_EDGE_PUNCTUATION = re.compile(r"^\W+|\W+$")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")

# ----------------------------------------------------------------------------------------------
# Rule-based filtering
# ----------------------------------------------------------------------------------------------


def quality_signals(text: str) -> dict[str, float]:
    """The statistics the quality rules test, for one document.

    Words are whitespace-separated; lines are the non-blank lines. Keys:
        "words": number of words;
        "mean_word_length": mean number of characters per word (0 without words);
        "hash_to_word_ratio": occurrences of "#" per word;
        "ellipsis_to_word_ratio": occurrences of "..." or "…" per word;
        "ellipsis_line_fraction": fraction of lines that end with "..." or "…";
        "bullet_line_fraction": fraction of lines that start with a bullet (one of BULLETS);
        "alphabetic_word_fraction": fraction of words with at least one letter;
        "stop_words": how many of the distinct GOPHER_STOP_WORDS occur (lower-cased, edge
            punctuation stripped);
        "uppercase_fraction": fraction of letters that are upper case;
        "number_line_fraction": fraction of lines with at least one digit.
    Ratios and fractions are 0 when their denominator is. `text` may be str or UTF-8 bytes.
    """
    # Hint: str.split() for words, splitlines() for lines (skip blank ones); guard every division by zero.
    raise NotImplementedError("Exercise 4.1: quality signals")


@dataclass(frozen=True)
class Rule:
    """Keep a document when low <= signals[signal] <= high (a bound of None is open)."""

    name: str
    signal: str  # a key of quality_signals
    low: float | None = None
    high: float | None = None

    def passes(self, signals: dict[str, float]) -> bool:
        """Whether the signals (from `quality_signals`) satisfy this rule."""
        if self.signal not in signals:
            raise ValueError(f"rule {self.name!r} reads signal {self.signal!r}, which signals lack (have {sorted(signals)})")
        value = signals[self.signal]
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


def gopher_rules(
    min_words: int = 50,
    max_words: int = 100_000,
    min_mean_word_length: float = 3.0,
    max_mean_word_length: float = 10.0,
    max_symbol_to_word_ratio: float = 0.1,
    max_ellipsis_line_fraction: float = 0.3,
    max_bullet_line_fraction: float = 0.9,
    min_alphabetic_word_fraction: float = 0.8,
    min_stop_words: int = 2,
) -> list[Rule]:
    """Gopher's quality filters (Rae et al., 2021, appendix A.1.1) with its thresholds as defaults."""
    return [
        Rule("word count", "words", min_words, max_words),
        Rule("mean word length", "mean_word_length", min_mean_word_length, max_mean_word_length),
        Rule("hash-to-word ratio", "hash_to_word_ratio", None, max_symbol_to_word_ratio),
        Rule("ellipsis-to-word ratio", "ellipsis_to_word_ratio", None, max_symbol_to_word_ratio),
        Rule("lines ending in an ellipsis", "ellipsis_line_fraction", None, max_ellipsis_line_fraction),
        Rule("lines starting with a bullet", "bullet_line_fraction", None, max_bullet_line_fraction),
        Rule("words with a letter", "alphabetic_word_fraction", min_alphabetic_word_fraction, None),
        Rule("stop words", "stop_words", min_stop_words, None),
    ]


def survey_rules(
    max_uppercase_fraction: float = 0.5,
    max_symbol_to_word_ratio: float = 0.1,
    min_number_line_fraction: float | None = None,
) -> list[Rule]:
    """The rules survey section 2.1(b) names: not (mostly) in capitals, few symbols per word, and,
    where the domain calls for it (tables, finance), lines that contain numbers.

    The survey's "character-to-word ratio greater than 0.1" is read as Gopher's symbol-to-word
    ratio (a ratio of all characters to words is about 5 in any prose). The numbers rule is off
    unless `min_number_line_fraction` is given.
    """
    rules = [
        Rule("mostly upper case", "uppercase_fraction", None, max_uppercase_fraction),
        Rule("hash-to-word ratio", "hash_to_word_ratio", None, max_symbol_to_word_ratio),
        Rule("ellipsis-to-word ratio", "ellipsis_to_word_ratio", None, max_symbol_to_word_ratio),
    ]
    if min_number_line_fraction is not None:
        rules.append(Rule("lines with numbers", "number_line_fraction", min_number_line_fraction, None))
    return rules


def failed_rules(text: str, rules: Sequence[Rule]) -> list[str]:
    """Names of the rules `text` fails, in the rules' order; [] means keep it."""
    signals = quality_signals(text)
    return [rule.name for rule in rules if not rule.passes(signals)]


# ----------------------------------------------------------------------------------------------
# Classifier-based filtering: logistic regression on hashed n-grams
# ----------------------------------------------------------------------------------------------


def hashed_features(
    texts: Sequence[str], dim: int = 4096, word_ngrams: Sequence[int] = (1, 2), char_ngrams: Sequence[int] = (3,)
) -> np.ndarray:
    """Bag of hashed n-grams, one L2-normalised row per text; float32 array of shape (len(texts), dim).

    Each word n-gram (lower-cased words) and character n-gram (case kept, so capitals count) is
    hashed with CRC-32, a stable hash (unlike Python's salted `hash`), into one of `dim`
    buckets; a bucket holds log(1 + count), and each row is scaled to unit length (an empty text
    gives a zero row).
    """
    check_int("dim", dim, 1)
    features = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        text = as_text(text, name=f"texts[{row}]")
        words = text.lower().split()
        grams = [f"w{n}:" + " ".join(words[i : i + n]) for n in word_ngrams for i in range(len(words) - n + 1)]
        grams += [f"c{n}:" + text[i : i + n] for n in char_ngrams for i in range(len(text) - n + 1)]
        if grams:
            buckets = np.fromiter((zlib.crc32(g.encode("utf-8")) % dim for g in grams), dtype=np.int64, count=len(grams))
            features[row] = np.log1p(np.bincount(buckets, minlength=dim))
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


def logistic_regression_step(
    weights: np.ndarray, bias: float, features: np.ndarray, labels: np.ndarray, learning_rate: float, l2: float = 0.0
) -> tuple[np.ndarray, float, float]:
    """One full-batch gradient-descent step of L2-regularised logistic regression.

    The model is p = sigmoid(features @ weights + bias), the loss the mean binary cross-entropy
    plus (l2 / 2) * ||weights||^2 (the bias is not regularised):
        L = mean(log(1 + exp(z)) - y * z) + l2 / 2 * ||w||^2,   z = X w + b,
        dL/dw = X^T (p - y) / n + l2 * w,   dL/db = mean(p - y).
    Compute log(1 + exp(z)) stably (np.logaddexp(0, z)).

    Args:
        weights: float array of shape (dim,).
        bias: the intercept.
        features: float array of shape (n, dim), n >= 1.
        labels: array of shape (n,) of 0s and 1s.
        learning_rate: step size (> 0).
        l2: regularisation strength (>= 0).

    Returns:
        (new weights of shape (dim,), new bias, the loss at the weights given, before the step).
    """
    # Hint: the loss and both gradients are in the docstring. Evaluate the loss at the weights you are
    # given (before the step), keep log(1 + e^z) and the sigmoid finite for large |z|, and leave the bias
    # out of the L2 penalty.
    raise NotImplementedError("Exercise 4.2: logistic-regression step")


@dataclass
class TextClassifier:
    """Logistic regression on `hashed_features`; `predict_proba` gives P(label 1) per text."""

    weights: np.ndarray  # (dim,)
    bias: float
    word_ngrams: tuple[int, ...] = (1, 2)
    char_ngrams: tuple[int, ...] = (3,)
    losses: tuple[float, ...] = ()  # training loss per epoch

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(label 1) for each text; float64 array of shape (len(texts),)."""
        x = hashed_features(texts, len(self.weights), self.word_ngrams, self.char_ngrams)
        return 0.5 * (1.0 + np.tanh(0.5 * (x.astype(np.float64) @ self.weights + self.bias)))  # sigmoid

    def predict(self, texts: Sequence[str], threshold: float = 0.5) -> np.ndarray:
        """Boolean array of shape (len(texts),): probability >= threshold."""
        return self.predict_proba(texts) >= threshold


def train_classifier(
    texts: Sequence[str],
    labels: Sequence[int],
    dim: int = 4096,
    epochs: int = 200,
    learning_rate: float = 8.0,
    l2: float = 1e-4,
    word_ngrams: Sequence[int] = (1, 2),
    char_ngrams: Sequence[int] = (3,),
) -> TextClassifier:
    """Fit a `TextClassifier` by `epochs` full-batch steps of `logistic_regression_step` from zero weights.

    Deterministic (no sampling); float32 arithmetic. Labels are 0/1, and both must occur.
    """
    check_int("epochs", epochs, 1)
    y = np.asarray(labels, dtype=np.float32)
    if y.shape != (len(texts),) or not np.isin(y, (0.0, 1.0)).all() or len(set(y.tolist())) != 2:
        raise ValueError(f"labels must be {len(texts)} values of 0 and 1 with both present, got {list(labels)[:10]}...")
    x = hashed_features(texts, dim, word_ngrams, char_ngrams)  # (n, dim) float32
    weights, bias, losses = np.zeros(dim, dtype=np.float32), 0.0, []
    for _ in range(epochs):
        weights, bias, loss = logistic_regression_step(weights, bias, x, y, learning_rate, l2)
        losses.append(loss)
    return TextClassifier(weights, bias, tuple(word_ngrams), tuple(char_ngrams), tuple(losses))


def train_test_split(
    texts: Sequence[str], labels: Sequence[int], test_fraction: float = 0.3, seed: int = 0
) -> tuple[list[str], list[int], list[str], list[int]]:
    """A random split (train_texts, train_labels, test_texts, test_labels), deterministic for a seed."""
    if len(texts) != len(labels):
        raise ValueError(f"texts and labels must have one length, got {len(texts)} and {len(labels)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(texts))
    cut = len(texts) - round(len(texts) * test_fraction)
    train, test = order[:cut], order[cut:]
    return [texts[i] for i in train], [labels[i] for i in train], [texts[i] for i in test], [labels[i] for i in test]


def tradeoff_curve(
    scores: Sequence[float], labels: Sequence[int], thresholds: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """Recall of the positives against the loss of the negatives, as the removal threshold moves.

    A text is removed when its score >= threshold. For each threshold: "recall" is the fraction
    of positive texts (label 1: toxic, noisy) removed, "clean_loss" the fraction of negative
    texts (label 0: clean) removed with them. Default thresholds: 0, 0.01, ..., 1.

    Returns:
        {"threshold", "recall", "clean_loss"}: float64 arrays of shape (len(thresholds),).
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of one length, got shapes {s.shape} and {y.shape}")
    if not (y == 1).any() or not (y == 0).any():
        raise ValueError("labels must contain both 0 (clean) and 1 (to remove)")
    t = np.linspace(0.0, 1.0, 101) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    removed = s[None, :] >= t[:, None]  # (thresholds, texts)
    return {"threshold": t, "recall": removed[:, y == 1].mean(axis=1), "clean_loss": removed[:, y == 0].mean(axis=1)}
