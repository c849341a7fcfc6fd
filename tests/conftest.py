"""One test suite for both implementations.

`pytest` tests `reference`; `pytest --impl exercises` runs the same tests against `exercises`
(and `--exercises-path DIR` against the `exercises` package found in DIR, e.g. a student's
submission). Tests reach the code only through the `impl` fixture: `impl.attention` is
`reference.attention` or `exercises.attention`.

Every test in a chapter's test file names the exercise it grades and its points:

    @pytest.mark.exercise("1.3")
    @pytest.mark.points(2)
    def test_padding_mask_shape(impl): ...
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from reference.course import catalog

ROOT = Path(__file__).resolve().parents[1]
IMPLEMENTATIONS = ("reference", "exercises")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("understanding-llms")
    group.addoption(
        "--impl",
        choices=IMPLEMENTATIONS,
        default=os.environ.get("LLM_COURSE_IMPL", "reference"),
        help="which implementation the tests check (default: reference)",
    )
    group.addoption(
        "--exercises-path",
        default=None,
        help="folder that holds the `exercises` package to test instead of the installed one",
    )


class Implementation:
    """The modules of one implementation, by attribute: `impl.attention`, `impl.models.llama`.

    A subpackage comes back as another `Implementation`, so `impl.models.llama` imports
    `<package>.models.llama`; a name that is not a module is looked up in the package itself.
    """

    def __init__(self, package: str) -> None:
        self.package = package

    def __getattr__(self, name: str) -> ModuleType | Implementation:
        if name.startswith("__"):
            raise AttributeError(name)
        module = f"{self.package}.{name}"
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # a failing import inside the module, not a missing module
                raise
            package = importlib.import_module(self.package)
            if hasattr(package, name):
                return getattr(package, name)
            raise AttributeError(f"{self.package} has no module {name!r}") from error
        return Implementation(module) if hasattr(found, "__path__") else found

    def __repr__(self) -> str:
        return f"Implementation({self.package!r})"


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--exercises-path")
    if path:
        folder = Path(path).resolve()
        if not (folder / "exercises" / "__init__.py").is_file():
            raise pytest.UsageError(f"--exercises-path {path}: no exercises/__init__.py in that folder")
        if "exercises" in sys.modules:
            raise pytest.UsageError("--exercises-path: the package `exercises` was imported before the tests started")
        sys.path.insert(0, str(folder))


@pytest.fixture(scope="session")
def impl(request: pytest.FixtureRequest) -> Implementation:
    """The implementation under test; see the module docstring."""
    return Implementation(request.config.getoption("--impl"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test of a chapter's test file must carry a known exercise id and positive points."""
    chapter_files = {str(ROOT / path) for path in catalog.test_files()}
    problems = []
    for item in items:
        if str(item.path) not in chapter_files:
            continue
        ex, pts = item.get_closest_marker("exercise"), item.get_closest_marker("points")
        if ex is None or pts is None:
            problems.append(f"{item.nodeid}: needs @pytest.mark.exercise(id) and @pytest.mark.points(n)")
            continue
        try:
            catalog.exercise(ex.args[0])
        except (ValueError, IndexError):
            problems.append(f"{item.nodeid}: unknown exercise {ex.args!r}")
        if len(pts.args) != 1 or not isinstance(pts.args[0], int) or pts.args[0] <= 0:
            problems.append(f"{item.nodeid}: points must be one positive int, got {pts.args!r}")
    if problems:
        raise pytest.UsageError("chapter tests without valid grading markers:\n" + "\n".join(problems))
