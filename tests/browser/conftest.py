"""Fixtures of the browser tests (`make test-browser`; plain `pytest` deselects them, see pyproject's addopts).

One JupyterLab server per folder of notebooks and one headless Chromium per session. Screenshots go
to tests/browser/artifacts/ (ignored by git). Which chapters are also run with Run > Run All Cells:
LLM_COURSE_BROWSER_RUN, a comma-separated list of chapter numbers (default "0,1", the chapters that
run within their minute in a browser on the course's 2-core machine; "all" runs every chapter).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pytest

import browser_lab as lab  # tests/browser/, which pytest puts on sys.path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser():
    """Headless system Chromium (one profile, in a temporary folder, for the whole session)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: run `make test-browser`")
    with tempfile.TemporaryDirectory(prefix="llm-course-chromium-") as profile:
        with sync_api.sync_playwright() as playwright:
            context = lab.launch_chromium(playwright, Path(profile))
            context.set_default_timeout(60_000)
            yield context
            context.close()


def _serve(root: Path):
    server = lab.LabServer(root).start()
    try:
        yield server
    finally:
        leftovers = server.stop()
        assert not leftovers, f"processes left after the server stopped: {leftovers}"


@pytest.fixture(scope="session")
def chapters_server():
    """JupyterLab on chapters/, as `make lab` opens it; the notebooks must be byte-identical afterwards."""
    before = {nb: hashlib.sha256(nb.read_bytes()).hexdigest() for nb in CHAPTERS}
    yield from _serve(ROOT / "chapters")
    changed = [nb.name for nb, digest in before.items() if hashlib.sha256(nb.read_bytes()).hexdigest() != digest]
    assert not changed, f"the browser test wrote to {changed}"


@pytest.fixture
def chapter_server(chapters_server):
    """The chapters' server for one test; afterwards its kernels are shut down and none may leave a process."""
    yield chapters_server
    leftovers = chapters_server.shut_down_kernels()
    assert not leftovers, f"processes outlived their kernel: {leftovers}"


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.close()
