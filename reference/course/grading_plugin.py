"""A pytest plugin that logs each test's grading markers and outcome, one JSON object a line.

Loaded by the autograder's child process (`pytest -p reference.course.grading_plugin
--grading-fd N`, N the write end of a pipe the grader holds; `--grading-log FILE` appends to a file
instead, for debugging). Events, written and flushed as they happen so that a crash loses nothing
already decided:
  {"event": "collected", "nodeid", "exercise", "points"}   once per selected test
  {"event": "start", "nodeid", "time"}                   before a test's set-up
  {"event": "done", "nodeid", "passed", "message", "details", "duration"}   after its tear-down
"""

from __future__ import annotations

import json
import os
import time
from typing import IO

import pytest

MAX_DETAILS = 4000


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--grading-log", default=None, help="file to append the events to (JSON lines)")
    parser.addoption("--grading-fd", default=None, type=int, help="file descriptor (a pipe) to write the events to")
    parser.addoption(
        "--grading-select",
        default=None,
        help='JSON file {"nodeids": [...] or null, "exclude_exercises": [...]}: which tests to run',
    )


class GradingLog:
    def __init__(self, stream: IO[str], nodeids: set[str] | None, exclude: set[str]) -> None:
        self.stream = stream
        self.nodeids = nodeids
        self.exclude = exclude
        self.reports: dict[str, list[pytest.TestReport]] = {}

    def write(self, **event: object) -> None:
        try:
            self.stream.write(json.dumps(event, default=str) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # the pipe was closed by the code under test: the grader sees it
            pass

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        keep, dropped = [], []
        for item in items:
            if self.nodeids is not None and item.nodeid not in self.nodeids:
                dropped.append(item)
                continue
            ex, pts = item.get_closest_marker("exercise"), item.get_closest_marker("points")
            exercise = ex.args[0] if ex and ex.args else None
            self.write(
                event="collected",
                nodeid=item.nodeid,
                exercise=exercise,
                points=pts.args[0] if pts and pts.args else 0,
            )
            (dropped if exercise in self.exclude else keep).append(item)
        if dropped:
            items[:] = keep
            config.hook.pytest_deselected(items=dropped)

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.reports[nodeid] = []
        self.write(event="start", nodeid=nodeid, time=time.time())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.reports.setdefault(report.nodeid, []).append(report)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        reports = self.reports.pop(nodeid, [])
        failed = [r for r in reports if r.failed or r.skipped]
        message, details = "", ""
        if failed:
            first = failed[0]
            crash = getattr(first.longrepr, "reprcrash", None)
            if first.skipped:
                message = f"skipped: {first.longrepr[2] if isinstance(first.longrepr, tuple) else first.longrepr}"
            elif crash is not None:
                message = crash.message
            else:
                message = str(first.longrepr).strip().splitlines()[-1] if first.longrepr else "failed"
            details = first.longreprtext[-MAX_DETAILS:]
            if first.when != "call":
                message = f"in test {first.when}: {message}"
        self.write(
            event="done",
            nodeid=nodeid,
            passed=bool(reports) and not failed,
            message=message.splitlines()[0][:300] if message else "",
            details=details,
            duration=sum(r.duration for r in reports),
        )


def pytest_configure(config: pytest.Config) -> None:
    path, fd = config.getoption("--grading-log"), config.getoption("--grading-fd")
    if path or fd is not None:
        if fd is not None:
            stream = os.fdopen(fd, "w", encoding="utf-8")  # noqa: SIM115 - closed in pytest_unconfigure
        else:
            stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in pytest_unconfigure
        config._grading_log_stream = stream  # type: ignore[attr-defined]
        select_path = config.getoption("--grading-select")
        select: dict = {}
        if select_path:
            with open(select_path, encoding="utf-8") as f:
                select = json.load(f)
        nodeids = select.get("nodeids")
        plugin = GradingLog(stream, None if nodeids is None else set(nodeids), set(select.get("exclude_exercises", [])))
        config.pluginmanager.register(plugin, "grading-log")


def pytest_unconfigure(config: pytest.Config) -> None:
    stream = getattr(config, "_grading_log_stream", None)
    if stream is not None:
        try:
            stream.close()
        except OSError:
            pass
