"""`reference.inference`: decoding with a key/value cache, sampling, stopping, batching, streaming.

Chapter 15's generator (its exercises come with the chapter); tested directly, like the course's
machinery. The oracles: the same model run without a cache (the whole sequence recomputed at every
step), each prompt on its own, a computation of top-k / top-p written out by hand, Hugging Face's
`TopKLogitsWarper` / `TopPLogitsWarper` and `LlamaForCausalLM.generate` on the same weights
(`reference.models.hf.to_hf`), and the exact distributions softmax(logits / T).

Plausible bugs and the test that catches each:
- cache not used (the whole prefix recomputed) -> test_the_cache_feeds_one_token_per_step;
- cached keys rotated at the wrong position / cache overwritten / off by one in its length ->
  test_cached_equals_uncached;
- left padding attended to, or positions counted from the padded start -> test_batched_left_padded_equals_one_at_a_time,
  test_greedy_equals_hugging_face;
- softmax(logits * T) instead of softmax(logits / T), or T ignored -> test_temperature_gives_softmax_of_logits_over_t,
  test_transformer_lm_generate_samples_softmax_over_t;
- top-k keeping k - 1 or k + 1, top-p keeping one token too few or too many, or filtering the wrong
  tail -> test_top_k_top_p_against_hand_computation_and_hugging_face;
- no sliding window (the context overflows) or a window off by one -> test_transformer_lm_generate_slides_its_window;
- eos / stop string not honoured or cut one token off -> test_eos_stops_a_row, test_stop_strings.
"""

from __future__ import annotations

import math

import pytest
import torch

from reference.inference import KVCache, generate, next_token_probs, stream, top_k_filter, top_p_filter
from reference.models.llama import TransformerLM

VOCAB = 61


def _model(context_length=32, seed=0, peaky=True) -> TransformerLM:
    torch.manual_seed(seed)
    model = TransformerLM(vocab_size=VOCAB, context_length=context_length, d_model=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, d_ff=48).eval()  # fmt: skip
    if peaky:  # logits spread over several units, so that greedy choices are not near-ties
        with torch.no_grad():
            model.lm_head.weight.mul_(30)
    return model


def _prompts(lengths=(5, 2, 9), seed=1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


class CharTokenizer:
    """Decodes id i to one letter, enough for stop strings."""

    def decode(self, ids):
        return "".join(chr(ord("A") + i % 26) for i in ids)


# ----------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cached_equals_uncached(temperature):
    model = _model()
    prompts = _prompts()
    runs = [generate(model, prompts, 12, temperature=temperature, top_k=20 if temperature else None,
                     generator=torch.Generator().manual_seed(3), use_cache=use_cache, return_scores=True)
            for use_cache in (True, False)]  # fmt: skip
    cached, uncached = runs
    assert cached.new_tokens == uncached.new_tokens
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.logits, uncached.logits, atol=1e-5, rtol=1e-5)
    assert len(cached.new_tokens[0]) == 12 and cached.finish_reasons == ["length"] * 3


def test_cached_logits_equal_the_plain_forward():
    model = _model()
    prompt = torch.tensor([_prompts((6,))[0]])
    out = generate(model, prompt, 8, return_scores=True)
    with torch.no_grad():
        full = model(out.sequences)  # (1, 14, vocab): the plain training forward
    torch.testing.assert_close(out.logits[0], full[0, 5:13], atol=1e-5, rtol=1e-5)
    assert torch.equal(out.sequences[0, 6:], full[0, 5:13].argmax(-1))


def test_the_cache_feeds_one_token_per_step():
    model = _model()
    widths = []
    hook = model.token_embeddings.register_forward_hook(lambda m, args, out: widths.append(args[0].shape[1]))
    generate(model, _prompts(), 6)
    hook.remove()
    assert widths == [9, 1, 1, 1, 1, 1]  # the prefill, then one token per step


def test_last_only_logits_equal_the_last_of_all():
    model = _model()
    ids = torch.tensor(_prompts((7, 7)))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, last_only=True), model(ids)[:, -1:], atol=1e-6, rtol=1e-6)


