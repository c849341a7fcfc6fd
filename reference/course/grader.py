"""The autograder: runs a chapter's tests against an implementation and scores the exercises.

The tests run in a child pytest process, never in the grader's own. Whatever the code under test
does, raise, loop forever, call `sys.exit` or `os._exit`, flood stdout or crash the interpreter, it
costs only the tests it touches: a test that outlives its time limit is killed with its process,
a process that dies takes only the running test with it, and a new process picks up the tests not
yet run. Before that, each exercise module is checked for solutions imported from `reference` and
imported once on its own, so that a module that cannot even be imported fails its chapter quickly.

Results: a table on stdout and Gradescope's `results.json` (score, max_score and tests[] with
name, score, max_score, status, output and visibility), written atomically.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from reference.course import catalog
from reference.course.catalog import Chapter

IMPLEMENTATIONS = ("exercises", "reference")
OUTPUT_LIMIT_BYTES = 64 * 2**20  # largest file a test process may write, its captured stdout included
STARTUP_SECONDS = 120.0  # time a test process gets to start and collect, on top of the per-test limit


@dataclass
class TestResult:
    """The outcome of one test."""

    nodeid: str
    exercise: str
    points: int
    passed: bool = False
    message: str = "not run"
    details: str = ""
    ran: bool = False  # decided, by running the test or by refusing to

    @property
    def score(self) -> int:
        return self.points if self.passed else 0


@dataclass
class GradeReport:
    """All results of one grading run."""

    impl: str
    chapters: list[Chapter]
    results: list[TestResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> int:
        return sum(r.score for r in self.results)

    @property
    def max_score(self) -> int:
        return sum(r.points for r in self.results)


def course_root() -> Path:
    """The repository the course was installed from (it holds `tests/`)."""
    candidates = [Path(__file__).resolve().parents[2], Path.cwd()]
    for root in candidates:
        if (root / "tests" / "conftest.py").is_file() and (root / "pyproject.toml").is_file():
            return root
    raise FileNotFoundError(
        "the grader needs the course repository (its tests/ folder): run it from a clone of the course "
        "installed with `make lab`, `make test` or `pip install -e .`"
    )


def exercises_folder(exercises_path: str | os.PathLike[str] | None) -> Path:
    """The folder that holds the `exercises` package to grade (its parent directory)."""
    if exercises_path is not None:
        folder = Path(exercises_path).resolve()
        if not (folder / "exercises" / "__init__.py").is_file():
            raise FileNotFoundError(f"no exercises/__init__.py in {folder}")
        return folder
    spec = importlib.util.find_spec("exercises")  # locates the package without running it
    if spec is None or not spec.origin:
        raise FileNotFoundError("the package `exercises` is not installed; run `pip install -e .` in the course")
    return Path(spec.origin).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Refusing solutions imported from reference
# ----------------------------------------------------------------------------------------------


def solution_imports(source: str, module: str, exercises: list[catalog.Exercise]) -> dict[str, str]:
    """Exercises of `exercises/<module>.py` that import their own solution: {exercise id: why}.

    `from reference.<module> import name` refuses the exercises named; importing the module
    `reference.<module>` itself, or a package above it (`reference`, `reference.data`, also as
    `from reference.data import pipeline`, or by `importlib`/`__import__`), refuses every exercise
    of the module, since any of them could then call its solution.
    """
    solution = f"reference.{module}"
    everything = {ex.id for ex in exercises}
    by_name = {ex.qualname.split(".")[0]: ex.id for ex in exercises}
    refused: dict[str, str] = {}

    def refuse(ids: set[str], what: str, line: int) -> None:
        for ex_id in ids:
            refused.setdefault(ex_id, f"refused: exercises/{module.replace('.', '/')}.py line {line} {what}")

    def reaches(name: str) -> bool:
        """Whether importing `name` gives access to the solution: it, a module inside it, or a package above it."""
        return name == solution or name.startswith(solution + ".") or solution.startswith(name + ".")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if reaches(alias.name):
                    refuse(everything, f"imports {alias.name}, the module of the solutions", node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == solution:
                for alias in node.names:
                    if alias.name == "*":
                        refuse(everything, f"imports * from {solution}", node.lineno)
                    elif alias.name in by_name:
                        refuse({by_name[alias.name]}, f"imports {alias.name}, its own solution, from {solution}", node.lineno)
            elif solution.startswith(node.module + "."):  # a package above the solution: reference, reference.data, ...
                below = solution[len(node.module) + 1 :].split(".")[0]
                for alias in node.names:
                    if alias.name in ("*", below):
                        refuse(everything, f"imports {alias.name} from {node.module}", node.lineno)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            arg = node.args[0].value
            if name in ("__import__", "import_module") and isinstance(arg, str) and reaches(arg):
                refuse(everything, f"imports {arg} dynamically", node.lineno)
    return refused


# ----------------------------------------------------------------------------------------------
# Child processes
# ----------------------------------------------------------------------------------------------


def _limit_child() -> None:  # runs in the child between fork and exec
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES, OUTPUT_LIMIT_BYTES))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "was still running"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name} (the interpreter crashed)"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code} (sys.exit or os._exit in the code under test?)"


def _spawn(args: list[str], cwd: Path, output: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(output, "ab") as sink:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_limit_child,
        )


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


PREFLIGHT = """
import importlib, inspect, json, os, sys
sys.path.insert(0, sys.argv[1])
package_dir = os.path.join(sys.argv[1], "exercises")
module, qualnames, out = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
mod = importlib.import_module("exercises." + module)
foreign = {}
for qualname in qualnames:
    obj = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    members = [obj] + ([m for m in vars(obj).values() if inspect.isfunction(m)] if inspect.isclass(obj) else [])
    for member in members:
        try:
            where = inspect.getsourcefile(member) or ""
        except TypeError:
            where = ""
        if member is None or not where.startswith(package_dir + os.sep):
            foreign[qualname] = where or "nowhere"
