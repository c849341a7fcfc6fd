"""A cleaning pipeline: named stages in a chain, with what each one kept, changed and dropped, and why.

Survey section 2.1(b): quality filtering, deduplication, privacy scrubbing and toxicity
filtering, in that order, as in the pipelines of Gopher's MassiveText (Rae et al., 2021,
appendix A.1.1), RefinedWeb (Penedo et al., 2023, figure 2, whose "funnel" plot of the data that
survives each stage this module draws) and ROOTS (Laurençon et al., 2022).

A stage is a name and a function of one document that returns the document (kept; possibly
with changed text, as scrubbing does) or a string (dropped, for that reason). Stages that need
memory of earlier documents (deduplication) close over it, so a pipeline streams. `Pipeline.run`
applies the stages in turn and counts, per stage, documents, words and bytes in and out, the
documents changed, and the drop reasons.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from reference.runtime import progress as progress_bar

from reference.data import dedup, privacy, quality, toxicity
from reference.data.corpus import Document


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: `apply(document)` returns the document to keep or a reason to drop it."""

    name: str
    apply: Callable[[Document], Document | str]


@dataclass
class StageStats:
    """What one stage did; words are whitespace-separated tokens, bytes are UTF-8."""

    name: str
    documents_in: int = 0
    documents_out: int = 0
    words_in: int = 0
    words_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    changed: int = 0  # kept documents whose text the stage changed
    reasons: Counter = field(default_factory=Counter)  # drop reason -> documents dropped
    examples: dict[str, list[str]] = field(default_factory=dict)  # "kept" / "dropped: reason" -> titles

    @property
    def documents_dropped(self) -> int:
        return self.documents_in - self.documents_out


