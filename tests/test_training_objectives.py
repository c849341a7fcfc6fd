"""Chapter 6: pre-training objectives — next-token prediction, masked language modelling (BERT's
80/10/10 rule), T5's random noise spans and span corruption with sentinels, the prefix LM.

The objectives are random, so most checks are invariants over many draws: rates within a stated
tolerance (several standard deviations of a binomial), counts that T5's `random_spans_noise_mask`
fixes exactly (recomputed here from its formulas), every admissible span layout about equally
likely (a chi-square test), and sentinels that let the original text be rebuilt from inputs and
targets (also as a `hypothesis` property over lengths, densities and span lengths). All draws are
seeded, so the tests are deterministic.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 6`):
- 6.1 targets not shifted or shifted the wrong way; padding judged on the inputs.
- 6.2 special tokens chosen; 90% [MASK]; no random replacement; every position scored; corrupted
  targets; replacements from a few ids.
- 6.3 noise or span counts floored instead of rounded; starting with noise; equal spans; cuts with
  replacement (empty spans); cuts biased to the start.
- 6.4 sentinels numbered from the other end or off by one; one sentinel per token.
- 6.5 the loss mask off by one either way; prefix length 0 drawn or the longest never drawn.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one thread is several times faster than two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _t5_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """num_noise_tokens and num_noise_spans as T5's preprocessors.random_spans_noise_mask computes them."""
    num_noise = round(length * noise_density)
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    return num_noise, num_spans


def _runs(mask: list[bool]) -> list[tuple[bool, int]]:
    return [(value, len(list(group))) for value, group in itertools.groupby(mask)]


# ----------------------------------------------------------------------------------------------
# 6.1 next-token prediction
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("6.1")
@pytest.mark.points(1)
def test_next_token_prediction_by_hand(impl):
    inputs, targets, loss_mask = impl.training.objectives.next_token_prediction(torch.tensor([5, 6, 7, 8]))
    assert inputs.tolist() == [5, 6, 7] and targets.tolist() == [6, 7, 8]
    assert loss_mask.dtype == torch.bool and loss_mask.tolist() == [True, True, True]
    batch = torch.tensor([[1, 2, 3], [4, 0, 0]])
    inputs, targets, loss_mask = impl.training.objectives.next_token_prediction(batch, pad_id=0)
    assert inputs.tolist() == [[1, 2], [4, 0]] and targets.tolist() == [[2, 3], [0, 0]]
    assert loss_mask.tolist() == [[True, True], [False, False]]


