"""Counting what a model holds and what it computes: parameters, FLOPs and weight memory.

Survey section 2.2 and the scaling-law papers: Kaplan et al., 2020, table 1 (N ~ 12 L d^2 for a
GPT, forward FLOPs per token ~ 2N + 2 L n_ctx d), Hoffmann et al., 2022 (training costs ~ 6N FLOPs
per token). Each family gets a closed-form count by component, written from its architecture; the
tests check it against a count over the module's parameters and against PyTorch's FLOP counter.

Components: "embeddings" (token, position and segment tables, T5's relative bias), "attention"
(q, k, v and output projections), "feed_forward", "norms" and "head" (the output layer and BERT's
MLM transform; a tied output layer adds only its bias, if any).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

COMPONENTS = ("embeddings", "attention", "feed_forward", "norms", "head")
FAMILIES = ("gpt2", "llama", "bert", "t5")


FAMILY_OF_CLASS = {"GPT2": "gpt2", "TransformerLM": "llama", "BertForMaskedLM": "bert", "T5": "t5"}


def family_of(model: nn.Module) -> str:
    """"gpt2", "llama", "bert" or "t5" for one of the course's models, by class name (so a learner's
    `exercises.models.llama.TransformerLM` counts as "llama" too)."""
    name = type(model).__name__
    if name not in FAMILY_OF_CLASS:
        raise TypeError(f"not one of the course's model families {tuple(FAMILY_OF_CLASS)}: {name}")
    return FAMILY_OF_CLASS[name]


def llama_parameter_count(
    vocab_size: int, d_model: int, num_layers: int, num_heads: int, d_ff: int,
    num_kv_heads: int | None = None, tie_embeddings: bool = False,
) -> dict[str, int]:
    """Closed-form parameter count of `TransformerLM`, by component.

    Per layer: attention d * h * d_h (q) + 2 * d * kv * d_h (k, v) + h * d_h * d (output), with
    d_h = d / h; SwiGLU 3 * d * d_ff; two RMSNorm scales 2 * d. Plus the token table V * d, the final
    norm d, and an untied output layer V * d.

    Returns:
        {"embeddings", "attention", "feed_forward", "norms", "head"} -> number of parameters.
    """
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    head_dim = d_model // num_heads
    attention = 2 * d_model * num_heads * head_dim + 2 * d_model * num_kv_heads * head_dim
    return {
        "embeddings": vocab_size * d_model,
        "attention": num_layers * attention,
        "feed_forward": num_layers * 3 * d_model * d_ff,
        "norms": num_layers * 2 * d_model + d_model,
        "head": 0 if tie_embeddings else vocab_size * d_model,
    }


def _gpt2(cfg: dict[str, Any]) -> dict[str, int]:
    d, f, n = cfg["d_model"], cfg["d_ff"], cfg["num_layers"]
    return {
        "embeddings": cfg["vocab_size"] * d + cfg["context_length"] * d,
        "attention": n * (4 * d * d + 4 * d),  # fused qkv (3d x d + 3d) and output (d x d + d)
        "feed_forward": n * (2 * d * f + f + d),
        "norms": n * 4 * d + 2 * d,  # two LayerNorms (scale and shift) per layer, one final
        "head": 0,  # tied to the token table
    }


def _bert(cfg: dict[str, Any]) -> dict[str, int]:
    d, f, n = cfg["d_model"], cfg["d_ff"], cfg["num_layers"]
    return {
        "embeddings": (cfg["vocab_size"] + cfg["context_length"] + cfg["type_vocab_size"]) * d,
        "attention": n * (4 * d * d + 4 * d),
        "feed_forward": n * (2 * d * f + f + d),
        "norms": n * 4 * d + 2 * d,  # two per layer, one after the embeddings
        "head": d * d + d + 2 * d + cfg["vocab_size"],  # transform dense, its LayerNorm, output bias
    }


def _t5(cfg: dict[str, Any]) -> dict[str, int]:
    d, f, h = cfg["d_model"], cfg["d_ff"], cfg["num_heads"]
    enc, dec = cfg["num_layers"], cfg["num_decoder_layers"]
    return {
        "embeddings": cfg["vocab_size"] * d + 2 * cfg["num_buckets"] * h,  # shared table, two bias tables
        "attention": enc * 4 * d * d + dec * 8 * d * d,  # decoder: self- and cross-attention
        "feed_forward": (enc + dec) * 2 * d * f,
        "norms": enc * 2 * d + dec * 3 * d + 2 * d,
        "head": 0 if cfg["tie_embeddings"] else cfg["vocab_size"] * d,
    }


def parameter_count(family: str, config: dict[str, Any]) -> dict[str, int]:
    """Closed-form parameter count by component for a family and its constructor's arguments (`model.config`)."""
    if family == "llama":
        keys = ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "num_kv_heads", "tie_embeddings")
        return llama_parameter_count(**{k: config[k] for k in keys})
    formulas = {"gpt2": _gpt2, "bert": _bert, "t5": _t5}
    if family not in formulas:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return formulas[family](config)


