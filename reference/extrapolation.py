"""Length extrapolation: does a decoder trained on windows of L tokens still work on 2L and 4L?

Chapter 2's closing experiment (survey section 1.2(a), positional embedding). Press et al., 2022
("Train Short, Test Long", ALiBi) ask this question of sinusoidal, rotary and T5-bias models;
Haviv et al., 2022 and Kazemnejad et al., 2023 add the decoder with no position information at all (causal attention
alone lets it infer positions). Here the same tiny decoder, built from Chapter 5's parts, is
trained with each scheme on byte-level tokens of the course corpus and evaluated at several
lengths. A learned table has no vector past L, so that scheme cannot even be run there.

Every scheme is trained with the same seed (same initial draw, same batches) and scored on the same
validation windows; the experiment is repeated over several seeds, and the command writes the
results, the configuration and the machine to JSON for the notebook to plot:

    python -m reference.extrapolation --seeds 5 --out chapters/results/extrapolation.json
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from reference.attention import MultiHeadAttention, causal_mask
from reference.models.parts import Block, RMSNorm, SwiGLU, check_token_ids, init_weights
from reference.positional import ALiBi, LearnedPositionalEmbedding, RotaryEmbedding, sinusoidal_encoding
from reference.runtime import progress as progress_bar
from reference.validation import check_int

SCHEMES = ("none", "sinusoidal", "learned", "rope", "alibi")
INIT_STD = 0.02  # GPT-2's initialisation (init_weights), for the token embeddings and the learned table


class PositionalDecoder(nn.Module):
    """A small pre-norm causal decoder (RMSNorm, SwiGLU) whose only varying part is the position scheme.

    "none": no position information (NoPE); "sinusoidal" and "learned": absolute vectors added to
    the token embeddings; "rope": rotary embedding inside attention; "alibi": linear biases on the
    scores.

    Scale of the sinusoidal table: Vaswani et al. (2017, section 3.4) multiply the embeddings by
    sqrt(d_model), which with their initialisation (std d_model^-1/2) makes token vectors and the
    table (entries of size 1) equally large. Here embeddings start at std 0.02 (GPT-2's
    initialisation), so sqrt(d_model) would leave the table about 4x larger than the tokens at
    d_model = 64. Instead the token embeddings are not scaled and the table is multiplied by
    `sinusoidal_scale` = 0.02 * sqrt(2), which gives its entries the RMS of an initial token
    embedding entry (0.02): the same matched start as the learned table, initialised like the tokens.

    Args:
        vocab_size: number of token ids (256 for bytes).
        d_model: residual width.
        num_layers: number of blocks.
        num_heads: attention heads.
        d_ff: SwiGLU hidden width.
        scheme: one of SCHEMES.
        max_len: size of the learned table (the training context); unused by the other schemes.
    """

    def __init__(
        self, vocab_size: int, d_model: int, num_layers: int, num_heads: int, d_ff: int, scheme: str, max_len: int
    ) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        check_int("max_len", max_len, 1)
        self.scheme, self.vocab_size, self.d_model = scheme, vocab_size, d_model
        self.token_embeddings = nn.Embedding(vocab_size, d_model)
        self.sinusoidal_scale = INIT_STD * math.sqrt(2)  # table entries (sin, cos) have RMS 1/sqrt(2)
        self.position_embeddings = LearnedPositionalEmbedding(max_len, d_model) if scheme == "learned" else None
        relative = {"rope": lambda: RotaryEmbedding(d_model // num_heads), "alibi": lambda: ALiBi(num_heads)}
        positional = relative[scheme]() if scheme in relative else None
        self.layers = nn.ModuleList(
            Block(MultiHeadAttention(d_model, num_heads, bias=False, positional=positional), SwiGLU(d_model, d_ff),
                  RMSNorm(d_model), RMSNorm(d_model))
            for _ in range(num_layers)
        )
        self.ln_final = RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        init_weights(self, std=INIT_STD, num_layers=num_layers)

    def forward(self, token_ids: Tensor) -> Tensor:
        """(batch, seq) ids -> (batch, seq, vocab_size) logits; "learned" refuses seq > max_len."""
        check_token_ids(token_ids, self.vocab_size)
        seq = token_ids.shape[1]
        positions = torch.arange(seq, device=token_ids.device)
        x = self.token_embeddings(token_ids)  # (batch, seq, d_model)
        if self.scheme == "sinusoidal":  # matched to the tokens' initial RMS (see the class docstring)
            x = x + self.sinusoidal_scale * sinusoidal_encoding(seq, self.d_model).to(x)
        elif self.scheme == "learned":
            x = x + self.position_embeddings(positions)
        mask = causal_mask(seq, device=token_ids.device)
        for layer in self.layers:
            x = layer(x, mask=mask, positions=positions)
        return self.lm_head(self.ln_final(x))


def byte_tokens(text: str) -> Tensor:
    """UTF-8 bytes of `text` as a 1-D int64 tensor of ids in [0, 256)."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def random_windows(data: Tensor, length: int, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`batch_size` random windows of `length` + 1 tokens from 1-D `data`: inputs and next-token targets, each (batch, length)."""
    if data.dim() != 1 or data.numel() <= length:
        raise ValueError(f"data must be 1-D and longer than length={length}, got shape {tuple(data.shape)}")
    starts = torch.randint(0, data.numel() - length, (batch_size,), generator=generator)
    windows = torch.stack([data[s : s + length + 1] for s in starts.tolist()])  # (batch, length + 1)
    return windows[:, :-1], windows[:, 1:]


