"""How lessons are stored: the rules of `reference.course.notebooks`, and the progress bar and
timing helpers of `reference.runtime` that the chapters use to follow them."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from reference.course import notebooks
from reference.runtime import progress, time_interleaved

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("notebook", sorted((ROOT / "chapters").glob("*.ipynb")), ids=lambda p: p.name)
def test_chapter_notebook_follows_the_storage_rules(notebook):
    """No graded solution on screen, no stderr fragments, no timestamps, no heavy images."""
    assert notebooks.problems(notebook) == []


def _notebook(tmp_path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    return path


def test_problems_catch_each_rule(tmp_path):
    path = _notebook(
        tmp_path,
        "import inspect\nfrom reference.attention import softmax\nprint(inspect.getsource(softmax))",
        "def causal_mask(n):\n    return n",
        "from reference.training import numerics\nnumerics.AdamW??",
        "import inspect, reference.runtime\nprint(inspect.getsource(reference.runtime.seed_everything))",
    )
    nb = json.loads(path.read_text())
    nb["cells"][0]["execution_count"] = 1
    nb["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stderr", "text": "10%|#  |"}]
    nb["cells"][1]["metadata"]["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
    path.write_text(json.dumps(nb))
    found = "\n".join(notebooks.problems(path))
    assert "stored without outputs" in found
    assert "cell 0: stores 1 stderr" in found
    assert "cell 1: stores execution timestamps" in found
    assert "cell 0: shows the source of softmax" in found
    assert "cell 1: re-defines causal_mask" in found
    assert "cell 2: shows the source of numerics.AdamW" in found
    assert "seed_everything" not in found, "source of code that is not an exercise may be shown"


def test_progress_outside_a_notebook_is_plain_tqdm(capsys):
    from tqdm.std import tqdm

    bar = progress(range(3), desc="steps")
    assert type(bar) is tqdm
    assert list(bar) == [0, 1, 2]


def test_progress_in_a_kernel_stores_one_clean_line(tmp_path):
    """Executed in a real kernel, a bar of 200 refreshes leaves one text/plain output: the final bar."""
    path = _notebook(
        tmp_path,
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from reference.runtime import progress\n"
        "print('before')\n"
        "for _ in progress(range(200), desc='work', mininterval=0): pass\n"
        "for _ in progress(range(5), desc='gone', leave=False, mininterval=0): pass\n"
        "print('after')",
    )
    seconds = notebooks.execute(path, timeout=120)
    assert seconds > 0
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    kinds = [(o.output_type, o.get("name")) for o in outputs]
    assert ("stream", "stderr") not in kinds
    bars = [o for o in outputs if o.output_type == "display_data"]
    assert len(bars) == 2
    assert "work: 100%" in bars[0].data["text/plain"] and "200/200" in bars[0].data["text/plain"]
    assert bars[1].data["text/plain"] == "", "leave=False blanks the bar"
    assert notebooks.problems(path) == []


def test_time_interleaved_alternates_functions_and_counts_samples():
    calls = []
    samples = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3, "warm-up once each, then one call of each per round"
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}
    assert all(s >= 0 for v in samples.values() for s in v)
    with pytest.raises(ValueError, match="rounds"):
        time_interleaved({"a": lambda: None}, rounds=0)
    with pytest.raises(TypeError, match="callables"):
        time_interleaved({"a": 3})
