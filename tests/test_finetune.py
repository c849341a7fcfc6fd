"""Chapter 11: LoRA, SFT (response-only loss, packing) and the 4-bit QLoRA bases.

Oracles: `peft`'s LoRA (a single layer, and the Hugging Face version of llama-tiny from
`reference.models.hf.to_hf`) with the same A and B; the published NF4 table; llama.cpp's Q4_1
layout as Chapter 6's GGUF reader decodes it; per-example losses and gradients run one at a time.
The models are llama-tiny (loaded once) and tiny random TransformerLMs.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from reference.models import gguf
from reference.models.hf import to_hf
from reference.models.llama import TransformerLM
from reference.pretrained import load_pretrained
from reference.training.numerics import cross_entropy

peft = pytest.importorskip("peft")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_pretrained("llama-tiny")
    return model, tokenizer


def _small_lm(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(vocab_size=64, context_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=48, num_kv_heads=2).eval()


class _One(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 10)

    def forward(self, x):
        return self.lin(x)


def _peft_single(r=4, alpha=8.0, seed=0):
    torch.manual_seed(seed)
    base = _One()
    ours_base = copy.deepcopy(base.lin)
    wrapped = peft.get_peft_model(base, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin"], lora_dropout=0.0))
    layer = wrapped.base_model.model.lin
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    return wrapped, layer, ours_base


# ---------------------------------------------------------------------------------------------- 11.1 LoRALinear


@pytest.mark.exercise("11.1")
@pytest.mark.points(3)
@pytest.mark.parametrize("r, alpha", [(4, 8.0), (2, 7.0), (8, 8.0)])
def test_lora_linear_matches_peft_outputs_and_gradients(impl, r, alpha):
    wrapped, layer, base = _peft_single(r, alpha)
    ours = impl.finetune.lora.LoRALinear(base, r=r, alpha=alpha)
    with torch.no_grad():
        ours.lora_A["default"].copy_(layer.lora_A["default"].weight)
        ours.lora_B["default"].copy_(layer.lora_B["default"].weight)
    x = torch.randn(3, 5, 12)
    y_ref, y = wrapped(x), ours(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y)
    (y_ref * g).sum().backward()
    (y * g).sum().backward()
    torch.testing.assert_close(ours.lora_A["default"].grad, layer.lora_A["default"].weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.lora_B["default"].grad, layer.lora_B["default"].weight.grad, rtol=1e-5, atol=1e-6)
    assert ours.base.weight.grad is None and not ours.base.weight.requires_grad and not ours.base.bias.requires_grad


@pytest.mark.exercise("11.1")
@pytest.mark.points(2)
def test_lora_linear_init_is_the_base_exactly_and_a_is_kaiming(impl):
    torch.manual_seed(0)
    base = nn.Linear(256, 40)
    ours = impl.finetune.lora.LoRALinear(copy.deepcopy(base), r=6, alpha=12.0)
    x = torch.randn(4, 256)
    assert torch.equal(ours(x), base(x))
    a, b = ours.lora_A["default"], ours.lora_B["default"]
    assert a.shape == (6, 256) and b.shape == (40, 6) and torch.all(b == 0)
    bound = 1 / 256**0.5
    assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound and abs(a.std().item() - bound / 3**0.5) < 0.1 * bound
    assert a.requires_grad and b.requires_grad
    assert ours.scaling["default"] == 2.0


@pytest.mark.exercise("11.1")
@pytest.mark.points(3)
def test_lora_linear_merge_matches_peft_and_unmerge_restores(impl):
    wrapped, layer, base = _peft_single(4, 8.0)
    original = base.weight.detach().clone()
    ours = impl.finetune.lora.LoRALinear(base, r=4, alpha=8.0)
    with torch.no_grad():
        ours.lora_A["default"].copy_(layer.lora_A["default"].weight)
        ours.lora_B["default"].copy_(layer.lora_B["default"].weight)
    x = torch.randn(7, 12)
    before = ours(x)
    torch.testing.assert_close(ours.delta_weight(), 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
    ours.merge()
    merged = wrapped.merge_and_unload()
    torch.testing.assert_close(ours.base.weight, merged.lin.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours(x), before, rtol=1e-5, atol=1e-5)  # merged: the same function, adapter not added twice
    with pytest.raises(ValueError):
        ours.merge()
    ours.unmerge()
    assert (ours.base.weight - original).abs().max() <= 1e-6
    torch.testing.assert_close(ours(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.exercise("11.1")
@pytest.mark.points(2)
def test_lora_linear_dropout_on_the_adapter_input_only(impl):
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    ours = impl.finetune.lora.LoRALinear(copy.deepcopy(base), r=4, alpha=4.0, dropout=0.5)
    with torch.no_grad():
        ours.lora_B["default"].normal_()
    x = torch.randn(64, 16)
    ours.train()
    torch.manual_seed(1)
    y_train = ours(x)
    torch.manual_seed(1)
    keep = torch.nn.functional.dropout(x, 0.5, training=True)
    a, b = ours.lora_A["default"], ours.lora_B["default"]
    torch.testing.assert_close(y_train, base(x) + keep @ a.T @ b.T, rtol=1e-5, atol=1e-5)
    ours.eval()
    torch.testing.assert_close(ours(x), base(x) + x @ a.T @ b.T, rtol=1e-5, atol=1e-5)


@pytest.mark.exercise("11.1")
@pytest.mark.points(2)
def test_lora_linear_several_adapters_switch(impl):
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    ours = impl.finetune.lora.LoRALinear(copy.deepcopy(base), r=2, alpha=2.0, adapter="one")
    ours.add_adapter("two", r=3, alpha=6.0)
    with torch.no_grad():
        for name in ("one", "two"):
            ours.lora_B[name].normal_()
    x = torch.randn(5, 8)
    assert ours.active_adapter == "two"
    for name in ("one", "two"):
        ours.set_adapter(name)
        expected = base(x) + ours.scaling[name] * x @ ours.lora_A[name].T @ ours.lora_B[name].T
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
    assert ours.scaling == {"one": 1.0, "two": 2.0}
    ours.set_adapter(None)
    torch.testing.assert_close(ours(x), base(x))
    with pytest.raises(ValueError):
        ours.set_adapter("three")
    with pytest.raises(ValueError):
        ours.add_adapter("one")
    with pytest.raises(ValueError):
        impl.finetune.lora.LoRALinear(nn.Linear(4, 4), r=0)


# ---------------------------------------------------------------------------------------------- 11.2 inject_lora


@pytest.mark.exercise("11.2")
@pytest.mark.points(3)
def test_inject_lora_by_pattern_and_by_suffix(impl):
    lora = impl.finetune.lora
    model = _small_lm()
    names = lora.inject_lora(model, r"layers\.\d+\.attn\.(q|v)_proj", r=4)
    assert names == ["layers.0.attn.q_proj", "layers.0.attn.v_proj", "layers.1.attn.q_proj", "layers.1.attn.v_proj"]
    assert all(isinstance(model.get_submodule(n), lora.LoRALinear) for n in names)
    assert not isinstance(model.layers[0].attn.k_proj, lora.LoRALinear)
    model2 = _small_lm()
    assert lora.inject_lora(model2, ["q_proj", "v_proj"], r=4) == names
    trainable = sorted(n for n, p in model2.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"{n}.lora_{m}.default" for n in names for m in "AB")
    with pytest.raises(ValueError):
        lora.inject_lora(_small_lm(), ["nothing_matches"])
    with pytest.raises(TypeError):
        lora.inject_lora(_small_lm(), r"layers\.0\.norm_attn")


@pytest.mark.exercise("11.2")
@pytest.mark.points(3)
def test_inject_lora_is_the_base_at_init_and_seeded(impl):
    lora = impl.finetune.lora
    base = _small_lm()
    ids = torch.randint(0, 64, (2, 16))
    expected = base(ids)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    lora.inject_lora(a, ["q_proj", "v_proj", "w2"], r=4, seed=3)
    lora.inject_lora(b, ["q_proj", "v_proj", "w2"], r=4, seed=3)
    assert torch.equal(a(ids), expected)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    c = copy.deepcopy(base)
    lora.inject_lora(c, ["q_proj"], r=4, seed=4)
    assert not torch.equal(c.layers[0].attn.q_proj.lora_A["default"], a.layers[0].attn.q_proj.lora_A["default"])


@pytest.mark.exercise("11.2")
@pytest.mark.points(4)
def test_lora_model_matches_peft_on_the_hf_model(impl, tiny):
    """Our LoRA on llama-tiny against peft's LoRA on the same model in transformers, same A and B."""
    lora = impl.finetune.lora
    model, _ = tiny
    ours = copy.deepcopy(model).float()
    hf = to_hf(copy.deepcopy(model).float())
    targets = ["q_proj", "v_proj", "w2"]
    lora.inject_lora(ours, targets, r=4, alpha=8.0)
    hf = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    pairs = []
    for i in range(ours.config["num_layers"]):
        for mine, theirs in (("attn.q_proj", "self_attn.q_proj"), ("attn.v_proj", "self_attn.v_proj"), ("ffn.w2", "mlp.down_proj")):
            a = ours.get_submodule(f"layers.{i}.{mine}")
            b = hf.base_model.model.model.layers[i].get_submodule(theirs)
            with torch.no_grad():
                b.lora_B["default"].weight.copy_(torch.randn(b.lora_B["default"].weight.shape, generator=generator) * 0.05)
                a.lora_A["default"].copy_(b.lora_A["default"].weight)
                a.lora_B["default"].copy_(b.lora_B["default"].weight)
            pairs.append((a, b))
    ids = torch.randint(0, 4096, (2, 24), generator=generator)
    ours.train(), hf.train()
    logits, reference_logits = ours(ids), hf(input_ids=ids).logits
    torch.testing.assert_close(logits, reference_logits, rtol=1e-4, atol=1e-4)
    cross_entropy(logits[:, :-1], ids[:, 1:]).backward()
    cross_entropy(reference_logits[:, :-1], ids[:, 1:]).backward()
    for a, b in pairs:
        torch.testing.assert_close(a.lora_B["default"].grad, b.lora_B["default"].weight.grad, rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(a.lora_A["default"].grad, b.lora_A["default"].weight.grad, rtol=1e-3, atol=1e-6)
    merged_hf = hf.merge_and_unload()
    lora.merge_and_unload(ours)
    for i in range(ours.config["num_layers"]):
        torch.testing.assert_close(ours.layers[i].attn.q_proj.weight, merged_hf.model.layers[i].self_attn.q_proj.weight, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours.layers[i].ffn.w2.weight, merged_hf.model.layers[i].mlp.down_proj.weight, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- 11.3 merge_and_unload


@pytest.mark.exercise("11.3")
@pytest.mark.points(3)
def test_merge_and_unload_gives_plain_layers_and_the_same_function(impl):
    lora = impl.finetune.lora
    model = _small_lm()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora.inject_lora(model, ["q_proj", "w1"], r=4, alpha=4.0)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B["default"].normal_(std=0.1)
    ids = torch.randint(0, 64, (2, 16))
    adapted = model(ids)
    lora.merge_lora(model)
    torch.testing.assert_close(model(ids), adapted, rtol=1e-5, atol=1e-5)
    lora.unmerge_lora(model)
    for name, p in model.named_parameters():
        plain = name.replace(".base.", ".")
        if plain in original:
            assert (p - original[plain]).abs().max() <= 1e-6, name
    merged = lora.merge_and_unload(model)
    assert not lora.lora_layers(merged)
    assert all(type(m) is nn.Linear for n, m in merged.named_modules() if n.endswith(("q_proj", "w1")))
    assert set(dict(merged.named_parameters())) == set(original)
    torch.testing.assert_close(merged(ids), adapted, rtol=1e-5, atol=1e-5)


@pytest.mark.exercise("11.3")
@pytest.mark.points(2)
def test_merge_and_unload_uses_the_active_adapter(impl):
    lora = impl.finetune.lora
    model = _small_lm()
    lora.inject_lora(model, ["v_proj"], r=2, adapter="first")
    lora.inject_lora(model, ["v_proj"], r=2, adapter="second")
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B["first"].normal_()
            layer.lora_B["second"].normal_()
    lora.set_adapter(model, "first")
    ids = torch.randint(0, 64, (1, 10))
    expected = model(ids)
    torch.testing.assert_close(lora.merge_and_unload(model)(ids), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- adapters: training and files


@pytest.mark.exercise("11.2")
@pytest.mark.points(2)
def test_only_adapters_train_and_the_base_stays_bit_identical(impl, tmp_path):
    lora = impl.finetune.lora
    model = _small_lm()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora.inject_lora(model, ["q_proj", "v_proj"], r=4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids = torch.randint(0, 64, (4, 17))
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        cross_entropy(model(ids[:, :-1]), ids[:, 1:]).backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == ("lora_" in name), name
        optimizer.step()
    for name, p in model.named_parameters():
        plain = name.replace(".base.", ".")
        if plain in before:
            assert torch.equal(p, before[plain]), name
    assert any(not torch.equal(layer.lora_B["default"], torch.zeros_like(layer.lora_B["default"])) for layer in lora.lora_layers(model).values())
    # the adapter file holds A and B only, and loads into a fresh base to the same function
    path = lora.save_adapter(model, tmp_path / "adapter.safetensors")
    fresh = _small_lm()
    assert lora.load_adapter(fresh, path) == "default"
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(ids), model(ids))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(f"layers.{i}.attn.{p}_proj.lora_{m}" for i in range(2) for p in "qv" for m in "AB")
    with pytest.raises(ValueError):
        other = TransformerLM(vocab_size=64, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=48)
        lora.load_adapter(other, path)


# ---------------------------------------------------------------------------------------------- 11.4 - 11.6 SFT


@pytest.mark.exercise("11.4")
@pytest.mark.points(2)
def test_sft_example_masks_the_prompt(impl):
    inputs, targets, mask = impl.finetune.sft.sft_example([5, 6, 7], [8, 9])
    assert inputs.tolist() == [5, 6, 7, 8] and targets.tolist() == [6, 7, 8, 9]
    assert mask.dtype == torch.bool and mask.tolist() == [False, False, True, True]
    _, _, mask = impl.finetune.sft.sft_example([1], [2, 3, 4])
    assert mask.tolist() == [True, True, True]
    with pytest.raises(ValueError):
        impl.finetune.sft.sft_example([], [1])


@pytest.mark.exercise("11.4")
@pytest.mark.points(3)
def test_response_only_loss_ignores_prompt_targets(impl):
    model = _small_lm()
    prompt, response = [3, 4, 5, 6, 7], [8, 9, 10]
    inputs, targets, mask = impl.finetune.sft.sft_example(prompt, response)
    logits = model(inputs[None])
    loss = cross_entropy(logits, targets[None], mask[None])
    changed = targets.clone()
    changed[~mask] = torch.randint(0, 64, (int((~mask).sum()),))
    changed[: len(prompt) - 2] = 0
    torch.testing.assert_close(cross_entropy(logits, changed[None], mask[None]), loss)
    changed[-1] = (changed[-1] + 1) % 64  # a response target does change it
    assert not torch.allclose(cross_entropy(logits, changed[None], mask[None]), loss)
    nll = -torch.log_softmax(logits[0], -1)[torch.arange(len(targets)), targets]
    torch.testing.assert_close(loss, nll[len(prompt) - 1 :].mean())


EXAMPLES = [([1, 2, 3, 4], [5, 6]), ([7, 8], [9, 10, 11]), ([12, 13, 14], [15]), ([16, 17, 18, 19, 20], [21, 22, 23]), ([2, 3], [4])]


@pytest.mark.exercise("11.5")
@pytest.mark.points(3)
def test_pack_examples_layout(impl):
    batch = impl.finetune.sft.pack_examples(EXAMPLES, context_length=10, pad_id=0)
    lengths = [len(p) + len(r) - 1 for p, r in EXAMPLES]  # 5, 4, 3, 7, 2
    assert batch.input_ids.shape == (3, 10)
    assert batch.rows_of == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1)]  # first fit: 5+4 | 3+7 | 2
    assert batch.segment_ids[0].tolist() == [1] * 5 + [2] * 4 + [0]
    assert batch.positions[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0]
    assert batch.positions[1].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]
    assert batch.positions[2].tolist() == [0, 1] + [0] * 8 and batch.segment_ids[2].tolist() == [1, 1] + [0] * 8
    assert batch.input_ids[0].tolist() == [1, 2, 3, 4, 5, 7, 8, 9, 10, 0]
    assert batch.targets[0].tolist() == [2, 3, 4, 5, 6, 8, 9, 10, 11, 0]
    assert batch.loss_mask[0].tolist() == [False, False, False, True, True, False, True, True, True, False]
    assert int(batch.loss_mask.sum()) == sum(len(r) for _, r in EXAMPLES)
    assert int((batch.segment_ids > 0).sum()) == sum(lengths)
    later = impl.finetune.sft.pack_examples(EXAMPLES + [([30], [31])], context_length=10)  # one position: fits row 0's gap
    assert later.rows_of[-1] == (0, 3) and later.input_ids.shape == (3, 10) and later.segment_ids[0, 9] == 3
    with pytest.raises(ValueError):
        impl.finetune.sft.pack_examples([([1] * 10, [2, 3])], context_length=10)


