"""The distributed machinery of Chapter 7 that is not an exercise: the launcher, the counted
point-to-point layer, the cost model, the measurement workers and the torchrun entry point.

Like the grader's tests, these check the course's harness and run the same under both
implementations. Worker functions live at module level so that spawned processes can import them.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from reference.distributed import cost, measure, p2p
from reference.distributed.launch import ERROR_GRACE_SECONDS, Cluster, RankError, launch


def _rank_and_world(offset: int) -> tuple[int, int, int]:
    return dist.get_rank(), dist.get_world_size(), offset + torch.get_num_threads()


def _raise_on_rank_one() -> None:
    if dist.get_rank() == 1:
        raise KeyError("the bad key")
    t = torch.zeros(1)
    dist.recv(t, src=1)  # blocks: rank 1 never sends


def _hang_on_rank_zero() -> int:
    if dist.get_rank() == 0:
        time.sleep(600)
    return 1


def _exit_on_rank_two() -> None:
    if dist.get_rank() == 2:
        os._exit(7)
    time.sleep(600)


def _send_then_raise() -> None:
    if dist.get_rank() == 0:
        dist.isend(torch.tensor([99.0]), dst=1)  # in flight, never received
    raise RuntimeError("after a send nobody received")


def _receive_one() -> float:
    if dist.get_rank() == 0:
        dist.send(torch.tensor([1.0]), dst=1)
        return 1.0
    if dist.get_rank() == 1:
        t = torch.zeros(1)
        dist.recv(t, src=0)
        return t.item()
    return 0.0


def _p2p_checks() -> list[str]:
    errors = []
    for bad in (lambda: p2p.send(torch.zeros(2), dist.get_rank()), lambda: p2p.send(torch.zeros(3, 2).T, 1 - dist.get_rank())):
        try:
            bad()
        except ValueError as error:
            errors.append(str(error))
    with p2p.count_traffic() as outer, p2p.count_traffic(keep_messages=True) as inner:
        p2p.exchange(torch.arange(5.0), 1 - dist.get_rank(), torch.empty(5), 1 - dist.get_rank())
    errors.append(f"{outer.bytes_sent} {outer.messages_sent} {inner.log[0][0]} {inner.log[0][1].tolist()}")
    return errors


def _bytes_of_every_algorithm(numel: int) -> dict[str, tuple[int, int]]:
    return {name: measure.traffic(name, numel) for name in ("naive", "ring", "recursive doubling")}


def _no_children_left() -> None:
    assert multiprocessing.active_children() == []


# ----------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster3():
    with Cluster(3, backend="gloo", timeout=20) as cluster:
        yield cluster
    _no_children_left()


def test_launch_returns_results_by_rank_with_one_thread_each():
    assert launch(_rank_and_world, 2, 10, backend="gloo") == [(0, 2, 11), (1, 2, 11)]
    assert launch(_rank_and_world, 1, 0, backend="gloo") == [(0, 1, 1)]
    _no_children_left()


def test_a_raising_rank_stops_all_and_reraises_with_rank_and_traceback(cluster3):
    start = time.monotonic()
    with pytest.raises(KeyError, match="the bad key") as info:
        cluster3.run(_raise_on_rank_one)
    assert time.monotonic() - start < ERROR_GRACE_SECONDS + 10
    assert info.value.rank == 1
    assert any("rank 1 of 3" in note for note in info.value.__notes__)
    assert "_raise_on_rank_one" in str(info.value.__cause__)  # the remote traceback
    assert cluster3.run(_rank_and_world, 0)[2][:2] == (2, 3), "the cluster starts afresh"


def test_a_hanging_rank_is_killed_at_the_timeout(cluster3):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"rank\(s\) \[0\]"):
        cluster3.run(_hang_on_rank_zero, timeout=3)
    assert time.monotonic() - start < 3 + 10
    assert [p for p in multiprocessing.active_children() if p.name.startswith("llm-course-rank")] == []


def test_a_dying_rank_is_reported(cluster3):
    with pytest.raises(RankError, match="rank 2: the process died \\(exit code 7\\)"):
        cluster3.run(_exit_on_rank_two)


def test_a_failed_call_leaves_no_message_behind(cluster3):
    with pytest.raises(RuntimeError, match="after a send"):
        cluster3.run(_send_then_raise)
    assert cluster3.run(_receive_one)[1] == 1.0, "the next call must not receive the stale 99"


class _NeedsTwoArguments(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickle rebuilds it with one: it cannot be rebuilt
        super().__init__(f"{a} and {b}")


def _raise_unrebuildable(label: str) -> str:
    if dist.get_rank() == 1:
        raise _NeedsTwoArguments(1, 2)
    return label


def _explode_in_the_parent() -> None:
    if multiprocessing.parent_process() is None:
        raise ValueError("this value cannot be rebuilt in the parent")


class _Bomb:
    def __reduce__(self):
        return (_explode_in_the_parent, ())


def _return_a_bomb_on_rank_two(label: str):
    return _Bomb() if dist.get_rank() == 2 else label


def test_an_exception_that_cannot_be_rebuilt_is_reported_and_leaves_nothing_behind(cluster3):
    with pytest.raises(RankError, match="rank 1: failed") as info:
        cluster3.run(_raise_unrebuildable, "first")
    assert "_NeedsTwoArguments" in str(info.value) and "_raise_unrebuildable" in str(info.value)  # its traceback
    assert cluster3.run(_rank_and_world, 5) == [(r, 3, 6) for r in range(3)], "never the previous call's result"


def test_a_result_that_does_not_unpickle_is_reported_and_leaves_nothing_behind(cluster3):
    with pytest.raises(RankError, match="(?s)rank 2: .*could not be unpickled") as info:
        cluster3.run(_return_a_bomb_on_rank_two, "first")
    assert "cannot be rebuilt in the parent" in str(info.value)
    assert cluster3.run(_rank_and_world, 7) == [(r, 3, 8) for r in range(3)], "never the previous call's result"


def _alive(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


def _start_processes(marker: str, hang: bool) -> int:
    code = "import time; time.sleep(600)"
    subprocess.Popen([sys.executable, "-c", code, marker])
    subprocess.Popen([sys.executable, "-c", code, marker], start_new_session=True)
    if os.fork() == 0:  # a daemon: double fork, new session
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", code, marker])
        os._exit(0)
    time.sleep(1)
    while hang:
        pass
    return dist.get_rank()


def _gone(marker: str, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _alive(marker)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process trees are read from /proc")
def test_processes_started_by_ranks_end_with_the_call_and_with_the_kill():
    marker = f"llm-course-rank-child-{os.getpid()}"
    with Cluster(2, backend="gloo", timeout=60) as cluster:
        assert cluster.run(_start_processes, marker + "-a", False) == [0, 1]
        assert _gone(marker + "-a"), "after a normal return"
        with pytest.raises(TimeoutError):
            cluster.run(_start_processes, marker + "-b", True, timeout=8)
        assert _gone(marker + "-b"), "after the time-out kill"


PARENT = """
import sys, time
from reference.distributed.launch import Cluster
from tests.test_distributed_infra import _busy
cluster = Cluster(2, backend="gloo", timeout=600)
cluster.start()
print(cluster._folder, *[p.pid for p in cluster._processes], flush=True)
cluster.run(_busy)
"""


def _busy() -> None:
    while True:
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process trees are read from /proc")
def test_a_busy_rank_dies_with_a_sigkilled_parent_and_its_folder_goes(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=root, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": root})  # fmt: skip
    folder, *pids = parent.stdout.readline().split()
    time.sleep(2)  # the ranks are busy
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (os.path.exists(folder) or any(os.path.exists(f"/proc/{p}") for p in pids)):
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{p}") for p in pids), "a rank outlived its parent"
    assert not os.path.exists(folder), "the rendezvous folder leaked"


def test_a_process_that_fails_to_start_leaks_no_folder(monkeypatch):
    import multiprocessing.context as context
    import tempfile

    made = []
    real_mkdtemp, real_start = tempfile.mkdtemp, context.SpawnProcess.start
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(real_mkdtemp(*a, **k)) or made[-1])
    calls = []

    def start(self):
        calls.append(self)
        if len(calls) == 2:
            raise OSError("cannot start a process")
        real_start(self)

    monkeypatch.setattr(context.SpawnProcess, "start", start)
    with pytest.raises(OSError, match="cannot start"):
        Cluster(3, backend="gloo").start()
    assert made and not any(os.path.exists(folder) for folder in made)
    assert not calls[0].is_alive()


def test_bad_cluster_arguments():
    with pytest.raises(ValueError, match="world_size"):
        Cluster(0)
    with pytest.raises(ValueError, match="timeout"):
        Cluster(2, timeout=0)


# ----------------------------------------------------------------------------------------------
# p2p, cost model, measurements
# ----------------------------------------------------------------------------------------------


def test_p2p_checks_and_counts():
    results = launch(_p2p_checks, 2, backend="gloo", timeout=30)
    for rank, (to_self, non_contiguous, counted) in enumerate(results):
        assert "another rank" in to_self and "contiguous" in non_contiguous
        assert counted == f"20 1 {1 - rank} [0.0, 1.0, 2.0, 3.0, 4.0]"


@pytest.mark.parametrize("world", [2, 3, 4, 5, 8])
def test_cost_bytes_formulas_are_exact(world):
    """The byte formulas, derived independently here for the ring: 2 (n - 1) / n * S when n divides S."""
    numel = 12 * world
    total = sum(cost.bytes_sent("all_reduce_ring", numel, world, r) for r in range(world))
    assert total == world * 2 * (world - 1) * numel * 4 // world
    assert sum(cost.bytes_sent("broadcast", 10, world, r, root=1) for r in range(world)) == (world - 1) * 40
    assert sum(cost.bytes_sent("reduce", 10, world, r, root=world - 1) for r in range(world)) == (world - 1) * 40
    assert cost.chunk_sizes(7, 3) == [3, 2, 2]


def test_cost_bytes_match_the_measured_traffic(cluster3):
    for numel in (0, 7, 12):
        measured = cluster3.run(_bytes_of_every_algorithm, numel)
        for name, algorithm in (("naive", "all_reduce_naive"), ("ring", "all_reduce_ring"), ("recursive doubling", "all_reduce_recursive_doubling")):
            for rank in range(3):
                assert measured[rank][name][0] == cost.bytes_sent(algorithm, numel, 3, rank), (name, numel, rank)


# (L, W) for a 1200-byte tensor, tabulated by hand from the algorithms' definitions (not from `cost`):
# trees ceil(log2 n) rounds of the whole tensor; naive 2 (n - 1) messages of it through rank 0; ring
# 2 (n - 1) steps of S / n; recursive doubling log2(p) exchanges, plus fold and unfold when n is not a
# power of two (p = largest power of two <= n); reduce-scatter, all-gather, all-to-all n - 1 steps of S / n.
LATENCY_VOLUME_1200 = {
    2: {"broadcast": (1, 1200), "reduce": (1, 1200), "all_reduce_naive": (2, 2400), "all_reduce_ring": (2, 1200),
        "all_reduce_recursive_doubling": (1, 1200), "reduce_scatter": (1, 600), "all_gather": (1, 600), "all_to_all": (1, 600)},
    3: {"broadcast": (2, 2400), "reduce": (2, 2400), "all_reduce_naive": (4, 4800), "all_reduce_ring": (4, 1600),
        "all_reduce_recursive_doubling": (3, 3600), "reduce_scatter": (2, 800), "all_gather": (2, 800), "all_to_all": (2, 800)},
    4: {"broadcast": (2, 2400), "reduce": (2, 2400), "all_reduce_naive": (6, 7200), "all_reduce_ring": (6, 1800),
        "all_reduce_recursive_doubling": (2, 2400), "reduce_scatter": (3, 900), "all_gather": (3, 900), "all_to_all": (3, 900)},
    5: {"broadcast": (3, 3600), "reduce": (3, 3600), "all_reduce_naive": (8, 9600), "all_reduce_ring": (8, 1920),
        "all_reduce_recursive_doubling": (4, 4800), "reduce_scatter": (4, 960), "all_gather": (4, 960), "all_to_all": (4, 960)},
    8: {"broadcast": (3, 3600), "reduce": (3, 3600), "all_reduce_naive": (14, 16800), "all_reduce_ring": (14, 2100),
        "all_reduce_recursive_doubling": (3, 3600), "reduce_scatter": (7, 1050), "all_gather": (7, 1050), "all_to_all": (7, 1050)},
}


@pytest.mark.parametrize("world", sorted(LATENCY_VOLUME_1200))
def test_latency_and_volume_of_every_algorithm(world):
    assert set(LATENCY_VOLUME_1200[world]) == set(cost.ALGORITHMS)
    for algorithm, (latency, volume) in LATENCY_VOLUME_1200[world].items():
        got = cost.latency_and_volume(algorithm, 1200, world)
        assert got[0] == latency and got[1] == pytest.approx(volume), (algorithm, world, got)
        assert cost.latency_and_volume(algorithm, 1200, 1) == (0.0, 0.0), "one rank sends nothing"


def test_alpha_beta_fit_recovers_the_model():
    """Times written here from the model t = alpha L + beta W with the tabulated (L, W), plus a known
    +-0.1% wobble: the fit must find alpha and beta to within a few per cent."""
    alpha, beta = 5e-5, 2e-9
    sizes = [2**k for k in range(10, 24, 2)]
    wobble = [1.001, 0.999, 1.0, 1.001, 0.999, 1.0, 1.0005]
    for algorithm in ("all_reduce_ring", "all_reduce_naive", "all_reduce_recursive_doubling", "all_gather"):
        latency, volume = LATENCY_VOLUME_1200[4][algorithm]
        times = [(alpha * latency + beta * volume * b / 1200) * w for b, w in zip(sizes, wobble)]
        fit_alpha, fit_beta = cost.fit_alpha_beta(algorithm, sizes, times, 4)
        assert fit_alpha == pytest.approx(alpha, rel=0.05) and fit_beta == pytest.approx(beta, rel=0.02), algorithm
        assert cost.predicted_seconds(algorithm, sizes[-1], 4, alpha, beta) == pytest.approx(times[-1] / wobble[-1])
    # no latency at all (and noise that would make it negative): the fit clamps alpha to 0, never below
    times = [beta * 1800 * b / 1200 * w for b, w in zip(sizes, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.01])]
    fit_alpha, fit_beta = cost.fit_alpha_beta("all_reduce_ring", sizes, times, 4)
    assert fit_alpha >= 0 and fit_beta == pytest.approx(beta, rel=0.02)
    with pytest.raises(ValueError, match="algorithm"):
        cost.bytes_sent("all_reduce_magic", 1, 2, 0)


def test_measurements_check_every_collective(cluster3):
    rows = cluster3.run(measure.check_against_torch, (0, 5))[0]
    assert {name for name, _, _ in rows} >= {"broadcast", "reduce", "all_reduce (ring)", "all_to_all"}
    assert all(diff < 1e-12 for _, _, diff in rows)
    trace = cluster3.run(measure.trace_ring_all_reduce)
    assert [dst for dst, _ in trace[0]] == [1] * 4, "rank 0 always sends to its right neighbour"
    assert trace[0][1][1] == [2**0 + 2**2], "second step: rank 0 forwards the chunk holding ranks 2 and 0"
    log = cluster3.run(measure.message_log, "broadcast", 10)
    assert log == [[(1, 40), (2, 40)], [], []], "a binomial tree from rank 0: it sends to 1, then to 2"
    log = cluster3.run(measure.message_log, "recursive doubling", 1)
    assert log == [[(1, 4)], [(2, 4), (0, 4)], [(1, 4)]], "3 ranks: 0 folds into 1, 1 and 2 swap, 1 unfolds to 0"
    timings = cluster3.run(measure.time_all_reduce, [16, 256], ("ring", "torch (gloo)"), 1)[0]
    assert set(timings) == {"ring", "torch (gloo)"} and all(t > 0 for ts in timings.values() for t in ts)


def test_the_same_code_runs_under_torchrun():
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "reference.distributed.demo"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 ranks, backend gloo" in proc.stdout and "all collectives agree" in proc.stdout