class Pipeline:
    """Stages applied in order to a list of documents, with one `StageStats` per stage."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        """Keep the stages (a sequence of `Stage`, with distinct names); raises ValueError otherwise."""
        names = [getattr(stage, "name", None) for stage in stages]
        if not all(isinstance(stage, Stage) for stage in stages):
            raise TypeError(f"stages must be Stage objects, got {[type(s).__name__ for s in stages]}")
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be distinct, got {names}")
        self.stages = list(stages)

    def run(
        self, documents: Sequence[Document], progress: bool = True, examples: int = 3
    ) -> tuple[list[Document], list[StageStats]]:
        """Pass the documents through every stage in order; returns (the survivors, one StageStats per stage).

        For each stage, each surviving document d in order: result = stage.apply(d). A Document
        is kept (counted as changed if its text differs from d's), a str drops d with that reason.
        Anything else raises TypeError naming the stage. Counts of documents, words
        (`len(text.split())`) and UTF-8 bytes are taken before and after the stage; the titles of
        up to `examples` kept documents go to stats.examples["kept"] and of up to `examples`
        dropped documents per reason to stats.examples["dropped: <reason>"]. A tqdm bar per
        stage shows progress unless `progress` is False.

        Args:
            documents: the input; each must be a Document.
            progress: whether to show the progress bars.
            examples: how many example titles to keep per outcome (>= 0).

        Returns:
            (list of the documents that passed every stage, list of StageStats in stage order).
        """
        for i, document in enumerate(documents):
            if not isinstance(document, Document):
                raise TypeError(f"documents[{i}] must be a Document, got {type(document).__name__}")
        current = list(documents)
        all_stats = []
        for stage in self.stages:
            stats = StageStats(stage.name)
            examples_by_outcome: dict[str, list[str]] = defaultdict(list)
            kept = []
            for document in progress_bar(current, desc=stage.name, disable=not progress, leave=False):
                stats.documents_in += 1
                stats.words_in += len(document.text.split())
                stats.bytes_in += len(document.text.encode("utf-8"))
                result = stage.apply(document)
                if isinstance(result, Document):
                    kept.append(result)
                    stats.documents_out += 1
                    stats.words_out += len(result.text.split())
                    stats.bytes_out += len(result.text.encode("utf-8"))
                    stats.changed += result.text != document.text
                    outcome = "kept"
                elif isinstance(result, str):
                    stats.reasons[result] += 1
                    outcome = f"dropped: {result}"
                else:
                    raise TypeError(
                        f"stage {stage.name!r} returned {type(result).__name__}; it must return a Document or a reason (str)"
                    )
                if len(examples_by_outcome[outcome]) < examples:
                    examples_by_outcome[outcome].append(document.title)
            stats.examples = dict(examples_by_outcome)
            all_stats.append(stats)
            current = kept
        return current, all_stats


# ----------------------------------------------------------------------------------------------
# The stages of Chapter 4
# ----------------------------------------------------------------------------------------------


def quality_stage(rules: Sequence[quality.Rule] | None = None, name: str = "quality rules") -> Stage:
    """Drop documents that fail a rule (default: `quality.gopher_rules()`); the reason names the first rule failed."""
    chosen = quality.gopher_rules() if rules is None else list(rules)

    def apply(document: Document) -> Document | str:
        failed = quality.failed_rules(document.text, chosen)
        return f"quality: {failed[0]}" if failed else document

    return Stage(name, apply)


def classifier_stage(
    classifier: quality.TextClassifier,
    threshold: float = 0.5,
    name: str = "quality classifier",
    window_words: int | None = None,
) -> Stage:
    """Drop documents that `classifier` gives a probability >= threshold (of being noise or hostile).

    A classifier trained on short windows (the chapter's are 80 words) judges a whole play or module
    badly: its features are summed over far more text than it ever saw. With `window_words`, a
    document's score is instead the mean probability over its consecutive windows of that many words.
    """
    if window_words is not None and (not isinstance(window_words, int) or window_words < 1):
        raise ValueError(f"window_words must be a positive int or None, got {window_words!r}")

    def score(text: str) -> float:
        if window_words is None:
            return float(classifier.predict_proba([text])[0])
        words = text.split()
        windows = [" ".join(words[i : i + window_words]) for i in range(0, len(words), window_words)] or [text]
        return float(np.mean(classifier.predict_proba(windows)))

    def apply(document: Document) -> Document | str:
        return f"{name} >= {threshold}" if score(document.text) >= threshold else document

    return Stage(name, apply)


def exact_dedup_stage(name: str = "exact dedup") -> Stage:
    """Drop a document whose `dedup.exact_hash` an earlier document had."""
    seen: set[str] = set()

    def apply(document: Document) -> Document | str:
        digest = dedup.exact_hash(document.text)
        if digest in seen:
            return "exact duplicate"
        seen.add(digest)
        return document

    return Stage(name, apply)


def near_dedup_stage(
    k: int = 5,
    unit: str = "word",
    num_perm: int = 128,
    bands: int = 32,
    rows: int = 4,
    threshold: float = 0.5,
    seed: int = 1,
    name: str = "near dedup",
) -> Stage:
    """Drop a document whose MinHash signature shares an LSH band with a kept one and agrees with it on >= threshold.

    Streaming: kept documents' signatures and band buckets are remembered in order, so the first
    of a group of near-duplicates survives.
    """
    buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(bands)]
    kept: list[np.ndarray] = []

    def apply(document: Document) -> Document | str:
        signature = dedup.minhash_signature(dedup.shingles(document.text, k, unit), num_perm, seed)
        keys = [signature[b * rows : (b + 1) * rows].tobytes() for b in range(bands)]
        candidates = {j for b, key in enumerate(keys) for j in buckets[b].get(key, ())}
        if any(dedup.estimate_jaccard(signature, kept[j]) >= threshold for j in candidates):
            return "near duplicate"
        for b, key in enumerate(keys):
            buckets[b][key].append(len(kept))
        kept.append(signature)
        return document

    return Stage(name, apply)


def privacy_stage(kinds: Sequence[str] = privacy.PII_KINDS, name: str = "privacy scrub") -> Stage:
    """Replace personal data by placeholders (`privacy.scrub`); drops nothing."""

    def apply(document: Document) -> Document | str:
        text = privacy.scrub(document.text, kinds)
        return document if text == document.text else dataclasses.replace(document, text=text)

    return Stage(name, apply)


def toxicity_stage(threshold: float = 0.02, classifier: quality.TextClassifier | None = None, name: str = "toxicity") -> Stage:
    """Drop documents whose toxicity score is >= threshold: `toxicity.word_list_score`, or the classifier's probability."""

    def apply(document: Document) -> Document | str:
        if classifier is None:
            score = toxicity.word_list_score(document.text)
        else:
            score = float(classifier.predict_proba([document.text])[0])
        return f"toxicity score >= {threshold}" if score >= threshold else document

    return Stage(name, apply)


# ----------------------------------------------------------------------------------------------
# Showing the statistics
# ----------------------------------------------------------------------------------------------


def stats_table(stats: Sequence[StageStats], width: int = 100) -> str:
    """A plain-text table about `width` characters wide: one row per stage (documents in and out,
    documents changed, words in and out) and its drop reasons, wrapped between reasons and, for a
    reason longer than its column, between words, never inside a word or before the count."""
    import textwrap

    top = f"{'':<18} {'docs':>5} {'docs':>5} {'docs':>7} {'words':>9} {'words':>9}"
    head = f"{'stage':<18} {'in':>5} {'out':>5} {'changed':>7} {'in':>9} {'out':>9}  "
    room = max(24, width - len(head))
    rows = [top, head + "dropped because", "-" * (len(head) + room)]
    for s in stats:
        units = [f"{reason}:\u00a0{n}" for reason, n in s.reasons.most_common()] or ["-"]  # no break before a count
        lines: list[str] = []
        for k, unit in enumerate(units):
            piece = unit + ("," if k < len(units) - 1 else "")
            if lines and len(lines[-1]) + 1 + len(piece) <= room:
                lines[-1] += " " + piece
            else:
                lines += textwrap.wrap(piece, room, break_long_words=False, break_on_hyphens=False) or [piece]
        prefix = (f"{s.name:<18} {s.documents_in:>5} {s.documents_out:>5} {s.changed:>7}"
                  f" {s.words_in:>9,} {s.words_out:>9,}  ")
        rows += [(prefix if i == 0 else " " * len(prefix)) + line.replace("\u00a0", " ") for i, line in enumerate(lines)]
    return "\n".join(rows)


def funnel_plot(stats: Sequence[StageStats], ax=None, measure: str = "words"):
    """A funnel: the share of the input's documents, words or bytes left after each stage, as horizontal bars.

    Returns the matplotlib Axes (a new figure's, if `ax` is None).
    """
    if measure not in ("documents", "words", "bytes"):
        raise ValueError(f"measure must be 'documents', 'words' or 'bytes', got {measure!r}")
    if not stats:
        raise ValueError("stats must hold at least one stage")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.5 + 0.5 * (len(stats) + 1)))
    start = getattr(stats[0], f"{measure}_in")
    labels = ["input"] + [s.name for s in stats]
    shares = [100.0] + [100.0 * getattr(s, f"{measure}_out") / start if start else 0.0 for s in stats]
    positions = np.arange(len(labels))[::-1]
    ax.barh(positions, shares, left=[(100 - v) / 2 for v in shares], color="tab:blue")
    for y, share in zip(positions, shares):
        ax.text(50, y, f"{share:.1f}%", ha="center", va="center", color="white")
    ax.set_yticks(positions, labels)
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"{measure} left (% of the input)")
    return ax
