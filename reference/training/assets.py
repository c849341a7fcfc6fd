"""The course's own small pretrained models: recipes, and the command that rebuilds them from scratch.

Survey section 2.3-2.4. Each recipe names everything a run needs: the corpus mixture (books, prose
and code with explicit weights, Chapter 4), the shared byte-level BPE tokenizer, the model (Chapter
5), and the training settings (Chapter 6's trainer). `build_asset(name)` runs the whole chain:

    corpus -> train/validation split by document -> mixture -> BPE tokenizer -> token files
           -> pre-training -> weights (safetensors, bfloat16) + tokenizer JSON + config and model card

and writes the result to `reference/assets/<name>/`, where `reference.load_pretrained(name)` finds
it. With the same Python (whose standard library is the "code" source) and the same PyTorch, the same
command gives the same weights: every step is seeded and the run stops after a fixed number of
iterations, never after a time budget.

    python -m reference.training.assets llama-tiny      # or: bert-tiny, all
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reference.data import corpus
from reference.runtime import atomic_write, seed_everything
from reference.tokenizer import Tokenizer, train_tokenizer
from reference.training.data import open_tokens, tokenize_to_memmap
from reference.training.trainer import TrainConfig, build_model, evaluate, train

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SEPARATOR = "<|endoftext|>"
SPECIAL_TOKENS = (SEPARATOR, "[MASK]", "[PAD]")  # ids 256, 257, 258 in the course tokenizer
VOCAB_SIZE = 4096
MIXTURE = {"books": 0.5, "prose": 0.15, "code": 0.35}  # sampling weights (Chapter 4), by UTF-8 bytes
MIX_BYTES = 6_000_000
VALIDATION_EVERY = 10  # every 10th document of each source is held out
VALIDATION_BYTES = 600_000  # the validation mixture, drawn from the held-out documents

RECIPES: dict[str, dict[str, Any]] = {
    "llama-tiny": {
        "description": "LLaMA-style causal decoder (RMSNorm, SwiGLU, RoPE, grouped-query attention, tied embeddings)",
        "model": {"family": "llama", "vocab_size": VOCAB_SIZE, "context_length": 256, "d_model": 128,
                  "num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "d_ff": 352, "tie_embeddings": True},
        "train": {"batch_size": 16, "context_length": 256, "max_iters": 400, "max_learning_rate": 3e-3,
                  "min_learning_rate": 3e-4, "warmup_iters": 20, "weight_decay": 0.1, "grad_clip": 1.0,
                  "eval_interval": 100, "eval_batches": 8, "seed": 0},
    },
    "bert-tiny": {
        "description": "BERT-style encoder with a masked-language-modelling head (post-norm, GELU, learned positions)",
        "model": {"class": "reference.models.encoder:BertForMaskedLM", "vocab_size": VOCAB_SIZE,
                  "context_length": 128, "d_model": 128, "num_layers": 4, "num_heads": 4, "d_ff": 512},
        # 30% masking instead of BERT's 15%: twice the predictions per step, and better small-budget
        # models (Wettig et al., 2023, "Should You Mask 15% in Masked Language Modeling?")
        "train": {"batch_size": 32, "context_length": 128, "max_iters": 600, "max_learning_rate": 1e-3,
                  "min_learning_rate": 1e-4, "warmup_iters": 60, "weight_decay": 0.01, "grad_clip": 1.0,
                  "eval_interval": 150, "eval_batches": 8, "seed": 0, "objective": "mlm",
                  "mask_token_id": 257, "mask_probability": 0.3, "special_ids": [256, 257, 258]},
    },
}  # fmt: skip


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as file:
        file.write(data)


def split_documents(documents: list[corpus.Document]) -> tuple[list[corpus.Document], list[corpus.Document]]:
    """Hold out every `VALIDATION_EVERY`-th document of each source: (train, validation), whole documents."""
    train_docs, val_docs, seen = [], [], dict.fromkeys(corpus.SOURCES, 0)
    for doc in documents:
        (val_docs if seen[doc.source] % VALIDATION_EVERY == 0 else train_docs).append(doc)
        seen[doc.source] += 1
    return train_docs, val_docs


def course_tokenizer(train_docs: list[corpus.Document], work: Path, mix_bytes: int = MIX_BYTES) -> Tokenizer:
    """Write the training mixture of `train_docs` to `work/train.txt` and train the course's BPE
    tokenizer on it (VOCAB_SIZE ids, SPECIAL_TOKENS)."""
    mixture = corpus.mix(train_docs, MIXTURE, mix_bytes, seed=0)
    corpus.write_corpus(mixture, work / "train.txt", SEPARATOR)
    return train_tokenizer(work / "train.txt", VOCAB_SIZE, SPECIAL_TOKENS)


def save_weights(model: nn.Module, path: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """Write the model's tensors to a safetensors file in `dtype`, each tied tensor once, atomically."""
    from safetensors.torch import save

    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # a tied weight: stored under its first name only
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().to(dtype).contiguous()
    _write_bytes(path, save(tensors))


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a file written by `save_weights` into `model` (converted to the model's dtype); tied tensors are refilled."""
    from safetensors.torch import load_file

    stored = load_file(path)
    own = model.state_dict()
    unknown = sorted(set(stored) - set(own))
    if unknown:
        raise ValueError(f"{path}: tensors the model does not have: {unknown[:5]}")
    by_pointer: dict[int, str] = {}
    for name, tensor in own.items():
        by_pointer.setdefault(tensor.data_ptr(), name)
    missing = [n for n, t in own.items() if n not in stored and by_pointer[t.data_ptr()] not in stored]
    if missing:
        raise ValueError(f"{path}: tensors missing for {missing[:5]}")
    with torch.no_grad():
        for name, tensor in own.items():
            source = stored.get(name, stored.get(by_pointer[tensor.data_ptr()]))
            if source.shape != tensor.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(source.shape)}, the model wants {tuple(tensor.shape)}")
            tensor.copy_(source.to(tensor.dtype))
    return model


