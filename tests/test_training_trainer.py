"""The training machinery of Chapter 6 that is not an exercise: the trainer (`train`, `TrainConfig`,
`build_model`, logs and plots, `llm-course pretrain`'s `main`) and the corpus helpers
(`tokenize_to_memmap`, `open_tokens`).

Like the tests of Chapter 7's launcher, these check the course's harness and run the same under
both implementations (they import `reference` directly). The models are defined here or are the
trainer's own bigram baseline, so nothing waits for Chapter 5's transformer.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from reference.training import data, trainer
from reference.training.trainer import TrainConfig

VOCAB = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is several times faster than two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _corpus(n: int = 4000, seed: int = 0) -> np.ndarray:
    """A learnable stream: mostly token t is followed by t + 1 (mod VOCAB), sometimes by a random token."""
    rng = np.random.default_rng(seed)
    ids = np.empty(n, dtype=np.uint16)
    ids[0] = 0
    for i in range(1, n):
        ids[i] = (ids[i - 1] + 1) % VOCAB if rng.random() < 0.9 else rng.integers(VOCAB)
    return ids


class _DropoutLM(nn.Module):
    """A tiny model with dropout, so that resuming must restore the global generator too."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 24)
        self.drop = nn.Dropout(0.1)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.drop(self.embed(ids))))


def _config(tmp_path, **changes) -> TrainConfig:
    values = {
        "batch_size": 8, "context_length": 16, "max_iters": 40, "max_learning_rate": 5e-2, "min_learning_rate": 5e-3,
        "warmup_iters": 5, "eval_interval": 10, "eval_batches": 2, "device": "cpu", "out_dir": str(tmp_path / "run"),
        "progress": False,
    }  # fmt: skip
    return TrainConfig(**(values | changes))


def test_train_learns_and_logs_every_iteration(tmp_path):
    torch.manual_seed(0)
    model = trainer.BigramLanguageModel(VOCAB)
    result = trainer.train(model, _config(tmp_path, max_learning_rate=0.3), _corpus(), _corpus(seed=1))
    assert result.iteration == 40 and len(result.train_losses) == 40 and result.stopped_by == "max_iters"
    assert result.train_losses[0] > math.log(VOCAB) - 0.5, "starts near a uniform guess"
    assert result.val_losses[-1][1] < 1.5, "learns that t + 1 follows t"
    assert [it for it, _ in result.val_losses] == [10, 20, 30, 40]
    assert result.tokens == 40 * 8 * 16
    records = trainer.read_log(result.log_path)
    train_rows = [r for r in records if r["split"] == "train"]
    assert [r["iter"] for r in train_rows] == list(range(1, 41))
    assert set(train_rows[0]) == set(trainer.LOG_FIELDS)
    assert [r["loss"] for r in train_rows] == pytest.approx(result.train_losses)
    assert train_rows[0]["lr"] == 0.0 and train_rows[5]["lr"] == pytest.approx(0.3), "the cosine schedule with warm-up"
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in train_rows)
    assert result.checkpoint_path.is_file()


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    runs = []
    for batch_size, steps in ((8, 1), (4, 2), (2, 4)):
        torch.manual_seed(0)
        model = _DropoutLM().eval()  # no dropout, so that both see the same network
        model.drop.p = 0.0
        config = _config(tmp_path / f"b{batch_size}", batch_size=batch_size, grad_accumulation_steps=steps, max_iters=15)
        runs.append(trainer.train(model, config, _corpus()).train_losses)
    for other in runs[1:]:
        assert other == pytest.approx(runs[0], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("log_format", ["jsonl", "csv"])
def test_resume_through_train_is_bit_exact(tmp_path, log_format):
    common = {"max_iters": 20, "cosine_cycle_iters": 20, "grad_clip": 0.5, "grad_accumulation_steps": 2, "log_format": log_format}
    torch.manual_seed(1)
    straight = trainer.train(_DropoutLM(), _config(tmp_path / "a", **common), _corpus(), _corpus(seed=1))

    torch.manual_seed(1)
    first = trainer.train(_DropoutLM(), _config(tmp_path / "b", **(common | {"max_iters": 8})), _corpus(), _corpus(seed=1))
    torch.manual_seed(2)  # a different initialisation: the checkpoint must replace it
    rest = trainer.train(
        _DropoutLM(), _config(tmp_path / "b", **common), _corpus(), _corpus(seed=1), resume_from=first.checkpoint_path
    )
    assert first.iteration == 8 and rest.iteration == 20
    assert first.train_losses + rest.train_losses == straight.train_losses, "losses equal bit for bit"
    assert rest.val_losses[-1] == straight.val_losses[-1]
    resumed_log = trainer.read_log(rest.log_path)
    assert [r["iter"] for r in resumed_log if r["split"] == "train"] == list(range(1, 21)), "the log is continued"
    assert isinstance(trainer.plot_losses(rest.log_path), Figure)


def test_max_minutes_stops_the_run_and_saves(tmp_path):
    slow = _DropoutLM()
    original = slow.forward

    def forward(ids):
        time.sleep(0.02)
        return original(ids)

    slow.forward = forward
    result = trainer.train(slow, _config(tmp_path, max_iters=10_000, max_minutes=0.005), _corpus(), _corpus(seed=1))
    assert result.stopped_by == "max_minutes" and 0 < result.iteration < 100
    assert result.val_losses[-1][0] == result.iteration, "a final evaluation at the stop"
    assert torch.load(result.checkpoint_path, weights_only=True)["iteration"] == result.iteration


def test_plot_losses_draws_train_and_val(tmp_path):
    result = trainer.train(trainer.BigramLanguageModel(VOCAB), _config(tmp_path, max_iters=20), _corpus(), _corpus(seed=1))
    figure = trainer.plot_losses(result.log_path)
    axes = figure.axes[0]
    assert [line.get_label() for line in axes.lines] == ["train", "val"]
    assert len(axes.lines[0].get_xdata()) == 20 and list(axes.lines[1].get_xdata()) == [10, 20]
    assert "iteration" in axes.get_xlabel() and "nats" in axes.get_ylabel()


def test_config_from_json_and_its_checks(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {"family": "bigram", "vocab_size": 8}, "batch_size": 4, "betas": [0.9, 0.99]}))
    config = TrainConfig.from_json(path)
    assert config.batch_size == 4 and config.betas == (0.9, 0.99) and config.model == {"family": "bigram", "vocab_size": 8}
    path.write_text(json.dumps({"batch_sise": 4}))
    with pytest.raises(ValueError, match="batch_sise"):
        TrainConfig.from_json(path)
    bad_values = [
        ({"batch_size": 0}, "batch_size"),
        ({"log_format": "xml"}, "log_format"),
        ({"max_minutes": 0}, "max_minutes"),
        ({"warmup_iters": 10, "cosine_cycle_iters": 10}, "cosine_cycle_iters"),
        ({"grad_clip": -1.0}, "grad_clip"),
    ]
    for bad, named in bad_values:
        with pytest.raises(ValueError, match=named):
            TrainConfig(**bad)


