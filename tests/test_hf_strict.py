"""`reference.models.hf.from_hf` converts exactly or refuses, naming the field.

The configurations here are ones `to_hf` never writes: each changes what the Hugging Face model
computes (an activation, a scaled RoPE, biases, a per-layer attention scale, relative positions),
and `from_hf` must refuse it rather than return a model whose logits differ. Fields that do not
change the logits in eval mode (dropout, token ids, metadata) are accepted, and the converted model
then matches the original.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from reference.models import hf as hf_module  # noqa: E402
from reference.models.hf import from_hf  # noqa: E402

V = 61


def _llama(**overrides):
    kwargs = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    kwargs.update(overrides)
    config = transformers.LlamaConfig(**kwargs)
    config._attn_implementation = "eager"
    return transformers.LlamaForCausalLM(config).eval()


def _gpt2(**overrides):
    kwargs = dict(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=None, eos_token_id=None)
    kwargs.update(overrides)
    config = transformers.GPT2Config(**kwargs)
    config._attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(config).eval()


def _bert(**overrides):
    kwargs = dict(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=32)
    kwargs.update(overrides)
    config = transformers.BertConfig(**kwargs)
    config._attn_implementation = "eager"
    return transformers.BertForMaskedLM(config).eval()


def _t5(**overrides):
    kwargs = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_decoder_layers=1, num_heads=4,
                  decoder_start_token_id=0, pad_token_id=0)
    kwargs.update(overrides)
    config = transformers.T5Config(**kwargs)
    config._attn_implementation = "eager"
    return transformers.T5ForConditionalGeneration(config).eval()


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 32}


@pytest.mark.parametrize(
    "build, overrides, field",
    [
        (_llama, {"hidden_act": "gelu"}, "hidden_act"),
        (_llama, {"hidden_act": "relu"}, "hidden_act"),
        (_llama, {"rope_scaling": LLAMA3_SCALING}, "rope_type"),
        (_llama, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_type"),
        (_llama, {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type"),
        (_llama, {"attention_bias": True}, "attention_bias"),
        (_llama, {"mlp_bias": True}, "mlp_bias"),
        (_llama, {"head_dim": 16}, "head_dim"),
        (_llama, {"sliding_window_everywhere": 3}, "sliding_window_everywhere"),  # an unknown field
        (_gpt2, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        (_gpt2, {"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),
        (_gpt2, {"scale_attn_weights": False}, "scale_attn_weights"),
        (_gpt2, {"activation_function": "gelu"}, "activation_function"),
        (_gpt2, {"activation_function": "relu"}, "activation_function"),
        (_gpt2, {"tie_word_embeddings": False}, "tie_word_embeddings"),
        (_gpt2, {"add_cross_attention": True}, "add_cross_attention"),
        (_bert, {"position_embedding_type": "relative_key"}, "position_embedding_type"),
        (_bert, {"position_embedding_type": "relative_key_query"}, "position_embedding_type"),
        (_bert, {"is_decoder": True}, "is_decoder"),
        (_bert, {"hidden_act": "relu"}, "hidden_act"),
        (_bert, {"tie_word_embeddings": False}, "tie_word_embeddings"),
        (_t5, {"feed_forward_proj": "gated-gelu"}, "feed_forward_proj"),
        (_t5, {"d_kv": 4}, "d_kv"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_from_hf_refuses_a_field_it_cannot_reproduce(build, overrides, field):
    hf = build(**overrides)
    with pytest.raises(ValueError, match=field):
        from_hf(hf)


def test_the_llama3_scaling_changes_the_logits_it_is_refused_for():
    """The refusal matters: a Llama 3.1-style rope_scaling gives other logits than the unscaled model."""
    torch.manual_seed(0)
    plain = _llama()
    scaled = _llama(rope_scaling=LLAMA3_SCALING)
    scaled.load_state_dict(plain.state_dict())
    ids = torch.randint(0, V, (1, 60))
    with torch.no_grad():
        gap = (plain(ids).logits - scaled(ids).logits).abs().max().item()
    assert gap > 1e-4  # float32 round-off of the same model is below 1e-6


@pytest.mark.parametrize("build, wrong_class", [
    (lambda: transformers.GPT2Model(_gpt2().config), "GPT2Model"),
    (lambda: transformers.LlamaForSequenceClassification(_llama(pad_token_id=0).config), "LlamaForSequenceClassification"),
])
def test_from_hf_refuses_a_class_whose_weights_it_does_not_map(build, wrong_class):
    with pytest.raises(ValueError, match=wrong_class):
        from_hf(build())


@pytest.mark.parametrize("build, overrides, ids", [
    (_gpt2, {"resid_pdrop": 0.3, "embd_pdrop": 0.2, "attn_pdrop": 0.1, "activation_function": "gelu_pytorch_tanh",
             "bos_token_id": 3, "eos_token_id": 4, "initializer_range": 0.05}, "gpt2"),
    (_llama, {"attention_dropout": 0.2, "pretraining_tp": 2, "bos_token_id": 5, "rope_theta": 500000.0}, "llama"),
    (_bert, {"hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.2, "position_embedding_type": "absolute",
             "classifier_dropout": 0.5}, "bert"),
])
def test_from_hf_accepts_fields_that_do_not_change_the_logits(build, overrides, ids):
    torch.manual_seed(0)
    hf = build(**overrides)
    ours = from_hf(hf).eval()
    tokens = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("build", [_gpt2, _llama, _bert, _t5])
def test_every_field_of_a_default_configuration_is_classified(build):
    """A field of today's `transformers` configuration that from_hf neither reads, fixes nor knows to be
    harmless would be refused; this lists such a field by name if a new version adds one."""
    config = build().config
    kind = config.model_type
    known = hf_module._READ[kind] | hf_module._NO_MATH | hf_module._DROPOUT | set(hf_module._FIXED[kind])
    assert set(config.to_dict()) - known - {"rope_parameters"} == set()


@pytest.mark.parametrize("build", [_gpt2, _llama, _bert, _t5])
def test_each_fixed_field_refuses_another_value(build):
    """Systematically: every field with a fixed value is refused, by name, once set to something else."""
    config = build().config
    kind = config.model_type
    fields = config.to_dict()
    for name, allowed in hf_module._FIXED[kind].items():
        other = "something-else" if isinstance(allowed[0], str) else (not allowed[0] if allowed[0] is not None else {"x": 1})
        with pytest.raises(ValueError, match=name):
            hf_module._check_fields(kind, {**fields, name: other})
