"""Chapter 3's prompt modules (reference/prompting/modules.py) against their oracles.

- a soft prompt initialised from a text's token embeddings scores like that text as a hard prompt;
- a prefix made of the keys and values a model computes for a text scores like that text;
- a zero-length prefix is the base model;
- prefix tuning (direct and reparameterised) and P-tuning's prompt encoder match `peft` on the
  Hugging Face version of the same model (`reference.models.hf.to_hf`), GQA and GPT-2 included;
- only the prompt's parameters receive gradients when the model is frozen.
The graded exercises (prepend_prompt, prefix_key_values) are tested in tests/test_prompting.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from reference.models.gpt import GPT2
from reference.models.hf import to_hf
from reference.models.llama import TransformerLM
from reference.prompting.modules import (
    PrefixTuning, PromptedLM, PromptEncoder, SoftPrompt, count_parameters, freeze,
)


def _llama(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(100, 64, 32, 2, 4, 48, num_kv_heads=2).eval()


def _gpt2(seed: int = 0) -> GPT2:
    torch.manual_seed(seed)
    return GPT2(100, 64, 32, 2, 4).eval()


TEXT = torch.tensor([5, 6, 7, 8])


@pytest.mark.parametrize("make", [_llama, _gpt2])
def test_soft_prompt_from_text_equals_hard_prompt(make):
    model = make()
    x = torch.randint(0, 100, (3, 6), generator=torch.Generator().manual_seed(1))
    hard = model(torch.cat([TEXT.expand(3, -1), x], 1))[:, TEXT.numel():]
    soft = PromptedLM(model, prompt=SoftPrompt.from_text(model, TEXT))(x)
    torch.testing.assert_close(soft, hard, atol=1e-6, rtol=1e-6)


def test_prefix_from_text_equals_hard_prompt():
    model = _llama()
    x = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(2))
    hard = model(torch.cat([TEXT.expand(2, -1), x], 1))[:, TEXT.numel():]
    torch.testing.assert_close(PromptedLM(model, prefix=PrefixTuning.from_text(model, TEXT))(x), hard, atol=1e-5, rtol=1e-5)
    # and after a soft prompt: [prefix][soft][x] == hard text, then the soft prompt's text, then x
    more = torch.tensor([9, 10])
    hard2 = model(torch.cat([TEXT.expand(2, -1), more.expand(2, -1), x], 1))[:, TEXT.numel() + 2:]
    both = PromptedLM(model, prompt=SoftPrompt.from_text(model, more), prefix=PrefixTuning.from_text(model, TEXT))(x)
    torch.testing.assert_close(both, hard2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [_llama, _gpt2])
def test_zero_length_prefix_is_the_base_model(make):
    model = make()
    x = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    out = PromptedLM(model, prefix=PrefixTuning.for_model(model, 0))(x)
    torch.testing.assert_close(out, model(x), atol=0, rtol=0)


def _peft_model(model, config):
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(to_hf(model).eval(), config)


def _peft_logits(peft_model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft_model(input_ids=x, attention_mask=torch.ones_like(x)).logits


@pytest.mark.parametrize("make", [_llama, _gpt2])
@pytest.mark.parametrize("projection", [False, True])
def test_prefix_tuning_matches_peft(make, projection):
    peft = pytest.importorskip("peft")
    model = make()
    pm = _peft_model(model, peft.PrefixTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=3,
                                                    prefix_projection=projection, encoder_hidden_size=16))
    enc = pm.prompt_encoder["default"]
    torch.manual_seed(4)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_()
    if projection:
        ours = PrefixTuning.for_model(model, 3, reparameterize=True, hidden_size=16, d_model=enc.embedding.weight.shape[1])
        with torch.no_grad():
            ours.embedding.copy_(enc.embedding.weight)
            for i in (0, 2):
                ours.mlp[i].weight.copy_(enc.transform[i].weight)
                ours.mlp[i].bias.copy_(enc.transform[i].bias)
    else:
        ours = PrefixTuning.for_model(model, 3)
        ours.load_flat(enc.embedding.weight.detach().clone())
    x = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(PromptedLM(model, prefix=ours)(x), _peft_logits(pm, x), atol=1e-5, rtol=1e-5)
    if projection:  # folding the MLP away changes nothing
        torch.testing.assert_close(PromptedLM(model, prefix=ours.materialize())(x), PromptedLM(model, prefix=ours)(x))


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_prompt_encoder_matches_peft(kind):
    peft = pytest.importorskip("peft")
    model = _llama()
    pm = _peft_model(model, peft.PromptEncoderConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=3,
                                                     encoder_hidden_size=16, encoder_reparameterization_type=kind.upper()))
    enc = pm.prompt_encoder["default"]
    ours = PromptEncoder(3, 32, hidden_size=16, kind=kind)
    missing = ours.load_state_dict(enc.state_dict(), strict=True)
    assert not missing.missing_keys
    x = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(PromptedLM(model, prompt=ours)(x), _peft_logits(pm, x)[:, 3:], atol=1e-5, rtol=1e-5)


def test_only_the_prompt_is_trained():
    model = _llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    soft, prefix = SoftPrompt(2, 32), PrefixTuning.for_model(model, 2, reparameterize=True, hidden_size=8)
    wrapped = PromptedLM(model, prompt=soft, prefix=prefix)
    assert count_parameters(wrapped, trainable_only=True) == count_parameters(soft) + count_parameters(prefix)
    opt = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.1)
    x = torch.randint(0, 100, (2, 5))
    for _ in range(2):
        opt.zero_grad()
        wrapped(x).logsumexp(-1).mean().backward()
        opt.step()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert soft.weight.grad is not None and prefix.embedding.grad is not None
    # prompt + LM tuning: nothing frozen
    model2 = _llama()
    PromptedLM(model2, prompt=SoftPrompt(2, 32), freeze_model=False)(x).sum().backward()
    assert all(p.grad is not None for p in model2.parameters())
    assert count_parameters(freeze(model2), trainable_only=True) == 0


def test_bert_mlm_with_soft_prompt_and_prefix():
    from reference.models.encoder import BertForMaskedLM

    torch.manual_seed(0)
    bert = BertForMaskedLM(100, 64, 32, 2, 4).eval()
    x = torch.randint(0, 100, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = PromptedLM(bert, prompt=SoftPrompt(3, 32), prefix=PrefixTuning.for_model(bert, 2))(x, attention_mask=mask)
    assert out.shape == (2, 5, 100) and torch.isfinite(out).all()
    torch.testing.assert_close(PromptedLM(bert, prefix=PrefixTuning.for_model(bert, 0))(x, attention_mask=mask),
                               bert(x, attention_mask=mask))


def test_bad_input():
    model = _llama()
    with pytest.raises(ValueError, match="prefix is shaped"):
        PromptedLM(model, prefix=PrefixTuning(3, 2, 8, 2))
    with pytest.raises(TypeError):
        PromptedLM(model, prompt="hello")
    with pytest.raises(ValueError, match="kind"):
        PromptEncoder(2, 32, kind="gru")
    with pytest.raises(ValueError, match="d_model"):
        PrefixTuning(2, 2, 8, 2, reparameterize=True)
    with pytest.raises(ValueError, match="materialize"):
        PrefixTuning(2, 2, 8, 2, reparameterize=True, d_model=4).load_flat(torch.zeros(2, 64))
