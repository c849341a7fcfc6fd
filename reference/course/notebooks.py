"""Executing and checking the chapter notebooks: how a lesson is stored.

A chapter notebook is stored executed, top to bottom in one fresh kernel, so that a learner reading
it on the web sees every result. What the stored file must not hold:

- errors, or stderr fragments (a text progress bar stores one per refresh; GitHub draws each as a
  red box): use `reference.runtime.progress`, which stores one clean line;
- per-cell execution timestamps (they change on every run and bloat diffs);
- images heavier than `MAX_IMAGE_KB` (save figures at a modest dpi);
- the source of a function an exercise asks for, shown with `inspect.getsource`, `??` or
  `%psource`, or a re-definition of it: a lesson shows the formula, the call, the result and the
  check, never the graded answer.

    python -m reference.course.notebooks run chapters/01_attention.ipynb   # execute and store
    python -m reference.course.notebooks check chapters/*.ipynb            # the rules above
"""

from __future__ import annotations

import argparse
import ast
import base64
import json
import re
import sys
import time
from pathlib import Path

from reference.course import catalog

MAX_IMAGE_KB = 160

_SHOW_SOURCE = re.compile(r"(?:getsource|getsourcelines|psource|pinfo2)\(\s*([\w.]+)|%psource\s+([\w.]+)|([\w.]+)\?\?")


def exercise_names() -> set[str]:
    """The top-level names (function or class) of every exercise in the catalog."""
    return {ex.qualname.split(".")[0] for ch in catalog.CHAPTERS for ex in ch.exercises}


def _code_cells(nb: dict) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(nb.get("cells", [])) if c.get("cell_type") == "code"]


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def shown_solutions(nb: dict, names: set[str] | None = None) -> list[str]:
    """Cells that show or re-define an exercise's function: 'cell 5: getsource(softmax)'."""
    names = exercise_names() if names is None else names
    found = []
    for index, cell in _code_cells(nb):
        source = _source(cell)
        for match in _SHOW_SOURCE.finditer(source):
            target = next(group for group in match.groups() if group)
            if any(part in names for part in target.split(".")):
                found.append(f"cell {index}: shows the source of {target}")
        try:
            tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
                found.append(f"cell {index}: re-defines {node.name}")
    return found


def problems(path: str | Path) -> list[str]:
    """Everything wrong with a stored chapter notebook, one message each (empty when it is fine)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    found: list[str] = []
    code = [(i, c) for i, c in _code_cells(nb) if _source(c).strip()]
    if any(c.get("execution_count") is None for _, c in code):
        found.append("stored without outputs: run it with `python -m reference.course.notebooks run`")
    for index, cell in code:
        outputs = cell.get("outputs", [])
        if any(o.get("output_type") == "error" for o in outputs):
            found.append(f"cell {index}: stores an error")
        stderr = sum(1 for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr")
        if stderr:
            found.append(f"cell {index}: stores {stderr} stderr output(s) (a text progress bar? use reference.runtime.progress)")
        if "execution" in cell.get("metadata", {}):
            found.append(f"cell {index}: stores execution timestamps")
        for output in outputs:
            for mime, data in output.get("data", {}).items():
                if mime.startswith("image/") and mime != "image/svg+xml":
                    kb = len(base64.b64decode("".join(data) if isinstance(data, list) else data)) / 1024
                    if kb > MAX_IMAGE_KB:
                        found.append(f"cell {index}: a {kb:.0f} KB image (at most {MAX_IMAGE_KB} KB: lower the dpi or size)")
    found += shown_solutions(nb)
    return found


def strip_metadata(nb: dict) -> dict:
    """Drop what changes on every run without being a result: cell timestamps, widget state."""
    for cell in nb.get("cells", []):
        cell.get("metadata", {}).pop("execution", None)
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def execute(path: str | Path, *, timeout: int = 600) -> float:
    """Run a notebook top to bottom in a fresh kernel (cwd: its folder) and store it; returns seconds."""
    import nbformat
    from nbclient import NotebookClient

    from reference.runtime import atomic_write

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    strip_metadata(nb)
    with atomic_write(path, "w", encoding="utf-8") as file:
        nbformat.write(nb, file)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.course.notebooks", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("run", "check"))
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    bad = 0
    for notebook in args.notebooks:
        if args.command == "run":
            print(f"{notebook}: executed in {execute(notebook):.1f} s", flush=True)
        for message in problems(notebook):
            bad += 1
            print(f"{notebook}: {message}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