@pytest.mark.exercise("6.1")
@pytest.mark.points(1)
def test_next_token_prediction_rejects_bad_ids(impl):
    with pytest.raises(ValueError, match="2 tokens"):
        impl.training.objectives.next_token_prediction(torch.tensor([3]))
    with pytest.raises(TypeError, match="float32"):
        impl.training.objectives.next_token_prediction(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        impl.training.objectives.next_token_prediction(torch.zeros(2, 3, 4, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# 6.2 masked language modelling
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("6.2")
@pytest.mark.points(3)
def test_mlm_rates_follow_the_80_10_10_rule(impl):
    vocab, mask_id, specials = 1000, 3, [0, 1, 2]
    g = _gen(0)
    ids = torch.randint(0, vocab, (400, 512), generator=g)  # 204,800 tokens, about 0.3% special
    inputs, targets, loss_mask = impl.training.objectives.masked_language_modeling(ids, g, mask_id, vocab, 0.15, specials)
    assert inputs.shape == targets.shape == loss_mask.shape == ids.shape and loss_mask.dtype == torch.bool
    assert torch.equal(targets, ids), "the targets are the original tokens"
    assert torch.equal(inputs[~loss_mask], ids[~loss_mask]), "tokens not chosen are untouched"
    special = torch.isin(ids, torch.tensor(specials))
    assert not loss_mask[special].any(), "special tokens are never chosen"
    n_eligible, n_chosen = int((~special).sum()), int(loss_mask.sum())
    rate = n_chosen / n_eligible
    assert abs(rate - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n_eligible), f"chose {rate:.4f} of tokens, expected 0.15"
    chosen_in, chosen_orig = inputs[loss_mask], ids[loss_mask]
    masked = (chosen_in == mask_id) & (chosen_orig != mask_id)
    kept = chosen_in == chosen_orig
    replaced = ~masked & ~kept
    tol = 5 * math.sqrt(0.1 * 0.9 / n_chosen)
    # a random replacement equals the original with probability 1/vocab, and [MASK] itself by chance
    assert abs(masked.float().mean().item() - 0.8) < 5 * math.sqrt(0.16 / n_chosen) + 1e-3
    assert abs(kept.float().mean().item() - (0.1 + 0.1 / vocab)) < tol
    assert abs(replaced.float().mean().item() - 0.1 * (1 - 2 / vocab)) < tol
    replacements = chosen_in[replaced]
    assert replacements.min() >= 0 and replacements.max() < vocab
    assert replacements.float().std() > 0.25 * vocab, "replacements are drawn from the whole vocabulary"


@pytest.mark.exercise("6.2")
@pytest.mark.points(1)
@pytest.mark.parametrize("probability", [0.0, 0.4, 1.0])
def test_mlm_other_probabilities_and_determinism(impl, probability):
    ids = torch.randint(5, 50, (64, 64), generator=_gen(1))
    first = impl.training.objectives.masked_language_modeling(ids, _gen(9), 4, 50, probability)
    again = impl.training.objectives.masked_language_modeling(ids, _gen(9), 4, 50, probability)
    assert all(torch.equal(a, b) for a, b in zip(first, again)), "the same generator state gives the same masks"
    rate = first[2].float().mean().item()
    assert abs(rate - probability) < 5 * math.sqrt(max(probability * (1 - probability), 1e-12) / ids.numel()) + 1e-12
    one_row = impl.training.objectives.masked_language_modeling(ids[0], _gen(9), 4, 50, probability)
    assert all(t.shape == (64,) for t in one_row)


@pytest.mark.exercise("6.2")
@pytest.mark.points(1)
@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"mask_token_id": 50}, "mask_token_id"),
        ({"mask_probability": 1.5}, "mask_probability"),
        ({"vocab_size": 0}, "vocab_size"),
    ],
)
def test_mlm_rejects_bad_arguments(impl, kwargs, named):
    args = {"mask_token_id": 4, "vocab_size": 50, "mask_probability": 0.15} | kwargs
    with pytest.raises(ValueError, match=named):
        impl.training.objectives.masked_language_modeling(torch.arange(10), _gen(), **args)


# ----------------------------------------------------------------------------------------------
# 6.3 T5's random noise spans
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("6.3")
@pytest.mark.points(1)
@pytest.mark.parametrize(("noise_density", "mean_noise_span_length"), [(0.15, 3.0), (0.5, 2.0), (0.3, 1.0), (0.05, 8.0)])
def test_noise_mask_counts_match_t5(impl, noise_density, mean_noise_span_length):
    g = _gen(2)
    for length in [2, 3, 7, 10, 31, 64, 100, 257, 512]:
        num_noise, num_spans = _t5_counts(length, noise_density, mean_noise_span_length)
        for _ in range(5):
            mask = impl.training.objectives.random_spans_noise_mask(length, g, noise_density, mean_noise_span_length)
            assert mask.dtype == torch.bool and mask.shape == (length,)
            runs = _runs(mask.tolist())
            assert int(mask.sum()) == num_noise, f"length {length}: {int(mask.sum())} noise tokens, T5 has {num_noise}"
            assert runs[0][0] is False and runs[-1][0] is True, "spans alternate kept, noise, ..., ending with noise"
            assert sum(1 for noisy, _ in runs if noisy) == min(num_spans, num_noise, length - num_noise)


@pytest.mark.exercise("6.3")
@pytest.mark.points(2)
def test_noise_mask_layouts_are_equally_likely(impl):
    # length 12, density 0.5, mean 2: 6 noise tokens in 3 spans, 6 kept tokens in 3 spans.
    # Each is a composition of 6 into 3 positive parts (C(5, 2) = 10 ways): 100 layouts.
    g = _gen(3)
    draws = 4000
    counts = Counter(tuple(impl.training.objectives.random_spans_noise_mask(12, g, 0.5, 2.0).tolist()) for _ in range(draws))
    assert len(counts) == 100, f"{len(counts)} distinct layouts, expected all 100"
    expected = draws / 100
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 160, f"chi-square {chi2:.0f} with 99 degrees of freedom: the layouts are not uniform"  # p < 1e-4


