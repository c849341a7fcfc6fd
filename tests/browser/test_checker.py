"""The browser checks can fail: notebooks broken on purpose, each flagged for what is wrong with it.

Small notebooks written to a temporary folder, served by their own JupyterLab: a clean one the
checks pass, and one each with a stored error, a stored stderr box, an image that cannot load and
maths that cannot typeset. Run All on the erroring one and on one that writes to stderr is flagged
too (a progress bar drawn while a cell runs is not), and so is the news popup in a lab without the
course's settings.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

import browser_lab as lab  # tests/browser/, which pytest puts on sys.path



def _png() -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, 1])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _notebook(*cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _code(source: str, count: int, *outputs) -> nbformat.NotebookNode:
    return new_code_cell(source, execution_count=count, outputs=list(outputs))


NOTEBOOKS = {
    "clean": lambda: _notebook(
        new_markdown_cell(r"# Clean" "\n\n" r"Inline $q \cdot k / \sqrt{d}$ and displayed $$\frac{a}{b} = \sum_i x_i.$$"),
        _code('print("hello")', 1, new_output("stream", name="stdout", text="hello\n")),
        _code("1 + 1", 2, new_output("execute_result", data={"text/plain": "2"}, execution_count=2)),
        _code(
            "import matplotlib.pyplot as plt\nplt.plot([0, 1], [0, 1])\nplt.show()",
            3,
            new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"}),
        ),
    ),
    "stored_error": lambda: _notebook(
        _code('print("before")', 1, new_output("stream", name="stdout", text="before\n")),
        _code(
            "1 / 0",
            2,
            new_output(
                "error", ename="ZeroDivisionError", evalue="division by zero",
                traceback=["\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"],
            ),
        ),
        _code('print("after")', None),
    ),
    "stored_stderr": lambda: _notebook(
        _code(
            'import sys\nprint("50%|#####     | 1/2", file=sys.stderr)',
            1,
            new_output("stream", name="stderr", text="\r 50%|#####     | 1/2"),
        ),
    ),
    "live_stderr": lambda: _notebook(
        _code("from tqdm import tqdm\nfor _ in tqdm(range(3), desc='steps'):\n    pass", 1),
        _code("import warnings\nwarnings.warn('something the learner should not see')", 2),
    ),
    "broken_image": lambda: _notebook(
        _code("plot()", 1, new_output("display_data", data={"image/png": "iVBORw0KGgoAAAAN", "text/plain": "<Figure>"})),
    ),
    "broken_maths": lambda: _notebook(
        new_markdown_cell(r"An unclosed brace: $\frac{1}{2$."),
        new_markdown_cell(r"An unknown macro: $\attentionscore{q}{k}$."),
    ),
}


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebooks")
    for name, make in NOTEBOOKS.items():
        nbformat.write(make(), folder / f"{name}.ipynb")
    server = lab.LabServer(folder).start()
    yield server
    assert not server.stop(), "processes left after the server stopped"


@pytest.fixture
def server(broken_server):
    yield broken_server
    assert not broken_server.shut_down_kernels(), "processes outlived their kernel"


def _open(page, server, name: str) -> list[str]:
    lab.open_notebook(page, server, f"{name}.ipynb")
    return lab.stored_output_problems(page)


@pytest.mark.browser
def test_a_clean_notebook_passes_both_checks(server, page, artifacts):
    assert _open(page, server, "clean") == []
    assert page.locator("mjx-container").count() == 2, "both formulas typeset"
    lab.run_all(page, timeout=120)
    lab.screenshot_notebook(page, artifacts / "checker.clean.run.png")
    assert lab.run_problems(page) == []


@pytest.mark.browser
def test_a_stored_error_is_flagged(server, page):
    problems = _open(page, server, "stored_error")
    assert any("error output ZeroDivisionError" in p for p in problems), problems


@pytest.mark.browser
def test_a_stored_stderr_box_is_flagged(server, page):
    problems = _open(page, server, "stored_stderr")
    assert any("stderr box" in p for p in problems), problems
    assert any("stderr output" in p for p in problems), problems


@pytest.mark.browser
def test_an_image_that_does_not_load_is_flagged(server, page):
    problems = _open(page, server, "broken_image")
    assert any("image did not load" in p for p in problems), problems


@pytest.mark.browser
def test_maths_that_does_not_typeset_is_flagged(server, page, artifacts):
    problems = _open(page, server, "broken_maths")
    lab.screenshot_notebook(page, artifacts / "checker.broken_maths.png")
    assert any(p.startswith("cell 0: maths") for p in problems), problems
    assert any(p.startswith("cell 1: maths") for p in problems), problems


@pytest.mark.browser
def test_run_all_flags_an_error_and_the_cells_it_stopped(server, page):
    _open(page, server, "stored_error")
    lab.run_all(page, timeout=120)
    problems = lab.run_problems(page)
    assert any(p.startswith("cell 1: ZeroDivisionError") for p in problems), problems
    assert "cell 2: did not run" in problems, problems


@pytest.mark.browser
def test_run_all_flags_stderr_but_not_a_live_progress_bar(server, page):
    _open(page, server, "live_stderr")
    lab.run_all(page, timeout=120)
    problems = lab.run_problems(page)
    assert any(p.startswith("cell 1: wrote to stderr") and "UserWarning" in p for p in problems), problems
    assert not any(p.startswith("cell 0") for p in problems), problems  # cell 0 draws a bar: fine while running
    assert any(p.startswith("cell 0: wrote to stderr") for p in lab.run_problems(page, allow_progress_bars=False))


def test_progress_bars_are_told_from_other_stderr():  # no browser: runs in the plain suite too
    assert lab.is_progress_bar("\r 40%|####      | 2/5 [00:01<00:02,  1.90it/s]\r100%|##########| 5/5 [00:02<00:00]\n")
    assert lab.is_progress_bar("training: 100%|██████████| 5/5 [01:04<00:00, 12.99s/it, scheme=alibi]     \n")
    assert lab.is_progress_bar("12it [00:01,  9.50it/s]")
    assert not lab.is_progress_bar("/x.py:3: UserWarning: deprecated\n  warnings.warn('deprecated')\n")
    assert not lab.is_progress_bar(" 40%|####      | 2/5\nTraceback (most recent call last):\n")


@pytest.mark.browser
def test_the_news_popup_is_seen_in_a_lab_without_the_course_settings(tmp_path, page):
    """Without the overrides that `make setup` installs, JupyterLab asks about news: the check sees it."""
    (tmp_path / "settings").mkdir()
    nbformat.write(NOTEBOOKS["clean"](), tmp_path / "clean.ipynb")
    server = lab.LabServer(tmp_path, extra_args=(f"--LabApp.app_settings_dir={tmp_path / 'settings'}",)).start()
    try:
        lab.open_notebook(page, server, "clean.ipynb")
        page.wait_for_timeout(3000)
        assert lab.news_popup(page) is not None
    finally:
        assert not server.stop()
