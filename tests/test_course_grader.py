"""The autograder itself: full marks for the reference, zero for the pristine exercises, refusals,
and hostile or unlucky submissions costing only the tests they touch, never another submission's
grade, the course, the results file or the grader's time beyond its budget.

Most tests grade a tiny fake course (one chapter "90" of two small exercises, `toy` and `toy2`,
whose tests need no torch) built in a temporary folder, so that each grading run takes seconds;
one runs the real Chapter 1. They test the course's machinery rather than an implementation, so
they run the same under `--impl reference` and `--impl exercises`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reference.course import catalog, grader

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_1 = catalog.chapter(1)

TOY_REFERENCE = {
    "toy": '''
def double(x):
    """Twice x."""
    return 2 * x
''',
    "toy2": '''
import math


def total(xs):
    """The sum of xs."""
    return sum(xs)
''',
}
TOY_STUBS = {
    "toy": '''
def double(x):
    """Twice x."""
    raise NotImplementedError("Exercise 90.1: double")
''',
    "toy2": '''
import math


def total(xs):
    """The sum of xs."""
    raise NotImplementedError("Exercise 90.2: total")
''',
}
TOY_TESTS = '''
import pytest
from hypothesis import given, strategies as st


@pytest.mark.exercise("90.1")
@pytest.mark.points(1)
@pytest.mark.parametrize("x", [11, 12, 13, 14, 15, 16])
def test_double(impl, x):
    assert impl.toy.double(x) == 2 * x


@pytest.mark.exercise("90.1")
@pytest.mark.points(1)
@given(st.integers(10**3, 10**6))
def test_double_property(impl, x):
    assert impl.toy.double(x) == x + x


@pytest.mark.exercise("90.2")
@pytest.mark.points(1)
def test_total(impl):
    assert impl.toy2.total([1, 2, 3]) == 6


@pytest.mark.exercise("90.2")
@pytest.mark.points(3)
def test_total_empty(impl):
    assert impl.toy2.total([]) == 0
'''
TOY_TENSOR_TEST = '''
import pytest

@pytest.mark.exercise("90.1")
@pytest.mark.points(1)
def test_double_tensor(impl):
    import torch

    t = torch.arange(3.0)
    assert torch.equal(impl.toy.double(t), 2 * t)
'''
DRIVER = """
import json, sys
from reference.course import catalog, grader
root, impl, out, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
tests = tuple(options.pop("tests", ["tests/test_toy.py"]))
chapter = catalog.Chapter(
    number=90, slug="toy", title="Toy", survey_section="-", modules=("toy", "toy2"),
    exercises=(catalog.Exercise("90.1", "double", "toy", "double", points=4),
               catalog.Exercise("90.2", "total", "toy2", "total", points=6, refused=("math.fsum",))),
    tests=tests,
)
report = grader.grade_to_file([chapter], impl, out, root=root, **options)
print(grader.format_table(report))
"""


def fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def toy_course(tmp_path_factory) -> Path:
    """A course with this checkout's grader and conftest and one toy chapter."""
    root = tmp_path_factory.mktemp("toy-course")
    (root / "pyproject.toml").write_text("[project]\nname = 'toy'\n")
    shutil.copytree(ROOT / "reference" / "course", root / "reference" / "course", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "reference" / "__init__.py", root / "reference" / "__init__.py")
    (root / "exercises").mkdir()
    (root / "exercises" / "__init__.py").write_text("")
    for name in TOY_REFERENCE:
        (root / "reference" / f"{name}.py").write_text(TOY_REFERENCE[name])
        (root / "exercises" / f"{name}.py").write_text(TOY_STUBS[name])
    (root / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", root / "tests" / "conftest.py")
    (root / "tests" / "test_toy.py").write_text(TOY_TESTS)
    (root / "tests" / "test_toy_tensor.py").write_text(TOY_TENSOR_TEST)
    return root


def grade_toy(toy_course: Path, tmp_path: Path, submission: dict[str, str] | None, impl: str = "exercises", **options):
    """Grade `submission` ({module: source}; None: the pristine stubs) on the toy course."""
    out = tmp_path / "results" / "results.json"
    if impl == "exercises":
        folder = tmp_path / "submission"
        shutil.copytree(toy_course / "exercises", folder / "exercises")
        for name, source in (submission or {}).items():
            (folder / "exercises" / f"{name}.py").write_bytes(source.encode("latin-1") if "latin-1" in source else source.encode())
        options["exercises_path"] = str(folder)
    options.setdefault("timeout", 10)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(toy_course), impl, str(out), json.dumps(options)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert_gradescope_format(results)
    return results, proc, time.monotonic() - started


def assert_gradescope_format(results: dict) -> None:
    assert set(results) >= {"score", "max_score", "tests"}
    assert results["score"] == pytest.approx(sum(t["score"] for t in results["tests"]), abs=0.05)
    assert results["max_score"] == pytest.approx(sum(t["max_score"] for t in results["tests"]), abs=0.05)
    for test in results["tests"]:
        assert set(test) >= {"name", "score", "max_score", "status", "output", "visibility"}
        assert test["status"] in ("passed", "failed")
        assert test["score"] == (test["max_score"] if test["status"] == "passed" else 0)


def by_test(results: dict) -> dict[str, dict]:
    return {t["name"].split(": ", 1)[1]: t for t in results["tests"]}


def by_exercise(results: dict) -> dict[str, float]:
    earned: dict[str, float] = {}
    for t in results["tests"]:
        earned[t["number"]] = earned.get(t["number"], 0) + t["score"]
    return {k: round(v, 1) for k, v in earned.items()}


def correct(toy: str = "", toy2: str = "") -> dict[str, str]:
    return {"toy": TOY_REFERENCE["toy"] + textwrap.dedent(toy), "toy2": TOY_REFERENCE["toy2"] + textwrap.dedent(toy2)}


# ----------------------------------------------------------------------------------------------
# Scores and points
# ----------------------------------------------------------------------------------------------


def test_reference_scores_full_marks_on_chapter_1(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "reference.course.cli", "grade", "attention", "--impl", "reference", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert_gradescope_format(results)
    assert results["max_score"] == sum(ex.points for ex in CHAPTER_1.exercises)
    assert results["score"] == results["max_score"], [t for t in results["tests"] if t["status"] == "failed"][:3]
    assert {t["number"] for t in results["tests"]} == {ex.id for ex in CHAPTER_1.exercises}
    assert "total: " in proc.stdout


def test_points_come_from_the_catalog_shared_by_weight(toy_course, tmp_path):
    results, _, _ = grade_toy(toy_course, tmp_path, None, impl="reference")
    assert results["score"] == results["max_score"] == 10  # 4 + 6, whatever the number of tests
    tests = by_test(results)
    assert tests["test_total"]["max_score"] == 1.5 and tests["test_total_empty"]["max_score"] == 4.5  # weights 1 : 3
    assert by_exercise(results) == {"90.1": 4, "90.2": 6}


def test_pristine_exercises_score_zero(toy_course, tmp_path):
    results, _, _ = grade_toy(toy_course, tmp_path, None)
    assert results["score"] == 0 and results["max_score"] == 10
    for test in results["tests"]:
        assert f"Exercise {test['number']}:" in test["output"], test["output"][:300]


def test_list_shows_the_catalog_points_without_running_pytest():
    proc = subprocess.run(
        [sys.executable, "-m", "reference.course.cli", "list"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for ch in catalog.CHAPTERS:
        assert ch.title in proc.stdout
        for ex in ch.exercises:
            line = next(line for line in proc.stdout.splitlines() if line.strip().startswith(ex.id + " "))
            assert ex.title in line and int(line.split(" points")[0].split()[-1]) == ex.points


def test_catalog_points_weigh_difficulty():
    points = {ex.id: ex.points for ch in catalog.CHAPTERS for ex in ch.exercises}
    assert all(1 <= p <= 10 for p in points.values())
    assert points["2.10"] < points["4.15"] and points["2.5"] <= points["2.9"] and points["4.13"] >= 8
    with pytest.raises(ValueError, match="points"):
        catalog.Exercise("9.9", "x", "m", "f", points=0)


# ----------------------------------------------------------------------------------------------
# Misbehaving code costs only the tests it touches
# ----------------------------------------------------------------------------------------------

MISBEHAVING = """
import ctypes, os, sys

def double(x):
    if type(x) is int and x == 11:
        while True:
            pass
    if type(x) is int and x == 12:
        sys.exit(0)
    if type(x) is int and x == 13:
        os._exit(3)
    if type(x) is int and x == 14:
        ctypes.string_at(0)
    if type(x) is int and x == 15:
        while True:
            print("x" * 65536)
    if type(x) is int and x == 16:
        raise RuntimeError("student bug")
    return 2 * x
"""
MISBEHAVING_TESTS = {
    "test_double[11]": "timed out",
    "test_double[12]": "SystemExit",
    "test_double[13]": "exited with status 3",
    "test_double[14]": "SIGSEGV",
    "test_double[15]": "File too large",
    "test_double[16]": "student bug",
}


def test_misbehaving_code_costs_only_the_tests_it_touches(toy_course, tmp_path):
    results, _, _ = grade_toy(toy_course, tmp_path, {"toy": MISBEHAVING, "toy2": TOY_REFERENCE["toy2"]}, timeout=4)
    tests = by_test(results)
    failed = {name for name, t in tests.items() if t["status"] == "failed"}
    assert failed == set(MISBEHAVING_TESTS), failed
    for name, reason in MISBEHAVING_TESTS.items():
        assert reason in tests[name]["output"], (name, tests[name]["output"][:500])


# ----------------------------------------------------------------------------------------------
# Issue 12, one attack each
# ----------------------------------------------------------------------------------------------


def test_a_submission_cannot_change_the_course_or_the_next_grade(toy_course, tmp_path):
    """Attack 1: rewrite the grading plugin (the copy's and the checkout's), then os._exit so that
    the next process loads the edit; the next, pristine submission must still score 0."""
    before = fingerprint(toy_course)
    rig = f"""
import os, reference.course.grading_plugin as plugin
RIGGED = "def pytest_runtest_logfinish(nodeid):\\n    pass\\n"
def double(x):
    for path in (plugin.__file__, {str(toy_course / "reference/course/grading_plugin.py")!r},
                 {str(toy_course / "tests/conftest.py")!r}, {str(toy_course / "reference/toy.py")!r}):
        try:
            with open(path, "a") as f:
                f.write("\\nRIGGED = True\\n")
        except OSError:
            pass
    os._exit(0)
"""
    grade_toy(toy_course, tmp_path / "hostile", {"toy": rig})
    assert fingerprint(toy_course) == before
    results, _, _ = grade_toy(toy_course, tmp_path / "next", None)
    assert results["score"] == 0


def _alive(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and b"-c" in cmdline:
                found.append(int(entry))
    return found


def test_no_process_survives_and_results_are_written_last(toy_course, tmp_path):
    """Attacks 2 and 3: a plain child, a child in its own session and a double-forked daemon
    wait and then rewrite results.json or plant a folder where it goes; none may survive the grader."""
    marker = f"llm-course-survivor-{os.getpid()}"
    out = tmp_path / "results" / "results.json"
    spoiler = (
        f"import os, time, json; time.sleep(4); p = {str(out)!r}\n"
        "try:\n    os.unlink(p); os.makedirs(p)\nexcept OSError: pass\n"
        "open(p + '.fake', 'w').write('{}')  # {marker}\n"
    ).replace("{marker}", marker)
    hostile = f"""
import os, subprocess, sys
def double(x):
    if type(x) is int and x == 11:
        code = {spoiler!r}
        subprocess.Popen([sys.executable, "-c", code, {marker!r}])
        subprocess.Popen([sys.executable, "-c", code, {marker!r}], start_new_session=True)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", code, {marker!r}])
            os._exit(0)
    return 2 * x
"""
    results, _, _ = grade_toy(toy_course, tmp_path, {"toy": hostile, "toy2": TOY_REFERENCE["toy2"]})
    assert not _alive(marker)
    time.sleep(5)
    assert out.is_file() and json.loads(out.read_text()) == results and results["score"] == 10
    assert not (tmp_path / "results" / "results.json.fake").exists()


def test_a_hang_outside_a_test_costs_only_time(toy_course, tmp_path):
    """Attack 4: a non-daemon thread and an atexit hook that never end; the tests still count."""
    hostile = """
import atexit, threading, time
def _forever():
    while True:
        time.sleep(0.1)
threading.Thread(target=_forever).start()
atexit.register(_forever)
def double(x):
    return 2 * x
"""
    results, _, seconds = grade_toy(toy_course, tmp_path, {"toy": hostile, "toy2": TOY_REFERENCE["toy2"]}, budget=100)
    assert results["score"] == 10
    assert seconds < 60


def test_the_time_budget_bounds_the_whole_run(toy_course, tmp_path):
    """Attack 4: every call loops forever; the budget, not the tests' number, bounds the run."""
    hostile = "def double(x):\n    while True:\n        pass\n"
    results, _, seconds = grade_toy(toy_course, tmp_path, {"toy": hostile, "toy2": TOY_REFERENCE["toy2"]}, timeout=3, budget=8)
    assert seconds < 25  # without the budget: 7 hangs of 3 s, each with a fresh process
    assert results["score"] < 10 and results["max_score"] == 10
    assert any("budget" in t["output"] for t in results["tests"])


def test_malformed_events_cost_at_most_the_test_they_name(toy_course, tmp_path):
    """Attack 5: garbage, a forged report with a string for `passed`, and an event with string points on the pipe."""
    hostile = """
import json, os, sys
def _fd():
    return int(sys.argv[sys.argv.index("--grading-fd") + 1])
def double(x):
    if type(x) is int and x == 11:
        os.write(_fd(), b"not json at all\\n{broken\\n")
        os.write(_fd(), json.dumps({"event": "done", "nodeid": "tests/test_toy.py::test_double[11]", "passed": "yes",
                                   "message": 3, "details": None}).encode() + b"\\n")
        os.write(_fd(), json.dumps({"event": "collected", "nodeid": "x", "exercise": "90.1", "points": "many"}).encode() + b"\\n")
        os.write(_fd(), b"[1, 2]\\n" + b"x" * 100000)
    return 2 * x
"""
    results, _, _ = grade_toy(toy_course, tmp_path, {"toy": hostile, "toy2": TOY_REFERENCE["toy2"]})
    tests = by_test(results)
    assert results["max_score"] == 10
    assert {name for name, t in tests.items() if t["status"] == "failed"} <= {"test_double[11]"}
    assert by_exercise(results)["90.2"] == 6


def test_a_latin1_source_is_read_as_python_reads_it(toy_course, tmp_path):
    """Attack 5: a valid file declaring its encoding must not stop the run (it scores full marks)."""
    source = "# -*- coding: latin-1 -*-\n# café\n" + TOY_REFERENCE["toy"]
    results, _, _ = grade_toy(toy_course, tmp_path, {"toy": source, "toy2": TOY_REFERENCE["toy2"]})
    assert results["score"] == 10


def test_a_source_the_check_cannot_parse_refuses_only_its_exercise(toy_course, tmp_path):
    """Attack 5: a RecursionError in the static check refuses that module's exercise, not the run."""
    deep = TOY_REFERENCE["toy2"] + "\nX = 1" + "+1" * 200000 + "\n"  # RecursionError in ast.parse
    results, _, _ = grade_toy(toy_course, tmp_path, {"toy": TOY_REFERENCE["toy"], "toy2": deep})
    scores = by_exercise(results)
    assert scores == {"90.1": 4, "90.2": 0}
    assert all("refused" in t["output"] for t in results["tests"] if t["number"] == "90.2")


def test_no_route_leads_to_the_solution(toy_course, tmp_path):
    """Attack 6: a computed module name, import_module(name=...), the checkout's source read from
    disk and exec'd, runpy, and the module beside the grader's own package: none yields the solution."""
    hostile = f"""
import importlib, os, runpy, sys
def _routes():
    yield lambda: getattr(importlib.import_module("refer" + "ence.toy"), "double")
    yield lambda: getattr(importlib.import_module(name="reference.toy"), "double")
    yield lambda: sys.modules["reference.toy"].double
    for path in ({str(toy_course / "reference" / "toy.py")!r}, {str(ROOT / "reference" / "attention.py")!r},
                 os.path.join(os.path.dirname(importlib.import_module("refer" + "ence").__file__), "toy.py")):
        yield lambda path=path: runpy.run_path(path)["double"]
        def _exec(path=path):
            scope = {{}}
            exec(open(path).read(), scope)
            return scope["double"]
        yield _exec
def double(x):
    for route in _routes():
        try:
            solution = route()
        except BaseException:
            continue
        if solution is not double and getattr(solution, "__module__", "") != "exercises.toy":
            return solution(x)
    raise NotImplementedError("no route")
"""
    results, _, _ = grade_toy(toy_course, tmp_path, {"toy": hostile, "toy2": TOY_REFERENCE["toy2"]})
    assert by_exercise(results)["90.1"] == 0, [t["output"][:200] for t in results["tests"] if t["number"] == "90.1"]


def test_the_graded_copy_withholds_the_solutions():
    source = grader.withhold_solutions(TOY_REFERENCE["toy2"] + "\ndef helper():\n    return total([1])\n", "toy2", ["total"])
    assert "return sum" not in source and "from exercises.toy2 import total" in source and "def helper" in source
    assert "_withheld('total')" in source  # bound on first use when the learner's module is still importing


def test_every_chapter_imports_in_the_graded_copy_whatever_is_imported_first(tmp_path):
    """The withheld copy has no import cycle: each learner module (here the reference's own
    source, which imports the most) can be imported first, and the names are the learner's."""
    submission = tmp_path / "submission"
    shutil.copytree(ROOT / "exercises", submission / "exercises")
    for ch in catalog.CHAPTERS:
        for ex in ch.exercises:
            shutil.copy(ROOT / "reference" / (ex.module.replace(".", "/") + ".py"), submission / "exercises" / (ex.module.replace(".", "/") + ".py"))
    chapters = [ch for ch in catalog.CHAPTERS if ch.exercises]
    (tmp_path / "stage").mkdir()
    course, copied = grader.stage_course(ROOT, tmp_path / "stage", "exercises", chapters, submission)
    modules = sorted({ex.module for ch in chapters for ex in ch.exercises})
    for first in ("models.llama", "data.pipeline", "training.numerics"):
        code = "import importlib\n" + "".join(f"importlib.import_module('exercises.{m}')\n" for m in [first, *modules])
        code += "".join(
            f"assert getattr(importlib.import_module('reference.{ex.module}'), '{ex.qualname.split('.')[0]}').__module__ == 'exercises.{ex.module}'\n"
            for ch in chapters for ex in ch.exercises
        )  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", code], cwd=course, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": f"{copied}{os.pathsep}{course}"})  # fmt: skip
        assert proc.returncode == 0, (first, proc.stderr[-2000:])


def test_a_value_that_compares_equal_to_anything_scores_nothing(toy_course, tmp_path):
    """Attack 7: a torch.Tensor subclass and an int subclass whose == is always true."""
    hostile = """
import torch
class Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return True
class LyingInt(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def double(x):
    if isinstance(x, torch.Tensor):
        return torch.zeros(3).as_subclass(Liar)
    return LyingInt(0)
"""
    results, _, _ = grade_toy(toy_course, tmp_path, {"toy": hostile, "toy2": TOY_REFERENCE["toy2"]},
                              tests=["tests/test_toy.py", "tests/test_toy_tensor.py"])  # fmt: skip
    assert by_exercise(results)["90.1"] == 0
    outputs = " ".join(t["output"] for t in results["tests"] if t["number"] == "90.1")
    assert "subclass of torch.Tensor" in outputs and "overrides comparison" in outputs


def test_grades_are_reproducible(toy_course, tmp_path):
    """Attack 8: an edge-case bug found by Hypothesis fails every run, and no example database is kept."""
    hostile = "def double(x):\n    return 2 * x if abs(x) < 987654 else 0\n"
    first, _, _ = grade_toy(toy_course, tmp_path / "a", {"toy": hostile, "toy2": TOY_REFERENCE["toy2"]})
    second, _, _ = grade_toy(toy_course, tmp_path / "b", {"toy": hostile, "toy2": TOY_REFERENCE["toy2"]})
    def outcome(results: dict) -> list:
        return [(t["name"], t["score"], t["status"]) for t in results["tests"]]

    assert outcome(first) == outcome(second) and first["score"] == second["score"] < 10
    assert not list(toy_course.rglob(".hypothesis"))


def test_hypothesis_is_deterministic_in_plain_runs():
    from hypothesis import settings

    assert settings.default.derandomize and settings.default.database is None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (as on Gradescope or CI)")
def test_as_root_the_tests_run_as_an_unprivileged_user(toy_course, tmp_path):
    hostile = """
import os, signal
def double(x):
    if type(x) is int and x == 11 and os.geteuid() == 0:
        return 2 * x
    if type(x) is int and x == 11:
        try:
            os.kill(os.getppid(), signal.SIGKILL)  # the grader
        except OSError:
            pass
        raise PermissionError("not root")
    return 2 * x
"""
    results, _, _ = grade_toy(toy_course, tmp_path, {"toy": hostile, "toy2": TOY_REFERENCE["toy2"]})
    assert by_test(results)["test_double[11]"]["status"] == "failed" and "not root" in by_test(results)["test_double[11]"]["output"]
    assert results["score"] == pytest.approx(10 - 4 / 7, abs=0.01)


# ----------------------------------------------------------------------------------------------
# Static refusals: solutions imported from reference, library calls that do the exercise
# ----------------------------------------------------------------------------------------------


def test_solution_imported_from_reference_is_refused(toy_course, tmp_path):
    results, proc, _ = grade_toy(toy_course, tmp_path, {"toy": TOY_STUBS["toy"] + "\nfrom reference.toy import double\n"})
    refused = [t for t in results["tests"] if t["number"] == "90.1"]
    assert refused and all(t["status"] == "failed" and "refused" in t["output"] and "double" in t["output"] for t in refused)
    assert "refused" in proc.stdout


def test_a_refused_library_call_is_refused_with_its_line(toy_course, tmp_path):
    source = "import math as m\n\n\ndef _helper(xs):\n    return m.fsum(xs)\n\n\ndef total(xs):\n    return _helper(xs)\n"
    results, _, _ = grade_toy(toy_course, tmp_path, {"toy": TOY_REFERENCE["toy"], "toy2": source})
    assert by_exercise(results) == {"90.1": 4, "90.2": 0}
    outputs = [t["output"] for t in results["tests"] if t["number"] == "90.2"]
    assert all("line 5 uses math.fsum" in o for o in outputs), outputs[0][:300]


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        ("from reference.attention import softmax, causal_mask as cm", {"1.1", "1.2"}),
        ("from reference.attention import *", {ex.id for ex in CHAPTER_1.exercises}),
        ("import reference.attention as ra", {ex.id for ex in CHAPTER_1.exercises}),
        ("from reference import attention", {ex.id for ex in CHAPTER_1.exercises}),
        ("import importlib\nm = importlib.import_module('reference.attention')", {ex.id for ex in CHAPTER_1.exercises}),
        ("from reference.course import catalog", set()),  # other modules of reference are allowed
        ("import torch", set()),
    ],
)
def test_solution_import_detection(code, refused):
    found = grader.solution_imports(textwrap.dedent(code), "attention", list(CHAPTER_1.exercises))
    assert set(found) == refused
    assert all(why.startswith("refused: exercises/attention.py line") for why in found.values())


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        ("from reference.models import llama", True),
        ("from reference.models import *", True),
        ("import reference.models", True),
        ("import reference", True),
        ("from reference.models.llama import TransformerLM", True),
        ("from reference.models.parts import Block, RMSNorm", False),  # a sibling module is harness
        ("from reference.models import parts", False),
    ],
)
def test_solution_import_detection_in_a_subpackage(code, refused):
    exercises = [ex for ex in catalog.chapter(5).exercises if ex.module == "models.llama"]
    found = grader.solution_imports(code, "models.llama", exercises)
    assert bool(found) == refused


