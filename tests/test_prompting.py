"""Chapter 3: the graded exercises of prompt learning, for both implementations (`impl`).

Oracles and the plausible bugs each test catches (planted by `python -m tests.run_mutants --chapter 3`):
- 3.1 prepend_prompt: explicit concatenation; a soft prompt made of a text's embeddings, run through
  the model's own layers, equals the hard prompt. Bugs: prompt appended after the text, mask not
  widened / widened with zeros, a per-row prompt not honoured.
- 3.2 prefix_key_values: peft's `PrefixTuning.get_prompt` on the Hugging Face version of a tiny GQA
  model (`reference.models.hf.to_hf`). Bugs: keys and values swapped, layer and key/value axes
  swapped, virtual tokens and heads swapped.
- 3.3 word_logprobs: the chain rule, log p(w1 w2 | c) = log p(w1 | c) + log p(w2 | c, w1), on a real
  (tiny) model, and a direct loop over the logits. Bugs: logits read one position late, only the first
  token, mean instead of sum, no log-softmax, padding counted.
- 3.4 calibrate: a planted label bias is removed; a content-free input comes out uniform. Bugs:
  multiplied instead of divided, not renormalised, normalised over the batch.
- 3.5 autoprompt_candidates: brute force on a linear loss (the first-order estimate is then exact).
  Bugs: sign flipped, lowest instead of highest, exclusions ignored.
- 3.6 extract_answer: hand-made answers. Bugs: the first number instead of the last, the minus sign or
  thousands separator dropped, the "answer is" cue ignored.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from reference.models.llama import TransformerLM


def _tiny(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(100, 64, 32, 2, 4, 48, num_kv_heads=2).eval()


# ---------------------------------------------------------------- 3.1 prepend_prompt


@pytest.mark.exercise("3.1")
@pytest.mark.points(2)
def test_prepend_prompt_values(impl):
    g = torch.Generator().manual_seed(0)
    emb, prompt = torch.randn(2, 4, 6, generator=g), torch.randn(3, 6, generator=g)
    x, mask = impl.prompting.modules.prepend_prompt(emb, prompt)
    assert x.shape == (2, 7, 6) and mask is None
    assert torch.equal(x[:, :3], prompt.expand(2, -1, -1)) and torch.equal(x[:, 3:], emb)
    per_row = torch.randn(2, 3, 6, generator=g)
    x, _ = impl.prompting.modules.prepend_prompt(emb, per_row)
    assert torch.equal(x[:, :3], per_row)


@pytest.mark.exercise("3.1")
@pytest.mark.points(2)
def test_prepend_prompt_mask(impl):
    emb, prompt = torch.zeros(2, 3, 4), torch.ones(2, 4)
    attention = torch.tensor([[1, 1, 0], [1, 0, 0]])
    _, mask = impl.prompting.modules.prepend_prompt(emb, prompt, attention)
    assert torch.equal(mask, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]))
    _, mask = impl.prompting.modules.prepend_prompt(emb, prompt, attention.bool())
    assert mask.dtype == torch.bool


@pytest.mark.exercise("3.1")
@pytest.mark.points(2)
def test_prepend_prompt_of_text_embeddings_is_the_hard_prompt(impl):
    model = _tiny()
    text, x = torch.tensor([[5, 6, 7]]), torch.tensor([[9, 10, 11, 12]])
    h, _ = impl.prompting.modules.prepend_prompt(model.token_embeddings(x), model.token_embeddings.weight[text[0]])
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    positions = torch.arange(7)
    with torch.no_grad():
        for layer in model.layers:
            h = layer(h, mask=mask, positions=positions)
        soft = model.lm_head(model.ln_final(h))
        hard = model(torch.cat([text, x], 1))
    torch.testing.assert_close(soft, hard, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- 3.2 prefix_key_values


@pytest.mark.exercise("3.2")
@pytest.mark.points(4)
def test_prefix_key_values_match_peft_layout(impl):
    peft = pytest.importorskip("peft")
    from reference.models.hf import to_hf

    model = _tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(to_hf(model).eval(), peft.PrefixTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=3))
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight.normal_(generator=torch.Generator().manual_seed(1))
        flat = pm.prompt_encoder["default"].embedding.weight.detach().clone()
        theirs = pm.get_prompt(2)
    ours = impl.prompting.modules.prefix_key_values(flat, 2, 2, 8, 2)
    assert len(ours) == 2
    for layer, (k, v) in enumerate(ours):
        tk, tv = (theirs[layer][0], theirs[layer][1]) if isinstance(theirs, (tuple, list)) else (
            theirs.layers[layer].keys, theirs.layers[layer].values)
        assert k.shape == (2, 2, 3, 8)
        torch.testing.assert_close(k, tk)
        torch.testing.assert_close(v, tv)


@pytest.mark.exercise("3.2")
@pytest.mark.points(2)
def test_prefix_key_values_known_layout(impl):
    L, H, D, n = 2, 3, 4, 5
    flat = torch.arange(n * L * 2 * H * D, dtype=torch.float32).view(n, -1)
    kv = impl.prompting.modules.prefix_key_values(flat, L, H, D, 2)
    for layer in range(L):
        for t in range(n):
            for h in range(H):
                base = t * L * 2 * H * D + layer * 2 * H * D + h * D
                assert kv[layer][0][1, h, t].tolist() == list(range(base, base + D))
                assert kv[layer][1][0, h, t].tolist() == list(range(base + H * D, base + H * D + D))


# ---------------------------------------------------------------- 3.3 word_logprobs


@pytest.mark.exercise("3.3")
@pytest.mark.points(3)
def test_word_logprobs_direct(impl):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g) * 3
    ids = torch.randint(0, 11, (3, 6), generator=g)
    start, length = torch.tensor([1, 2, 3]), torch.tensor([2, 1, 3])
    got = impl.prompting.core.word_logprobs(logits, ids, start, length)
    lp = torch.log_softmax(logits, -1)
    want = torch.tensor([sum(lp[b, t - 1, ids[b, t]].item() for t in range(int(start[b]), int(start[b] + length[b])))
                         for b in range(3)])
    torch.testing.assert_close(got, want)


@pytest.mark.exercise("3.3")
@pytest.mark.points(3)
def test_word_logprobs_chain_rule_on_a_model(impl):
    model = _tiny()
    context, word = [3, 4, 5, 6], [7, 8, 9]
    pad = [0, 0]
    ids = torch.tensor([context + word + pad])
    with torch.no_grad():
        got = impl.prompting.core.word_logprobs(model(ids), ids, torch.tensor([4]), torch.tensor([3]))
        total = 0.0
        for j in range(3):
            prefix = torch.tensor([context + word[:j]])
            total += torch.log_softmax(model(prefix)[0, -1], -1)[word[j]].item()
    assert got.shape == (1,)
    assert abs(got.item() - total) < 1e-4


# ---------------------------------------------------------------- 3.4 calibrate


@pytest.mark.exercise("3.4")
@pytest.mark.points(2)
def test_calibration_removes_a_planted_bias(impl):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (200,), generator=g)
    clean = torch.softmax(torch.randn(200, 3, generator=g) + 2.0 * torch.nn.functional.one_hot(labels, 3), -1)
    bias = torch.tensor([8.0, 1.0, 0.5])
    biased = clean * bias
    biased = biased / biased.sum(-1, keepdim=True)
    assert (biased.argmax(-1) == labels).float().mean() < 0.6
    out = impl.prompting.core.calibrate(biased, bias / bias.sum())
    torch.testing.assert_close(out, clean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.sum(-1), torch.ones(200))


@pytest.mark.exercise("3.4")
@pytest.mark.points(1)
def test_calibration_content_free_is_uniform(impl):
    p_cf = torch.tensor([0.7, 0.2, 0.1])
    out = impl.prompting.core.calibrate(p_cf.expand(4, 2, 3), p_cf)
    assert out.shape == (4, 2, 3)
    torch.testing.assert_close(out, torch.full((4, 2, 3), 1 / 3))


# ---------------------------------------------------------------- 3.5 autoprompt_candidates


@pytest.mark.exercise("3.5")
@pytest.mark.points(3)
def test_autoprompt_candidates_brute_force(impl):
    g = torch.Generator().manual_seed(0)
    emb, w = torch.randn(50, 8, generator=g), torch.randn(2, 8, generator=g)
    # loss(e_1, e_2) = sum_i w_i . e_i: linear, so the gradient is w and the estimate is exact
    current = [3, 4]
    got = impl.prompting.core.autoprompt_candidates(w, emb, 5)
    assert got.shape == (2, 5) and got.dtype == torch.long
    for slot in range(2):
        exact = [(w[slot] @ (emb[t] - emb[current[slot]])).item() for t in range(50)]
        best = sorted(range(50), key=lambda t: exact[t])[:5]
        assert got[slot].tolist() == best


@pytest.mark.exercise("3.5")
@pytest.mark.points(1)
def test_autoprompt_candidates_exclude(impl):
    emb = torch.eye(4)
    grad = -torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert impl.prompting.core.autoprompt_candidates(grad, emb, 2, exclude=[0]).tolist() == [[1, 2]]


# ---------------------------------------------------------------- 3.6 extract_answer


@pytest.mark.exercise("3.6")
@pytest.mark.points(3)
@pytest.mark.parametrize("text, want", [
    ("Ana has 3 + 4 = 7 apples, then 7 - 2 = 5. The answer is 5.", 5.0),
    ("The answer is 12, because 3 * 4 = 12 and 12 > 10", 12.0),
    ("First 10, then 20, so 30", 30.0),
    ("It drops to -4 degrees.", -4.0),
    ("That makes 1,250 coins.", 1250.0),
    ("answer: 3.5", 3.5),
    ("No idea.", None),
])
def test_extract_answer(impl, text, want):
    assert impl.prompting.core.extract_answer(text) == want
