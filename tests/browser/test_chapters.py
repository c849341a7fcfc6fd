"""Every chapter opened in JupyterLab in headless Chromium, as a learner opens it; some run with Run All.

`make test-browser` runs these (plain `pytest` deselects the `browser` marker). A chapter fails when its
stored outputs show an error, a stderr box, an image that does not load or maths that did not typeset,
when JupyterLab's news popup covers it, or, for the chapters in LLM_COURSE_BROWSER_RUN (default 0 and 1),
when Run > Run All Cells leaves a cell not run, ending in an error or writing to stderr (a progress
bar drawn while it runs excepted). Screenshots: tests/browser/artifacts/.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import browser_lab as lab  # tests/browser/, which pytest puts on sys.path

pytestmark = pytest.mark.browser

CHAPTERS = sorted((Path(__file__).resolve().parents[2] / "chapters").glob("*.ipynb"))
DEFAULT_RUN = "0,1"  # the chapters that run within their minute in a browser on the course's 2-core machine


def run_set() -> set[int]:
    """Chapter numbers whose notebook is run (LLM_COURSE_BROWSER_RUN: "0,1", "0,1,5" or "all")."""
    text = os.environ.get("LLM_COURSE_BROWSER_RUN", DEFAULT_RUN).strip()
    if text == "all":
        return {int(nb.name[:2]) for nb in CHAPTERS}
    try:
        return {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise pytest.UsageError(f"LLM_COURSE_BROWSER_RUN must be chapter numbers like '0,1' or 'all', got {text!r}") from None

RUN_TIMEOUT_S = 300.0  # a notebook's budget is 60 s on 2 cores; a browser drawing next to it is slower


def _id(notebook) -> str:
    return notebook.stem


@pytest.mark.parametrize("notebook", CHAPTERS, ids=_id)
def test_stored_outputs_render(notebook, chapter_server, page, artifacts):
    started = time.monotonic()
    lab.open_notebook(page, chapter_server, notebook.name)
    problems = lab.stored_output_problems(page)
    time.sleep(1.0)  # the news question shows shortly after the lab has loaded
    popup = lab.news_popup(page)
    lab.screenshot_notebook(page, artifacts / f"{notebook.stem}.png")
    print(f"{notebook.name}: opened and checked in {time.monotonic() - started:.1f} s")
    assert popup is None, f"JupyterLab's news popup shows ({popup!r}): the course's lab settings should turn it off"
    assert not problems, f"{notebook.name} shows:\n" + "\n".join(problems)


@pytest.mark.parametrize("notebook", [nb for nb in CHAPTERS if int(nb.name[:2]) in run_set()], ids=_id)
def test_run_all_cells(notebook, chapter_server, page, artifacts):
    lab.open_notebook(page, chapter_server, notebook.name)
    seconds = lab.run_all(page, timeout=RUN_TIMEOUT_S)
    problems = lab.run_problems(page)
    lab.screenshot_notebook(page, artifacts / f"{notebook.stem}.run.png")
    print(f"{notebook.name}: Run All Cells took {seconds:.1f} s")
    assert not problems, f"{notebook.name}, Run All Cells:\n" + "\n".join(problems)
