"""The Chapter 15 measurement command, shrunk (`python -m reference.inference.measure --quick`), end to end.

Machinery: the command runs, writes every section the notebook reads, and its numbers hang together
(the cache formula equals the buffers, the offloaded model kept its budget, greedy speculative
decoding gave greedy's tokens).
"""

from __future__ import annotations

import json

from reference.inference import measure


def test_quick_run_writes_every_section(tmp_path):
    out = measure.main(["--quick", "--out", str(tmp_path / "15.json")])
    data = json.loads(out.read_text())
    assert {"seed", "config", "machine", "command"} <= data.keys()
    assert all(r["cached"] > 0 and r["uncached"] > 0 for r in data["cache_timing"])
    assert all(r["formula_bytes_per_token"] == r["measured_bytes_per_token"] for r in data["kv_memory"])
    assert [r["seq"] for r in data["flash_memory"]] == data["config"]["flash_lengths"]
    assert all(r["resident"] or r["peak_resident_bytes"] <= r["budget_bytes"] for r in data["offload"])
    assert all(r["same_as_greedy"] for r in data["speculative"])