def test_build_model_by_family_or_class():
    model = trainer.build_model({"family": "bigram", "vocab_size": 10})
    assert isinstance(model, trainer.BigramLanguageModel) and model(torch.zeros(2, 3, dtype=torch.long)).shape == (2, 3, 10)
    linear = trainer.build_model({"class": "torch.nn:Linear", "in_features": 3, "out_features": 2})
    assert isinstance(linear, nn.Linear) and linear.out_features == 2
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        trainer.build_model({"family": "nope"})
    with pytest.raises(ValueError, match="exactly one"):
        trainer.build_model({"vocab_size": 3})
    assert trainer.MODEL_FAMILIES["llama"] == "reference.models.llama:TransformerLM"


class _ByteTokenizer:
    """Any object with `encode_iterable` will do: here, the UTF-8 bytes of each line."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def encode_iterable(self, lines):
        for line in lines:
            yield from (b + self.offset for b in line.encode("utf-8"))


def test_tokenize_to_memmap_streams_atomically(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("hello world\nsecond line é\n" * 50, encoding="utf-8")
    expected = list(text.read_bytes())
    small = data.tokenize_to_memmap(_ByteTokenizer(), text, tmp_path / "small.bin", vocab_size=256, chunk_tokens=7)
    assert isinstance(small, np.memmap) and small.dtype == np.uint16 and small.tolist() == expected
    big = data.tokenize_to_memmap(_ByteTokenizer(70_000), text, tmp_path / "big.bin", vocab_size=70_256)
    assert big.dtype == np.int32 and big.tolist() == [b + 70_000 for b in expected], "ids past 65,535 need int32"
    assert data.open_tokens(tmp_path / "small.bin").tolist() == expected
    with pytest.raises(ValueError, match="vocab_size=100"):
        data.tokenize_to_memmap(_ByteTokenizer(), text, tmp_path / "bad.bin", vocab_size=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin", "big.bin.json", "corpus.txt", "small.bin", "small.bin.json"], "no partial files"
    assert data.token_dtype(65_536) == np.uint16 and data.token_dtype(65_537) == np.int32
    (tmp_path / "odd.bin").write_bytes(b"abc")
    with pytest.raises(ValueError, match="odd.bin"):
        data.open_tokens(tmp_path / "odd.bin", "uint16")


def test_main_pretrains_from_a_config(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("abcdefghijklmnopqrstuvwxyz " * 400, encoding="utf-8")
    data.tokenize_to_memmap(_ByteTokenizer(), text, tmp_path / "train.bin", vocab_size=256)
    data.tokenize_to_memmap(_ByteTokenizer(), text, tmp_path / "val.bin", vocab_size=256)
    config = {
        "model": {"family": "bigram", "vocab_size": 256},
        "train_data": str(tmp_path / "train.bin"), "val_data": str(tmp_path / "val.bin"),
        "batch_size": 8, "context_length": 32, "max_iters": 1000, "max_learning_rate": 0.5, "warmup_iters": 2,
        "eval_interval": 10, "eval_batches": 1, "out_dir": str(tmp_path / "out"), "device": "cpu",
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert trainer.main(["--config", str(tmp_path / "config.json"), "--max-iters", "30", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "30 iterations (stopped by max_iters)" in printed
    out = tmp_path / "out"
    assert {"log.jsonl", "checkpoint.pt", "losses.png"} <= {p.name for p in out.iterdir()}
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 30 and saved["config"]["model"] == config["model"]
    last_val = [r for r in trainer.read_log(out / "log.jsonl") if r["split"] == "val"][-1]
    assert last_val["loss"] < 2.0, "a bigram model learns the alphabet"
    assert (
        trainer.main(
            [
                "--config",
                str(tmp_path / "config.json"),
                "--max-iters",
                "35",
                "--resume",
                str(out / "checkpoint.pt"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "35 iterations" in capsys.readouterr().out


def test_llm_course_pretrain_trains_the_llama_family(tmp_path, capsys):
    """`llm-course pretrain` reaches the trainer, and a config naming the "llama" family builds Chapter 5's TransformerLM."""
    from reference.course import cli

    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question. " * 100, encoding="utf-8")
    data.tokenize_to_memmap(_ByteTokenizer(), text, tmp_path / "train.bin", vocab_size=256)
    model = {"family": "llama", "vocab_size": 256, "context_length": 16, "d_model": 16, "num_layers": 1,
             "num_heads": 2, "d_ff": 32}  # fmt: skip
    config = {"model": model, "train_data": str(tmp_path / "train.bin"), "batch_size": 4, "context_length": 16,
              "max_iters": 5, "warmup_iters": 1, "out_dir": str(tmp_path / "out"), "device": "cpu"}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert cli.main(["pretrain", "--config", str(tmp_path / "config.json"), "--no-progress"]) == 0
    assert "5 iterations (stopped by max_iters)" in capsys.readouterr().out
    saved = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert "layers.0.ffn.w1.weight" in saved["model"]