def _per_source_losses(model: nn.Module, config: TrainConfig, tokenizer: Tokenizer, val_docs, work: Path) -> dict[str, dict[str, float]]:
    """Validation loss (nats/token), perplexity and bytes per token on each source's held-out documents
    (about VALIDATION_BYTES / 3 of each, `config.eval_batches` random batches)."""
    results = {}
    for source in corpus.SOURCES:
        docs = corpus.mix([d for d in val_docs if d.source == source], {source: 1.0}, VALIDATION_BYTES // 3, seed=2)
        path = corpus.write_corpus(docs, work / f"val_{source}.txt", SEPARATOR)
        tokens = tokenize_to_memmap(tokenizer, path, work / f"val_{source}.bin", tokenizer.vocab_size)
        loss = evaluate(model, tokens, config.batch_size, config.context_length, config.eval_batches,
                        torch.device("cpu"), 1, config)
        results[source] = {"loss": loss, "perplexity": math.exp(loss),
                           "bytes_per_token": path.stat().st_size / len(tokens), "tokens": int(len(tokens))}
    return results


SAMPLE_PROMPTS = ("ROMEO.\n", "def ", "The ")
CLOZE_PROMPTS = ("To be, or not to [MASK], that is the question.", "import [MASK]", "The [MASK] of Denmark")


def samples(model: nn.Module, tokenizer: Tokenizer, max_new_tokens: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """What a model card shows: continuations of SAMPLE_PROMPTS (decoder, temperature 0.8, seeded) or
    the five likeliest fillers of each [MASK] in CLOZE_PROMPTS (encoder)."""
    shown = []
    with torch.no_grad():
        if hasattr(model, "generate"):
            for prompt in SAMPLE_PROMPTS:
                ids = torch.tensor([tokenizer.encode(prompt)])
                out = model.generate(ids, max_new_tokens, temperature=0.8, generator=torch.Generator().manual_seed(seed))
                shown.append({"prompt": prompt, "completion": tokenizer.decode(out[0, ids.shape[1] :].tolist())})
            return shown
        mask_id = tokenizer.token_to_id("[MASK]")
        for prompt in CLOZE_PROMPTS:
            ids = torch.tensor([tokenizer.encode(prompt)])
            position = (ids[0] == mask_id).nonzero()[0, 0]
            top = model(ids)[0, position].topk(5).indices.tolist()
            shown.append({"prompt": prompt, "fillers": [tokenizer.decode([t]) for t in top]})
    return shown


def build_asset(
    name: str, out_root: Path = ASSETS, progress: bool = True, mix_bytes: int = MIX_BYTES, max_iters: int | None = None
) -> dict[str, Any]:
    """Rebuild `out_root/<name>/` from scratch (see the module docstring) and return its model card.

    `mix_bytes` and `max_iters` shrink the run for smoke tests; the shipped assets use the defaults.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown asset {name!r}; known: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    began = time.perf_counter()
    seed_everything(0)
    with tempfile.TemporaryDirectory(prefix=f"build-{name}-") as tmp:
        work = Path(tmp)
        train_docs, val_docs = split_documents(corpus.load_corpus())
        tokenizer = course_tokenizer(train_docs, work, mix_bytes)
        if tokenizer.vocab_size != VOCAB_SIZE:
            raise ValueError(f"mix_bytes={mix_bytes} is too little text to learn {VOCAB_SIZE} tokens "
                             f"(BPE ran out of pairs at {tokenizer.vocab_size})")
        corpus.write_corpus(corpus.mix(val_docs, MIXTURE, VALIDATION_BYTES, seed=1), work / "val.txt", SEPARATOR)
        train_tokens = tokenize_to_memmap(tokenizer, work / "train.txt", work / "train.bin", tokenizer.vocab_size)
        val_tokens = tokenize_to_memmap(tokenizer, work / "val.txt", work / "val.bin", tokenizer.vocab_size)
        settings = {**recipe["train"], "device": "cpu", "out_dir": str(work / "run"), "progress": progress}
        if max_iters is not None:
            settings |= {"max_iters": max_iters, "warmup_iters": min(settings["warmup_iters"], max_iters - 1),
                         "eval_interval": max_iters, "eval_batches": 1}
        config = TrainConfig.from_dict(settings)
        torch.manual_seed(config.seed)
        model = build_model(recipe["model"])
        result = train(model, config, train_tokens, val_tokens)
        model.eval()
        card = {
            "name": name,
            "description": recipe["description"],
            "model": recipe["model"],
            "train": {k: v for k, v in asdict(config).items() if k not in ("out_dir", "progress", "device")},
            "parameters": sum(p.numel() for p in model.parameters()),
            "training_tokens": result.tokens,
            "final_train_loss": result.train_losses[-1],
            "validation_loss": result.val_losses[-1][1],
            "validation_by_source": _per_source_losses(model, config, tokenizer, val_docs, work),
            "mixture": MIXTURE,
            "tokenizer": {"vocab_size": tokenizer.vocab_size, "special_tokens": list(SPECIAL_TOKENS)},
            "corpus_tokens": {"train": int(len(train_tokens)), "validation": int(len(val_tokens))},
            "build_seconds": round(time.perf_counter() - began, 1),
            "built_with": {"python": platform.python_version(), "torch": torch.__version__},
        }
        out = out_root / name
        out.mkdir(parents=True, exist_ok=True)
        save_weights(model, out / "model.safetensors")
        tokenizer.save(out / "tokenizer.json")
        card["samples"] = samples(load_weights(build_model(recipe["model"]), out / "model.safetensors").eval(), tokenizer)
        _write_bytes(out / "config.json", (json.dumps(card, indent=2) + "\n").encode("utf-8"))
        log = (work / "run" / "log.jsonl").read_bytes()
        _write_bytes(out / "log.jsonl", log)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.training.assets", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="+", choices=[*RECIPES, "all"], help="which assets to rebuild")
    parser.add_argument("--out", default=str(ASSETS), help="folder to write to (default: the package's assets)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    names = list(RECIPES) if "all" in args.names else args.names
    for name in names:
        card = build_asset(name, Path(args.out), progress=not args.no_progress)
        by_source = ", ".join(f"{s} {v['loss']:.3f}" for s, v in card["validation_by_source"].items())
        print(f"{name}: {card['parameters']:,} parameters, {card['training_tokens']:,} training tokens, "
              f"validation loss {card['validation_loss']:.3f} ({by_source}); built in {card['build_seconds']:.0f} s "
              f"on {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
