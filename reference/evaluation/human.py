"""Human evaluation: a side-by-side rating sheet (CSV) and the agreement between raters.

Survey section 2.6(d), manual evaluation. Cohen, 1960, "A coefficient of agreement for nominal
scales"; Fleiss, 1971, "Measuring nominal scale agreement among many raters".

    Cohen:  kappa = (p_o - p_e) / (1 - p_e),  p_o = share of items on which the two raters agree,
            p_e = sum_c p_1(c) p_2(c), each rater's own share of category c
    Fleiss: P_i = (sum_c n_ic^2 - n) / (n (n - 1)),  P_bar = mean_i P_i,  p_c = sum_i n_ic / (N n),
            P_e = sum_c p_c^2,  kappa = (P_bar - P_e) / (1 - P_e)   (N items, n raters per item)
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
    if len(rater1) != len(rater2) or not rater1:
        raise ValueError(f"the raters must label the same items (>= 1), got {len(rater1)} and {len(rater2)} labels")
    n = len(rater1)
    observed = sum(a == b for a, b in zip(rater1, rater2)) / n
    c1, c2 = Counter(rater1), Counter(rater2)
    expected = sum(c1[c] * c2[c] for c in c1) / (n * n)
    if expected == 1:
        return 1.0
    return (observed - expected) / (1 - expected)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an items x categories table of rating counts (every item rated by the same n >= 2 raters).

    Args:
        counts: counts[i][c] = how many raters put item i in category c.

    Returns:
        kappa (<= 1); 1.0 when every rating falls in one category (P_e = 1).
    """
    if not counts or not counts[0]:
        raise ValueError("counts must be a non-empty items x categories table")
    n = sum(counts[0])
    if n < 2 or any(sum(row) != n for row in counts) or any(len(row) != len(counts[0]) for row in counts):
        raise ValueError(f"every item must have the same number (>= 2) of ratings over the same categories, got {[sum(r) for r in counts]}")
    if any(v < 0 for row in counts for v in row):
        raise ValueError("counts must be >= 0")
    items = len(counts)
    p_items = [(sum(v * v for v in row) - n) / (n * (n - 1)) for row in counts]
    p_bar = sum(p_items) / items
    shares = [sum(row[c] for row in counts) / (items * n) for c in range(len(counts[0]))]
    p_e = sum(p * p for p in shares)
    if p_e == 1:
        return 1.0
    return (p_bar - p_e) / (1 - p_e)


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
