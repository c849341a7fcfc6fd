"""The autograder itself: full marks for the reference, zero for the pristine exercises, refusals,
and student code that misbehaves costing only the tests it touches.

These tests drive the real `llm-course grade` command on Chapter 1, so they test the course's
machinery rather than an implementation: they run the same under `--impl reference` and
`--impl exercises`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reference.course import catalog, grader

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_1 = catalog.chapter(1)


def run_grader(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "reference.course.cli", "grade", *args, "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, json.loads(out.read_text())


def assert_gradescope_format(results: dict) -> None:
    assert set(results) >= {"score", "max_score", "tests"}
    assert results["score"] == sum(t["score"] for t in results["tests"])
    assert results["max_score"] == sum(t["max_score"] for t in results["tests"])
    for test in results["tests"]:
        assert set(test) >= {"name", "score", "max_score", "status", "output", "visibility"}
        assert test["status"] in ("passed", "failed")
        assert test["score"] == (test["max_score"] if test["status"] == "passed" else 0)


def by_test(results: dict) -> dict[str, dict]:
    return {t["name"].split(": ", 1)[1]: t for t in results["tests"]}


def test_reference_scores_full_marks(tmp_path):
    proc, results = run_grader(tmp_path, "attention", "--impl", "reference")
    assert proc.returncode == 0, proc.stderr
    assert_gradescope_format(results)
    assert results["max_score"] > 0
    assert results["score"] == results["max_score"], [t for t in results["tests"] if t["status"] == "failed"][:3]
    assert {t["number"] for t in results["tests"]} == {ex.id for ex in CHAPTER_1.exercises}
    assert "total: " in proc.stdout


def test_pristine_exercises_score_zero(tmp_path):
    proc, results = run_grader(tmp_path, "01")
    assert proc.returncode == 0, proc.stderr
    assert_gradescope_format(results)
    assert results["score"] == 0 and results["max_score"] > 0
    for test in results["tests"]:
        assert f"Exercise {test['number']}:" in test["output"], test["output"][:300]


HOSTILE = '''

# --- a misbehaving student: each case below is hit by exactly one test -------------------------
import ctypes as _ctypes
import os as _os
import sys as _sys

_causal_mask, _padding_mask, _attention_weights = causal_mask, padding_mask, attention_weights


def causal_mask(seq_len_q, seq_len_k=None, *, device=None):
    """Misbehaves on chosen sizes."""
    if seq_len_q == 7:  # loops forever
        while True:
            pass
    if (seq_len_q, seq_len_k) == (1, 5):
        _sys.exit(0)
    if (seq_len_q, seq_len_k) == (3, 8):
        _os._exit(3)
    if (seq_len_q, seq_len_k) == (4, 4):
        _ctypes.string_at(0)  # segmentation fault
    return _causal_mask(seq_len_q, seq_len_k, device=device)


def padding_mask(lengths, max_len=None):
    """Floods stdout for one input."""
    if max_len == 5 and lengths.tolist() == [3, 0, 5]:
        while True:
            print("x" * 65536)
    return _padding_mask(lengths, max_len)


def attention_weights(q, k, mask=None, scale=None):
    """Raises for one input."""
    if mask is not None and mask.is_floating_point() and q.shape == (1, 2, 4, 8):
        raise RuntimeError("student bug")
    return _attention_weights(q, k, mask, scale)
'''

HOSTILE_TESTS = {
    "test_causal_mask_square_is_lower_triangle[7]": "timed out",
    "test_causal_mask_with_cached_keys_aligns_to_the_end[1-5]": "SystemExit",
    "test_causal_mask_with_cached_keys_aligns_to_the_end[3-8]": "exited with status 3",
    "test_causal_mask_with_cached_keys_aligns_to_the_end[4-4]": "SIGSEGV",
    "test_padding_mask_values_and_shape": "File too large",
    "test_attention_weights_are_zero_where_masked": "student bug",
}


def make_submission(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "submission"
    (folder / "exercises").mkdir(parents=True)
    (folder / "exercises" / "__init__.py").write_text("")
    (folder / "exercises" / "attention.py").write_text(body)
    return folder


def test_misbehaving_code_costs_only_the_tests_it_touches(tmp_path):
    source = (ROOT / "reference" / "attention.py").read_text()
    folder = make_submission(tmp_path, source + HOSTILE)
    proc, results = run_grader(tmp_path, "1", "--exercises-path", str(folder), "--timeout", "10")
    assert proc.returncode == 0, proc.stderr
    assert_gradescope_format(results)
    tests = by_test(results)
    failed = {name for name, t in tests.items() if t["status"] == "failed"}
    assert failed == set(HOSTILE_TESTS), failed
    for name, reason in HOSTILE_TESTS.items():
        assert reason in tests[name]["output"], (name, tests[name]["output"][:500])
    assert results["score"] == results["max_score"] - sum(tests[n]["max_score"] for n in HOSTILE_TESTS)


def test_solution_imported_from_reference_is_refused(tmp_path):
    stub = (ROOT / "exercises" / "attention.py").read_text()
    body = stub + "\n\nfrom reference.attention import repeat_kv  # noqa: E402,F811\n"
    folder = make_submission(tmp_path, body)
    proc, results = run_grader(tmp_path, "1", "--exercises-path", str(folder))
    assert proc.returncode == 0, proc.stderr
    refused = [t for t in results["tests"] if t["number"] == "1.6"]
    assert refused and all(t["status"] == "failed" for t in refused)
    assert all("refused" in t["output"] and "repeat_kv" in t["output"] for t in refused)
    assert "refused" in proc.stdout


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        ("from reference.attention import softmax, causal_mask as cm", {"1.1", "1.2"}),
        ("from reference.attention import *", {ex.id for ex in CHAPTER_1.exercises}),
        ("import reference.attention as ra", {ex.id for ex in CHAPTER_1.exercises}),
        ("from reference import attention", {ex.id for ex in CHAPTER_1.exercises}),
        ("import importlib\nm = importlib.import_module('reference.attention')", {ex.id for ex in CHAPTER_1.exercises}),
        ("from reference.course import catalog", set()),  # other modules of reference are allowed
        ("import torch", set()),
    ],
)
def test_solution_import_detection(code, refused):
    found = grader.solution_imports(textwrap.dedent(code), "attention", list(CHAPTER_1.exercises))
    assert set(found) == refused
    assert all(why.startswith("refused: exercises/attention.py line") for why in found.values())


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        ("from reference.models import llama", True),
        ("from reference.models import *", True),
        ("import reference.models", True),
        ("import reference", True),
        ("from reference.models.llama import TransformerLM", True),
        ("from reference.models.parts import Block, RMSNorm", False),  # a sibling module is harness
        ("from reference.models import parts", False),
    ],
)
def test_solution_import_detection_in_a_subpackage(code, refused):
    exercises = [ex for ex in catalog.chapter(5).exercises if ex.module == "models.llama"]
    found = grader.solution_imports(code, "models.llama", exercises)
    assert bool(found) == refused


def test_wrong_arguments_exit_nonzero(tmp_path):
    for args in (["grade", "99"], ["grade", "1", "--impl", "mine"], ["grade", "1", "--timeout", "0"]):
        proc = subprocess.run(
            [sys.executable, "-m", "reference.course.cli", *args], cwd=tmp_path, capture_output=True, text=True
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert "error" in proc.stderr


def test_list_shows_chapters_exercises_and_points():
    proc = subprocess.run(
        [sys.executable, "-m", "reference.course.cli", "list"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    for ch in catalog.CHAPTERS:
        assert ch.title in proc.stdout
        for ex in ch.exercises:
            line = next(line for line in proc.stdout.splitlines() if line.strip().startswith(ex.id + " "))
            assert ex.title in line and int(line.split(" points")[0].split()[-1]) > 0