NUMERICS = [ex for ex in catalog.chapter(6).exercises if ex.module == "training.numerics"]


@pytest.mark.parametrize(
    ("module", "code", "refused", "named"),
    [
        ("training.numerics", "import torch.nn.functional as F\ndef cross_entropy(l, t, m=None):\n    return F.cross_entropy(l, t)",
         {"6.7"}, "line 3 uses torch.nn.functional.cross_entropy"),
        ("training.numerics", "import torch\nclass AdamW(torch.optim.AdamW):\n    pass", {"6.8"}, "line 2 uses torch.optim.AdamW"),
        ("training.numerics", "from torch.optim import AdamW as _A\nclass AdamW(_A):\n    pass", {"6.8"}, "uses torch.optim.AdamW"),
        ("training.numerics", "import torch\ndef clip_grad_norm_(p, m, eps=1e-6):\n    return torch.nn.utils.clip_grad_norm_(p, m)",
         {"6.10"}, "uses torch.nn.utils.clip_grad_norm_"),
        ("training.numerics", "from torch import nn\ndef log_softmax(x, dim=-1):\n    return x.log_softmax(dim)", {"6.6"}, ".log_softmax()"),
        ("attention", "from torch.nn import functional as F\ndef softmax(x, dim=-1):\n    return getattr(F, 'softmax')(x, dim)",
         {"1.1"}, "getattr"),
        ("attention", "import torch.nn.functional as F\n_f = F.scaled_dot_product_attention\n"
                      "def _h(*a):\n    return _f(*a)\ndef scaled_dot_product_attention(q, k, v, mask=None, scale=None):\n    return _h(q, k, v)",
         {"1.5"}, "line 2 uses torch.nn.functional.scaled_dot_product_attention"),
        ("models.parts", "import torch.nn.functional as F\nclass LayerNorm:\n    def forward(self, x):\n        return F.layer_norm(x, x.shape[-1:])",
         {"5.1"}, "uses torch.nn.functional.layer_norm"),
        ("attention", "import torch\ndef repeat_kv(x, n):\n    return torch.repeat_interleave(x, n, dim=1)", set(), ""),  # a building block
        ("attention", "from transformers.models.llama.modeling_llama import repeat_kv", {"1.6"}, "uses transformers"),
        ("precision", "def round_to_format(x, fmt):\n    return x.bfloat16().float()", {"10.3"}, "calls the method ."),
        ("precision", "import torch\ndef round_to_format(x, fmt):\n    return torch.Tensor.half(x)", {"10.3"}, ".half()"),
        ("precision", "import torch\nBF = torch.bfloat16\ndef round_to_format(x, fmt):\n    return torch.zeros(1, dtype=BF)", set(), ""),
    ],
)  # fmt: skip
def test_refused_library_calls(module, code, refused, named):
    exercises = [ex for ch in catalog.CHAPTERS for ex in ch.exercises if ex.module == module]
    if "transformers" in code:
        code += "\n"  # an import alone is not a use; re-exporting it as the exercise's name is
        code = code.replace("import repeat_kv", "import repeat_kv as _r\nrepeat_kv = _r")
    found = grader.refused_calls(code, module, exercises)
    assert set(found) == refused, found
    assert all(named in why and why.startswith(f"refused: exercises/{module.replace('.', '/')}.py line") for why in found.values())