with open(out, "w") as f:
    json.dump(foreign, f)
"""


def preflight(module: str, exercises: list[catalog.Exercise], folder: Path, timeout: float, work: Path) -> dict[str, str]:
    """Import `exercises.<module>` in a child process: {exercise id: why it fails} ('*' for all)."""
    out, log = work / f"preflight-{module}.json", work / f"preflight-{module}.log"
    qualnames = [ex.qualname for ex in exercises]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    process = _spawn(["-c", PREFLIGHT, str(folder), module, json.dumps(qualnames), str(out)], folder, log, env)
    try:
        process.wait(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        _kill(process)
        return {"*": f"importing exercises.{module} did not finish within {timeout + 30:.0f} s"}
    if process.returncode != 0 or not out.exists():
        lines = [line for line in _tail(log).splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        return {"*": f"importing exercises.{module} failed: the process {_describe_exit(process.returncode)}; {last}"}
    foreign = json.loads(out.read_text())
    return {
        ex.id: f"refused: exercises.{module}.{ex.qualname} is not defined in exercises/ (it comes from {foreign[ex.qualname]})"
        for ex in exercises
        if ex.qualname in foreign
    }


def run_tests(
    test_files: list[str],
    impl: str,
    root: Path,
    work: Path,
    *,
    timeout: float,
    exercises_path: Path | None = None,
    skip: dict[str, str] | None = None,
    collect_only: bool = False,
) -> tuple[list[TestResult], list[str]]:
    """Run `test_files` in child pytest processes, restarting after a crash or a time-out.

    `skip` maps exercise ids to a message: their tests are not run and fail with it.
    Returns the results in collection order and the errors that stopped whole files.
    """
    skip = skip or {}
    log, select_file, output = work / "events.jsonl", work / "select.json", work / "pytest-output.txt"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    env.pop("PYTEST_ADDOPTS", None)
    base = [
        "-m", "pytest", "-q", "--no-header", "-p", "no:cacheprovider", "-o", "addopts=",
        "-p", "reference.course.grading_plugin", "--grading-log", str(log), "--impl", impl,
    ]  # fmt: skip
    if exercises_path is not None:
        base += ["--exercises-path", str(exercises_path)]
    if collect_only:
        base.append("--collect-only")
    results: dict[str, TestResult] = {}
    errors: list[str] = []
    pending: list[str] | None = None  # None: everything in the files
    while True:
        select_file.write_text(json.dumps({"nodeids": pending, "exclude_exercises": sorted(skip)}))
        log.write_text("")
        process = _spawn([*base, "--grading-select", str(select_file), *test_files], root, output, env)
        running: tuple[str, float] | None = None
        finished_any, offset, started = False, 0, time.monotonic()
        killed_for: str | None = None
        while True:
            code = process.poll()
            with open(log, encoding="utf-8") as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            offset += len(complete.encode("utf-8"))
            for line in complete.splitlines():
                event = json.loads(line)
                nodeid = event["nodeid"]
                if event["event"] == "collected" and nodeid not in results:
                    result = results[nodeid] = TestResult(nodeid, event["exercise"] or "?", event["points"])
                    if result.exercise in skip:
                        result.message, result.ran = skip[result.exercise], True
                elif event["event"] == "start":
                    running = (nodeid, time.monotonic())
                elif event["event"] == "done":
                    result = results[nodeid]
                    result.passed, result.message, result.details = event["passed"], event["message"], event["details"]
                    result.ran, running, finished_any = True, None, True
            if code is not None:
                break
            now = time.monotonic()
            if running and now - running[1] > timeout:
                killed_for = f"timed out: still running after {timeout:g} s, so its process was stopped"
                _kill(process)
                break
            if not running and not finished_any and now - started > STARTUP_SECONDS + timeout:
                killed_for = f"the test process did not start a test within {STARTUP_SECONDS + timeout:g} s"
                _kill(process)
                break
            time.sleep(0.05)
        if running:
            result = results[running[0]]
            result.passed, result.ran, finished_any = False, True, True
            result.message = killed_for or f"the test process {_describe_exit(process.returncode)} during this test"
            result.details = _tail(output)
        elif not results and (killed_for or process.returncode not in (0, 1, 5)):
            why = killed_for or _describe_exit(process.returncode)
            errors.append(f"{' '.join(test_files)}: pytest could not collect the tests ({why}):\n{_tail(output)}")
        if collect_only:
            break
        pending = [nodeid for nodeid, result in results.items() if not result.ran]
        if not pending or not finished_any:
            break
    for result in results.values():
        if not result.ran and not collect_only:
            result.message = f"not run: the test process {_describe_exit(process.returncode)} before reaching it"
            result.details = _tail(output)
    return list(results.values()), errors


# ----------------------------------------------------------------------------------------------
# Grading
# ----------------------------------------------------------------------------------------------


def grade(
    chapters: list[Chapter],
    impl: str = "exercises",
    *,
    timeout: float = 60.0,
    exercises_path: str | os.PathLike[str] | None = None,
) -> GradeReport:
    """Grade the exercises of `chapters` in implementation `impl` ('exercises' or 'reference')."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    started = time.monotonic()
    report = GradeReport(impl, [ch for ch in chapters if ch.exercises])
    root = course_root()
    folder = exercises_folder(exercises_path) if impl == "exercises" else None
    with tempfile.TemporaryDirectory(prefix="llm-course-grade-") as tmp:
        for chapter in report.chapters:
            work = Path(tmp) / f"ch{chapter.number:02d}"
            work.mkdir()
            skip: dict[str, str] = {}
            if folder is not None:
                for module in dict.fromkeys(ex.module for ex in chapter.exercises):
                    exercises = [ex for ex in chapter.exercises if ex.module == module]
                    source_file = folder / "exercises" / (module.replace(".", "/") + ".py")
                    if not source_file.is_file():
                        skip.update({ex.id: f"missing file {source_file}" for ex in exercises})
                        continue
                    try:
                        skip.update(solution_imports(source_file.read_text(encoding="utf-8"), module, exercises))
                    except SyntaxError as error:
                        skip.update({ex.id: f"exercises/{module}.py does not parse: {error}" for ex in exercises})
                        continue
                    failures = preflight(module, exercises, folder, timeout, work)
                    for ex in exercises:
                        if ex.id not in skip and (ex.id in failures or "*" in failures):
                            skip[ex.id] = failures.get(ex.id, failures.get("*", ""))
            results, errors = run_tests(
                list(chapter.tests),
                impl,
                root,
                work,
                timeout=timeout,
                exercises_path=folder if exercises_path is not None else None,
                skip=skip,
            )
            report.results += results
            report.errors += errors
    report.seconds = time.monotonic() - started
    return report


