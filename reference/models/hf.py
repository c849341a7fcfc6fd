"""Conversion both ways between the course's models and Hugging Face `transformers`.

`to_hf(model)` builds the matching `transformers` model (GPT2LMHeadModel, LlamaForCausalLM,
BertForMaskedLM, T5ForConditionalGeneration) from a configuration translated field by field and
copies every weight; `from_hf(hf_model)` does the reverse. Both use one table per family that pairs
each of our parameter names with Hugging Face's, so a learner can read exactly where each tensor
goes. GPT-2's `Conv1D` stores weights as (in_features, out_features): those entries are transposed.
Everything works offline: the `transformers` models are built from configurations, never downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reference.models.counting import family_of
from reference.models.encoder import BertForMaskedLM
from reference.models.encoder_decoder import T5
from reference.models.gpt import GPT2
from reference.models.llama import TransformerLM

# (our name, Hugging Face's name, transpose)
KeyTable = list[tuple[str, str, bool]]


def _gpt2_table(cfg: dict[str, Any]) -> KeyTable:
    table = [
        ("token_embeddings.weight", "transformer.wte.weight", False),
        ("position_embeddings.embedding.weight", "transformer.wpe.weight", False),
        ("ln_final.weight", "transformer.ln_f.weight", False),
        ("ln_final.bias", "transformer.ln_f.bias", False),
    ]
    for i in range(cfg["num_layers"]):
        ours, theirs = f"layers.{i}.", f"transformer.h.{i}."
        for a, b, t in (
            ("norm_attn.weight", "ln_1.weight", False), ("norm_attn.bias", "ln_1.bias", False),
            ("attn.qkv_proj.weight", "attn.c_attn.weight", True), ("attn.qkv_proj.bias", "attn.c_attn.bias", False),
            ("attn.out_proj.weight", "attn.c_proj.weight", True), ("attn.out_proj.bias", "attn.c_proj.bias", False),
            ("norm_ffn.weight", "ln_2.weight", False), ("norm_ffn.bias", "ln_2.bias", False),
            ("ffn.fc_in.weight", "mlp.c_fc.weight", True), ("ffn.fc_in.bias", "mlp.c_fc.bias", False),
            ("ffn.fc_out.weight", "mlp.c_proj.weight", True), ("ffn.fc_out.bias", "mlp.c_proj.bias", False),
        ):
            table.append((ours + a, theirs + b, t))
    return table


def _llama_table(cfg: dict[str, Any]) -> KeyTable:
    table = [
        ("token_embeddings.weight", "model.embed_tokens.weight", False),
        ("ln_final.weight", "model.norm.weight", False),
    ]
    if not cfg["tie_embeddings"]:
        table.append(("lm_head.weight", "lm_head.weight", False))
    for i in range(cfg["num_layers"]):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        for a, b in (
            ("norm_attn.weight", "input_layernorm.weight"),
            ("attn.q_proj.weight", "self_attn.q_proj.weight"), ("attn.k_proj.weight", "self_attn.k_proj.weight"),
            ("attn.v_proj.weight", "self_attn.v_proj.weight"), ("attn.out_proj.weight", "self_attn.o_proj.weight"),
            ("norm_ffn.weight", "post_attention_layernorm.weight"),
            ("ffn.w1.weight", "mlp.gate_proj.weight"), ("ffn.w3.weight", "mlp.up_proj.weight"),
            ("ffn.w2.weight", "mlp.down_proj.weight"),
        ):
            table.append((ours + a, theirs + b, False))
    return table


def _bert_table(cfg: dict[str, Any]) -> KeyTable:
    table = [
        ("token_embeddings.weight", "bert.embeddings.word_embeddings.weight", False),
        ("position_embeddings.embedding.weight", "bert.embeddings.position_embeddings.weight", False),
        ("token_type_embeddings.weight", "bert.embeddings.token_type_embeddings.weight", False),
        ("ln_embeddings.weight", "bert.embeddings.LayerNorm.weight", False),
        ("ln_embeddings.bias", "bert.embeddings.LayerNorm.bias", False),
        ("head_dense.weight", "cls.predictions.transform.dense.weight", False),
        ("head_dense.bias", "cls.predictions.transform.dense.bias", False),
        ("head_norm.weight", "cls.predictions.transform.LayerNorm.weight", False),
        ("head_norm.bias", "cls.predictions.transform.LayerNorm.bias", False),
        ("lm_head.bias", "cls.predictions.bias", False),
    ]
    for i in range(cfg["num_layers"]):
        ours, theirs = f"layers.{i}.", f"bert.encoder.layer.{i}."
        for a, b in (
            ("attn.q_proj", "attention.self.query"), ("attn.k_proj", "attention.self.key"),
            ("attn.v_proj", "attention.self.value"), ("attn.out_proj", "attention.output.dense"),
            ("norm_attn", "attention.output.LayerNorm"), ("ffn.fc_in", "intermediate.dense"),
            ("ffn.fc_out", "output.dense"), ("norm_ffn", "output.LayerNorm"),
        ):
            for p in ("weight", "bias"):
                table.append((f"{ours}{a}.{p}", f"{theirs}{b}.{p}", False))
    return table


def _t5_table(cfg: dict[str, Any]) -> KeyTable:
    table = [
        ("token_embeddings.weight", "shared.weight", False),
        ("encoder_bias.relative_attention_bias.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", False),
        ("encoder_norm.weight", "encoder.final_layer_norm.weight", False),
        ("decoder_bias.relative_attention_bias.weight", "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", False),
        ("decoder_norm.weight", "decoder.final_layer_norm.weight", False),
    ]
    attention = (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o"))
    for stack, n in (("encoder", cfg["num_layers"]), ("decoder", cfg["num_decoder_layers"])):
        for i in range(n):
            ours, theirs = f"{stack}_layers.{i}.", f"{stack}.block.{i}.layer."
            table += [(f"{ours}attn.{a}.weight", f"{theirs}0.SelfAttention.{b}.weight", False) for a, b in attention]
            table.append((f"{ours}norm_attn.weight", f"{theirs}0.layer_norm.weight", False))
            ffn = 1
            if stack == "decoder":
                table += [(f"{ours}cross_attn.{a}.weight", f"{theirs}1.EncDecAttention.{b}.weight", False) for a, b in attention]
                table.append((f"{ours}norm_cross.weight", f"{theirs}1.layer_norm.weight", False))
                ffn = 2
            table += [
                (f"{ours}ffn.fc_in.weight", f"{theirs}{ffn}.DenseReluDense.wi.weight", False),
                (f"{ours}ffn.fc_out.weight", f"{theirs}{ffn}.DenseReluDense.wo.weight", False),
                (f"{ours}norm_ffn.weight", f"{theirs}{ffn}.layer_norm.weight", False),
            ]
    return table


def _hf_config(model: nn.Module):
    """The `transformers` configuration equal to `model.config`, with dropout off."""
    import transformers

    c, family = model.config, family_of(model)
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=c["vocab_size"], n_positions=c["context_length"], n_embd=c["d_model"], n_layer=c["num_layers"],
            n_head=c["num_heads"], n_inner=c["d_ff"], activation_function="gelu_new", layer_norm_epsilon=c["eps"],
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
            bos_token_id=None, eos_token_id=None,
        )
    if family == "llama":
        return transformers.LlamaConfig(
            vocab_size=c["vocab_size"], hidden_size=c["d_model"], intermediate_size=c["d_ff"],
            num_hidden_layers=c["num_layers"], num_attention_heads=c["num_heads"], num_key_value_heads=c["num_kv_heads"],
            head_dim=c["d_model"] // c["num_heads"], max_position_embeddings=c["context_length"], rms_norm_eps=c["eps"],
            rope_theta=c["rope_theta"], tie_word_embeddings=c["tie_embeddings"], attention_bias=False, mlp_bias=False,
            hidden_act="silu",
        )
    if family == "bert":
        return transformers.BertConfig(
            vocab_size=c["vocab_size"], hidden_size=c["d_model"], num_hidden_layers=c["num_layers"],
            num_attention_heads=c["num_heads"], intermediate_size=c["d_ff"], hidden_act="gelu",
            max_position_embeddings=c["context_length"], type_vocab_size=c["type_vocab_size"], layer_norm_eps=c["eps"],
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, tie_word_embeddings=True,
        )
    if family == "t5":
        if not c["tie_embeddings"]:
            raise ValueError("to_hf needs a T5 with tie_embeddings=True: transformers >= 5 always ties T5's output layer")
        return transformers.T5Config(
            vocab_size=c["vocab_size"], d_model=c["d_model"], d_kv=c["d_model"] // c["num_heads"], d_ff=c["d_ff"],
            num_layers=c["num_layers"], num_decoder_layers=c["num_decoder_layers"], num_heads=c["num_heads"],
            relative_attention_num_buckets=c["num_buckets"], relative_attention_max_distance=c["max_distance"],
            dropout_rate=0.0, layer_norm_epsilon=c["eps"], feed_forward_proj="relu",
            tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0,
        )


# ----------------------------------------------------------------------------------------------
# from_hf reads a configuration field by field: every field is either read into our configuration,
# checked against the one value we compute exactly, or known not to change what the model computes
# in eval mode. Any other field (a newer transformers' option, a typo'd kwarg) is refused by name.
# ----------------------------------------------------------------------------------------------

# Fields of every `PretrainedConfig` (and generation options older configurations still carry) that
# do not change the logits: metadata, output formatting, caching, special token ids, initialisation.
_NO_MATH = frozenset({
    "_name_or_path", "_commit_hash", "_attn_implementation", "_attn_implementation_autoset", "architectures",
    "transformers_version", "model_type", "dtype", "torch_dtype", "id2label", "label2id", "num_labels",
    "problem_type", "return_dict", "output_attentions", "output_hidden_states", "use_cache", "torchscript",
    "use_return_dict", "chunk_size_feed_forward", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
    "decoder_start_token_id", "initializer_range", "initializer_factor", "task_specific_params",
    "gradient_checkpointing", "finetuning_task", "tokenizer_class", "prefix", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k",
    "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "tf_legacy_loss",
    "pruned_heads",  # a pruned head changes a weight's shape, which the copy refuses by name
})

# Dropout: our models have none, and a `transformers` model in eval mode applies none, so the
# converted model computes the same logits (training it afterwards runs without dropout).
_DROPOUT = frozenset({
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "attention_dropout",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout_rate",
})

# Per family: fields read into our configuration (any value our constructor accepts) and fields with
# the only values we compute exactly. GPT-2's summary_* fields configure GPT2DoubleHeadsModel's
# classification head, which GPT2LMHeadModel does not have; Llama's pretraining_tp only slices the
# projections in old `transformers` (the same product); n_ctx is the obsolete twin of n_positions.
_READ = {
    "gpt2": frozenset({"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "layer_norm_epsilon",
                       "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "n_ctx"}),
    "llama": frozenset({"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                        "tie_word_embeddings", "pretraining_tp"}),
    "bert": frozenset({"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "max_position_embeddings", "type_vocab_size", "layer_norm_eps"}),
    "t5": frozenset({"vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon"}),
}
_FIXED: dict[str, dict[str, tuple[Any, ...]]] = {
    "gpt2": {
        "activation_function": ("gelu_new", "gelu_pytorch_tanh"),  # both are GELU's tanh approximation
        "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,),
        "reorder_and_upcast_attn": (False,), "add_cross_attention": (False,), "tie_word_embeddings": (True,),
        "is_encoder_decoder": (False,), "is_decoder": (False,),
    },
    "llama": {
        "hidden_act": ("silu",), "attention_bias": (False,), "mlp_bias": (False,), "is_encoder_decoder": (False,),
        "rope_scaling": (None,), "is_decoder": (False,),
    },
    "bert": {
        "hidden_act": ("gelu",), "position_embedding_type": ("absolute",), "is_decoder": (False,),
        "add_cross_attention": (False,), "tie_word_embeddings": (True,), "is_encoder_decoder": (False,),
    },
    "t5": {
        "feed_forward_proj": ("relu",), "dense_act_fn": ("relu",), "is_gated_act": (False,),
        "tie_word_embeddings": (True,), "scale_decoder_outputs": (True,), "is_encoder_decoder": (True,),
        "is_decoder": (False,),
    },
}
# The transformers classes whose parameter names the key tables use.
_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "bert": "BertForMaskedLM",
            "t5": "T5ForConditionalGeneration"}


def _check_fields(kind: str, fields: dict[str, Any]) -> None:
    """Refuse, by name, every field of a `kind` configuration that from_hf cannot reproduce exactly."""
    fixed = _FIXED[kind]
    for name, value in fields.items():
        if name in fixed:
            if not any(value is ok or (type(value) is type(ok) and value == ok) for ok in fixed[name]):
                allowed = " or ".join(repr(ok) for ok in fixed[name])
                raise ValueError(f"from_hf cannot convert a {kind} model with {name}={value!r}: "
                                 f"the course's model computes only {name}={allowed}")
        elif name == "rope_parameters" and kind == "llama":
            _check_rope_parameters(value)
        elif name not in _READ[kind] and name not in _NO_MATH and name not in _DROPOUT:
            raise ValueError(f"from_hf does not know the {kind} configuration field {name}={value!r}, which may "
                             "change the model's computation; it refuses rather than convert a different model")


def _check_rope_parameters(parameters: Any) -> None:
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise ValueError(f"from_hf cannot convert a llama model with rope_parameters={parameters!r}")
    for key, value in parameters.items():
        if key == "rope_type" and value != "default":
            raise ValueError(f"from_hf cannot convert a llama model with rope_parameters rope_type={value!r} "
                             "(rope_scaling): the course's RotaryEmbedding computes only unscaled RoPE ('default')")
        if key not in ("rope_type", "rope_theta"):
            raise ValueError(f"from_hf cannot convert a llama model with rope_parameters {key}={value!r}: "
                             "the course's RotaryEmbedding computes only unscaled RoPE")


def _rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None)  # transformers >= 5
    if parameters and "rope_theta" in parameters:
        return float(parameters["rope_theta"])
    return float(config.rope_theta)


def _ours_from_config(config) -> nn.Module:
    """Our model (fresh weights) matching a `transformers` configuration; refuses what we cannot express."""
    kind = getattr(config, "model_type", None)
    if kind not in _READ:
        raise ValueError(f"from_hf converts gpt2, llama, bert and t5 models, got model_type {kind!r}")
    _check_fields(kind, config.to_dict())
    if kind == "gpt2":
        return GPT2(config.vocab_size, config.n_positions, config.n_embd, config.n_layer, config.n_head,
                    config.n_inner or 4 * config.n_embd, config.layer_norm_epsilon)
    if kind == "llama":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if head_dim * config.num_attention_heads != config.hidden_size:
            raise ValueError(f"from_hf cannot convert a llama model with head_dim={head_dim}: the course's model "
                             f"needs head_dim * num_attention_heads == hidden_size ({config.hidden_size})")
        return TransformerLM(config.vocab_size, config.max_position_embeddings, config.hidden_size,
                             config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
                             _rope_theta(config), config.num_key_value_heads, config.rms_norm_eps,
                             bool(config.tie_word_embeddings))
    if kind == "bert":
        return BertForMaskedLM(config.vocab_size, config.max_position_embeddings, config.hidden_size,
                               config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
                               config.type_vocab_size, config.layer_norm_eps)
    if config.d_kv * config.num_heads != config.d_model:
        raise ValueError(f"from_hf cannot convert a t5 model with d_kv={config.d_kv}: the course's T5 needs "
                         f"d_kv * num_heads == d_model ({config.d_model})")
    return T5(config.vocab_size, config.d_model, config.num_layers, config.num_heads, config.d_ff,
              config.num_decoder_layers, config.relative_attention_num_buckets,
              config.relative_attention_max_distance, config.layer_norm_epsilon, tie_embeddings=True)


def key_table(model: nn.Module) -> KeyTable:
    """The (our name, Hugging Face name, transpose) pairs for one of our models (any class with the
    family's name, parameter names and `config`, a learner's twin included)."""
    tables = {"gpt2": _gpt2_table, "llama": _llama_table, "bert": _bert_table, "t5": _t5_table}
    return tables[family_of(model)](model.config)


def _copy(table: KeyTable, source: dict[str, torch.Tensor], target: nn.Module, source_is_ours: bool) -> None:
    """Copy each tensor of the table from `source` into the matching parameter of `target`."""
    params = dict(target.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for ours, theirs, transpose in table:
            src, dst = (ours, theirs) if source_is_ours else (theirs, ours)
            tensor = source[src].t() if transpose else source[src]
            if params[dst].shape != tensor.shape:
                raise ValueError(f"{src} {tuple(tensor.shape)} does not fit {dst} {tuple(params[dst].shape)}")
            params[dst].copy_(tensor)


def to_hf(model: nn.Module):
    """The `transformers` model with `model`'s configuration and weights, in eval mode.

    GPT2 -> GPT2LMHeadModel, TransformerLM -> LlamaForCausalLM (GQA included), BertForMaskedLM ->
    BertForMaskedLM, T5 -> T5ForConditionalGeneration. Attention runs in the "eager" implementation.
    """
    import transformers

    config = _hf_config(model)
    classes = {"gpt2": transformers.GPT2LMHeadModel, "llama": transformers.LlamaForCausalLM,
               "bert": transformers.BertForMaskedLM, "t5": transformers.T5ForConditionalGeneration}
    config._attn_implementation = "eager"
    hf = classes[config.model_type](config)
    table = key_table(model)
    _copy(table, dict(model.named_parameters(remove_duplicate=False)), hf, source_is_ours=True)
    _check_covered(hf, {theirs for _, theirs, _ in table})
    return hf.eval()


def from_hf(hf_model) -> nn.Module:
    """Our model with the configuration and weights of a `transformers` GPT-2, Llama, BERT (MLM) or T5 model.

    Exact or refused: every field of `hf_model.config` is read into our configuration, checked to
    hold the one value the course's model computes (GELU's tanh form for GPT-2, SiLU and no biases
    and unscaled RoPE for Llama, absolute positions for BERT, T5 1.0's ReLU and tied, rescaled
    output), or known not to change the logits (metadata, dropout, special token ids). Anything
    else raises a ValueError that names the field. The model must be one of GPT2LMHeadModel,
    LlamaForCausalLM, BertForMaskedLM and T5ForConditionalGeneration, whose parameter names the
    key tables use.
    """
    model = _ours_from_config(hf_model.config)
    expected = _CLASSES[hf_model.config.model_type]
    if type(hf_model).__name__ != expected:
        raise ValueError(f"from_hf converts a {hf_model.config.model_type} model given as {expected}, "
                         f"got {type(hf_model).__name__}")
    table = key_table(model)
    _copy(table, dict(hf_model.named_parameters(remove_duplicate=False)), model, source_is_ours=False)
    _check_covered(model, {ours for ours, _, _ in table})
    return model


def _check_covered(target: nn.Module, written: set[str]) -> None:
    """Every parameter tensor of `target` must have been written under one of its names (tied ones once)."""
    names: dict[int, list[str]] = {}
    for name, p in target.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    missed = [aliases[0] for aliases in names.values() if not written.intersection(aliases)]
    if missed:
        raise ValueError(f"conversion left parameters unset: {missed}")