def test_kv_cache_shapes_and_limits():
    model = _model(context_length=16)
    cache = KVCache.for_model(model, batch=3)
    assert cache.keys.shape == (2, 3, 2, 16, 8) and cache.length == 0
    with torch.no_grad():
        model(torch.zeros(3, 10, dtype=torch.long), cache=cache)
        assert cache.length == 10
        with pytest.raises(ValueError, match="context_length"):
            model(torch.zeros(3, 7, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="prefix_length"):
            model(torch.zeros(3, 1, dtype=torch.long), cache=cache, prefix_length=1)
    assert cache.attention_mask(1) is None  # no padding: one new query sees every key
    assert torch.equal(cache.attention_mask(2), torch.ones(2, 12, dtype=torch.bool).tril(10))
    cache.set_padding(torch.tensor([[True] * 10, [False] * 3 + [True] * 7, [False] * 9 + [True]]))
    mask = cache.attention_mask(2)
    assert mask.shape == (3, 1, 2, 12) and mask[0, :, 0, :11].all() and not mask[:, :, 0, 11].any()
    assert mask[1, 0, 0].tolist() == [False] * 3 + [True] * 8 + [False]
    assert cache.attention_mask(1)[2, 0, 0].tolist() == [False] * 9 + [True] * 2


# ----------------------------------------------------------------------------------------------
# Batches of prompts of different lengths
# ----------------------------------------------------------------------------------------------


def test_batched_left_padded_equals_one_at_a_time():
    model = _model()
    prompts = _prompts((5, 2, 9, 1))
    batch = generate(model, prompts, 10, return_scores=True, pad_token_id=7)
    assert batch.sequences.shape == (4, 9 + 10) and batch.prompt_lengths == [5, 2, 9, 1]
    for b, prompt in enumerate(prompts):
        alone = generate(model, [prompt], 10, return_scores=True)
        assert batch.new_tokens[b] == alone.new_tokens[0]
        torch.testing.assert_close(batch.logits[b], alone.logits[0], atol=1e-5, rtol=1e-5)
        assert batch.sequences[b, : 9 - len(prompt)].eq(7).all()  # the padding is on the left
        assert batch.sequences[b, 9 - len(prompt) :].tolist() == prompt + alone.new_tokens[0]


def test_greedy_equals_hugging_face():
    from reference.models.hf import to_hf

    model = _model()
    hf = to_hf(model)
    prompts = _prompts((5, 2, 9))
    ours = generate(model, prompts, 16, return_scores=True)
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(input_ids=ids, attention_mask=attention, max_new_tokens=16, do_sample=False, pad_token_id=0,
                      eos_token_id=None, return_dict_in_generate=True, output_logits=True)  # fmt: skip
    assert out.sequences[:, width:].tolist() == ours.new_tokens
    torch.testing.assert_close(ours.logits, torch.stack(out.logits, dim=1).float(), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def _hand_top_k(logits, k):
    out = torch.full_like(logits, float("-inf"))
    for r, row in enumerate(logits.tolist()):
        kth = sorted(row, reverse=True)[k - 1]
        for i, z in enumerate(row):
            if z >= kth:
                out[r, i] = z
    return out


def _hand_top_p(logits, p):
    out = torch.full_like(logits, float("-inf"))
    for r, row in enumerate(logits.double()):
        probs = torch.softmax(row, 0).tolist()
        total = 0.0
        for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
            out[r, i] = logits[r, i]
            total += probs[i]
            if total >= p:
                break
    return out


@pytest.mark.parametrize("k", [1, 3, 10, VOCAB])
@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 1.0])
def test_top_k_top_p_against_hand_computation_and_hugging_face(k, p):
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(k + int(100 * p))) * 2
    assert torch.equal(top_k_filter(logits, k), _hand_top_k(logits, k))
    assert torch.equal(top_k_filter(logits, k), TopKLogitsWarper(k)(None, logits.clone()))
    assert torch.equal(top_p_filter(logits, p).isfinite(), _hand_top_p(logits, p).isfinite())
    assert torch.equal(top_p_filter(logits, p), TopPLogitsWarper(p)(None, logits.clone()))
    kept = top_p_filter(logits, p).isfinite()
    mass = (torch.softmax(logits, -1) * kept).sum(-1)
    assert (mass >= p - 1e-6).all() and kept.sum(-1).min() >= 1
    # combined, in Hugging Face's order: temperature, top-k, top-p
    probs = next_token_probs(logits, 0.7, top_k=k, top_p=p)
    expected = torch.softmax(TopPLogitsWarper(p)(None, TopKLogitsWarper(k)(None, logits / 0.7)), -1)
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=1e-6)


