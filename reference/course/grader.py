"""The autograder: runs a chapter's tests against an implementation and scores the exercises.

Each grading run works in a fresh temporary copy of the course (its `reference` package and its
`tests`), never in the checkout. In that copy the solutions of the chapters being graded are gone:
each graded function or class of `reference.<module>` is replaced by an import of the learner's own
`exercises.<module>.<name>`, so no route through `reference` leads to an answer, and the checkout's
own `reference` package and git history are hidden from the test processes (a private mount
namespace with an empty file system over them, where Linux allows it).

The tests run in child pytest processes, never in the grader's own. Whatever the code under test
does, raise, loop forever, call `sys.exit` or `os._exit`, flood stdout, crash the interpreter, start
processes that detach, or hang after its tests, it costs only the tests it touches: a test that
outlives its time limit is killed with its process, a process that dies takes only the running test
with it, a new process picks up the tests not yet run, and the whole run has a time budget. The
grader is a child subreaper (Linux `prctl`), so every process a test starts, detached or not, is
killed before the results are written. Running as root (Gradescope, CI), the test processes run as
an unprivileged user (`nobody`) who can write neither the course, nor the results, nor signal the
grader. Events come back through a pipe the grader holds and are parsed defensively.

Before the tests, each exercise module is checked statically (read as Python reads it, with
`tokenize.open`): imports of its own solution from `reference` and the library calls its catalog
entry refuses (`F.cross_entropy` in a cross-entropy exercise) refuse that exercise with the line.

Points come from the catalog (`Exercise.points`, by difficulty) and are shared among an exercise's
tests in proportion to their `@pytest.mark.points` weights. Results: a table on stdout and
Gradescope's `results.json` (score, max_score and tests[] with name, score, max_score, status,
output and visibility), written atomically by the parent, last.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import errno
import importlib.util
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from reference.course import catalog
from reference.course.catalog import Chapter

IMPLEMENTATIONS = ("exercises", "reference")
OUTPUT_LIMIT_BYTES = 64 * 2**20  # largest file a test process may write, its captured stdout included
STARTUP_SECONDS = 120.0  # time a test process gets to start and collect, on top of the per-test limit
EXIT_GRACE_SECONDS = 5.0  # how long a process that has run all its tests gets to exit before it is killed
DEFAULT_BUDGET_SECONDS = 1800.0  # the whole grading run, every chapter (`--budget`)
MAX_EVENT_BYTES = 1 << 20  # a longer line from the test process is dropped
UNPRIVILEGED_USER = "nobody"


@dataclass
class TestResult:
    """The outcome of one test. `weight` is its `@pytest.mark.points` marker; `points` its share of
    the exercise's catalog points once `grade` has assigned them (until then, the weight)."""

    nodeid: str
    exercise: str
    points: float
    passed: bool = False
    message: str = "not run"
    details: str = ""
    ran: bool = False  # decided, by running the test or by refusing to
    weight: int = 1

    @property
    def score(self) -> float:
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
    def score(self) -> float:
        return round(sum(r.score for r in self.results), 2)

    @property
    def max_score(self) -> float:
        return round(sum(r.points for r in self.results), 2)


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


def _fmt(points: float) -> str:
    return f"{round(points, 2):g}"


# ----------------------------------------------------------------------------------------------
# Static checks: solutions imported from reference, refused library calls
# ----------------------------------------------------------------------------------------------


def solution_imports(source: str, module: str, exercises: list[catalog.Exercise]) -> dict[str, str]:
    """Exercises of `exercises/<module>.py` that import their own solution: {exercise id: why}.

    `from reference.<module> import name` refuses the exercises named; importing the module
    `reference.<module>` itself, or a package above it (`reference`, `reference.data`, also as
    `from reference.data import pipeline`, or by `importlib`/`__import__`), refuses every exercise
    of the module, since any of them could then call its solution. (The graded copy of the course
    has no solution to import anyway; this says why early and plainly.)
    """
    return _solution_imports(ast.parse(source), module, exercises)


def _solution_imports(tree: ast.AST, module: str, exercises: list[catalog.Exercise]) -> dict[str, str]:
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

    for node in ast.walk(tree):
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


def _is_refused(name: str, entries: tuple[str, ...]) -> str | None:
    """The entry of `entries` that refuses the dotted `name`, if any (see catalog.ALWAYS_REFUSED)."""
    for entry in entries:
        if entry.startswith("."):
            continue
        if entry.endswith("*"):
            if name.startswith(entry[:-1]):
                return entry
        elif name == entry or name.startswith(entry + "."):
            return entry
    return None