def train_decoder(
    model: nn.Module, data: Tensor, context_length: int, steps: int, batch_size: int = 16, lr: float = 3e-3,
    seed: int = 0, progress: bool = False,
) -> list[float]:
    """Train `model` on random windows of `context_length` tokens with AdamW and a cosine schedule; returns the losses."""
    check_int("steps", steps, 1)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: min(1.0, (it + 1) / (steps // 10 + 1)) * 0.5 * (1 + math.cos(math.pi * it / steps))
    )
    model.train()
    device = next(model.parameters()).device
    losses = []
    for _ in progress_bar(range(steps), desc=getattr(model, "scheme", "training"), disable=not progress, leave=False):
        inputs, targets = random_windows(data, context_length, batch_size, generator)
        inputs, targets = inputs.to(device), targets.to(device)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def loss_by_position(model: nn.Module, data: Tensor, length: int, num_windows: int = 32,
                     window_length: int | None = None) -> Tensor:
    """Mean next-token loss (nats) at each position of `num_windows` evenly spaced windows; (length,).

    The windows start where `num_windows` evenly spaced windows of `window_length` tokens (default:
    `length`) would start, and only their first `length` tokens are scored. Scoring every scheme on
    the same `window_length` windows, each to the length it can run, compares them on the same text:
    for a causal model the loss at position i of a prefix equals its loss at position i of the whole
    window.
    """
    window_length = length if window_length is None else window_length
    check_int("length", length, 1)
    if window_length < length:
        raise ValueError(f"window_length={window_length} must be at least length={length}")
    if data.numel() <= window_length:
        raise ValueError(f"data ({data.numel()} tokens) must be longer than length={window_length}")
    model.eval()
    device = next(model.parameters()).device
    starts = torch.linspace(0, data.numel() - window_length - 1, num_windows).long().tolist()
    windows = torch.stack([data[s : s + length + 1] for s in starts]).to(device)  # (windows, length + 1)
    logits = model(windows[:, :-1])
    losses = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")  # (windows, length)
    return losses.mean(dim=0).cpu()


def _rms(x: Tensor) -> float:
    return x.detach().float().pow(2).mean().sqrt().item()


def length_extrapolation(
    train_data: Tensor, val_data: Tensor, context_length: int, factors: Sequence[int] = (1, 2, 4),
    schemes: Sequence[str] = SCHEMES, steps: int = 200, d_model: int = 64, num_layers: int = 2, num_heads: int = 4,
    seed: int = 0, progress: bool = True, batch_size: int = 16, lr: float = 3e-3, num_windows: int = 32,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, object]]:
    """Train one decoder per scheme at `context_length` and measure it at each multiple of it.

    Every scheme starts from the same seed (same batches) and is scored on the same validation
    windows of the longest length, `max(factors) * context_length` tokens: the loss "at length n" is
    the mean over the first n positions of those windows, so every scheme and every length sees the
    same text. `progress` shows one bar over the schemes. Returns, per scheme: "train_losses"
    (list), "loss" ({length: mean validation loss, NaN where the scheme cannot run}),
    "by_position" (the loss at each position of the longest windows, or of the longest prefix it can
    run: context_length positions for "learned"), and "embedding_rms" (RMS of the token embeddings
    and, for absolute schemes, of the position vectors, after training).
    """
    check_int("context_length", context_length, 1)
    longest = max(factors) * context_length
    results: dict[str, dict[str, object]] = {}
    bar = progress_bar(schemes, desc="training and evaluating", disable=not progress)
    for scheme in bar:
        bar.set_postfix(scheme=scheme)
        torch.manual_seed(seed)
        model = PositionalDecoder(256, d_model, num_layers, num_heads, 4 * d_model, scheme, context_length).to(device)
        train_losses = train_decoder(model, train_data, context_length, steps, batch_size=batch_size, lr=lr, seed=seed)
        runnable = context_length if scheme == "learned" else longest  # the table has no vector past context_length
        by_position = loss_by_position(model, val_data, runnable, num_windows=num_windows, window_length=longest)
        loss = {}
        for factor in factors:
            length = factor * context_length
            loss[length] = by_position[:length].mean().item() if length <= runnable else float("nan")
        rms = {"tokens": _rms(model.token_embeddings.weight)}
        if scheme == "sinusoidal":
            rms["positions"] = _rms(model.sinusoidal_scale * sinusoidal_encoding(context_length, d_model))
        elif scheme == "learned":
            rms["positions"] = _rms(model.position_embeddings(torch.arange(context_length, device=device)))
        results[scheme] = {"train_losses": train_losses, "loss": loss, "by_position": by_position, "embedding_rms": rms}
    return results