def test_top_p_boundary_is_the_smallest_set_reaching_p():
    """Dyadic probabilities are exact in floating point: with p = 0.5 the top token alone reaches p."""
    logits = torch.tensor([[0.25, 0.5, 0.125, 0.125]]).log()
    assert top_p_filter(logits, 0.5).isfinite().tolist() == [[False, True, False, False]]
    assert top_p_filter(logits, 0.75).isfinite().tolist() == [[True, True, False, False]]
    kept = top_p_filter(logits, 0.76).isfinite()[0]
    assert kept[:2].all() and kept[2:].sum() == 1  # one of the two tied tokens completes the set (which one: the sort's)
    from transformers import TopPLogitsWarper

    for p in (0.5, 0.75):
        assert torch.equal(top_p_filter(logits, p), TopPLogitsWarper(p)(None, logits.clone()))


def test_top_k_keeps_ties():
    logits = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]])
    assert top_k_filter(logits, 2).isfinite().tolist() == [[True, False, True, False, True]]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_gives_softmax_of_logits_over_t(temperature):
    model = _model(peaky=False)
    with torch.no_grad():
        model.lm_head.weight.mul_(5)
    out = generate(model, _prompts((4, 6)), 5, temperature=temperature, generator=torch.Generator().manual_seed(0),
                   return_scores=True)  # fmt: skip
    torch.testing.assert_close(out.probs, torch.softmax(out.logits / temperature, -1), atol=1e-7, rtol=1e-6)
    greedy = generate(model, _prompts((4, 6)), 5, temperature=0.0, return_scores=True)
    assert torch.equal(greedy.probs.argmax(-1), greedy.logits.argmax(-1)) and torch.equal(greedy.probs.sum(-1), torch.ones(2, 5))


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 5
    return float((((counts - expected) ** 2)[keep] / expected[keep]).sum()), int(keep.sum()) - 1


def test_transformer_lm_generate_samples_softmax_over_t():
    """4,000 draws of the first token (fixed seed): a chi-squared test accepts softmax(z / T) and
    rejects softmax(z * T) and softmax(z) (the bugs a greedy-only test lets through)."""
    model = _model(peaky=False)
    with torch.no_grad():
        model.lm_head.weight.mul_(8)
    prompt = torch.tensor([[3, 1, 4]])
    with torch.no_grad():
        z = model(prompt)[0, -1].double()
    T, n = 0.5, 4000
    out = model.generate(prompt.repeat(n, 1), 1, temperature=T, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(out[:, -1], minlength=VOCAB).double()
    stat, dof = _chi2(counts, torch.softmax(z / T, 0))
    assert stat < dof + 4 * math.sqrt(2 * dof), (stat, dof)  # about 4 standard deviations above the mean
    for wrong in (torch.softmax(z * T, 0), torch.softmax(z, 0)):
        stat, dof = _chi2(counts, wrong)
        assert stat > dof + 10 * math.sqrt(2 * dof), (stat, dof)


def test_seeded_sampling_is_reproducible():
    model = _model()
    runs = [generate(model, _prompts(), 10, temperature=1.0, top_p=0.95, generator=torch.Generator().manual_seed(s)).new_tokens
            for s in (5, 5, 6)]  # fmt: skip
    assert runs[0] == runs[1] != runs[2]


# ----------------------------------------------------------------------------------------------
# Stopping, streaming, the context
# ----------------------------------------------------------------------------------------------


def test_eos_stops_a_row():
    model = _model()
    prompts = _prompts()
    free = generate(model, prompts, 10)
    eos = free.new_tokens[0][3]
    first = [row.index(eos) if eos in row else None for row in free.new_tokens]
    out = generate(model, prompts, 10, eos_token_id=[eos, VOCAB + 5], pad_token_id=0)
    for b, row in enumerate(free.new_tokens):
        if first[b] is None:
            assert out.new_tokens[b] == row and out.finish_reasons[b] == "length"
        else:
            assert out.new_tokens[b] == row[: first[b] + 1] and out.finish_reasons[b] == "eos"  # the eos is kept
    stop = first[0] + 1
    assert out.sequences[0, 9 + stop :].eq(0).all()  # padding after a row stops


def test_stop_strings():
    model, tok = _model(), CharTokenizer()
    prompts = _prompts()
    free = generate(model, prompts, 10, tokenizer=tok)
    stop = tok.decode(free.new_tokens[1][4:6])
    out = generate(model, prompts, 10, stop_strings=[stop], tokenizer=tok)
    end = free.texts[1].index(stop) + len(stop)
    assert out.texts[1] == free.texts[1][:end] and out.finish_reasons[1] == "stop_string"
    for b in (0, 2):
        assert out.texts[b].startswith(free.texts[b][: free.texts[b].find(stop) + len(stop)] if stop in free.texts[b] else free.texts[b])
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, prompts, 3, stop_strings=["A"])