def refused_calls(source: str, module: str, exercises: list[catalog.Exercise]) -> dict[str, str]:
    """Exercises of `exercises/<module>.py` that use a library call their catalog entry refuses.

    The check resolves import aliases (`import torch.nn.functional as F`, `from torch.nn.functional
    import softmax as sm`) and looks at the exercise's own definition, at the module-level
    definitions it reaches by name (so a helper cannot hide the call) and at the module's other
    top-level statements, for names (`F.softmax`, also as `getattr(F, "softmax")`, or a base class)
    and, for entries that start with ".", methods (`x.softmax(-1)`). Returns {exercise id: why}.
    """
    return _refused_calls(ast.parse(source), module, exercises)


def _reference_definitions(module: str) -> dict[str, list[str]]:
    """{name: [ast dump of each top-level statement defining it]} of `reference/<module>.py`, or {}."""
    path = Path(__file__).resolve().parents[1] / (module.replace(".", "/") + ".py")
    try:
        with tokenize.open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return {}
    found: dict[str, list[str]] = {}
    for stmt in tree.body:
        for name in _defined_names(stmt):
            found.setdefault(name, []).append(ast.dump(stmt))
    return found


def _defined_names(stmt: ast.stmt) -> list[str]:
    """The names a top-level statement defines (a function, a class, assignment targets)."""
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [stmt.name]
    if isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return [name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)]
    return []


def _refused_calls(tree: ast.Module, module: str, exercises: list[catalog.Exercise],
                   trusted: dict[str, list[str]] | None = None) -> dict[str, str]:
    """`trusted`: {name: ast dumps} of the reference module's own definitions. A submission's
    definition that is an exact copy of one (a shared helper the exercise file carries verbatim,
    not an exercise) is not searched: the library calls it makes are the course's, not the
    learner's. A helper changed in any way is searched like the learner's own code."""
    exercise_names = {ex.qualname.split(".")[0] for ex in exercises}
    trusted = trusted or {}
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if alias.name != "*":
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def dotted(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    definitions: dict[str, list[ast.stmt]] = {}
    always: list[ast.stmt] = []
    for stmt in tree.body:
        names = _defined_names(stmt)
        if names:
            dump = ast.dump(stmt)
            for name in names:
                if name in exercise_names or dump not in trusted.get(name, ()):
                    definitions.setdefault(name, []).append(stmt)
        elif not isinstance(stmt, ast.Import | ast.ImportFrom):
            always.append(stmt)  # module-level code that runs on import: if, for, try, calls, ...

    refused: dict[str, str] = {}
    path = f"exercises/{module.replace('.', '/')}.py"
    for ex in exercises:
        entries = ex.refused_calls
        methods = {entry[1:] for entry in entries if entry.startswith(".")}
        seen: set[int] = set()
        todo = list(definitions.get(ex.qualname.split(".")[0], [])) + always
        found: list[tuple[int, str]] = []
        while todo:
            stmt = todo.pop()
            if id(stmt) in seen:
                continue
            seen.add(id(stmt))
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name):
                    todo += definitions.get(node.id, [])
                    name = dotted(node)
                    if name and (entry := _is_refused(name, entries)):
                        found.append((node.lineno, f"uses {name}"))
                elif isinstance(node, ast.Attribute):
                    name = dotted(node)
                    if name and _is_refused(name, entries):
                        found.append((node.lineno, f"uses {name}"))
                    elif node.attr in methods and (name is None or ".Tensor." in f".{name}"):
                        # a method of an object (`x.half()`, `torch.Tensor.half(x)`), not a module's
                        # attribute of the same name (the dtype `torch.bfloat16`)
                        found.append((node.lineno, f"calls the method .{node.attr}()"))
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
                    if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                        attr = node.args[1].value
                        base = dotted(node.args[0])
                        if (base and _is_refused(f"{base}.{attr}", entries)) or attr in methods:
                            found.append((node.lineno, f"uses getattr(..., {attr!r}), that is {base or '?'}.{attr}"))
        if found:
            line, what = min(found)
            refused[ex.id] = (
                f"refused: {path} line {line} {what}, a library call that would do exercise {ex.id} "
                f"({ex.title}) for you; write it from tensor operations"
            )
    return refused


def static_refusals(source_file: Path, module: str, exercises: list[catalog.Exercise]) -> dict[str, str]:
    """Every static refusal of `source_file`: solution imports and refused calls (helpers copied
    exactly from `reference/<module>.py` are not searched, see `_refused_calls`). Any failure of the
    check itself (a file that does not decode or parse, or nests too deep) refuses the module's
    exercises with the reason; it never stops the run."""
    shown = f"exercises/{module.replace('.', '/')}.py"
    try:
        with tokenize.open(source_file) as f:  # the encoding Python itself would use (PEP 263)
            source = f.read()
        tree = ast.parse(source, filename=shown)
        refused = _solution_imports(tree, module, exercises)
        for ex_id, why in _refused_calls(tree, module, exercises, _reference_definitions(module)).items():
            refused.setdefault(ex_id, why)
        return refused
    except SyntaxError as error:
        why = f"{shown} does not parse: {error.msg} (line {error.lineno})"
    except (RecursionError, MemoryError):
        why = f"{shown} nests too deeply for the grader's check"
    except Exception as error:  # noqa: BLE001 - decoding, I/O: refuse the module, never the run
        why = f"{shown} could not be read: {type(error).__name__}: {error}"
    return {ex.id: f"refused: {why}" for ex in exercises}


