"""`python -m reference.extrapolation`, the command behind Chapter 2's stored extrapolation results,
run end to end at a tiny size: it writes the JSON the notebook reads, with seeds, configuration and
machine, and every scheme is scored on the same windows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reference.extrapolation import SCHEMES, main

ROOT = Path(__file__).resolve().parents[1]


def test_the_command_writes_json_with_seeds_configuration_and_machine(tmp_path):
    out = tmp_path / "results" / "extrapolation.json"
    argv = ["--seeds", "2", "--steps", "2", "--context-length", "8", "--factors", "1", "2", "--d-model", "16",
            "--num-heads", "2", "--num-layers", "1", "--batch-size", "2", "--num-windows", "3",
            "--train-bytes", "2000", "--val-bytes", "500", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["seeds"] == [0, 1]
    assert result["config"]["steps"] == 2 and result["config"]["factors"] == [1, 2]
    assert result["data"]["train_bytes"] == [0, 2000] and result["data"]["val_bytes"] == [2000, 2500]
    machine = result["machine"]
    assert {"platform", "python", "torch", "threads", "device", "wall_seconds"} <= set(machine)
    assert machine["device"] == "cpu" and machine["wall_seconds"] >= 0
    assert result["command"].startswith("python -m reference.extrapolation --seeds 2")
    for seed in ("0", "1"):
        for scheme in SCHEMES:
            run = result["runs"][seed][scheme]
            assert set(run["loss"]) == {"8", "16"}
            assert math.isfinite(run["loss"]["8"])
            assert math.isnan(run["loss"]["16"]) == (scheme == "learned")
            assert len(run["block_loss"]) == (1 if scheme == "learned" else 2)
            # the loss over a window of 2L is the mean of its two blocks: one set of windows for every length
            if scheme != "learned":
                assert run["loss"]["16"] == pytest.approx(sum(run["block_loss"]) / 2, rel=1e-5)
            assert run["loss"]["8"] == pytest.approx(run["block_loss"][0], rel=1e-5)
    summary = result["summary"]
    assert set(summary) == set(SCHEMES)
    assert summary["none"]["block_gap_vs_none"][0] == {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    losses = [result["runs"][s]["alibi"]["loss"]["8"] for s in ("0", "1")]
    assert summary["alibi"]["loss"]["8"]["mean"] == pytest.approx(sum(losses) / 2)
    assert losses[0] != losses[1], "two seeds must give two different runs"


def test_the_command_refuses_zero_seeds(tmp_path):
    with pytest.raises(SystemExit):
        main(["--seeds", "0", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_the_stored_results_are_the_full_experiment():
    """The JSON that Chapter 2 plots: three seeds at least, every scheme, the machine that ran it."""
    result = json.loads((ROOT / "chapters" / "results" / "extrapolation.json").read_text())
    assert len(result["seeds"]) >= 3
    assert set(result["summary"]) == set(SCHEMES)
    assert result["config"]["context_length"] * max(result["config"]["factors"]) == 256
    assert result["machine"]["wall_seconds"] > 0


def test_the_sinusoidal_table_starts_at_the_scale_of_the_token_embeddings():
    """The fairness fix: neither the table nor the tokens swamp the other at initialisation."""
    import torch

    from reference.extrapolation import PositionalDecoder
    from reference.positional import sinusoidal_encoding

    torch.manual_seed(0)
    model = PositionalDecoder(256, 64, 1, 4, 128, "sinusoidal", 64)
    tokens = model.token_embeddings.weight.pow(2).mean().sqrt().item()
    table = (model.sinusoidal_scale * sinusoidal_encoding(64, 64)).pow(2).mean().sqrt().item()
    assert table == pytest.approx(tokens, rel=0.1)
    learned = PositionalDecoder(256, 64, 1, 4, 128, "learned", 64)
    positions = learned.position_embeddings(torch.arange(64)).pow(2).mean().sqrt().item()
    assert positions == pytest.approx(table, rel=0.1), "sinusoidal and learned start at the same scale"


@pytest.mark.parametrize("scheme", ["rope", "learned"])
def test_prefixes_of_the_long_windows_score_like_short_windows_at_the_same_starts(scheme):
    """Why every length can be scored on one set of windows: a causal model's loss at position i ignores what follows."""
    import torch

    from reference.extrapolation import PositionalDecoder, byte_tokens, loss_by_position

    torch.manual_seed(0)
    model = PositionalDecoder(256, 16, 1, 2, 32, scheme, 8)
    data = byte_tokens("the quick brown fox jumps over the lazy dog. " * 10)
    prefix = loss_by_position(model, data, 8, num_windows=4, window_length=16)
    assert prefix.shape == (8,)
    if scheme != "learned":
        torch.testing.assert_close(prefix, loss_by_position(model, data, 16, num_windows=4)[:8])
    with pytest.raises(ValueError, match="window_length"):
        loss_by_position(model, data, 8, window_length=4)