def test_helpers_copied_from_the_reference_are_not_searched_but_changed_ones_are():
    """Chapter 10's module keeps shared helpers that use what its exercises may not (dtype casts,
    `.view` on bit patterns, autocast in the comparison run): copied exactly, they are the
    course's code; changed, they are the learner's and are searched."""
    exercises = [ex for ex in catalog.chapter(10).exercises if ex.module == "precision"]
    source = (ROOT / "reference" / "precision.py").read_text()
    tree = ast.parse(source)
    trusted = grader._reference_definitions("precision")
    assert trusted and grader._refused_calls(tree, "precision", exercises, trusted) == {}
    assert {"10.2", "10.3", "10.5"} <= set(grader._refused_calls(tree, "precision", exercises))  # not trusted
    # the exercise calls a helper whose body the learner changed: searched again
    sneaky = source.replace("def round_to_format(x: Tensor, fmt: FloatFormat | str) -> Tensor:",
                            "def _fast(x):\n    return x.half().float()\n\n\n"
                            "def round_to_format(x: Tensor, fmt: FloatFormat | str) -> Tensor:\n    _fast(x)", 1)
    assert sneaky != source
    found = grader._refused_calls(ast.parse(sneaky), "precision", exercises, trusted)
    assert set(found) == {"10.3"} and "calls the method ." in found["10.3"], found


def test_the_reference_itself_uses_no_refused_call():
    """Every exercise module of the reference, graded as a submission, passes the static checks."""
    for ch in catalog.CHAPTERS:
        for module in dict.fromkeys(ex.module for ex in ch.exercises):
            exercises = [ex for ex in ch.exercises if ex.module == module]
            path = ROOT / "reference" / (module.replace(".", "/") + ".py")
            assert grader.static_refusals(path, module, exercises) == {}, module


def test_wrong_arguments_exit_nonzero(tmp_path):
    for args in (["grade", "99"], ["grade", "1", "--impl", "mine"], ["grade", "1", "--timeout", "0"], ["grade", "1", "--budget", "-1"]):
        proc = subprocess.run(
            [sys.executable, "-m", "reference.course.cli", *args], cwd=tmp_path, capture_output=True, text=True
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert "error" in proc.stderr