def test_streaming_equals_non_streaming():
    model = _model()
    prompts = _prompts()
    kwargs = dict(temperature=0.9, top_k=30, eos_token_id=5, tokenizer=CharTokenizer(), stop_strings=["QQ"])
    whole = generate(model, prompts, 15, generator=torch.Generator().manual_seed(2), **kwargs)
    steps = stream(model, prompts, 15, generator=torch.Generator().manual_seed(2), **kwargs)
    assert iter(steps) is steps  # a Python generator: nothing runs before the first next()
    rows = [[] for _ in prompts]
    for step in steps:
        for b, token in enumerate(step.tokens):
            if token is not None:
                rows[b].append(token)
    assert rows == whole.new_tokens


def test_transformer_lm_generate_slides_its_window():
    """Past the context, each token is the argmax of the model on the last context_length tokens."""
    model = _model(context_length=8)
    prompt = torch.tensor([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]])
    out = model.generate(prompt, 12, temperature=0)
    assert out.shape == (2, 17) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        for t in range(5, 17):
            assert torch.equal(model(out[:, max(0, t - 8) : t])[:, -1].argmax(-1), out[:, t]), t
    sampled = [model.generate(prompt, 12, temperature=1.0, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(sampled[0], sampled[1])


def test_max_new_tokens_is_bounded_by_the_context():
    model = _model(context_length=8)
    with pytest.raises(ValueError, match="context_length=8"):
        generate(model, [[1, 2, 3, 4, 5]], 4)
    assert len(generate(model, [[1, 2, 3, 4, 5]], 3).new_tokens[0]) == 3
    with pytest.raises(ValueError, match="context_length=8"):
        generate(model, [list(range(9))], 0)
    assert len(generate(model, [[1, 2, 3, 4, 5]], 4, context_overflow="slide").new_tokens[0]) == 4


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature=-0.5), ValueError, "temperature"),
        (dict(temperature=float("inf")), ValueError, "temperature"),
        (dict(temperature="hot"), TypeError, "temperature"),
        (dict(temperature=True), TypeError, "temperature"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(top_k=2.5), TypeError, "top_k"),
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(top_p=1.5), ValueError, "top_p"),
        (dict(top_p=float("nan")), ValueError, "top_p"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
        (dict(max_new_tokens=2.0), TypeError, "max_new_tokens"),
        (dict(context_overflow="wrap"), ValueError, "context_overflow"),
        (dict(stop_strings=[""], tokenizer=CharTokenizer()), ValueError, "stop_strings"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    model = _model()
    kwargs = {"max_new_tokens": 3} | kwargs
    with pytest.raises(error, match=match):
        generate(model, [[1, 2]], **kwargs)
    with pytest.raises(error, match=match):
        stream(model, [[1, 2]], **kwargs)  # checked on the call, not at the first step


def test_transformer_lm_generate_refuses_nan_temperature():
    with pytest.raises(ValueError, match="temperature"):
        _model().generate(torch.tensor([[1, 2]]), 3, temperature=float("nan"))


def test_bad_prompts():
    model = _model()
    for prompts in ([], [[]], [[1, 2.5]], "abc"):
        with pytest.raises((TypeError, ValueError)):
            generate(model, prompts, 2)
    with pytest.raises(ValueError, match="out of range"):
        generate(model, [[1, VOCAB]], 2)


# ----------------------------------------------------------------------------------------------
# Text: streaming pieces, the chat session, the commands
# ----------------------------------------------------------------------------------------------


def test_stream_text_holds_back_cut_characters_and_hides_the_stop_token():
    from reference.inference.chat import stream_text

    class BytesTokenizer:  # id i is byte i; "é" is two ids
        special_tokens = ()

        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    class Scripted(torch.nn.Module):  # a "model" whose greedy choices are a fixed script
        context_length = 32
        config = dict(num_layers=1, num_heads=1, num_kv_heads=1, d_model=2)

        def __init__(self, script):
            super().__init__()
            self.script, self.weight = script, torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids, positions=None, cache=None, last_only=False):
            cache.advance(ids.shape[1])
            logits = torch.full((ids.shape[0], ids.shape[1], 256), -1e9)
            logits[:, -1, self.script[min(cache.length - 3, len(self.script) - 1)]] = 0.0
            return logits

    script = list("hé!".encode()) + [7]
    pieces = list(stream_text(Scripted(script), BytesTokenizer(), [1, 2, 3], 10, stop_at=[7]))
    assert pieces == ["h", "é", "!"]  # é's two bytes come out together, the stop id 7 is not shown


def test_chat_session_keeps_the_history_and_drops_old_turns():
    from reference import load_pretrained
    from reference.inference.chat import ChatSession, chatml, render_chat

    model, tok = load_pretrained("llama-tiny")
    session = ChatSession(model, tok, system="Be brief.", max_new_tokens=8)
    first = "".join(session.reply("hello"))
    assert session.messages[-1] == {"role": "assistant", "content": first} and len(session.messages) == 3
    expected = tok.encode(chatml(session.messages[:2]))
    assert render_chat(tok, session.messages[:2]) == expected
    assert first == tok.decode(generate(model, [expected], 8, eos_token_id=tok.encode("<|endoftext|>")).new_tokens[0]).replace("<|endoftext|>", "")
    for _ in range(6):  # long turns: the oldest are forgotten, the system prompt stays
        "".join(session.reply("word " * 40))
    assert session.messages[0]["role"] == "system" and len(render_chat(tok, session.messages)) <= 256


def _cli(args, stdin=""):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "reference.course.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_generate_command_prints_the_greedy_continuation():
    from reference import load_pretrained

    run = _cli(["generate", "--model", "llama-tiny", "--max-new-tokens", "12", "def main"])
    assert run.returncode == 0, run.stderr
    model, tok = load_pretrained("llama-tiny")
    expected = tok.decode(generate(model, [tok.encode("def main")], 12, eos_token_id=tok.encode("<|endoftext|>")).new_tokens[0])
    assert run.stdout == expected.split("<|endoftext|>")[0] + "\n"
    bad = _cli(["generate", "--model", "no-such-model", "hi"])
    assert bad.returncode == 2 and "no-such-model" in bad.stderr


def test_chat_command_driven_by_stdin():
    run = _cli(["chat", "--model", "llama-tiny", "--max-new-tokens", "6", "--temperature", "0"], "hello\n/reset\nhi again\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("you> ") == 4 and run.stdout.count("llama-tiny> ") == 2  # two replies, then end of input
    bad = _cli(["chat", "--model", "llama-tiny", "--temperature", "nan"], "hello\n")
    assert bad.returncode == 2 and "temperature" in bad.stderr
