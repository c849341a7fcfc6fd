"""Chapter 16: LoRA adapters served per request: one batch mixing the base model and two adapters
(Chapter 11's format: a saved file, a model with LoRA layers, a state dict) equals Chapter 15's greedy
generate on each adapter merged into the model, whatever the batching, preemption and prefix sharing."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from reference.finetune import lora as ft
from reference.inference.generate import generate
from reference.inference.sampling import SamplingParams
from reference.models.llama import TransformerLM
from reference.serving.engine import LLMEngine
from reference.serving.lora import MultiLoRALinear, read_adapter


def _adapted(base, targets, r, alpha, seed, name):
    """A copy of `base` with a LoRA adapter whose B is random (a trained adapter, not the zero one)."""
    model = copy.deepcopy(base)
    ft.inject_lora(model, targets, r=r, alpha=alpha, adapter=name, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in ft.lora_layers(model).values():
            layer.lora_B[name].copy_(torch.randn(layer.lora_B[name].shape, generator=gen, dtype=torch.float64) * 0.5)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    base = TransformerLM(64, 96, 32, 2, 4, 64, num_kv_heads=2).double().eval()  # float64: no argmax near-ties
    sad = _adapted(base, ["q_proj", "v_proj"], r=4, alpha=8.0, seed=1, name="sad")
    happy = _adapted(base, ["out_proj", "w2", "w3"], r=2, alpha=4.0, seed=2, name="happy")
    path = ft.save_adapter(sad, tmp_path_factory.mktemp("adapters") / "sad.safetensors", "sad")
    merged = {None: base, "sad": ft.merge_and_unload(copy.deepcopy(sad)), "happy": ft.merge_and_unload(copy.deepcopy(happy))}
    return base, sad, happy, path, merged


def _engine(impl, models, **kw):
    base, _, happy, path, _ = models
    engine = LLMEngine(copy.deepcopy(base), block_size=4, eos_token_ids=(), lora_delta_fn=impl.serving.lora.lora_delta, **kw)
    engine.add_lora("sad", path)  # from Chapter 11's adapter file
    engine.add_lora("happy", happy)  # from a model carrying the adapter
    return engine


@pytest.mark.exercise("16.9")
@pytest.mark.points(2)
def test_lora_delta_gathers_each_rows_adapter(impl):
    gen = torch.Generator().manual_seed(0)
    slots, r, d_in, d_out = 4, 3, 5, 6
    lora_A = torch.randn(slots, r, d_in, generator=gen, dtype=torch.float64)
    lora_B = torch.randn(slots, d_out, r, generator=gen, dtype=torch.float64)
    lora_A[0], lora_B[0], lora_A[2, 2], lora_B[2, :, 2] = 0, 0, 0, 0  # slot 0: the base; slot 2: rank 2, padded
    scaling = torch.tensor([0.0, 2.0, 0.5, 4.0], dtype=torch.float64)
    row_slots = torch.tensor([1, 0, 3, 1, 2])
    for shape in ((5, d_in), (5, 7, d_in)):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64)
        got = impl.serving.lora.lora_delta(x, row_slots, lora_A, lora_B, scaling)
        assert got.shape == (*shape[:-1], d_out)
        for b, s in enumerate(row_slots.tolist()):  # row b: x_b A_s^T B_s^T * scaling_s
            expected = x[b] @ (scaling[s] * lora_B[s] @ lora_A[s]).T
            torch.testing.assert_close(got[b], expected, rtol=1e-12, atol=1e-12)
        assert torch.all(got[1] == 0)


@pytest.mark.exercise("16.9")
@pytest.mark.points(3)
@pytest.mark.parametrize("mode,blocks,host", [("recompute", 200, 0), ("recompute", 14, 0), ("swap", 14, 40)])
def test_mixed_adapter_batch_equals_generate_on_the_merged_models(impl, models, mode, blocks, host):
    *_, merged = models
    rng = random.Random(blocks + host)
    shared = [rng.randrange(64) for _ in range(9)]
    prompts = [shared + [rng.randrange(64) for _ in range(rng.randint(1, 12))] if i % 2 else
               [rng.randrange(64) for _ in range(rng.randint(1, 20))] for i in range(12)]  # fmt: skip
    names = [[None, "sad", "happy"][i % 3] for i in range(12)]
    lengths = [rng.randint(3, 16) for _ in prompts]
    engine = _engine(impl, models, num_blocks=blocks, num_host_blocks=host, preemption_mode=mode, max_num_seqs=6,
                     max_num_batched_tokens=64)  # fmt: skip
    outs = engine.generate(prompts, [SamplingParams(temperature=0, max_tokens=k) for k in lengths], lora=names)
    for out, prompt, name, k in zip(outs, prompts, names, lengths):
        assert out.outputs[0].token_ids == generate(merged[name], [prompt], k).new_tokens[0], name
    if blocks < 100:
        assert engine.stats["preemptions"] + engine.stats["swaps"] > 0, "the small pool must force preemption"
    engine.block_manager.check_invariants()
    assert engine.block_manager.num_free_blocks == blocks and not engine.block_manager.namespaces


@pytest.mark.exercise("16.9")
@pytest.mark.points(1)
def test_adapters_change_the_output_and_prefix_sharing_keeps_them_apart(impl, models):
    *_, merged = models
    prompt = list(range(20, 40))  # 5 full blocks of 4
    expected = {name: generate(merged[name], [prompt], 12).new_tokens[0] for name in merged}
    assert len({tuple(v) for v in expected.values()}) == 3, "the adapters must change the greedy output"
    engine = _engine(impl, models, num_blocks=60)
    engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=12), request_id="base")
    engine.step()
    engine.step()  # the base request's prompt blocks are computed and indexed
    for name in ("sad", "happy", None):
        engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=12), request_id=f"then-{name}", lora=name)
    done = {}
    while engine.has_unfinished_requests():
        done |= {o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished}
    assert done["base"] == done["then-None"] == expected[None]
    assert done["then-sad"] == expected["sad"] and done["then-happy"] == expected["happy"]
    assert engine.block_manager.prefix_hits == 4  # only the base request found the base's 4 cached blocks


@pytest.mark.exercise("16.9")
@pytest.mark.points(1)
def test_beam_search_and_parallel_samples_with_an_adapter(impl, models):
    from reference.inference.beam import beam_search

    *_, merged = models
    engine = _engine(impl, models, num_blocks=80)
    prompt = list(range(5, 18))
    beam = SamplingParams(use_beam_search=True, beam_width=3, n=2, max_tokens=8)
    outs = engine.generate([prompt, prompt, prompt], [beam, beam, SamplingParams(n=3, temperature=0, max_tokens=8)],
                           lora=["sad", None, "happy"])  # fmt: skip
    for out, name in zip(outs[:2], ["sad", None]):
        assert [c.token_ids for c in out.outputs] == beam_search(merged[name], prompt, 8, num_beams=3, num_return_sequences=2).sequences
    greedy = generate(merged["happy"], [prompt], 8).new_tokens[0]
    assert [c.token_ids for c in outs[2].outputs] == [greedy] * 3  # forked samples keep their adapter
    engine.block_manager.check_invariants()
    assert engine.block_manager.num_free_blocks == 80 and not engine.block_manager.namespaces


@pytest.mark.exercise("16.9")
@pytest.mark.points(1)
def test_the_base_matmul_is_shared_and_each_row_adds_its_own_adapter(impl, models):
    base, sad, happy, path, merged = models
    engine = _engine(impl, models, num_blocks=20)
    layer = engine.model.layers[0].attn.q_proj
    assert isinstance(layer, MultiLoRALinear) and torch.equal(layer.base.weight, base.layers[0].attn.q_proj.weight)  # untouched
    x = torch.randn(3, 5, layer.in_features, dtype=torch.float64)
    layer.row_slots = torch.tensor([engine.lora.slot("sad"), 0, engine.lora.slot("happy")])
    y = layer(x)
    layer.row_slots = None
    assert torch.allclose(y[0], merged["sad"].layers[0].attn.q_proj(x[0]), atol=1e-12)
    assert torch.allclose(y[1], base.layers[0].attn.q_proj(x[1]), atol=1e-12)
    assert torch.allclose(y[2], base.layers[0].attn.q_proj(x[2]), atol=1e-12)  # "happy" does not adapt q_proj
    # a state dict with its alpha reads the same weights as the file
    state = ft.adapter_state_dict(sad, "sad")
    from_file, from_state = read_adapter(path), read_adapter(state, alpha=8.0)
    assert from_file.keys() == from_state.keys()
    assert all(torch.equal(from_file[k][0], from_state[k][0]) and from_file[k][2] == from_state[k][2] == 2.0 for k in from_file)


@pytest.mark.exercise("16.9")
@pytest.mark.points(1)
def test_unknown_or_bad_adapters_are_refused(impl, models, tmp_path):
    base, sad, *_ = models
    engine = _engine(impl, models, num_blocks=20)
    with pytest.raises(ValueError, match="'angry'"):
        engine.add_request([1, 2, 3], SamplingParams(max_tokens=2), lora="angry")
    with pytest.raises(ValueError, match="'angry'"):
        LLMEngine(copy.deepcopy(base), num_blocks=8).add_request([1, 2], lora="angry")
    with pytest.raises(ValueError, match="registered already"):
        engine.add_lora("sad", sad)
    with pytest.raises(ValueError, match="alpha"):
        engine.add_lora("raw", ft.adapter_state_dict(sad, "sad"))
    with pytest.raises(ValueError, match="does not have"):
        engine.add_lora("odd", {"layers.9.attn.q_proj.lora_A": torch.zeros(2, 32), "layers.9.attn.q_proj.lora_B": torch.zeros(32, 2)},
                        alpha=1.0)  # fmt: skip
    with pytest.raises(ValueError, match="A \\(2, 7\\)"):
        engine.add_lora("odd", {"layers.0.attn.q_proj.lora_A": torch.zeros(2, 7), "layers.0.attn.q_proj.lora_B": torch.zeros(32, 2)},
                        alpha=1.0)  # fmt: skip
    with pytest.raises(FileNotFoundError):
        engine.add_lora("gone", tmp_path / "missing.safetensors")
    assert engine.lora_adapters == ["sad", "happy"] and not engine.has_unfinished_requests()
    rid = engine.add_request([1, 2, 3], SamplingParams(max_tokens=5, ignore_eos=True), lora="happy")
    with pytest.raises(ValueError, match="in use"):
        engine.remove_lora("happy")
    engine.abort_request(rid)
    engine.remove_lora("happy")
    assert engine.lora_adapters == ["sad"]
    with pytest.raises(ValueError, match="'happy'"):
        engine.add_request([1, 2, 3], lora="happy")
    out = engine.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=6), lora="sad")[0]  # what is left still serves
    assert out.outputs[0].token_ids == generate(models[-1]["sad"], [[1, 2, 3]], 6).new_tokens[0]


@pytest.mark.exercise("16.9")
@pytest.mark.points(1)
def test_server_serves_adapters_by_model_name_through_the_openai_client(impl):
    openai = pytest.importorskip("openai")
    from reference.pretrained import load_pretrained
    from reference.serving.server import Server

    base, tokenizer = load_pretrained("llama-tiny")
    sad = _adapted(base, ["q_proj", "v_proj"], r=4, alpha=8.0, seed=1, name="sad")
    merged = ft.merge_and_unload(copy.deepcopy(sad))
    engine = LLMEngine(copy.deepcopy(base), tokenizer, block_size=16, num_blocks=32, max_num_seqs=8,
                       lora_delta_fn=impl.serving.lora.lora_delta)  # fmt: skip
    engine.add_lora("sad", sad)
    prompt = "Once upon a time"
    expected = {m: tokenizer.decode(generate(lm, [tokenizer.encode(prompt)], 10).new_tokens[0])
                for m, lm in (("base", base), ("sad", merged))}  # fmt: skip
    assert expected["base"] != expected["sad"]
    with Server(engine, "llama-tiny") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        models = client.models.list().data
        assert [m.id for m in models] == ["llama-tiny", "llama-tiny:sad"]
        for name, key in (("llama-tiny", "base"), ("llama-tiny:sad", "sad"), ("sad", "sad")):
            out = client.completions.create(model=name, prompt=prompt, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
            assert out.choices[0].text == expected[key] and out.model == name
        chunks = client.completions.create(model="llama-tiny:sad", prompt=prompt, max_tokens=10, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})  # fmt: skip
        assert "".join(c.choices[0].text for c in chunks if c.choices) == expected["sad"]
        with pytest.raises(openai.NotFoundError, match="llama-tiny:angry"):
            client.completions.create(model="llama-tiny:angry", prompt=prompt, max_tokens=3)
    engine.block_manager.check_invariants()
    assert engine.block_manager.num_free_blocks == 32
