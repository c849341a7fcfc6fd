"""`llm-course list` prints the catalog without collecting tests: no pytest, no torch, no child process."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from reference.course import catalog, listing

ROOT = Path(__file__).resolve().parents[1]

# A catalog whose every exercise carries its points, as the course's catalog does once points live in it.
WITH_POINTS = textwrap.dedent(
    """
    import dataclasses, subprocess, sys
    from reference.course import catalog, cli

    @dataclasses.dataclass(frozen=True)
    class Pointed(catalog.Exercise):
        points: int = 3

    catalog.CHAPTERS = tuple(
        dataclasses.replace(ch, exercises=tuple(Pointed(**{**dataclasses.asdict(ex), "points": 3}) for ex in ch.exercises))
        for ch in catalog.CHAPTERS
    )
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
        [sys.executable, "-c", WITH_POINTS, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
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
            assert ex.title in line and "  3 points" in line and ex.qualname in line
        if ch.exercises:
            assert f"total{'':<35} {3 * len(ch.exercises):>3} points" in proc.stdout
    assert seconds < 30, "a generous bound for a loaded machine; the command itself takes ~0.1 s"


def test_list_one_chapter_and_markdown():
    proc = _run("list", "attention")
    assert proc.returncode == 0, proc.stderr
    assert "Chapter  1" in proc.stdout and "Chapter  2" not in proc.stdout
    proc = _run("list", "--markdown")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(catalog.markdown_table() + "\n")


@dataclasses.dataclass(frozen=True)
class _Unpointed:  # an exercise as a catalog without points describes it
    id: str
    title: str
    module: str
    qualname: str


def test_tests_column_only_when_asked_and_points_from_tests_where_the_catalog_has_none():
    chapter = catalog.chapter(1)
    chapters = [dataclasses.replace(chapter, exercises=tuple(
        _Unpointed(ex.id, ex.title, ex.module, ex.qualname) for ex in chapter.exercises))]
    assert listing.needs_tests(chapters)
    counts = {ex.id: (i + 1, 2 * (i + 1)) for i, ex in enumerate(chapter.exercises)}
    plain = listing.format_listing(chapters, counts).splitlines()
    with_tests = listing.format_listing(chapters, counts, show_tests=True).splitlines()
    assert not any(" tests" in line for line in plain)
    assert next(line for line in with_tests if line.strip().startswith("1.1 ")).count("  2 points   1 tests") == 1
    assert any(line.strip().startswith("1.2 ") and "  4 points" in line for line in plain)