# --- the command: several seeds, one JSON file ---------------------------------------------------

DEFAULTS = {"context_length": 64, "factors": [1, 2, 4], "steps": 200, "d_model": 64, "num_layers": 2,
            "num_heads": 4, "batch_size": 16, "lr": 3e-3, "num_windows": 64}


def load_bytes(train_bytes: int = 1_000_000, val_bytes: int = 300_000) -> tuple[Tensor, Tensor, dict[str, object]]:
    """Byte tokens of the course corpus's plays: the first `train_bytes` for training, the next `val_bytes` for evaluation."""
    from reference.data import corpus

    check_int("train_bytes", train_bytes, 1)
    check_int("val_bytes", val_bytes, 1)
    plays = corpus.load_source("books")
    data = "\n".join(doc.text for doc in plays).encode("utf-8")
    if len(data) < train_bytes + val_bytes:
        raise ValueError(f"train_bytes + val_bytes = {train_bytes + val_bytes} exceeds the corpus ({len(data)} bytes)")
    tokens = torch.frombuffer(bytearray(data[: train_bytes + val_bytes]), dtype=torch.uint8).long()  # = byte_tokens, sliced first
    about = {"source": "reference.data.corpus.load_source('books'), documents joined by newlines, UTF-8 bytes",
             "plays": len(plays), "train_bytes": [0, train_bytes], "val_bytes": [train_bytes, train_bytes + val_bytes]}
    return tokens[:train_bytes], tokens[train_bytes : train_bytes + val_bytes], about