def points_by_exercise(results: list[TestResult]) -> dict[str, tuple[int, int, str]]:
    """{exercise id: (points earned, points possible, first failure message)} in exercise order."""
    table: dict[str, tuple[int, int, str]] = {}
    for r in results:
        earned, possible, first = table.get(r.exercise, (0, 0, ""))
        table[r.exercise] = (earned + r.score, possible + r.points, first or ("" if r.passed else r.message))
    return dict(sorted(table.items(), key=lambda kv: tuple(int(p) if p.isdigit() else 0 for p in kv[0].split("."))))


def format_table(report: GradeReport) -> str:
    """The human-readable summary: one row per exercise, then the total."""
    rows = [("chapter", "exercise", "points", "first failure")]
    for ex_id, (earned, possible, first) in points_by_exercise(report.results).items():
        try:
            ex = catalog.exercise(ex_id)
            name, chapter = f"{ex.id} {ex.title}", str(ex.chapter)
        except ValueError:
            name, chapter = ex_id, "?"
        rows.append((chapter, name, f"{earned} / {possible}", first[:90]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip() for a, b, c, d in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    lines.append(f"total: {report.score} / {report.max_score} points ({report.impl}, {report.seconds:.0f} s)")
    lines += [f"error: {e.splitlines()[0]}" for e in report.errors]
    return "\n".join(lines)


def gradescope_results(report: GradeReport) -> dict[str, object]:
    """The report in Gradescope's results.json format."""
    tests = []
    for r in report.results:
        try:
            title = catalog.exercise(r.exercise).title
        except ValueError:
            title = ""
        output = r.message if r.passed or not r.details else f"{r.message}\n\n{r.details}"
        tests.append(
            {
                "name": f"Exercise {r.exercise} ({title}): {r.nodeid.split('::', 1)[-1]}",
                "number": r.exercise,
                "score": r.score,
                "max_score": r.points,
                "status": "passed" if r.passed else "failed",
                "output": "" if r.passed else output[-4000:],
                "visibility": "visible",
            }
        )
    return {
        "score": report.score,
        "max_score": report.max_score,
        "execution_time": round(report.seconds, 1),
        "output": "\n".join(report.errors) or f"{report.score} / {report.max_score} points",
        "visibility": "visible",
        "stdout_visibility": "visible",
        "tests": tests,
    }


def write_json_atomically(data: object, path: str | os.PathLike[str]) -> None:
    """Write JSON to `path` through a temporary file in the same folder and a rename."""
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