# ----------------------------------------------------------------------------------------------
# The graded copy of the course
# ----------------------------------------------------------------------------------------------


WITHHELD_PRELUDE = """
def _withheld(name):
    import importlib
    value = getattr(importlib.import_module(_WITHHELD[name]), name)
    globals()[name] = value
    return value


def __getattr__(name):
    if name in _WITHHELD:
        return _withheld(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
"""


def withhold_solutions(source: str, module: str, names: list[str]) -> str:
    """`reference/<module>.py`'s source with the top-level definitions `names` replaced, each in its
    place, by an import of the learner's own from `exercises.<module>`.

    When the learner's module is itself being imported (it imports a package whose `__init__`
    imports this module), the import cannot finish yet: the name is then bound on first use, by the
    module's `__getattr__` for other modules and by a lookup in this module's own functions.
    """
    tree = ast.parse(source)
    withheld = {stmt.name for stmt in tree.body
                if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and stmt.name in names}  # fmt: skip
    source_module = f"exercises.{module}"

    class Lookup(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            if node.id in withheld and isinstance(node.ctx, ast.Load):
                found = ast.parse(f"(globals().get({node.id!r}) or _withheld({node.id!r}))", mode="eval").body
                return ast.copy_location(found, node)
            return node

    def lookup_in_bodies(stmt: ast.stmt) -> ast.stmt:
        for node in ast.walk(stmt):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                node.body = [Lookup().visit(child) for child in node.body]
        return stmt

    body: list[ast.stmt] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and stmt.name in withheld:
            body += ast.parse(
                f"try:\n    from {source_module} import {stmt.name}\nexcept ImportError:\n    pass  # bound on first use\n"
            ).body
        else:
            body.append(lookup_in_bodies(stmt))
    prelude = ast.parse(f"_WITHHELD = {dict.fromkeys(sorted(withheld), source_module)!r}\n" + WITHHELD_PRELUDE).body
    future = [stmt for stmt in body if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__"]
    rest = [stmt for stmt in body if stmt not in future]
    docstring = rest[:1] if rest and isinstance(rest[0], ast.Expr) and isinstance(rest[0].value, ast.Constant) else []
    tree.body = docstring + future + prelude + rest[len(docstring):]
    return "# The graded copy: this chapter's solutions are withheld; the names below are the learner's.\n" + ast.unparse(
        ast.fix_missing_locations(tree)
    ) + "\n"


def lazy_reexports(source: str, withheld: dict[str, set[str]]) -> str:
    """A package `__init__`'s source whose re-exports of withheld names (`from reference.models.llama
    import TransformerLM`) are resolved on first use, by a module `__getattr__`: importing a sibling
    module from the learner's own must not need the learner's module finished."""
    tree = ast.parse(source)
    lazy: dict[str, tuple[str, str]] = {}
    body: list[ast.stmt] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module and stmt.module.startswith("reference."):
            names = withheld.get(stmt.module[len("reference."):], set())
            keep = [alias for alias in stmt.names if alias.name not in names]
            for alias in stmt.names:
                if alias.name in names:
                    lazy[alias.asname or alias.name] = (stmt.module, alias.name)
            if not keep:
                continue
            stmt.names = keep
        body.append(stmt)
    if not lazy:
        return source
    tree.body = body + ast.parse(
        f"_LAZY = {lazy!r}\n\n\ndef __getattr__(name):\n    if name in _LAZY:\n        import importlib\n"
        "        module, attr = _LAZY[name]\n        value = getattr(importlib.import_module(module), attr)\n"
        "        globals()[name] = value\n        return value\n"
        "    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')\n"
    ).body
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".ipynb_checkpoints"))


def _read_only(path: Path) -> None:
    """Files 0644 and folders 0755: readable by the test processes' user, writable only by the grader's."""
    for dirpath, dirnames, filenames in os.walk(path):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


