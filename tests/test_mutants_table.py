"""The mutation table stays in step with the reference: every snippet of `tests/mutants.py` occurs
exactly once in its file (a renamed variable would otherwise silently retire a mutant), every
mutant changes the code, and every exercise of the chapters it covers has at least two mutants.

The mutation run itself is a command, not a test: `python -m tests.run_mutants` (see that file).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from reference.course import catalog

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("course_mutants", ROOT / "tests" / "mutants.py")
_mutants = importlib.util.module_from_spec(_spec)
sys.modules["course_mutants"] = _mutants
_spec.loader.exec_module(_mutants)
MUTANTS = _mutants.MUTANTS
COVERED_CHAPTERS = (1, 2, 4, 5, 6, 7, 3)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: f"{m.exercise}:{m.name}")
def test_mutant_snippet_occurs_exactly_once(mutant):
    catalog.exercise(mutant.exercise)  # a known exercise
    assert mutant.file.startswith("reference/"), "mutants change the reference, never the tests"
    text = (ROOT / mutant.file).read_text(encoding="utf-8")
    assert text.count(mutant.find) == 1, f"{mutant.file}: the snippet occurs {text.count(mutant.find)} times: {mutant.find!r}"
    assert mutant.replace != mutant.find


def test_every_exercise_has_at_least_two_mutants():
    counts = {ex.id: 0 for ch in catalog.CHAPTERS if ch.number in COVERED_CHAPTERS for ex in ch.exercises}
    for m in MUTANTS:
        counts[m.exercise] = counts.get(m.exercise, 0) + 1
    assert not [ex for ex, n in counts.items() if n < 2], f"exercises with fewer than two mutants: {counts}"


def test_mutant_names_are_unique_per_exercise():
    keys = [(m.exercise, m.name) for m in MUTANTS]
    assert len(keys) == len(set(keys))
