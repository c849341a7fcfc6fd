"""Chapter 9's process groups, started once per pytest session and shared by its two test files.

Starting ranks (spawn, import torch, join the group) is the slow part of tests/test_tensor_parallel.py
and tests/test_pipeline.py: both need 2 and 4 ranks, so they share one cluster of each size, kept in
the session's stash and killed when the session ends (a polite close waits for every rank's
interpreter to shut down, seconds per rank on a loaded machine, and is not what these tests check).
Not a test file (pytest collects only test_*.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reference.distributed.launch import Cluster

RUN_TIMEOUT = 90.0  # seconds one call may take on a loaded 2-core machine
_KEY = pytest.StashKey[dict]()


def shared_clusters(request: pytest.FixtureRequest) -> Callable[[int], Cluster]:
    """get(world) -> the session's gloo `Cluster` of `world` ranks, started on first use."""
    session = request.session
    if _KEY not in session.stash:
        started: dict[int, Cluster] = {}
        session.stash[_KEY] = started

        def close_all() -> None:
            for cluster in started.values():
                cluster.close(kill=True)

        session.addfinalizer(close_all)
    started = session.stash[_KEY]

    def get(world: int) -> Cluster:
        if world not in started:
            started[world] = Cluster(world, backend="gloo", timeout=RUN_TIMEOUT)
        return started[world]

    return get
