"""`llm-course list` prints the catalog without collecting tests: no pytest, no torch, no child process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from reference.course import catalog, listing

ROOT = Path(__file__).resolve().parents[1]

# `list` with child processes forbidden, reporting which heavy modules it imported.
PROBE = textwrap.dedent(
    """
    import subprocess, sys
    from reference.course import cli

    def no_child(*args, **kwargs):
        raise AssertionError("list started a child process")
    subprocess.Popen = no_child
    cli.main(sys.argv[1:])
    heavy = sorted(name for name in ("torch", "pytest", "_pytest", "numpy") if name in sys.modules)
    print("imported:", heavy)
    """
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_list_prints_from_the_catalog_alone():
    started = time.monotonic()
    proc = _run("list")
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("imported: []"), proc.stdout[-300:]
    for ch in catalog.CHAPTERS:
        assert f"Chapter {ch.number:2d}  {ch.title}" in proc.stdout
        for ex in ch.exercises:
            line = next(line for line in proc.stdout.splitlines() if line.strip().startswith(ex.id + " "))
            assert ex.title in line and f"{ex.points:>3} points" in line and ex.qualname in line
        if ch.exercises:
            assert f"total{'':<35} {sum(ex.points for ex in ch.exercises):>3} points" in proc.stdout
    assert seconds < 30, "a generous bound for a loaded machine; the command itself takes ~0.1 s"


def test_list_one_chapter_and_markdown():
    proc = _run("list", "attention")
    assert proc.returncode == 0, proc.stderr
    assert "Chapter  1" in proc.stdout and "Chapter  2" not in proc.stdout
    proc = _run("list", "--markdown")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(catalog.markdown_table() + "\n")


def test_tests_column_only_when_asked():
    chapter = catalog.chapter(1)
    counts = {ex.id: (i + 1, 2 * (i + 1)) for i, ex in enumerate(chapter.exercises)}
    plain = listing.format_listing([chapter]).splitlines()
    with_tests = listing.format_listing([chapter], counts, show_tests=True).splitlines()
    assert not any(" tests" in line for line in plain)
    first = chapter.exercises[0]
    line = next(line for line in with_tests if line.strip().startswith(first.id + " "))
    assert f"{first.points:>3} points   1 tests" in line, "points stay the catalog's; the column counts tests"
