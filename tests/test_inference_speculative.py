"""Chapter 15: speculative decoding's acceptance rule, and the decoder built on it.

Oracles: the target's own distribution (chi-square tests at the 0.1 % level on a tiny vocabulary:
one step of the rule with a draft far from the target, and two tokens decoded end to end with a
truncated draft), and the target's greedy `generate` (identical tokens at temperature 0).

Plausible bugs and the test that catches each:
- always accepting (the output follows the draft), accepting with p / q > u reversed, or q / p ->
  test_acceptance_rule_keeps_the_target_distribution;
- replacement drawn from p instead of norm(max(0, p - q)) -> the same test (too much mass on x);
- no bonus token when every draft token is accepted, or continuing after a rejection ->
  test_accept_returns_accepted_then_one_target_token;
- cache not rolled back after a rejection -> test_greedy_speculative_equals_greedy_decoding,
  test_speculative_sampling_matches_the_target_joint_distribution.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from reference.inference import generate
from reference.inference.speculative import PromptLookupDraft, TruncatedDraft
from reference.models.llama import TransformerLM


def _chi2_ok(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was produced"
    n = counts.sum()
    expected = probs[keep] * n
    statistic = (((counts[keep] - expected) ** 2) / expected).sum().item()
    return statistic < stats.chi2.ppf(0.999, int(keep.sum()) - 1)


@pytest.mark.exercise("15.9")
@pytest.mark.points(4)
def test_acceptance_rule_keeps_the_target_distribution(impl):
    p = torch.tensor([0.1, 0.5, 0.15, 0.25, 0.0])
    q = torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])  # over-proposes token 0, proposes token 4 the target never makes
    g = torch.Generator().manual_seed(0)
    trials = 6000
    drafts = torch.multinomial(q, trials, replacement=True, generator=g)
    counts = torch.zeros(5)
    target = torch.stack([p, torch.tensor([0.2] * 5)])
    for x in drafts.tolist():
        out = impl.inference.speculative.accept_draft(torch.tensor([x]), q[None], target, g)
        counts[out[0]] += 1
    assert _chi2_ok(counts, p)


@pytest.mark.exercise("15.9")
@pytest.mark.points(2)
def test_accept_returns_accepted_then_one_target_token(impl):
    vocab = 6
    onehot = torch.eye(vocab)
    draft = torch.tensor([2, 3, 4])
    q = onehot[[2, 3, 4]]
    p_all = onehot[[2, 3, 4, 5]]  # the target agrees with all three, then wants 5
    assert impl.inference.speculative.accept_draft(draft, q, p_all) == [2, 3, 4, 5]
    p_mid = onehot[[2, 1, 4, 5]]  # disagrees at the second: stop there with the target's token
    assert impl.inference.speculative.accept_draft(draft, q, p_mid) == [2, 1]
    p_first = onehot[[0, 3, 4, 5]]
    assert impl.inference.speculative.accept_draft(draft, q, p_first) == [0]


def _model(vocab=61, layers=4, seed=0, context=96, sharpen=30.0):
    torch.manual_seed(seed)
    model = TransformerLM(vocab_size=vocab, context_length=context, d_model=32, num_layers=layers, num_heads=4,
                          num_kv_heads=2, d_ff=48).eval()  # fmt: skip
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model


@pytest.mark.exercise("15.9")
@pytest.mark.points(2)
@pytest.mark.parametrize("draft", ["lookup", "truncated"])
def test_greedy_speculative_equals_greedy_decoding(impl, draft):
    model = _model()
    prompt = [1, 2, 3, 4, 5, 1, 2, 3, 9, 9, 1, 2]
    expected = generate(model, [prompt], 40).new_tokens[0]
    d = PromptLookupDraft() if draft == "lookup" else TruncatedDraft(model, 2)
    result = impl.inference.speculative.speculative_generate(model, d, prompt, 40, k=4)
    assert result.tokens == expected
    assert result.target_forwards < 40 and 0 < result.acceptance_rate <= 1


@pytest.mark.exercise("15.9")
@pytest.mark.points(3)
def test_speculative_sampling_matches_the_target_joint_distribution(impl):
    model = _model(vocab=5, layers=2, sharpen=4.0)
    prompt = [1, 3, 0]
    with torch.no_grad():  # the target's exact distribution of the next two tokens
        first = torch.softmax(model(torch.tensor([prompt]))[0, -1], -1)
        second = torch.softmax(model(torch.tensor([[*prompt, t] for t in range(5)]))[:, -1], -1)
    joint = (first[:, None] * second).flatten()
    draft = TruncatedDraft(model, 1)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(25)
    for _ in range(700):
        a, b = impl.inference.speculative.speculative_generate(model, draft, prompt, 2, k=2, temperature=1.0,
                                                               generator=g).tokens
        counts[a * 5 + b] += 1
    assert _chi2_ok(counts, joint)