@pytest.mark.exercise("6.3")
@pytest.mark.points(1)
def test_noise_mask_span_lengths_follow_a_uniform_composition(impl):
    """At length 512 (77 noise tokens in 26 spans) every cut into spans is equally likely, so one span's
    length l has P(l) = C(77 - l - 1, 24) / C(76, 25) (a uniform composition). The mean is fixed by the
    counts; the shape of the distribution is what this checks: its short, middle and long spans."""
    g = _gen(4)
    lengths = [
        n for _ in range(200) for noisy, n in _runs(impl.training.objectives.random_spans_noise_mask(512, g).tolist()) if noisy
    ]
    assert len(lengths) == 200 * 26
    exact = {l: math.comb(77 - l - 1, 24) / math.comb(76, 25) for l in range(1, 53)}
    for name, ls in (("1", [1]), ("2-3", [2, 3]), ("6 or more", range(6, 53))):
        p = sum(exact[l] for l in ls)
        seen = sum(1 for n in lengths if n in ls) / len(lengths)
        sigma = math.sqrt(p * (1 - p) / len(lengths))  # spans of one draw are negatively correlated: this is generous
        assert abs(seen - p) < 5 * sigma, f"spans of length {name}: {seen:.3f} of them, a uniform composition gives {p:.3f}"


@pytest.mark.exercise("6.3")
@pytest.mark.points(1)
@pytest.mark.parametrize(
    ("args", "named"),
    [((1,), "length"), ((10, 0.0), "noise_density"), ((10, 1.0), "noise_density"), ((10, 0.2, 0.0), "mean_noise_span_length")],
)
def test_noise_mask_rejects_bad_arguments(impl, args, named):
    length, *rest = args
    with pytest.raises(ValueError, match=named):
        impl.training.objectives.random_spans_noise_mask(length, _gen(), *rest)


# ----------------------------------------------------------------------------------------------
# 6.4 span corruption
# ----------------------------------------------------------------------------------------------

SENTINELS = list(range(999, 899, -1))  # T5's order: <extra_id_0> is the last id, then downwards


def _rebuild(inputs: list[int], targets: list[int]) -> list[int]:
    """Put each sentinel's span from the targets back in place of that sentinel in the inputs."""
    spans, current = {}, None
    for token in targets:
        if token in SENTINELS:
            current = token
            spans[current] = []
        else:
            assert current is not None, "the targets start with a sentinel"
            spans[current].append(token)
    out = []
    for token in inputs:
        out.extend(spans.pop(token) if token in SENTINELS else [token])
    assert not spans, "every sentinel of the targets appears in the inputs"
    return out


@pytest.mark.exercise("6.4")
@pytest.mark.points(2)
def test_span_corruption_by_hand_from_the_same_noise_mask(impl):
    ids = torch.arange(10, 30)  # 20 tokens
    noise = impl.training.objectives.random_spans_noise_mask(20, _gen(5), 0.3, 2.0).tolist()
    inputs, targets, loss_mask = impl.training.objectives.span_corruption(ids, _gen(5), SENTINELS, 0.3, 2.0)
    expected_in, expected_tg, span = [], [], -1
    for i, noisy in enumerate(noise):
        starts = noisy and (i == 0 or not noise[i - 1])
        span += starts
        if not noisy:
            expected_in.append(10 + i)
        elif starts:
            expected_in.append(SENTINELS[span])
        if starts:
            expected_tg.append(SENTINELS[span])
        if noisy:
            expected_tg.append(10 + i)
    assert inputs.tolist() == expected_in
    assert targets.tolist() == expected_tg
    assert loss_mask.dtype == torch.bool and loss_mask.shape == targets.shape and loss_mask.all()


@pytest.mark.exercise("6.4")
@pytest.mark.points(1)
@pytest.mark.parametrize(("noise_density", "mean_noise_span_length"), [(0.15, 3.0), (0.5, 1.5), (0.25, 4.0)])
def test_span_corruption_sentinels_rebuild_the_text(impl, noise_density, mean_noise_span_length):
    g = _gen(6)
    ids = torch.randint(0, 900, (16, 96), generator=g)
    inputs, targets, _ = impl.training.objectives.span_corruption(ids, g, SENTINELS, noise_density, mean_noise_span_length)
    num_noise, num_spans = _t5_counts(96, noise_density, mean_noise_span_length)
    assert inputs.shape == (16, 96 - num_noise + num_spans) and targets.shape == (16, num_noise + num_spans)
    for row_ids, row_in, row_tg in zip(ids.tolist(), inputs.tolist(), targets.tolist()):
        in_sentinels = [t for t in row_in if t in SENTINELS]
        assert in_sentinels == [t for t in row_tg if t in SENTINELS] == SENTINELS[:num_spans], (
            "sentinels in order, the same in both"
        )
        assert row_tg[0] == SENTINELS[0]
        assert _rebuild(row_in, row_tg) == row_ids


