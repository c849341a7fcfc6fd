"""Chapter 10's result-writing commands, shrunk and run end to end (they grade no exercise).

`python -m reference.precision` writes chapters/results/10_mixed_precision.json and
`python -m reference.overlap` writes chapters/results/10_overlap.json; the notebook reads both.
"""

from __future__ import annotations

import json

import pytest

from reference import overlap, precision


def test_precision_command_writes_its_json(tmp_path):
    out = tmp_path / "mp.json"
    assert precision.main(["--steps", "2", "--batch-size", "1", "--seq-len", "16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"fp32", "fp16_master", "bf16_autocast", "fp16_pure"}
    assert len(result["runs"]["fp16_master"]["scales"]) == 2 and result["config"]["steps"] == 2
    assert result["command"].startswith("python -m reference.precision") and "torch" in result["machine"]
    with pytest.raises(ValueError, match="unknown runs"):
        precision.compare_training(steps=1, runs=("fp64",))


def test_overlap_command_writes_its_json(tmp_path):
    out = tmp_path / "overlap.json"
    assert overlap.main(["--world-size", "2", "--bucket-mb", "1", "None", "--rounds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["summary"]["by_bucket"]) == {"1.0", "None"}
    assert result["summary"]["by_bucket"]["None"]["buckets"] == 1 and len(result["ranks"]) == 2
    assert result["summary"]["compute_s"] > 0