def stage_course(root: Path, target: Path, impl: str, chapters: list[Chapter], folder: Path | None) -> tuple[Path, Path | None]:
    """Copy the course (reference/, tests/, pyproject.toml) and the submission into `target`.

    In exercises mode, the graded chapters' solutions in the copy are replaced by the learner's
    names (`withhold_solutions`). Returns (the course copy, the folder holding the copied exercises).
    """
    course = target / "course"
    course.mkdir()
    _copy_tree(root / "reference", course / "reference")
    _copy_tree(root / "tests", course / "tests")
    for name in ("pyproject.toml",):
        if (root / name).is_file():
            shutil.copy2(root / name, course / name)
    submission = None
    if impl == "exercises":
        assert folder is not None
        submission = target / "submission"
        submission.mkdir()
        _copy_tree(folder / "exercises", submission / "exercises")
        by_module: dict[str, list[str]] = {}
        for ch in chapters:
            for ex in ch.exercises:
                by_module.setdefault(ex.module, []).append(ex.qualname.split(".")[0])
        for module, names in by_module.items():
            path = course / "reference" / (module.replace(".", "/") + ".py")
            if path.is_file():
                path.write_text(withhold_solutions(path.read_text(encoding="utf-8"), module, names), encoding="utf-8")
        withheld = {module: set(names) for module, names in by_module.items()}
        for init in (course / "reference").rglob("__init__.py"):
            init.write_text(lazy_reexports(init.read_text(encoding="utf-8"), withheld), encoding="utf-8")
        _read_only(submission)
    _read_only(course)
    return course, submission


def hidden_paths(root: Path) -> list[Path]:
    """What the test processes must not see: the checkout's reference package and its git history."""
    import re
    import site

    import reference

    paths = {root / "reference", root / ".git", Path(reference.__file__).resolve().parent}
    # an editable install maps `reference` to its checkout through a finder in site-packages
    for folder in {*site.getsitepackages(), site.getusersitepackages(), *sys.path}:
        with contextlib.suppress(OSError):
            for finder in Path(folder).glob("__editable__*finder.py"):
                for found in re.findall(r"'reference': '([^']+)'", finder.read_text(encoding="utf-8", errors="replace")):
                    paths.add(Path(found))
                    paths.add(Path(found).parent / ".git")
    return sorted(p for p in paths if p.is_dir())


# ----------------------------------------------------------------------------------------------
# Child processes: the sandbox, the subreaper, the kill
# ----------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 1, 36, 37
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 0x1000, 0x4000, 1 << 18


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


@dataclass
class Sandbox:
    """How the test processes run: as whom, with what hidden, with which home."""

    uid: int | None = None  # None: as the grader's own user
    gid: int | None = None
    hide: tuple[str, ...] = ()
    home: str = ""
    # (closed folder, what inside it the interpreter needs, an empty staging folder): e.g. a Python
    # installed under /root (mode 0700), re-exposed alone to the unprivileged user
    expose: tuple[tuple[str, str, str], ...] = ()
    note: str = ""  # why the tests did not run as the unprivileged user, when they could not

    @classmethod
    def make(cls, tmp: Path, root: Path) -> Sandbox:
        home = tmp / "home"
        home.mkdir()
        (home / "tmp").mkdir()
        uid = gid = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            import pwd

            try:
                entry = pwd.getpwnam(UNPRIVILEGED_USER)
                uid, gid = entry.pw_uid, entry.pw_gid
            except KeyError:
                uid = gid = 65534
            for path in (home, home / "tmp"):
                os.chown(path, uid, gid)
        os.chmod(home, 0o700)
        expose = []
        if uid is not None:
            for k, (closed, needed) in enumerate(_closed_ancestors()):
                staging = tmp / f"expose-{k}"
                staging.mkdir()
                expose.append((str(closed), str(needed), str(staging)))
        sandbox = cls(uid, gid, tuple(str(p) for p in hidden_paths(root)), str(home), tuple(expose))
        if uid is not None and not sandbox.works(tmp):
            sandbox.uid = sandbox.gid = None  # the interpreter is out of the unprivileged user's reach here
            sandbox.note = f"the tests ran as root: user {UNPRIVILEGED_USER!r} cannot run {sys.executable}"
        return sandbox

    def works(self, cwd: Path) -> bool:
        """Whether the interpreter starts in this sandbox (as the unprivileged user, with the mounts)."""
        try:
            return subprocess.run([sys.executable, "-c", "import pytest"], cwd=cwd, preexec_fn=self.preexec, env=_child_env(self, []),
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=120).returncode == 0  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return False

    def preexec(self) -> None:  # runs in the child between fork and exec: no Python-level locks here
        resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES, OUTPUT_LIMIT_BYTES))
        libc = _libc()
        if libc is not None and (self.hide or self.expose):
            with contextlib.suppress(Exception):
                self._hide(libc)
        if self.uid is not None:
            os.setgroups([])
            os.setgid(self.gid if self.gid is not None else self.uid)
            os.setuid(self.uid)
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it

    def _hide(self, libc: ctypes.CDLL) -> None:
        """A private mount namespace with an empty read-only file system over each hidden folder
        (as root directly; otherwise inside a user namespace mapping the user to itself)."""
        if os.geteuid() == 0:
            if libc.unshare(_CLONE_NEWNS) != 0:
                return
        else:
            uid, gid = os.geteuid(), os.getegid()
            if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
                return
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
                try:
                    os.write(fd, text.encode())
                finally:
                    os.close(fd)
        if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            return
        for closed, needed, staging in self.expose:  # a tmpfs over the closed folder, with only `needed` in it
            if libc.mount(needed.encode(), staging.encode(), None, _MS_BIND | _MS_REC, None) != 0:
                continue
            libc.mount(b"tmpfs", closed.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=64k,mode=0755")
            inside = os.path.join(closed, os.path.basename(needed))
            os.mkdir(inside)
            libc.mount(staging.encode(), inside.encode(), None, _MS_BIND | _MS_REC, None)
        for path in self.hide:
            libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV, b"size=4k,mode=0555")


