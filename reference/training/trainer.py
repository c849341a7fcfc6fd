"""The pre-training loop: sample a batch, compute the loss, step the optimiser, log, evaluate, save.

Survey section 2.4, "Model Training". One readable loop built from this chapter's parts:
`get_batch` (random windows of a memmapped corpus), next-token `cross_entropy`, `AdamW` with a
`cosine_schedule` and `clip_grad_norm_`, gradient accumulation (several micro-batches per step,
their gradients summed, so a large batch fits a small memory), periodic evaluation on held-out
data, a progress bar with tokens/s and loss, a log written as the run goes (JSON lines or CSV),
checkpoints that resume bit for bit, and a wall-clock budget. It trains any `nn.Module` that maps
ids (batch, seq) to logits (batch, seq, vocab) on the CPU, or on a CUDA GPU when there is one.

From the command line (`llm-course pretrain --config CONFIG`, or
`python -m reference.training.trainer --config CONFIG`) a JSON file names the model and the data:

    {"model": {"family": "llama", "vocab_size": 10000, "context_length": 256, "d_model": 512, ...},
     "train_data": "data/train.bin", "val_data": "data/val.bin", "batch_size": 32, ...}
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from matplotlib.figure import Figure
from torch import nn

from reference.runtime import pick_device, seed_everything
from reference.runtime import progress as progress_bar
from reference.training.checkpoint import load_checkpoint, save_checkpoint
from reference.training.data import get_batch, open_tokens
from reference.training.numerics import (
    AdamW,
    clip_grad_norm_,
    cosine_schedule,
    cross_entropy,
)
from reference.training.objectives import masked_language_modeling
from reference.validation import check_int

LOG_FIELDS = ("iter", "split", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s")


@dataclass
class TrainConfig:
    """Everything a pre-training run needs, loadable from JSON (`TrainConfig.from_json`).

    Paths are relative to the current directory. `cosine_cycle_iters` None means `max_iters`;
    `checkpoint_interval` None saves only at the end; `max_minutes` None has no time limit;
    `device` "auto" takes CUDA when present (see `reference.runtime.pick_device`).
    """

    model: dict[str, Any] = field(default_factory=dict)  # for build_model: {"family": ..., **kwargs}
    train_data: str | None = None  # a token file written by tokenize_to_memmap
    val_data: str | None = None
    data_dtype: str = "uint16"
    batch_size: int = 16
    context_length: int = 128
    grad_accumulation_steps: int = 1
    max_iters: int = 1000
    max_learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_iters: int = 100
    cosine_cycle_iters: int | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    eval_interval: int = 100
    eval_batches: int = 10
    checkpoint_interval: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/pretrain"
    log_format: str = "jsonl"
    progress: bool = True
    objective: str = "next_token"  # or "mlm": BERT's masked language modelling on each window
    mask_token_id: int | None = None  # for "mlm": the id of [MASK]
    mask_probability: float = 0.15  # for "mlm"
    special_ids: list[int] = field(default_factory=list)  # for "mlm": ids never chosen for masking

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        for name in ("batch_size", "context_length", "grad_accumulation_steps", "max_iters", "eval_interval", "eval_batches"):
            check_int(name, getattr(self, name), 1)
        check_int("warmup_iters", self.warmup_iters)
        check_int("seed", self.seed)
        if self.cosine_cycle_iters is not None:
            check_int("cosine_cycle_iters", self.cosine_cycle_iters, self.warmup_iters + 1)
        elif self.max_iters <= self.warmup_iters:
            raise ValueError(f"max_iters must exceed warmup_iters={self.warmup_iters}, got {self.max_iters}")
        if self.checkpoint_interval is not None:
            check_int("checkpoint_interval", self.checkpoint_interval, 1)
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0 or None, got {self.max_minutes!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.objective not in ("next_token", "mlm"):
            raise ValueError(f"objective must be 'next_token' or 'mlm', got {self.objective!r}")
        if self.objective == "mlm" and self.mask_token_id is None:
            raise ValueError("objective 'mlm' needs mask_token_id")
        if self.log_format not in ("jsonl", "csv"):
            raise ValueError(f"log_format must be 'jsonl' or 'csv', got {self.log_format!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from a dict, refusing keys it does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TrainConfig:
        """A config from a JSON file holding one object."""
        with open(path, encoding="utf-8") as file:
            return cls.from_dict(json.load(file))


@dataclass
class TrainResult:
    """What a call of `train` did: its last iteration, its losses and where its files are."""

    iteration: int  # iterations done in all, counting those before a resume
    train_losses: list[float]  # one per iteration of this call
    val_losses: list[tuple[int, float]]  # (iteration, loss) at each evaluation
    stopped_by: str  # "max_iters" or "max_minutes"
    tokens: int  # tokens trained on in this call
    elapsed_s: float
    log_path: Path
    checkpoint_path: Path


class BigramLanguageModel(nn.Module):
    """The smallest language model: the next token's logits are one learned row per current token.

    A baseline, and the model the trainer's tests and smoke runs use (config family "bigram").
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        check_int("vocab_size", vocab_size, 1)
        self.logits = nn.Embedding(vocab_size, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (batch, seq, vocab) for ids (batch, seq)."""
        return self.logits(ids)


MODEL_FAMILIES = {
    "bigram": "reference.training.trainer:BigramLanguageModel",
    "llama": "reference.models.llama:TransformerLM",
}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """The model a config's "model" entry names, built with the rest of the entry as keyword arguments.

    {"family": "llama", "vocab_size": ..., ...} uses `MODEL_FAMILIES` (imported only when named);
    {"class": "package.module:ClassName", ...} builds any importable class.
    """
    if ("family" in spec) == ("class" in spec):
        raise ValueError(f"the model spec needs exactly one of 'family' and 'class', got keys {sorted(spec)}")
    spec = dict(spec)
    family, target = spec.pop("family", None), spec.pop("class", None)
    if family is not None:
        if family not in MODEL_FAMILIES:
            raise ValueError(f"unknown model family {family!r}; known: {sorted(MODEL_FAMILIES)}")
        target = MODEL_FAMILIES[family]
    module_name, _, class_name = target.partition(":")
    if not class_name:
        raise ValueError(f"'class' must look like 'package.module:ClassName', got {target!r}")
    return getattr(importlib.import_module(module_name), class_name)(**spec)


def batch_loss(
    model: nn.Module, config: TrainConfig, data: npt.NDArray[np.integer], device: torch.device, generator: torch.Generator
) -> torch.Tensor:
    """The loss of one batch of `config.batch_size` random windows under `config.objective`.

    "next_token": windows of context_length + 1 tokens, each position predicting the next.
    "mlm": windows of context_length tokens corrupted by `masked_language_modeling` (15%, the
    80/10/10 rule) and scored only at the chosen positions; the model sees the whole window.
    """
    inputs, targets = get_batch(data, config.batch_size, config.context_length, device, generator)
    if config.objective == "next_token":
        return cross_entropy(model(inputs), targets)
    vocab_size = getattr(model, "vocab_size", None)
    if vocab_size is None:
        raise ValueError(f"objective 'mlm' needs a model with a vocab_size attribute, got {type(model).__name__}")
    corrupted, originals, chosen = masked_language_modeling(
        inputs, generator, config.mask_token_id, vocab_size, config.mask_probability, config.special_ids
    )
    return cross_entropy(model(corrupted), originals, chosen)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: npt.NDArray[np.integer],
    batch_size: int,
    context_length: int,
    num_batches: int,
    device: torch.device,
    seed: int = 0,
    config: TrainConfig | None = None,
) -> float:
    """Mean loss over `num_batches` random batches of `data`, the same batches for the same seed.

    The loss is next-token prediction, or the objective of `config` when one is given (`batch_loss`;
    masked LM for "mlm"); `batch_size` and `context_length` always come from the arguments.

    Runs in eval mode (no dropout) and restores the model's mode afterwards; draws from its own
    generator, so evaluating does not change the training run's batches.
    """
    was_training = model.training
    model.eval()
    objective = dataclasses.replace(config or TrainConfig(), batch_size=batch_size, context_length=context_length)
    generator = torch.Generator().manual_seed(seed)
    losses = [batch_loss(model, objective, data, device, generator).item() for _ in range(num_batches)]
    model.train(was_training)
    return sum(losses) / len(losses)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (embeddings, projections) only, not on gains and biases (as nanoGPT does)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


class _Log:
    """Appends one record per line to a JSON-lines or CSV file, flushed as it goes."""

    def __init__(self, path: Path, fmt: str, append: bool) -> None:
        new = not (append and path.exists())
        self.file = open(path, "w" if new else "a", encoding="utf-8", newline="")
        self.csv = csv.DictWriter(self.file, LOG_FIELDS) if fmt == "csv" else None
        if self.csv is not None and new:
            self.csv.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        if self.csv is not None:
            self.csv.writerow(record)
        else:
            self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def train(
    model: nn.Module,
    config: TrainConfig,
    train_data: npt.NDArray[np.integer],
    val_data: npt.NDArray[np.integer] | None = None,
    resume_from: str | os.PathLike | None = None,
) -> TrainResult:
    """Pre-train `model` on `train_data` with next-token prediction, as `config` says.

    Iteration `it` (from 0) sets the learning rate to `cosine_schedule(it, ...)`, sums the
    gradients of `grad_accumulation_steps` micro-batches of `batch_size` windows (each loss divided
    by the number of micro-batches, so the gradient is that of their mean), clips their norm, and
    steps AdamW. Every `eval_interval` iterations, and when the run stops, it evaluates on
    `val_data`; every `checkpoint_interval` iterations, and when it stops, it saves
    `out_dir/checkpoint.pt`. It stops at `max_iters` or once `max_minutes` have passed. It seeds
    PyTorch's global generator with `config.seed` (for dropout) and draws batches from a generator
    of its own, seeded alike, so that a run is repeatable and a resumed run bit-exact.

    Args:
        model: maps ids (batch, seq) to logits (batch, seq, vocab); moved to the chosen device.
        config: the run's settings.
        train_data: 1-D token ids (e.g. `open_tokens(config.train_data)`).
        val_data: held-out token ids, or None to skip evaluation.
        resume_from: a checkpoint to carry on from: its weights, optimiser state, iteration and
            random states (the log is appended to).

    Returns:
        A `TrainResult`. Every iteration is also logged to `out_dir/log.jsonl` (or `log.csv`):
        {"iter", "split": "train", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"};
        evaluations have "split": "val". "tokens" counts from iteration 0 (a resumed run assumes the
        same batch shape as before), "elapsed_s" from the start of this call.
    """
    device = pick_device(None if config.device == "auto" else config.device)
    model.to(device).train()
    optimizer = AdamW(_param_groups(model, config.weight_decay), lr=config.max_learning_rate, betas=config.betas, eps=config.eps)
    generator = torch.Generator().manual_seed(config.seed)  # draws the training batches
    torch.manual_seed(config.seed)  # dropout and anything else that uses the global generator
    start = 0 if resume_from is None else load_checkpoint(resume_from, model, optimizer, generator)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path, checkpoint_path = out_dir / f"log.{config.log_format}", out_dir / "checkpoint.pt"
    log = _Log(log_path, config.log_format, append=resume_from is not None)
    cycle = config.cosine_cycle_iters or config.max_iters
    tokens_per_iter = config.batch_size * config.context_length * config.grad_accumulation_steps
    params = [p for group in optimizer.param_groups for p in group["params"]]
    result = TrainResult(start, [], [], "max_iters", 0, 0.0, log_path, checkpoint_path)
    began = time.perf_counter()
    bar = progress_bar(total=config.max_iters, initial=start, disable=not config.progress, unit="it", dynamic_ncols=True)

    def evaluate_and_log() -> None:
        loss = evaluate(model, val_data, config.batch_size, config.context_length, config.eval_batches, device,
                        config.seed + 1, config)
        result.val_losses.append((result.iteration, loss))
        elapsed = time.perf_counter() - began
        log.write({"iter": result.iteration, "split": "val", "loss": loss, "tokens": start * tokens_per_iter + result.tokens,
                   "elapsed_s": elapsed})

    def save() -> None:
        save_checkpoint(model, optimizer, result.iteration, checkpoint_path, generator, dataclasses.asdict(config))

    try:
        for it in range(start, config.max_iters):
            if config.max_minutes is not None and time.perf_counter() - began > 60 * config.max_minutes:
                result.stopped_by = "max_minutes"
                break
            tick = time.perf_counter()
            lr = cosine_schedule(it, config.max_learning_rate, config.min_learning_rate, config.warmup_iters, cycle)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            for _ in range(config.grad_accumulation_steps):
                loss = batch_loss(model, config, train_data, device, generator) / config.grad_accumulation_steps
                loss.backward()
                loss_sum += loss.detach()
            if config.grad_clip is not None:
                grad_norm = clip_grad_norm_(params, config.grad_clip)
            else:
                grad_norm = clip_grad_norm_(params, math.inf)  # measures only
            optimizer.step()
            train_loss = loss_sum.item()  # waits for the GPU, so the timing below is honest
            result.iteration, result.tokens = it + 1, result.tokens + tokens_per_iter
            result.train_losses.append(train_loss)
            tokens_per_s = tokens_per_iter / (time.perf_counter() - tick)
            log.write({
                "iter": it + 1, "split": "train", "loss": train_loss, "lr": lr, "grad_norm": grad_norm.item(),
                "tokens": start * tokens_per_iter + result.tokens, "tokens_per_s": tokens_per_s,
                "elapsed_s": time.perf_counter() - began,
            })  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)  # drawn at tqdm's pace
            if val_data is not None and (it + 1) % config.eval_interval == 0:
                evaluate_and_log()
            if config.checkpoint_interval is not None and (it + 1) % config.checkpoint_interval == 0:
                save()
        if val_data is not None and (not result.val_losses or result.val_losses[-1][0] != result.iteration):
            evaluate_and_log()
        save()
    finally:
        bar.close()
        log.close()
    result.elapsed_s = time.perf_counter() - began
    return result


def read_log(log_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a training log (JSON lines, or CSV by its `.csv` suffix), numbers as numbers."""
    path = Path(log_path)
    with open(path, encoding="utf-8", newline="") as file:
        if path.suffix != ".csv":
            return [json.loads(line) for line in file if line.strip()]
        return [{k: v if k == "split" else float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(file)]


def plot_losses(log_path: str | os.PathLike) -> Figure:
    """Training and validation loss against iteration, read from a training log; a matplotlib Figure."""
    records = read_log(log_path)
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    for split, style in (("train", {"lw": 1, "alpha": 0.8}), ("val", {"marker": "o", "lw": 2})):
        points = [(r["iter"], r["loss"]) for r in records if r["split"] == split]
        if points:
            axes.plot(*zip(*points), label=split, **style)
    axes.set_xlabel("iteration")
    axes.set_ylabel("cross-entropy (nats per token)")
    axes.set_title(Path(log_path).parent.name or "training loss")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `llm-course pretrain`, added to `parser`."""
    parser.add_argument("--config", required=True, metavar="CONFIG", help="JSON file of TrainConfig's fields")
    parser.add_argument(
        "--max-minutes", type=float, default=None, metavar="M", help="stop after M minutes (overrides the config)"
    )
    parser.add_argument("--max-iters", type=int, default=None, metavar="N", help="stop after N iterations (overrides the config)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (overrides the config)")
    parser.add_argument(
        "--out-dir", default=None, metavar="DIR", help="where the log, checkpoint and plot go (overrides the config)"
    )
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT", help="carry on from this checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run `llm-course pretrain` with parsed arguments: build the model, train, plot; print a summary."""
    config = TrainConfig.from_json(args.config)
    overrides = {"max_minutes": args.max_minutes, "max_iters": args.max_iters, "device": args.device, "out_dir": args.out_dir}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_progress:
        config.progress = False
    if config.train_data is None:
        raise ValueError(f"the config {args.config} names no train_data")
    seed_everything(config.seed)
    model = build_model(config.model)
    train_data = open_tokens(config.train_data, config.data_dtype)
    val_data = None if config.val_data is None else open_tokens(config.val_data, config.data_dtype)
    result = train(model, config, train_data, val_data, resume_from=args.resume)
    plot_path = Path(config.out_dir) / "losses.png"
    plot_losses(result.log_path).savefig(plot_path, dpi=120)
    last_val = f", val loss {result.val_losses[-1][1]:.4f}" if result.val_losses else ""
    print(
        f"{result.iteration} iterations (stopped by {result.stopped_by}), {result.tokens:,} tokens in "
        f"{result.elapsed_s:.1f} s; train loss {result.train_losses[-1] if result.train_losses else float('nan'):.4f}{last_val}"
    )
    print(f"log {result.log_path}, checkpoint {result.checkpoint_path}, plot {plot_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`llm-course pretrain --config CONFIG [--max-minutes M] ...`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="llm-course pretrain", description="Pre-train a language model from a JSON config.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