def _component(name: str) -> str:
    """The component a parameter of one of the course's models belongs to, from its name."""
    parts = name.split(".")
    if parts[0] in ("lm_head", "head_dense", "head_norm"):
        return "head"
    if any(p.startswith(("attn", "cross_attn")) for p in parts):
        return "attention"
    if "ffn" in parts:
        return "feed_forward"
    if any(p.startswith(("norm", "ln_")) or p.endswith("_norm") for p in parts):
        return "norms"
    return "embeddings"


def module_parameter_count(model: nn.Module) -> dict[str, int]:
    """Parameters of a built model, counted tensor by tensor (tied tensors once), by component."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():  # named_parameters() lists a tied tensor once
        counts[_component(name)] += p.numel()
    return counts


def forward_flops(family: str, config: dict[str, Any], seq_len: int, batch: int = 1) -> dict[str, int]:
    """Matrix-multiply FLOPs of one forward pass (2 per multiply-add), by where they are spent.

    A linear layer (in -> out) on n tokens costs 2 n in out; the scores q k^T and the weighted sum
    of values cost 2 s^2 d each per layer (all heads together, the full s x s square even under a
    causal mask, as a plain implementation computes it). For T5 the encoder and decoder both get
    `seq_len` tokens. Normalisation, softmax and activations are not matrix multiplies and are left
    out; so are embedding look-ups.

    Returns:
        {"attention_projections", "attention_scores", "feed_forward", "head"} -> FLOPs.
    """
    if seq_len < 1 or batch < 1:
        raise ValueError(f"seq_len and batch must be >= 1, got {seq_len}, {batch}")
    n, s, d, f, V = batch * seq_len, seq_len, config["d_model"], config["d_ff"], config["vocab_size"]
    if family == "llama":
        kv = config["num_kv_heads"] * (d // config["num_heads"])
        L = config["num_layers"]
        projections = L * 2 * n * (2 * d * d + 2 * d * kv)
        ffn = L * 2 * n * 3 * d * f
        head = 2 * n * d * V
    elif family in ("gpt2", "bert"):
        L = config["num_layers"]
        projections = L * 2 * n * 4 * d * d
        ffn = L * 2 * n * 2 * d * f
        head = 2 * n * d * V + (2 * n * d * d if family == "bert" else 0)
    elif family == "t5":
        enc, dec = config["num_layers"], config["num_decoder_layers"]
        L = enc + 2 * dec  # score computations: encoder self, decoder self, decoder cross
        projections = (enc * 4 + dec * 8) * 2 * n * d * d
        ffn = (enc + dec) * 2 * n * 2 * d * f
        head = 2 * n * d * V
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    scores = L * batch * 2 * (2 * s * s * d)
    return {"attention_projections": projections, "attention_scores": scores, "feed_forward": ffn, "head": head}


def measured_forward_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of `model(*inputs)` as PyTorch's `torch.utils.flop_counter.FlopCounterMode` counts them.

    Attention runs on the explicit path during the count (`MultiHeadAttention.sdpa` off): the
    counter has no formula for the CPU's fused attention kernel and would leave its matmuls out."""
    from torch.utils.flop_counter import FlopCounterMode

    fused = [m for m in model.modules() if getattr(m, "sdpa", False) is True]
    for m in fused:
        m.sdpa = False
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        for m in fused:
            m.sdpa = True
    return counter.get_total_flops()


def weight_bytes(num_parameters: int, dtype: torch.dtype = torch.float32) -> int:
    """Memory of the weights alone: parameters times bytes per element (4 for fp32, 2 for bf16/fp16)."""
    if num_parameters < 0:
        raise ValueError(f"num_parameters must be >= 0, got {num_parameters}")
    return num_parameters * torch.empty((), dtype=dtype).element_size()
