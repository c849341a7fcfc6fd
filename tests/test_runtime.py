"""`reference.runtime`: device choice and seeding (course machinery, tested directly)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from reference.runtime import pick_device, seed_everything


def test_pick_device_defaults_to_cuda_when_present(monkeypatch):
    monkeypatch.delenv("LLM_COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LLM_COURSE_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")


def test_pick_device_rejects_bad_requests():
    with pytest.raises(ValueError, match="not a device"):
        pick_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            pick_device("cuda")


def test_seed_everything_repeats_every_generator():
    def draw():
        g = seed_everything(123)
        return random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item()

    assert draw() == draw()
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    from reference.runtime import atomic_write

    target = tmp_path / "sub" / "out.txt"
    with atomic_write(target, "w", encoding="utf-8") as file:
        file.write("first")
    assert target.read_text() == "first" and (target.stat().st_mode & 0o777) == 0o644
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_write(target, "wb") as file:
            file.write(b"half")
            raise RuntimeError("midway")
    assert target.read_text() == "first", "a failed write leaves the old file"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"], "no temporary file left behind"
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(target, "r"):
            pass


def test_machine_info_and_write_json(tmp_path):
    import json

    import pytest

    from reference.runtime import machine_info, write_json

    info = machine_info("cpu")
    assert info["device"] == "cpu" and info["torch"] == torch.__version__ and info["cpus"] >= 1
    path = write_json(tmp_path / "sub" / "r.json", {"b": 1, "a": [1.5]})
    assert path.read_text(encoding="utf-8") == '{\n  "b": 1,\n  "a": [\n    1.5\n  ]\n}\n'
    assert json.loads(path.read_text()) == {"b": 1, "a": [1.5]}
    with pytest.raises(ValueError):  # NaN is not JSON; the file is left untouched
        write_json(path, {"x": float("nan")})
    assert json.loads(path.read_text()) == {"b": 1, "a": [1.5]}
