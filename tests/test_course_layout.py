"""The course's shape: packaging, the chapter catalog, the exercises twin, notebooks and README.

Like the grader's tests, these check the course's machinery and run the same under both
implementations.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from reference.course import catalog, grader

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(lines: list[str]) -> dict[str, str]:
    reqs = [Requirement(line) for line in lines]
    return {r.name.lower().replace("_", "-"): str(r.specifier) for r in reqs}


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    project = PYPROJECT["project"]
    wanted = _requirements(project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra])
    assert _requirements([line for line in pip_section if not line.startswith("-e")]) == wanted
    assert "-e ." in pip_section
    python = next(d for d in conda if d.startswith("python"))
    assert python.removeprefix("python") == project["requires-python"]


def test_catalog_matches_the_files():
    notebooks = {p.relative_to(ROOT).as_posix() for p in (ROOT / "chapters").glob("*.ipynb")}
    assert notebooks == {ch.notebook for ch in catalog.CHAPTERS}, "every notebook is a catalog chapter and back"
    numbers = [ch.number for ch in catalog.CHAPTERS]
    assert numbers == sorted(set(numbers)) and numbers[0] == 0, "chapters are listed once each, in order"
    for ch in catalog.CHAPTERS[1:]:  # Chapter 0 is the course's introduction: no module, no exercises
        assert ch.modules and len(ch.exercises) >= 5 and ch.tests, f"chapter {ch.number} lacks code, exercises or tests"
        for module in ch.modules:
            assert (ROOT / "reference" / f"{module.replace('.', '/')}.py").is_file()
        for path in ch.tests:
            assert (ROOT / path).is_file()
        for i, ex in enumerate(ch.exercises, start=1):
            assert ex.id == f"{ch.number}.{i}"
            assert ex.module in ch.modules
            assert (ROOT / "exercises" / f"{ex.module.replace('.', '/')}.py").is_file()


def _definitions(obj: object) -> dict[str, object]:
    """The object itself and, for a class, its own public methods and __init__."""
    found = {"": obj}
    if inspect.isclass(obj):
        found |= {n: m for n, m in vars(obj).items() if inspect.isfunction(m) and (n == "__init__" or not n.startswith("_"))}
    return found


@pytest.mark.parametrize("ex", [ex for ch in catalog.CHAPTERS for ex in ch.exercises], ids=lambda ex: ex.id)
def test_exercise_stub_mirrors_reference(ex):
    ref = importlib.import_module(f"reference.{ex.module}")
    stub = importlib.import_module(f"exercises.{ex.module}")
    ref_obj, stub_obj = ref, stub
    for part in ex.qualname.split("."):
        ref_obj, stub_obj = getattr(ref_obj, part), getattr(stub_obj, part)
    ref_defs, stub_defs = _definitions(ref_obj), _definitions(stub_obj)
    assert ref_defs.keys() == stub_defs.keys()
    for name, ref_def in ref_defs.items():
        stub_def = stub_defs[name]
        if callable(ref_def) and not inspect.isclass(ref_def):
            assert inspect.signature(stub_def) == inspect.signature(ref_def), f"{ex.qualname}.{name}: signature differs"
        assert inspect.getdoc(stub_def) == inspect.getdoc(ref_def), f"{ex.qualname}.{name}: docstring differs"
        if inspect.isfunction(stub_def):
            body = ast.parse(inspect.cleandoc("\n" + inspect.getsource(stub_def))).body[0].body
            statements = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            assert len(statements) == 1 and isinstance(statements[0], ast.Raise), f"{ex.qualname}.{name}: body is not a stub"
            raised = statements[0].exc
            assert isinstance(raised, ast.Call) and getattr(raised.func, "id", "") == "NotImplementedError"
            assert raised.args[0].value.startswith(f"Exercise {ex.id}: "), "the stub names its exercise"


def test_exercises_import_no_solution():
    for ch in catalog.CHAPTERS:
        for module in dict.fromkeys(ex.module for ex in ch.exercises):
            source = (ROOT / "exercises" / f"{module.replace('.', '/')}.py").read_text()
            assert grader.solution_imports(source, module, list(ch.exercises)) == {}


def test_every_exercise_has_graded_tests(tmp_path):
    files = [path for ch in catalog.CHAPTERS for path in ch.tests]
    results, errors = grader.run_tests(files, "reference", ROOT, tmp_path, timeout=60, collect_only=True)
    assert not errors
    points = grader.points_by_exercise(results)
    for ch in catalog.CHAPTERS:
        for ex in ch.exercises:
            assert points.get(ex.id, (0, 0, ""))[1] > 0, f"exercise {ex.id} has no test with points"


def test_the_suite_executes_every_notebook():
    """`pytest` with its default arguments collects every chapter notebook through nbval."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "chapters"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "chapters" in PYPROJECT["tool"]["pytest"]["ini_options"]["testpaths"]
    for notebook in sorted((ROOT / "chapters").glob("*.ipynb")):
        assert f"chapters/{notebook.name}::Cell 0" in proc.stdout, f"{notebook.name} is not executed by the suite"


@pytest.mark.parametrize("notebook", sorted((ROOT / "chapters").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_stored_executed_without_errors(notebook):
    nb = json.loads(notebook.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert code, "a chapter has code"
    assert all(c["execution_count"] is not None for c in code), "outputs are stored: run the notebook before committing"
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "stored outputs come from one fresh run, top to bottom"
    assert not any(o["output_type"] == "error" for c in code for o in c["outputs"])
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_readme_chapter_table_and_commands():
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- chapters:begin -->\n(.*?)\n<!-- chapters:end -->", readme, re.S)
    assert table, "README has the chapter table between its markers"
    assert table.group(1).strip() == catalog.markdown_table(), "README's chapter table: run `llm-course list --markdown`"
    assert "make lab" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))] == [
        "make test", "make test-browser"]
    assert "set -euo pipefail" in ci


@pytest.mark.parametrize("module", sorted({ex.module for ch in catalog.CHAPTERS for ex in ch.exercises}))
def test_exercise_twins_copy_helpers_exactly(module):
    """A twin may carry the reference's non-exercise helpers (so that they run on the learner's code),
    but only as exact copies: a helper edited in one place and not the other fails here."""
    exercise_names = {ex.qualname.split(".")[0] for ch in catalog.CHAPTERS for ex in ch.exercises if ex.module == module}
    path = module.replace(".", "/") + ".py"
    ref_tree = ast.parse((ROOT / "reference" / path).read_text())
    stub_tree = ast.parse((ROOT / "exercises" / path).read_text())

    def named(tree: ast.Module) -> dict[str, ast.stmt]:
        found: dict[str, ast.stmt] = {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):  # module constants, e.g. a regular expression
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found.update({t.id: node for t in targets if isinstance(t, ast.Name)})
        return found

    reference_defs = named(ref_tree)
    for name, node in named(stub_tree).items():
        if name not in exercise_names:
            assert name in reference_defs, f"exercises/{path}: {name} is not in reference/{path}"
            assert ast.dump(node) == ast.dump(reference_defs[name]), f"exercises/{path}: {name} differs from the reference"