def test_masked_language_modelling_objective_trains_an_encoder(tmp_path):
    """objective "mlm": windows corrupted by the 80/10/10 rule, loss only on the chosen positions."""
    from reference.models.encoder import BertForMaskedLM

    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat and the dog sat on the log. " * 60, encoding="utf-8")
    data.tokenize_to_memmap(_ByteTokenizer(), text, tmp_path / "train.bin", vocab_size=256)
    tokens = data.open_tokens(tmp_path / "train.bin")
    config = TrainConfig(batch_size=8, context_length=32, max_iters=60, max_learning_rate=3e-3, warmup_iters=5,
                         eval_interval=60, eval_batches=2, out_dir=str(tmp_path / "out"), device="cpu", progress=False,
                         objective="mlm", mask_token_id=255, special_ids=[255])  # fmt: skip
    torch.manual_seed(0)
    model = BertForMaskedLM(256, 32, 32, 1, 2)
    result = trainer.train(model, config, tokens, tokens)
    assert result.val_losses[-1][1] < 0.5 * math.log(256), result.val_losses  # far below guessing uniformly
    with pytest.raises(ValueError, match="mask_token_id"):
        TrainConfig(objective="mlm")
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="span")
    with pytest.raises(ValueError, match="vocab_size"):
        trainer.batch_loss(trainer.BigramLanguageModel(256), config, tokens, torch.device("cpu"), torch.Generator())
