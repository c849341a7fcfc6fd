"""`reference.pretrained`: models loaded offline from installed packages.

A data loader, not an exercise: like the course machinery, it is tested directly and the same
way under both implementations.
"""

from __future__ import annotations

import torch

from reference.pretrained import minilm


def test_minilm_loads_offline_and_embeds():
    model, tokenizer = minilm()
    assert model.config.num_hidden_layers == 6 and model.config.num_attention_heads == 12
    batch = tokenizer(["a cat sat on the mat", "a kitten rested on the rug", "stock prices fell"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (batch, seq, 384)
    mask = batch["attention_mask"][..., None]
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2, sim  # a trained model, not random weights
