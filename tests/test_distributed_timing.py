"""The all-reduce timing sweep of Chapter 7 (`python -m reference.distributed.measure`), shrunk.

The notebook reads chapters/results/07_all_reduce_timing.json, written by the full command; this
runs the same command end to end on two ranks and tiny tensors, and checks what it writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reference.distributed import measure

REPO = Path(__file__).resolve().parents[1]


def test_the_timing_command_writes_every_round_of_every_algorithm(tmp_path):
    out = tmp_path / "timing.json"
    proc = subprocess.run(
        [sys.executable, "-m", "reference.distributed.measure", "--world-sizes", "2", "--min-bytes", "64",
         "--max-bytes", "1024", "--rounds", "3", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["config"]["world_sizes"] == [2] and report["config"]["rounds"] == 3
    assert report["command"].startswith("python -m reference.distributed.measure")
    assert {"platform", "cpu_count", "torch"} <= set(report["machine"])
    result = report["results"]["2"]
    assert result["bytes"] == [64, 256, 1024] and result["numels"] == [16, 64, 256]
    assert set(result["median_s"]) == set(measure.ALL_REDUCE)
    for name, per_size in result["samples_s"].items():
        assert len(per_size) == 3 and all(len(rounds) == 3 and min(rounds) > 0 for rounds in per_size), name
        assert result["median_s"][name] == [sorted(rounds)[1] for rounds in per_size], name
    assert not list(tmp_path.glob(".*.tmp")), "the JSON is written atomically"


def test_the_timing_command_refuses_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "reference.distributed.measure", "--world-sizes", "1", "--out", str(tmp_path / "t.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--world-sizes" in proc.stderr
    with pytest.raises(ValueError, match="min_bytes"):
        measure.sweep((2,), max_bytes=8, min_bytes=64)


def test_the_stored_results_cover_the_bandwidth_bound_regime():
    path = REPO / "chapters" / "results" / "07_all_reduce_timing.json"
    report = json.loads(path.read_text())
    two = report["results"]["2"]
    assert two["bytes"][-1] >= 64 * 2**20, "the sweep reaches 64 MiB"
    assert report["config"]["rounds"] >= 5
    assert all(len(rounds) == report["config"]["rounds"] for per_size in two["samples_s"].values() for rounds in per_size)