def _closed_ancestors() -> list[tuple[Path, Path]]:
    """Folders on the way to the interpreter and its packages that others cannot enter, each with
    the entry inside it on that way: [(Path("/root"), Path("/root/.pyenv"))] for a pyenv Python."""
    found: dict[Path, Path] = {}
    for start in {sys.executable, sys.prefix, sys.base_prefix, *sys.path}:
        if not start:
            continue
        path = Path(os.path.realpath(start))
        for depth in range(1, len(path.parts)):
            folder = Path(*path.parts[:depth])
            try:
                if not os.stat(folder).st_mode & 0o001:
                    found.setdefault(folder, Path(*path.parts[: depth + 1]))
                    break
            except OSError:
                break
    return sorted(found.items())


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (Linux), so `kill_descendants` finds them."""
    libc = _libc()
    return libc is not None and libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _children() -> set[int]:
    me, found = os.getpid(), set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            if int(stat.rsplit(b")", 1)[1].split()[1]) == me:
                found.add(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill_descendants(keep: set[int] = frozenset(), seconds: float = 10.0) -> int:  # type: ignore[assignment]
    """SIGKILL and reap every child of this process not in `keep`, again and again while orphans of
    killed ones are reparented here (a subreaper), until none is left. Returns how many were killed."""
    killed, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        victims = _children() - set(keep)
        if not victims:
            break
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        for pid in victims:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)
    return killed


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "was still running"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name} (the interpreter crashed)"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code} (sys.exit or os._exit in the code under test?)"


def _spawn(args: list[str], cwd: Path, sink: int, env: dict[str, str], sandbox: Sandbox | None, pass_fds: tuple[int, ...]) -> subprocess.Popen[bytes]:
    sandbox = sandbox or Sandbox()
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=sink,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=sandbox.preexec,
        pass_fds=pass_fds,
    )


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


def _tail(fd: int, limit: int = 2000) -> str:
    """The end of the output file the grader holds open (the child cannot replace it)."""
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, limit, max(0, size - limit)).decode("utf-8", "replace")
    except OSError:
        return ""


def _child_env(sandbox: Sandbox | None, paths: list[Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HYPOTHESIS_", "LLM_COURSE_"))}
    # only the plugins the tests need: autoloading every installed one (nbval, jupyter) costs seconds a process
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0", PYTHONNOUSERSITE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    if sandbox and sandbox.home:
        env.update(HOME=sandbox.home, TMPDIR=os.path.join(sandbox.home, "tmp"), MPLCONFIGDIR=os.path.join(sandbox.home, "mpl"))
    return env


class _Events:
    """Reads JSON lines from the read end of a pipe, without blocking and without trusting them."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.closed = fd, b"", False
        os.set_blocking(fd, False)

    def read(self, wait: float) -> list[object]:
        if not self.closed:
            try:
                ready, _, _ = select.select([self.fd], [], [], wait)
            except (OSError, ValueError):
                ready = []
            while ready:
                try:
                    chunk = os.read(self.fd, 1 << 16)
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    self.closed = True
                    break
                self.buffer += chunk
                if len(chunk) < 1 << 16:
                    break
        elif wait:
            time.sleep(wait)
        lines = self.buffer.split(b"\n")
        self.buffer = lines.pop()
        if len(self.buffer) > MAX_EVENT_BYTES:
            self.buffer = b""
        events = []
        for line in lines:
            if not line.strip() or len(line) > MAX_EVENT_BYTES:
                continue
            try:
                events.append(json.loads(line))
            except (ValueError, RecursionError):
                continue  # not JSON: names no test, costs none
        return events

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _valid_weight(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1000 else 1


PREFLIGHT = """
import importlib, inspect, json, os, sys
package_dir = os.path.join(sys.argv[1], "exercises")
module, qualnames, fd = sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
out = os.fdopen(fd, "w")
mod = importlib.import_module("exercises." + module)
foreign = {}
for qualname in qualnames:
    obj = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    members = [obj] + ([m for m in vars(obj).values() if inspect.isfunction(m)] if inspect.isclass(obj) else [])
    for member in members:
        try:
            where = inspect.getsourcefile(inspect.unwrap(member)) or ""  # through @torch.no_grad() and the like
        except TypeError:
            where = ""
        if member is None or not where.startswith(package_dir + os.sep):
            foreign[qualname] = where or "nowhere"
out.write(json.dumps({"preflight": foreign}) + "\\n")
out.flush()
"""


def preflight(module: str, exercises: list[catalog.Exercise], folder: Path, timeout: float, work: Path,
              *, course: Path | None = None, sandbox: Sandbox | None = None) -> dict[str, str]:  # fmt: skip
    """Import `exercises.<module>` in a child process: {exercise id: why it fails} ('*' for all)."""
    paths = [folder] + ([course] if course else [])
    read, write = os.pipe()
    sink = os.open(work / f"preflight-{module}.log", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    events = _Events(read)
    try:
        args = ["-c", PREFLIGHT, str(folder), module, json.dumps([ex.qualname for ex in exercises]), str(write)]
        try:
            process = _spawn(args, course or folder, sink, _child_env(sandbox, paths), sandbox, (write,))
        finally:
            os.close(write)
        answer: object = None
        deadline = time.monotonic() + timeout + 30
        while answer is None and process.poll() is None and time.monotonic() < deadline:
            for event in events.read(0.05):
                answer = event if answer is None else answer
        for event in events.read(0):
            answer = event if answer is None else answer
        if process.poll() is None:
            _kill(process)  # answered, or hung: what it does after answering (threads, atexit) costs nothing
            if answer is None:
                return {"*": f"importing exercises.{module} did not finish within {timeout + 30:.0f} s"}
        foreign = answer.get("preflight") if isinstance(answer, dict) else None
        if not isinstance(foreign, dict):
            lines = [line for line in _tail(sink).splitlines() if line.strip()]
            last = lines[-1] if lines else ""
            return {"*": f"importing exercises.{module} failed: the process {_describe_exit(process.returncode)}; {last}"}
    finally:
        events.close()
        os.close(sink)
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
    deadline: float | None = None,
    sandbox: Sandbox | None = None,
    keep: set[int] | None = None,
) -> tuple[list[TestResult], list[str]]:
    """Run `test_files` (relative to `root`) in child pytest processes, restarting after a crash or a time-out.

    `skip` maps exercise ids to a message: their tests are not run and fail with it. `deadline`
    (time.monotonic()) ends the run: tests not decided by then fail as not run.
    Returns the results in collection order and the errors that stopped whole files.
    """
    skip = skip or {}
    deadline = time.monotonic() + 1e9 if deadline is None else deadline
    select_file = work / "select.json"
    sink = os.open(work / "pytest-output.txt", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    paths = ([exercises_path] if exercises_path else []) + [root]
    env = _child_env(sandbox, paths)
    results: dict[str, TestResult] = {}
    errors: list[str] = []
    pending: list[str] | None = None  # None: everything in the files
    first_process, code = True, None
    try:
        while True:
            select_file.write_text(json.dumps({"nodeids": pending, "exclude_exercises": sorted(skip)}))
            os.chmod(select_file, 0o644)
            read, write = os.pipe()
            base = [
                "-m", "pytest", "-q", "--no-header", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(root),
                "-p", "reference.course.grading_plugin", "--grading-fd", str(write), "--impl", impl,
            ]  # fmt: skip
            if importlib.util.find_spec("hypothesis") is not None:
                base += ["-p", "hypothesis.extra.pytestplugin"]
            if exercises_path is not None:
                base += ["--exercises-path", str(exercises_path)]
            if collect_only:
                base.append("--collect-only")
            events = _Events(read)
            try:
                process = _spawn([*base, "--grading-select", str(select_file), *test_files], root, sink, env, sandbox, (write,))
            finally:
                os.close(write)
            running: tuple[str, float] | None = None
            finished_any, started, started_any = False, time.monotonic(), False
            all_done_at: float | None = None
            killed_for: str | None = None
            while True:
                code = process.poll()
                for event in events.read(0 if code is not None else 0.05):
                    if not isinstance(event, dict) or not isinstance(event.get("nodeid"), str):
                        continue
                    kind, nodeid = event.get("event"), event["nodeid"]
                    if kind == "collected":
                        if first_process and not started_any and nodeid not in results and len(nodeid) < 2000:
                            exercise = event.get("exercise")
                            weight = _valid_weight(event.get("points"))
                            result = results[nodeid] = TestResult(nodeid, exercise if isinstance(exercise, str) else "?", weight, weight=weight)
                            if result.exercise in skip:
                                result.message, result.ran = skip[result.exercise], True
                    elif nodeid not in results:
                        continue  # names no test of this run: costs none
                    elif kind == "start":
                        started_any = True
                        running = (nodeid, time.monotonic())
                    elif kind == "done":
                        result = results[nodeid]
                        passed, message, details = event.get("passed"), event.get("message"), event.get("details")
                        if isinstance(passed, bool) and isinstance(message, str) and isinstance(details, str):
                            result.passed, result.message, result.details = passed, message[:300], details[-4000:]
                        else:
                            result.passed, result.message, result.details = False, "the test process sent a malformed report for this test", ""
                        result.ran, finished_any = True, True
                        if running and running[0] == nodeid:
                            running = None
                if code is not None:
                    break
                now = time.monotonic()
                if now > deadline:
                    killed_for = "not run: the grading run's time budget (--budget) was spent"
                    _kill(process)
                    break
                if running and now - running[1] > timeout:
                    killed_for = f"timed out: still running after {timeout:g} s, so its process was stopped"
                    _kill(process)
                    break
                if not running and not finished_any and now - started > STARTUP_SECONDS + timeout:
                    killed_for = f"the test process did not start a test within {STARTUP_SECONDS + timeout:g} s"
                    _kill(process)
                    break
                if not running and results and all(r.ran for r in results.values()) and not collect_only:
                    all_done_at = all_done_at or now  # every test decided: a hang at exit costs no test
                    if now - all_done_at > EXIT_GRACE_SECONDS:
                        _kill(process)
                        break
            events.close()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # what the test process left behind in its group
            if keep is not None:
                kill_descendants(keep)  # and what detached from it, reparented to this subreaper
            if running:
                result = results[running[0]]
                result.passed, result.ran, finished_any = False, True, True
                result.message = killed_for or f"the test process {_describe_exit(process.returncode)} during this test"
                result.details = _tail(sink)
            elif not results and (killed_for or process.returncode not in (0, 1, 5)):
                why = killed_for or _describe_exit(process.returncode)
                errors.append(f"{' '.join(test_files)}: pytest could not collect the tests ({why}):\n{_tail(sink)}")
            first_process = False
            if collect_only or time.monotonic() > deadline:
                break
            pending = [nodeid for nodeid, result in results.items() if not result.ran]
            if not pending or not finished_any:
                break
        over_budget = time.monotonic() > deadline
        for result in results.values():
            if not result.ran and not collect_only:
                if over_budget:
                    result.message = "not run: the grading run's time budget (--budget) was spent before this test"
                else:
                    result.message = f"not run: the test process {_describe_exit(code)} before reaching it"
                    result.details = _tail(sink)
    finally:
        os.close(sink)
    return list(results.values()), errors


# ----------------------------------------------------------------------------------------------
# Grading
# ----------------------------------------------------------------------------------------------


def assign_points(chapter: Chapter, results: list[TestResult]) -> list[TestResult]:
    """Share each exercise's catalog points among its tests by weight; an exercise with no test
    (its file did not collect) gets one failed entry worth all its points. Tests naming no exercise
    of the chapter are dropped."""
    exercises = {ex.id: ex for ex in chapter.exercises}
    kept = [r for r in results if r.exercise in exercises]
    for ex in chapter.exercises:
        mine = [r for r in kept if r.exercise == ex.id]
        if not mine:
            kept.append(TestResult(f"(exercise {ex.id})", ex.id, 0, message="no test of this exercise ran (see the errors)", ran=True))
            mine = kept[-1:]
        total = sum(r.weight for r in mine)
        for r in mine:
            r.points = ex.points * r.weight / total
    return kept


def grade(
    chapters: list[Chapter],
    impl: str = "exercises",
    *,
    timeout: float = 60.0,
    budget: float = DEFAULT_BUDGET_SECONDS,
    exercises_path: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> GradeReport:
    """Grade the exercises of `chapters` in implementation `impl` ('exercises' or 'reference').

    `root`: the course to copy (default: this one). Each call works in its own temporary copy.
    The calling process becomes a child subreaper: every process the tests start ends with this call.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if not budget > 0:
        raise ValueError(f"budget must be positive, got {budget}")
    started = time.monotonic()
    deadline = started + budget
    keep = _children()
    become_subreaper()
    report = GradeReport(impl, [ch for ch in chapters if ch.exercises])
    course_src = Path(root).resolve() if root is not None else course_root()
    folder = exercises_folder(exercises_path) if impl == "exercises" else None
    tmp = Path(tempfile.mkdtemp(prefix="llm-course-grade-"))
    try:
        os.chmod(tmp, 0o755)
        course, submission = stage_course(course_src, tmp, impl, report.chapters, folder)
        sandbox = Sandbox.make(tmp, course_src)
        if sandbox.note:
            report.errors.append(f"warning: {sandbox.note}")
        for chapter in report.chapters:
            work = tmp / f"ch{chapter.number:02d}"
            work.mkdir(mode=0o755)
            results: list[TestResult] = []
            try:
                skip: dict[str, str] = {}
                if submission is not None:
                    for module in dict.fromkeys(ex.module for ex in chapter.exercises):
                        exercises = [ex for ex in chapter.exercises if ex.module == module]
                        source_file = submission / "exercises" / (module.replace(".", "/") + ".py")
                        if not source_file.is_file():
                            skip.update({ex.id: f"missing file exercises/{module.replace('.', '/')}.py" for ex in exercises})
                            continue
                        skip.update(static_refusals(source_file, module, exercises))
                        if time.monotonic() > deadline:
                            break
                        failures = preflight(module, exercises, submission, min(timeout, max(1.0, deadline - time.monotonic())),
                                             work, course=course, sandbox=sandbox)  # fmt: skip
                        for ex in exercises:
                            if ex.id not in skip and (ex.id in failures or "*" in failures):
                                skip[ex.id] = failures.get(ex.id, failures.get("*", ""))
                results, errors = run_tests(
                    list(chapter.tests), impl, course, work, timeout=timeout, exercises_path=submission,
                    skip=skip, deadline=deadline, sandbox=sandbox, keep=keep,
                )  # fmt: skip
                report.errors += errors
            except Exception as error:  # noqa: BLE001 - the grader's own failure on one chapter costs that chapter
                report.errors.append(f"chapter {chapter.number}: the grader failed: {type(error).__name__}: {error}")
            report.results += assign_points(chapter, results)
    finally:
        kill_descendants(keep)
        shutil.rmtree(tmp, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def grade_to_file(chapters: list[Chapter], impl: str, json_path: str | os.PathLike[str], **options: object) -> GradeReport:
    """Grade and write results.json: first a placeholder (score 0, so a valid file exists whatever
    happens), then, after every process the tests started is dead, the real results, last."""
    target = Path(json_path).resolve()
    keep = _children()
    become_subreaper()
    placeholder = GradeReport(impl, chapters, errors=["grading did not finish (the grader was stopped)"])
    write_json_atomically(gradescope_results(placeholder), target)
    try:
        report = grade(chapters, impl, **options)  # type: ignore[arg-type]
    except Exception as error:  # noqa: BLE001 - the grader's own failure still leaves a valid results file
        report = GradeReport(impl, chapters, errors=[f"the grader could not run: {type(error).__name__}: {error}"])
    kill_descendants(keep)
    write_json_atomically(gradescope_results(report), target)
    return report


def points_by_exercise(results: list[TestResult]) -> dict[str, tuple[float, float, str]]:
    """{exercise id: (points earned, points possible, first failure message)} in exercise order."""
    table: dict[str, tuple[float, float, str]] = {}
    for r in results:
        earned, possible, first = table.get(r.exercise, (0, 0, ""))
        table[r.exercise] = (earned + r.score, possible + r.points, first or ("" if r.passed else r.message))
    return dict(sorted(table.items(), key=lambda kv: tuple(int(p) if p.isdigit() else 0 for p in kv[0].split("."))))


def _exercise(report: GradeReport, ex_id: str) -> catalog.Exercise | None:
    for ch in report.chapters:
        for ex in ch.exercises:
            if ex.id == ex_id:
                return ex
    try:
        return catalog.exercise(ex_id)
    except ValueError:
        return None


def format_table(report: GradeReport) -> str:
    """The human-readable summary: one row per exercise, then the total."""
    rows = [("chapter", "exercise", "points", "first failure")]
    for ex_id, (earned, possible, first) in points_by_exercise(report.results).items():
        ex = _exercise(report, ex_id)
        name, chapter = (f"{ex.id} {ex.title}", str(ex.chapter)) if ex else (ex_id, "?")
        rows.append((chapter, name, f"{_fmt(earned)} / {_fmt(possible)}", first[:90]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip() for a, b, c, d in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    lines.append(f"total: {_fmt(report.score)} / {_fmt(report.max_score)} points ({report.impl}, {report.seconds:.0f} s)")
    lines += [f"error: {e.splitlines()[0]}" for e in report.errors]
    return "\n".join(lines)


def gradescope_results(report: GradeReport) -> dict[str, object]:
    """The report in Gradescope's results.json format (scores rounded to 1/10,000 point, so that the
    tests' scores add up to the total however many tests share an exercise's points)."""
    tests = []
    for r in report.results:
        ex = _exercise(report, r.exercise)
        output = r.message if r.passed or not r.details else f"{r.message}\n\n{r.details}"
        tests.append(
            {
                "name": f"Exercise {r.exercise} ({ex.title if ex else ''}): {r.nodeid.split('::', 1)[-1]}",
                "number": r.exercise,
                "score": round(r.score, 4),
                "max_score": round(r.points, 4),
                "status": "passed" if r.passed else "failed",
                "output": "" if r.passed else output[-4000:],
                "visibility": "visible",
            }
        )
    return {
        "score": report.score,
        "max_score": report.max_score,
        "execution_time": round(report.seconds, 1),
        "output": "\n".join(report.errors) or f"{_fmt(report.score)} / {_fmt(report.max_score)} points",
        "visibility": "visible",
        "stdout_visibility": "visible",
        "tests": tests,
    }


def write_json_atomically(data: object, path: str | os.PathLike[str]) -> None:
    """Write JSON to `path` through a temporary file in the same folder and a rename; whatever
    stands at `path` (a folder someone put there, a link) is replaced."""
    target = Path(os.path.abspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        try:
            os.replace(tmp, target)
        except OSError as error:
            if error.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
            os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
