"""Exercises for Chapter 13: human evaluation: a side-by-side rating sheet (CSV) and the agreement between raters.

Implement cohen_kappa (13.14), fleiss_kappa (13.15): fill in each body that raises NotImplementedError; the docstrings say
what to return. The rest of the module is the reference's own code, so that it runs on your
functions. Grade with `llm-course grade 13`. Mirrors `reference/evaluation/human.py`.
"""

from __future__ import annotations

import csv
import io
import os
import random
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path

from reference.runtime import atomic_write

SHEET_COLUMNS = ("item", "prompt", "output_a", "output_b", "rater", "preference", "notes")
PREFERENCES = ("A", "B", "tie")


def cohen_kappa(rater1: Sequence[Hashable], rater2: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' labels on the same items (= sklearn's `cohen_kappa_score`).

    Args:
        rater1, rater2: one label per item, any hashable values, the same length (>= 1).

    Returns:
        kappa in [-1, 1]; 1.0 when both raters use one single, shared label (p_e = 1: nothing to chance).
    """
    # Hint: p_e multiplies the two raters' own shares of each label.
    raise NotImplementedError("Exercise 13.14: Cohen's kappa")


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an items x categories table of rating counts (every item rated by the same n >= 2 raters).

    Args:
        counts: counts[i][c] = how many raters put item i in category c.

    Returns:
        kappa (<= 1); 1.0 when every rating falls in one category (P_e = 1).
    """
    # Hint: per item, sum of n_ic (n_ic - 1) over n (n - 1); the category shares pool every rating.
    raise NotImplementedError("Exercise 13.15: Fleiss' kappa")


def counts_table(ratings: Sequence[Sequence[Hashable]], categories: Sequence[Hashable]) -> list[list[int]]:
    """Items x categories counts from per-item rating lists (each item's labels from all raters)."""
    return [[sum(r == c for r in row) for c in categories] for row in ratings]


def rating_sheet(
    path: str | os.PathLike, prompts: Sequence[str], outputs_a: Sequence[str], outputs_b: Sequence[str],
    raters: Sequence[str], seed: int = 0,
) -> tuple[Path, list[bool]]:  # fmt: skip
    """Write a blind side-by-side rating sheet: one row per (item, rater), the two outputs in a
    per-item random order so that no rater learns which system is "A". Written atomically.

    Returns:
        (path, swapped): swapped[i] is True where system 2's output is shown as "A" for item i
        (keep it: `read_preferences` needs it to map the ratings back).
    """
    if not (len(prompts) == len(outputs_a) == len(outputs_b)):
        raise ValueError(f"prompts and outputs must pair up, got {len(prompts)}, {len(outputs_a)}, {len(outputs_b)}")
    rng = random.Random(seed)
    swapped = [rng.random() < 0.5 for _ in prompts]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(SHEET_COLUMNS)
    for i, (prompt, a, b) in enumerate(zip(prompts, outputs_a, outputs_b)):
        first, second = (b, a) if swapped[i] else (a, b)
        for rater in raters:
            writer.writerow([i, prompt, first, second, rater, "", ""])
    path = Path(path)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(buffer.getvalue())
    return path, swapped


def read_preferences(path: str | os.PathLike, swapped: Sequence[bool]) -> dict[str, list[str]]:
    """A filled sheet's preferences per rater, mapped back to the systems: "1", "2" or "tie" per item, in item order.

    Raises ValueError naming the row if a preference is not one of A, B, tie.
    """
    by_rater: dict[str, dict[int, str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            choice = row["preference"].strip()
            if choice not in PREFERENCES:
                raise ValueError(f"{path}, line {line}: preference must be one of {PREFERENCES}, got {choice!r}")
            item = int(row["item"])
            system = "tie" if choice == "tie" else ("1" if (choice == "A") != swapped[item] else "2")
            by_rater.setdefault(row["rater"], {})[item] = system
    return {rater: [items[i] for i in sorted(items)] for rater, items in by_rater.items()}


def rated_pairs() -> list[dict[str, object]]:
    """The course's 33 (kind, reference, candidate, rating) rows (reference/data/resources/metric_pairs.tsv):
    copies, paraphrases, near copies, word-order swaps, negations, drops, typos and unrelated outputs,
    each rated 1-5 by one rater (the course author) for how well the candidate says what the reference says."""
    from importlib import resources

    text = resources.files("reference.data").joinpath("resources/metric_pairs.tsv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    return [{**row, "rating": int(row["rating"])} for row in rows]