@pytest.mark.exercise("6.4")
@pytest.mark.points(1)
@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(2, 200),
    noise_density=st.floats(0.01, 0.9),
    mean_noise_span_length=st.floats(0.5, 10.0),
    seed=st.integers(0, 2**31),
)
def test_span_corruption_property_any_length_and_density(impl, length, noise_density, mean_noise_span_length, seed):
    ids = torch.randint(0, 900, (length,), generator=_gen(seed))
    inputs, targets, loss_mask = impl.training.objectives.span_corruption(
        ids, _gen(seed), SENTINELS, noise_density, mean_noise_span_length
    )
    num_noise, _ = _t5_counts(length, noise_density, mean_noise_span_length)
    num_spans = sum(1 for t in inputs.tolist() if t in SENTINELS)
    assert 1 <= num_spans <= min(num_noise, length - num_noise)
    assert len(inputs) == length - num_noise + num_spans and len(targets) == num_noise + num_spans
    assert loss_mask.shape == targets.shape
    assert _rebuild(inputs.tolist(), targets.tolist()) == ids.tolist()


@pytest.mark.exercise("6.4")
@pytest.mark.points(1)
def test_span_corruption_needs_enough_sentinels(impl):
    ids = torch.arange(100)  # 15 noise tokens in 5 spans
    with pytest.raises(ValueError, match="sentinel"):
        impl.training.objectives.span_corruption(ids, _gen(), SENTINELS[:4])
    inputs, targets, _ = impl.training.objectives.span_corruption(ids, _gen(), SENTINELS[:5])
    assert (inputs >= 900).sum() == 5 and (targets >= 900).sum() == 5


# ----------------------------------------------------------------------------------------------
# 6.5 prefix LM
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("6.5")
@pytest.mark.points(2)
def test_prefix_lm_scores_only_the_suffix(impl):
    ids = torch.arange(100, 108)  # 8 tokens
    inputs, targets, loss_mask, prefix = impl.training.objectives.prefix_language_modeling(ids, prefix_length=3)
    assert inputs.tolist() == list(range(100, 107)) and targets.tolist() == list(range(101, 108))
    # position t predicts ids[t + 1]; it counts when ids[t + 1] lies after the prefix ids[0:3]
    assert loss_mask.tolist() == [False, False, True, True, True, True, True]
    assert int(prefix) == 3 and prefix.shape == ()


@pytest.mark.exercise("6.5")
@pytest.mark.points(2)
def test_prefix_lm_sampled_lengths(impl):
    ids = torch.randint(0, 50, (2000, 10), generator=_gen(7))
    inputs, targets, loss_mask, prefix = impl.training.objectives.prefix_language_modeling(ids, _gen(8))
    assert prefix.shape == (2000,) and prefix.dtype == torch.long
    assert set(prefix.tolist()) == set(range(1, 10)), "prefix lengths cover [1, seq - 1]"
    counts = Counter(prefix.tolist())
    assert max(counts.values()) < 1.4 * min(counts.values()), "prefix lengths are drawn uniformly"
    assert torch.equal(inputs, ids[:, :-1]) and torch.equal(targets, ids[:, 1:])
    expected = torch.arange(9)[None, :] + 1 >= prefix[:, None]
    assert torch.equal(loss_mask, expected)
    assert loss_mask[:, -1].all(), "the last token is always predicted"


@pytest.mark.exercise("6.5")
@pytest.mark.points(1)
def test_prefix_lm_rejects_bad_arguments(impl):
    ids = torch.arange(6)
    with pytest.raises(ValueError, match="prefix_length"):
        impl.training.objectives.prefix_language_modeling(ids, prefix_length=6)
    with pytest.raises(ValueError, match="prefix_length"):
        impl.training.objectives.prefix_language_modeling(ids, prefix_length=0)
    with pytest.raises(ValueError, match="generator"):
        impl.training.objectives.prefix_language_modeling(ids)
