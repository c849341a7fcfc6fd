"""Chapter 5's families that have no exercise twin (GPT-2, BERT, T5), the masks, counting and the
Hugging Face conversion: tests of `reference` alone.

Oracles: `GPT2LMHeadModel`, `BertForMaskedLM`, `T5ForConditionalGeneration` and `LlamaForCausalLM`
from `transformers`, built offline from tiny configurations (weights copied with `to_hf`), and
PyTorch's `FlopCounterMode` for the FLOP formulas.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from reference.models import BertForMaskedLM, GPT2, T5, TransformerLM
from reference.models import counting, masks
from reference.models.hf import from_hf, key_table, to_hf

V = 67


def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module.eval()


def _ids(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (batch, seq), generator=torch.Generator().manual_seed(seed))


FAMILIES = {
    "gpt2": lambda: GPT2(V, 16, 32, 2, 4),
    "llama-gqa": lambda: TransformerLM(V, 16, 32, 2, 4, 48, rope_theta=1000.0, num_kv_heads=2),
    "llama-tied": lambda: TransformerLM(V, 16, 32, 1, 2, 24, tie_embeddings=True),
    "bert": lambda: BertForMaskedLM(V, 16, 32, 2, 4, type_vocab_size=3),
    "t5": lambda: T5(V, 32, 2, 4, 48, num_decoder_layers=3, num_buckets=8, max_distance=12),
}


def _both_logits(model, hf, ids, lengths=None):
    attention_mask = None
    if lengths is not None:
        attention_mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        if isinstance(model, T5):
            dec = _ids(ids.shape[0], 6, seed=9)
            return model(ids, dec, attention_mask), hf(input_ids=ids, decoder_input_ids=dec, attention_mask=attention_mask).logits
        if isinstance(model, BertForMaskedLM):
            types = (torch.arange(ids.shape[1]) >= 5).long().expand_as(ids)
            return (model(ids, attention_mask, types),
                    hf(input_ids=ids, attention_mask=attention_mask, token_type_ids=types).logits)
        return model(ids), hf(input_ids=ids).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_same_logits_as_hugging_face(family):
    torch.manual_seed(0)
    model = _randomise(FAMILIES[family]())
    hf = to_hf(model)
    ours, theirs = _both_logits(model, hf, _ids(3, 12))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_same_logits_as_hugging_face_with_padding(family):
    model = _randomise(FAMILIES[family](), seed=1)
    hf = to_hf(model)
    lengths = torch.tensor([12, 7, 3])
    ours, theirs = _both_logits(model, hf, _ids(3, 12), lengths)
    if family == "bert":  # padded query rows are garbage in both: compare real tokens only
        keep = torch.arange(12)[None, :] < lengths[:, None]
        ours, theirs = ours[keep], theirs[keep]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_from_hf_of_to_hf_is_the_identity(family):
    model = _randomise(FAMILIES[family](), seed=2)
    back = from_hf(to_hf(model))
    assert type(back) is type(model) and back.config == model.config
    assert back.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


@pytest.mark.parametrize("family", FAMILIES)
def test_the_key_table_covers_every_tensor_once(family):
    model = FAMILIES[family]()
    table = key_table(model)
    ours = [a for a, _, _ in table]
    assert len(ours) == len(set(ours))
    tensors = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if name in ours}
    assert tensors == {id(p) for p in model.parameters()}


def test_from_hf_refuses_what_it_cannot_express():
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        attention_bias=True))
    with pytest.raises(ValueError, match="bias"):
        from_hf(llama)
    with pytest.raises(ValueError, match="model_type"):
        from_hf(transformers.OPTForCausalLM(transformers.OPTConfig(
            vocab_size=V, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2)))
    with pytest.raises(ValueError, match="tie_embeddings"):
        to_hf(T5(V, 32, 1, 4, 48, tie_embeddings=False))


# ----------------------------------------------------------------------------------------------
# Behaviour driven by the masks
# ----------------------------------------------------------------------------------------------


def test_gpt2_is_causal_and_bert_is_not():
    gpt, bert = _randomise(GPT2(V, 16, 32, 2, 4)), _randomise(BertForMaskedLM(V, 16, 32, 2, 4))
    ids = _ids(1, 10)
    changed = ids.clone()
    changed[0, 8] = (changed[0, 8] + 1) % V
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids)[0, :8], gpt(changed)[0, :8])
        assert not torch.allclose(bert(ids)[0, :8], bert(changed)[0, :8], atol=1e-4)


def test_t5_decoder_is_causal_and_sees_the_whole_input():
    model = _randomise(FAMILIES["t5"]())
    src, dec = _ids(1, 9), _ids(1, 6, seed=3)
    later_dec, later_src = dec.clone(), src.clone()
    later_dec[0, 4] = (later_dec[0, 4] + 1) % V
    later_src[0, 8] = (later_src[0, 8] + 1) % V
    with torch.no_grad():
        base = model(src, dec)
        torch.testing.assert_close(base[0, :4], model(src, later_dec)[0, :4])
        assert not torch.allclose(base[0, 0], model(later_src, dec)[0, 0], atol=1e-4)


def test_masks_by_hand():
    assert torch.equal(masks.bidirectional_mask(3), torch.ones(3, 3, dtype=torch.bool))
    cross = masks.cross_mask(torch.tensor([2, 3]), seq_q=4, seq_k=3)
    assert cross.shape == (2, 1, 4, 3)
    assert cross[0, 0].tolist() == [[True, True, False]] * 4 and cross[1].all()
    with pytest.raises(ValueError, match="seq_len"):
        masks.bidirectional_mask(-1)


# ----------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------

CONFIGS = [
    GPT2(V, 16, 32, 2, 4), GPT2(101, 40, 48, 3, 6, d_ff=100),
    TransformerLM(V, 16, 32, 2, 4, 48, num_kv_heads=1), TransformerLM(101, 8, 48, 3, 6, 128, tie_embeddings=True),
    BertForMaskedLM(V, 16, 32, 2, 4), BertForMaskedLM(101, 24, 48, 1, 3, d_ff=64, type_vocab_size=1),
    T5(V, 32, 2, 4, 48), T5(101, 48, 1, 6, 64, num_decoder_layers=3, num_buckets=16),
]


@pytest.mark.parametrize("model", CONFIGS, ids=lambda m: f"{type(m).__name__}-{sum(p.numel() for p in m.parameters())}")
def test_closed_form_parameter_count_equals_the_module(model):
    family = counting.family_of(model)
    closed = counting.parameter_count(family, model.config)
    assert closed == counting.module_parameter_count(model)
    assert sum(closed.values()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model", CONFIGS, ids=lambda m: f"{type(m).__name__}-{sum(p.numel() for p in m.parameters())}")
@pytest.mark.parametrize("seq_len", [1, 7])
def test_forward_flops_equal_pytorchs_flop_counter(model, seq_len):
    family = counting.family_of(model)
    ids = _ids(2, seq_len)
    inputs = (ids, ids) if family == "t5" else (ids,)
    predicted = sum(counting.forward_flops(family, model.config, seq_len, batch=2).values())
    assert predicted == counting.measured_forward_flops(model, *inputs)


def test_kaplan_approximation_and_weight_memory():
    model = GPT2(50257, 1024, 768, 12, 12)  # GPT-2 small, 124M
    n = sum(p.numel() for p in model.parameters())
    assert n == 124_439_808
    non_embedding = n - counting.parameter_count("gpt2", model.config)["embeddings"]
    assert abs(non_embedding - 12 * 12 * 768**2) / non_embedding < 0.01  # Kaplan et al.: N ~ 12 L d^2
    assert counting.weight_bytes(n, torch.bfloat16) * 2 == counting.weight_bytes(n, torch.float32) == 4 * n
    with pytest.raises(ValueError, match="family"):
        counting.parameter_count("mamba", {})
    with pytest.raises(TypeError, match="Linear"):
        counting.family_of(torch.nn.Linear(2, 2))
