"""Mutation run: plant each plausible bug of `tests/mutants.py` in a copy of the course and check
that the graded tests of its exercise catch it.

    python -m tests.run_mutants                       # every mutant
    python -m tests.run_mutants --exercise 5.2        # one exercise (repeatable)
    python -m tests.run_mutants --chapter 6 --json mutation-6.json

`tests/mutation-report.json` holds the last full run (every mutant, the test that killed it, the
seconds it took), merged from per-chapter runs on 2 shared cores.

The repository is copied once to a temporary folder (the worktree is never edited); for each
mutant its snippet is replaced there (and put back afterwards), and pytest runs only the tests of the chapter's
test files whose `@pytest.mark.exercise` is the mutant's exercise (`-x`: the first failure is
enough). A mutant is KILLED when one of those tests fails (or the run times out, as a hung test
would in the grader), SURVIVED when all pass. The command prints one line per mutant, writes a
JSON report and exits with status 1 if any mutant survived. Each run is a child forked from a
process that has already imported torch and transformers (`--no-fork`: a fresh interpreter per
mutant, several times slower); the child forgets every `reference`, `exercises` and `tests` module
and imports them again from the copy, so it sees the mutated source.

Not a pytest file (pytest collects only test_*.py); it doubles as the small pytest plugin, loaded
with `-p tests.run_mutants` inside the copy, that selects the exercise's tests and logs the first
failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".ipynb_checkpoints", ".hypothesis",
                              ".pytest_cache", "build", "dist")
SELECT_ENV, LOG_ENV = "LLM_COURSE_MUTANT_EXERCISE", "LLM_COURSE_MUTANT_LOG"


# ----------------------------------------------------------------------------------------------
# The pytest plugin (runs inside the copy)
# ----------------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config, items):  # noqa: ANN001 - pytest hook
    wanted = os.environ.get(SELECT_ENV)
    if not wanted:
        return
    keep, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("exercise")
        (keep if marker is not None and marker.args and marker.args[0] == wanted else dropped).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=dropped)
    _log({"event": "collected", "count": len(keep)})


def pytest_runtest_logreport(report):  # noqa: ANN001 - pytest hook
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr).strip().splitlines()[-1:]
        _log({"event": "failed", "nodeid": report.nodeid, "when": report.when, "message": str(message)[:300]})


def _log(event: dict) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


PRELOAD = ("torch", "numpy", "einops", "hypothesis", "regex", "transformers", "tokenizers", "sklearn.linear_model",
           "datasketch", "safetensors", "tqdm", "yaml", "torch.distributed", "transformers.models.llama.modeling_llama",
           "transformers.models.t5.modeling_t5", "transformers.models.gpt2.modeling_gpt2", "transformers.models.bert.modeling_bert",
           "transformers.models.bloom.modeling_bloom", "transformers.activations")


def _preload() -> None:
    """Import the heavy third-party packages once, so that each forked run starts in a second, not in ten."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _run_forked(copy: Path, args: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """pytest.main(args) in a forked child (in the copy, with `env`), under a time limit; (exit code or None, output)."""
    out_path = copy / ".mutant-out.txt"
    pid = os.fork()
    if pid == 0:  # the child: a fresh view of the course in `copy`
        code = 3
        try:
            os.setpgrp()
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(copy)
            os.environ.clear()
            os.environ.update(env)
            sys.dont_write_bytecode = True
            for name in [m for m in sys.modules if m.split(".")[0] in ("reference", "exercises", "tests", "conftest")]:
                del sys.modules[name]
            sys.path[:0] = [str(copy)]
            import pytest

            code = int(pytest.main(args))
        except BaseException:  # noqa: BLE001 - report anything, then leave without running the parent's cleanup
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None, f"timed out after {timeout:.0f} s"
        time.sleep(0.05)
    output = out_path.read_text(errors="replace") if out_path.exists() else ""
    try:
        os.killpg(pid, 9)  # stragglers the tests left behind (a spawned worker, say)
    except (ProcessLookupError, PermissionError):
        pass
    return os.waitstatus_to_exitcode(status), output[-2000:]


def run_one(copy: Path, mutant, test_files: list[str], timeout: float, fork: bool = True) -> dict:  # noqa: ANN001
    target = copy / mutant.file
    original = target.read_text(encoding="utf-8")
    count = original.count(mutant.find)
    result = {"exercise": mutant.exercise, "name": mutant.name, "file": mutant.file}
    if count != 1:
        return result | {"status": "STALE", "detail": f"snippet occurs {count} times in {mutant.file}"}
    log = copy / ".mutant-log.jsonl"
    log.unlink(missing_ok=True)
    target.write_text(original.replace(mutant.find, mutant.replace), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LLM_COURSE_IMPL")}
    env |= {"PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1", SELECT_ENV: mutant.exercise, LOG_ENV: str(log),
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"), "MKL_NUM_THREADS": env.get("MKL_NUM_THREADS", "1"),
            "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [*test_files, "-x", "-q", "-p", "no:cacheprovider", "-p", "tests.run_mutants", "--impl", "reference",
            "-o", "addopts=", "--hypothesis-seed=0"]
    start = time.monotonic()
    try:
        if fork:
            rc, tail = _run_forked(copy, args, env, timeout)
        else:
            try:
                proc = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=copy, env=env, capture_output=True,
                                      text=True, timeout=timeout)
                rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
            except subprocess.TimeoutExpired:
                rc, tail = None, f"timed out after {timeout:.0f} s"
    finally:
        target.write_text(original, encoding="utf-8")
    seconds = round(time.monotonic() - start, 1)
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    collected = next((e["count"] for e in events if e["event"] == "collected"), 0)
    failures = [e for e in events if e["event"] == "failed"]
    result |= {"seconds": seconds, "tests_selected": collected}
    if rc is None:
        return result | {"status": "KILLED", "killed_by": "timeout", "detail": tail}
    if collected == 0:
        return result | {"status": "ERROR", "detail": "no test selected or collection failed: " + tail[-600:]}
    if failures:
        first = failures[0]
        return result | {"status": "KILLED", "killed_by": first["nodeid"], "detail": first["message"]}
    if rc == 0:
        return result | {"status": "SURVIVED"}
    return result | {"status": "KILLED", "killed_by": f"pytest exit {rc}", "detail": tail[-600:]}


def _files_grading(exercise: str, files: tuple[str, ...]) -> list[str]:
    """The chapter test files that hold a test marked with `exercise` (so that the others are not even imported)."""
    marker = f'pytest.mark.exercise("{exercise}")'
    return [f for f in files if marker in (ROOT / f).read_text(encoding="utf-8")] or list(files)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from reference.course import catalog
    from tests.mutants import MUTANTS

    parser = argparse.ArgumentParser(prog="python -m tests.run_mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--exercise", action="append", default=[], help="only this exercise's mutants (repeatable)")
    parser.add_argument("--chapter", action="append", type=int, default=[], help="only this chapter's mutants (repeatable)")
    parser.add_argument("--name", default=None, help="only mutants whose name contains this text")
    parser.add_argument("--json", default=None, help="report file (default: mutation-report.json in the temp folder's parent)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant before it counts as killed by a hang")
    parser.add_argument("--no-fork", action="store_true",
                        help="start a fresh Python per mutant instead of forking one that has the libraries imported")
    args = parser.parse_args(argv)

    chosen = [m for m in MUTANTS
              if (not args.exercise or m.exercise in args.exercise)
              and (not args.chapter or catalog.exercise(m.exercise).chapter in args.chapter)
              and (args.name is None or args.name in m.name)]
    if not chosen:
        parser.error("no mutant matches the selection")
    results = []
    fork = not args.no_fork and hasattr(os, "fork")
    if fork:
        _preload()
    with tempfile.TemporaryDirectory(prefix="llm-course-mutants-") as tmp:
        copy = Path(tmp) / "course"
        shutil.copytree(ROOT, copy, ignore=SKIP, symlinks=True)
        for i, mutant in enumerate(chosen, 1):
            tests = _files_grading(mutant.exercise, catalog.chapter(str(catalog.exercise(mutant.exercise).chapter)).tests)
            result = run_one(copy, mutant, tests, args.timeout, fork)
            results.append(result)
            where = result.get("killed_by", result.get("detail", ""))
            print(f"[{i:3d}/{len(chosen)}] {result['status']:8s} {mutant.exercise:5s} {mutant.name:55s} {where}", flush=True)
    summary: dict[str, dict[str, int]] = {}
    for r in results:
        row = summary.setdefault(r["exercise"], {"mutants": 0, "killed": 0})
        row["mutants"] += 1
        row["killed"] += r["status"] == "KILLED"
    bad = [r for r in results if r["status"] != "KILLED"]
    report = {
        "command": "python -m tests.run_mutants " + " ".join(argv if argv is not None else sys.argv[1:]),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "mutants": len(results),
        "killed": len(results) - len(bad),
        "summary": summary,
        "results": results,
    }
    out = Path(args.json) if args.json else Path(tempfile.gettempdir()) / "mutation-report.json"
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_out, out)
    print(f"{report['killed']}/{report['mutants']} mutants killed; report in {out}")
    for r in bad:
        print(f"  {r['status']}: {r['exercise']} {r['name']} ({r['file']}) {r.get('detail', '')}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
