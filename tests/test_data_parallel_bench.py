"""The step-time benchmark of Chapter 8 (`benchmarks/bench_data_parallel.py`), shrunk.

The notebook reads chapters/results/08_step_time.json, written by the full command; this runs the
same command end to end on two ranks, the tiny configuration and one timed round, and checks what
it writes (every strategy timed, ratios to torch's DDP, the machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from reference.distributed import dp_training

REPO = Path(__file__).resolve().parents[1]


def test_the_benchmark_writes_a_ratio_for_every_strategy(tmp_path):
    out = tmp_path / "step_time.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_data_parallel.py", "--world-size", "2", "--rounds", "1", "--config", "tiny",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["summary"]) == set(dp_training.BENCH_STRATEGIES)
    assert report["summary"]["torch_ddp"]["ratio"] == 1.0
    assert all(len(v) == 1 and v[0] > 0 for v in report["times_s"].values())
    assert report["world_size"] == 2 and report["machine"] and report["config"]["d_model"] == 16
    assert "torch_ddp" in proc.stdout and "ratio to torch DDP" in proc.stdout