@pytest.mark.exercise("11.6")
@pytest.mark.points(3)
def test_packed_attention_mask_is_block_diagonal_causal(impl):
    segments = torch.tensor([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    mask = impl.finetune.sft.packed_attention_mask(segments)
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.bool
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[:3, :3] = torch.tril(torch.ones(3, 3, dtype=torch.bool))
    expected[3:5, 3:5] = torch.tril(torch.ones(2, 2, dtype=torch.bool))
    expected[5, 5] = True
    assert torch.equal(mask[0, 0], expected)
    assert torch.equal(mask[1, 0], torch.tril(torch.ones(6, 6, dtype=torch.bool)))


@pytest.mark.exercise("11.5")
@pytest.mark.points(4)
def test_packed_batch_equals_one_at_a_time_losses_and_gradients(impl):
    """No attention across boundaries and positions restarting: each example's loss and gradient
    in the packed batch equal those of the example run alone."""
    sft = impl.finetune.sft
    model = _small_lm()
    batch = sft.pack_examples(EXAMPLES, context_length=10)
    logits = model(batch.input_ids, positions=batch.positions, attention_mask=sft.packed_attention_mask(batch.segment_ids))
    packed = sft.example_losses(logits, batch)
    alone = []
    for prompt, response in EXAMPLES:
        inputs, targets, mask = sft.sft_example(prompt, response)
        alone.append(cross_entropy(model(inputs[None]), targets[None], mask[None]))
    torch.testing.assert_close(packed, torch.stack(alone), rtol=1e-5, atol=1e-5)
    weights = torch.tensor([0.3, 1.0, -0.5, 2.0, 0.7])
    grads_packed = torch.autograd.grad((packed * weights).sum(), list(model.parameters()))
    grads_alone = torch.autograd.grad((torch.stack(alone) * weights).sum(), list(model.parameters()))
    for gp, ga in zip(grads_packed, grads_alone):
        torch.testing.assert_close(gp, ga, rtol=1e-4, atol=1e-6)
    # the batch loss is the token-level mean over every response token
    total = sum(len(r) for _, r in EXAMPLES)
    expected = sum(loss * len(r) for loss, (_, r) in zip(alone, EXAMPLES)) / total
    torch.testing.assert_close(sft.sft_loss(model, batch), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("11.6")
@pytest.mark.points(2)
def test_packing_without_the_mask_would_leak(impl):
    """The check has teeth: with a plain causal mask the second example sees the first."""
    sft = impl.finetune.sft
    model = _small_lm()
    batch = sft.pack_examples(EXAMPLES[:2], context_length=10)
    right = sft.example_losses(model(batch.input_ids, positions=batch.positions,
                                     attention_mask=sft.packed_attention_mask(batch.segment_ids)), batch)
    leaky = sft.example_losses(model(batch.input_ids, positions=batch.positions), batch)
    assert torch.allclose(right[0], leaky[0], atol=1e-6) and not torch.allclose(right[1], leaky[1], atol=1e-4)


# ---------------------------------------------------------------------------------------------- 11.7 - 11.10 quantization

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]  # bitsandbytes' table (Dettmers et al., 2023)  # fmt: skip


@pytest.mark.exercise("11.7")
@pytest.mark.points(3)
def test_quantize_nf4_picks_the_nearest_level_per_block(impl):
    quant = impl.finetune.quant
    assert list(quant.NF4_TABLE) == NF4
    torch.manual_seed(0)
    w = torch.randn(8, 64) * torch.linspace(0.1, 3, 8)[:, None]
    codes, absmax = quant.quantize_nf4(w, block_size=32)
    assert codes.dtype == torch.uint8 and codes.shape == (256,) and absmax.shape == (16,)
    torch.testing.assert_close(absmax, w.reshape(16, 32).abs().amax(1))
    q = torch.stack((codes & 15, codes >> 4), -1).reshape(16, 32).long()
    table = torch.tensor(NF4)
    scaled = w.reshape(16, 32) / absmax[:, None]
    best = (scaled[..., None] - table).abs().min(-1).values
    assert torch.allclose((scaled - table[q]).abs(), best, atol=1e-7)
    assert codes[0] == (q[0, 0] | (q[0, 1] << 4))  # even element in the low nibble
    # the block's absmax maps to exactly +-1
    assert set(table[q].abs().amax(1).tolist()) == {1.0}


@pytest.mark.exercise("11.7")
@pytest.mark.points(2)
def test_quantize_nf4_edge_cases(impl):
    quant = impl.finetune.quant
    codes, absmax = quant.quantize_nf4(torch.zeros(64))
    assert absmax.tolist() == [0.0] and torch.all(quant.dequantize_nf4(codes, absmax, (64,)) == 0)
    w = torch.tensor(NF4 * 4) * 2.5
    codes, absmax = quant.quantize_nf4(w)
    torch.testing.assert_close(quant.dequantize_nf4(codes, absmax, (64,)), w)  # the levels themselves are exact
    with pytest.raises(ValueError):
        quant.quantize_nf4(torch.randn(65))
    with pytest.raises(TypeError):
        quant.quantize_nf4(torch.ones(64, dtype=torch.long))


@pytest.mark.exercise("11.8")
@pytest.mark.points(3)
def test_dequantize_nf4_round_trip_within_half_a_step(impl):
    quant = impl.finetune.quant
    torch.manual_seed(1)
    w = torch.randn(16, 128)
    codes, absmax = quant.quantize_nf4(w, 64)
    back = quant.dequantize_nf4(codes, absmax, w.shape, 64)
    assert back.shape == w.shape and back.dtype == torch.float32
    gaps = torch.diff(torch.tensor(NF4)).max() / 2
    err = (back - w).abs().reshape(-1, 64) / absmax[:, None]
    assert err.max() <= gaps + 1e-6
    assert (back - w).pow(2).mean().sqrt() < 0.12  # NF4 on N(0, 1) in blocks of 64: about 0.1
    assert quant.dequantize_nf4(codes, absmax, w.shape, 64, dtype=torch.bfloat16).dtype == torch.bfloat16
    swapped = torch.stack((codes >> 4, codes & 15), -1).reshape(-1)
    assert not torch.equal(quant.dequantize_nf4((swapped[0::2] | (swapped[1::2] << 4)).to(torch.uint8), absmax, w.shape), back)


@pytest.mark.exercise("11.9")
@pytest.mark.points(3)
def test_double_quantization_of_the_constants(impl):
    quant = impl.finetune.quant
    torch.manual_seed(2)
    absmax = torch.rand(600) * 3 + 1
    codes, scales, mean = quant.double_quantize(absmax, 256)
    assert codes.dtype == torch.int8 and codes.shape == (600,) and scales.shape == (3,)
    torch.testing.assert_close(mean, absmax.mean())
    back = quant.double_dequantize(codes, scales, mean, 256)
    centred = (absmax - absmax.mean())
    for k in range(3):
        block = centred[256 * k : 256 * (k + 1)]
        torch.testing.assert_close(scales[k], block.abs().max() / 127)
        assert ((back - absmax)[256 * k : 256 * (k + 1)]).abs().max() <= scales[k] / 2 + 1e-6
    assert codes.abs().max() == 127


@pytest.mark.exercise("11.10")
@pytest.mark.points(3)
def test_q4_1_dequantize_matches_the_gguf_reader(impl):
    quant = impl.finetune.quant
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(12, 20), dtype=np.uint8)
    blocks[:, 0:4] = np.stack([rng.normal(size=12).astype("<f2").view(np.uint8).reshape(12, 2),
                               rng.normal(size=12).astype("<f2").view(np.uint8).reshape(12, 2)], 1).reshape(12, 4)
    expected = gguf.dequantize_q4_1(blocks)
    ours = quant.dequantize_q4_1(torch.from_numpy(blocks))
    np.testing.assert_array_equal(ours.numpy(), expected)
    assert quant.dequantize_q4_1(torch.from_numpy(blocks).reshape(3, 4, 20)).shape == (3, 4, 32)


@pytest.mark.exercise("11.10")
@pytest.mark.points(2)
def test_quantized_linear_trains_lora_and_dequantizes_in_backward(impl):
    quant, lora = impl.finetune.quant, impl.finetune.lora
    torch.manual_seed(0)
    dense = nn.Linear(64, 32, bias=False)
    for kind in ("nf4", "q4_1"):
        layer = quant.QuantizedLinear.from_linear(dense, kind)
        assert not list(layer.parameters())
        w = layer.dequantize()
        bits = 8 * layer.storage_bytes() / w.numel()
        assert bits < 5.2 and (w - dense.weight).abs().max() < 0.5 * dense.weight.abs().max()
        x = torch.randn(3, 64, requires_grad=True)
        y = layer(x)
        torch.testing.assert_close(y, x @ w.T, rtol=1e-5, atol=1e-6)
        g = torch.randn_like(y)
        (gx,) = torch.autograd.grad((y * g).sum(), x)
        torch.testing.assert_close(gx, g @ w, rtol=1e-5, atol=1e-6)
        adapted = lora.LoRALinear(layer, r=4)
        with torch.no_grad():
            adapted.lora_B["default"].normal_()
        (adapted(x) * g).sum().backward()
        assert adapted.lora_A["default"].grad is not None
        with pytest.raises(ValueError):
            adapted.merge()
