"""What `llm-course list` prints: the chapters, their exercises and points, from the catalog alone.

Listing imports the catalog and nothing else (no pytest, no torch), so it answers in a fraction of a
second. How many tests grade each exercise is known only by collecting the tests, which takes pytest,
torch and every chapter's test module in a child process (about ten seconds on the course's machine):
`llm-course list --tests` adds that column, and nothing else pays for it.
"""

from __future__ import annotations

from reference.course import catalog
from reference.course.catalog import Chapter, Exercise


def count_tests(chapters: list[Chapter]) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """{exercise id: (number of tests, the sum of their `points` weights)} and the collection's errors.

    Collects (never runs) the chapters' test files with the reference in a child pytest process.
    """
    import tempfile
    from pathlib import Path

    from reference.course import grader

    files = [path for ch in chapters for path in ch.tests]
    if not files:
        return {}, []
    with tempfile.TemporaryDirectory(prefix="llm-course-list-") as tmp:
        results, errors = grader.run_tests(files, "reference", grader.course_root(), Path(tmp), timeout=60, collect_only=True)
    counts: dict[str, tuple[int, int]] = {}
    for result in results:
        tests, points = counts.get(result.exercise, (0, 0))
        counts[result.exercise] = (tests + 1, points + result.points)
    return counts, errors


def format_listing(
    chapters: list[Chapter], tests: dict[str, tuple[int, int]] | None = None, *, show_tests: bool = False
) -> str:
    """One line per chapter, then one per exercise with its points (and, with `show_tests`, its number of tests).

    Points come from the catalog (the grader splits them over an exercise's tests); `tests` comes
    from `count_tests`.
    """
    lines = []
    for ch in chapters:
        lines.append(f"Chapter {ch.number:2d}  {ch.title}  [{ch.slug}]  survey {ch.survey_section}  {ch.notebook}")
        total = 0
        for ex in ch.exercises:
            points = ex.points
            total += points
            count = f" {(tests or {}).get(ex.id, (0, 0))[0]:>3} tests" if show_tests else ""
            path = f"exercises/{ex.module.replace('.', '/')}.py"
            lines.append(f"    {ex.id:<5} {ex.title:<40} {points:>3} points{count}   {path}: {ex.qualname}")
        if ch.exercises:
            lines.append(f"    {'':<5} {'total':<40} {total:>3} points")
    return "\n".join(lines)


def markdown_table() -> str:
    """The README's chapter table (`llm-course list --markdown`)."""
    return catalog.markdown_table()