def _summary(values: list[float]) -> dict[str, float]:
    import statistics

    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"mean": statistics.fmean(finite), "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "min": min(finite), "max": max(finite)}


def run_experiment(seeds: Sequence[int], *, train_bytes: int = 1_000_000, val_bytes: int = 300_000,
                   device: str | torch.device | None = None, progress: bool = True, **config) -> dict[str, object]:
    """`length_extrapolation` once per seed; returns a JSON-ready dict: configuration, machine, per-seed results, summaries."""
    import platform
    import time

    from reference.runtime import pick_device

    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown configuration {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    config = {**DEFAULTS, **config}
    device = pick_device(None if device is None else str(device))
    train, val, data = load_bytes(train_bytes, val_bytes)
    start = time.perf_counter()
    runs = {}
    for seed in seeds:
        check_int("seed", seed, 0)
        result = length_extrapolation(train, val, config["context_length"], factors=tuple(config["factors"]),
                                      steps=config["steps"], d_model=config["d_model"], num_layers=config["num_layers"],
                                      num_heads=config["num_heads"], seed=seed, progress=progress,
                                      batch_size=config["batch_size"], lr=config["lr"],
                                      num_windows=config["num_windows"], device=device)
        runs[str(seed)] = {
            scheme: {"loss": {str(n): v for n, v in r["loss"].items()},
                     "block_loss": r["by_position"].reshape(-1, config["context_length"]).mean(dim=1).tolist(),
                     "final_train_loss": sum(r["train_losses"][-20:]) / len(r["train_losses"][-20:]),
                     "embedding_rms": r["embedding_rms"]}
            for scheme, r in result.items()
        }
    wall = time.perf_counter() - start
    lengths = [str(f * config["context_length"]) for f in config["factors"]]
    summary = {}
    for scheme in SCHEMES:
        per_seed = [runs[str(s)][scheme] for s in seeds]
        blocks = max(len(r["block_loss"]) for r in per_seed)
        summary[scheme] = {
            "loss": {n: _summary([r["loss"][n] for r in per_seed]) for n in lengths},
            "block_loss": [_summary([r["block_loss"][b] for r in per_seed if b < len(r["block_loss"])])
                           for b in range(blocks)],
            # paired by seed (same batches, same windows): what the scheme changes against no positions
            "block_gap_vs_none": [_summary([r["block_loss"][b] - runs[str(s)]["none"]["block_loss"][b]
                                            for s, r in zip(seeds, per_seed) if b < len(r["block_loss"])])
                                  for b in range(blocks)],
        }
    return {
        "experiment": "length extrapolation (reference.extrapolation)",
        "seeds": list(seeds),
        "config": config,
        "data": data,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                    "wall_seconds": round(wall, 1)},
        "runs": runs,
        "summary": summary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json

    from reference.runtime import atomic_write

    parser = argparse.ArgumentParser(prog="python -m reference.extrapolation",
                                     description="Chapter 2's length-extrapolation experiment over several seeds; writes JSON.")
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds: 0, 1, ..., N-1 (default 5)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", default="chapters/results/extrapolation.json", help="the JSON file to write")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: pick_device())")
    parser.add_argument("--train-bytes", type=int, default=1_000_000)
    parser.add_argument("--val-bytes", type=int, default=300_000)
    for key, value in DEFAULTS.items():
        if key == "factors":
            parser.add_argument("--factors", type=int, nargs="+", default=value)
        else:
            parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    config = {key: getattr(args, key) for key in DEFAULTS}
    result = run_experiment(list(range(args.first_seed, args.first_seed + args.seeds)), train_bytes=args.train_bytes,
                            val_bytes=args.val_bytes, device=args.device, progress=not args.no_progress, **config)
    result["command"] = "python -m reference.extrapolation " + " ".join(argv if argv is not None else sys.argv[1:])
    with atomic_write(args.out, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=1, allow_nan=True)
        file.write("\n")
    print(f"wrote {args.out} ({len(result['seeds'])} seeds, {result['machine']['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
