"""A chapter's grade depends on that chapter's exercises only.

A learner who has not started Chapter 1 must be able to earn every point of Chapter 2, and a bug in
Chapter 1 must not cost points in Chapter 2: a chapter's tests reach the code of other chapters
(attention inside a positional test, say) through `reference`, never through `impl`, and an
exercise module builds on other chapters' code from `reference`, never from `exercises`.
Checked statically for every chapter, and once end to end: Chapter 2 solved (the reference's
`positional.py` as the exercise) with every other chapter's exercises pristine earns every test.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reference.course import catalog

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [ch for ch in catalog.CHAPTERS if ch.exercises]
ALL_MODULES = {m for ch in catalog.CHAPTERS for m in ch.modules}


def _impl_modules(tree: ast.AST) -> set[str]:
    """The course modules a test reaches as `impl.<module>...` (the longest dotted prefix that is a module)."""
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        parts, inner = [], node
        while isinstance(inner, ast.Attribute):
            parts.append(inner.attr)
            inner = inner.value
        if not (isinstance(inner, ast.Name) and inner.id == "impl"):
            continue
        parts.reverse()
        prefixes = [".".join(parts[:k]) for k in range(len(parts), 0, -1)]
        module = next((p for p in prefixes if p in ALL_MODULES), None)
        if module is not None:
            found.add(module)
        elif parts[0] != "package" and not any(m.startswith(".".join(parts) + ".") for m in ALL_MODULES):
            found.add(".".join(parts))  # neither a module nor a package of modules: reported by the test below
    return found


@pytest.mark.parametrize("ch", CHAPTERS, ids=lambda ch: f"chapter-{ch.number}")
def test_chapter_tests_reach_other_chapters_only_through_reference(ch):
    for path in ch.tests:
        reached = _impl_modules(ast.parse((ROOT / path).read_text(encoding="utf-8")))
        outside = sorted(m for m in reached if m not in ch.modules)
        assert not outside, f"{path} grades {outside} through `impl`; another chapter's code comes from `reference`"


@pytest.mark.parametrize("ch", CHAPTERS, ids=lambda ch: f"chapter-{ch.number}")
def test_exercise_modules_build_on_other_chapters_from_reference(ch):
    for module in {ex.module for ex in ch.exercises}:
        source = (ROOT / "exercises" / f"{module.replace('.', '/')}.py").read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"exercises/{module}: relative import on line {node.lineno}"
                names = [node.module or ""]
            for name in names:
                if name == "exercises" or name.startswith("exercises."):
                    assert name.removeprefix("exercises.") in ch.modules, (
                        f"exercises/{module} imports {name} (line {node.lineno}): another chapter's exercise"
                    )


def test_chapter_2_earns_every_point_with_chapter_1_untouched(tmp_path):
    """End to end: the exercises package with Chapter 2 solved and every other chapter pristine."""
    shutil.copytree(ROOT / "exercises", tmp_path / "exercises", ignore=shutil.ignore_patterns("__pycache__"))
    attention = (tmp_path / "exercises" / "attention.py").read_text(encoding="utf-8")
    assert 'raise NotImplementedError("Exercise 1.7' in attention, "Chapter 1's exercises are stubs in this copy"
    shutil.copy(ROOT / "reference" / "positional.py", tmp_path / "exercises" / "positional.py")
    env = {k: v for k, v in os.environ.items() if k != "LLM_COURSE_IMPL"} | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_positional.py", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "--impl", "exercises", "--exercises-path", str(tmp_path), "--hypothesis-seed=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"Chapter 2's grade depends on Chapter 1's exercises:\n{tail}"
    assert " passed" in tail and "failed" not in tail and "error" not in tail.lower().split("passed")[-1]
