"""Chapter 4: deduplication — shingles, MinHash signatures, LSH banding, planted near-duplicates.

Oracles: exact Jaccard similarity by brute force on small sets, which our MinHash estimate must
match within 3 standard errors sqrt(J (1 - J) / k), and on average over many seeds within 3
standard errors of the mean (an unbiased estimator); a brute-force band comparison for LSH; the
S-curve 1 - (1 - s^r)^b against candidate frequencies measured over many seeds.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 4`):
- 4.3 a short text giving no shingle; the last window dropped; no normalisation; character
  shingles joined by spaces.
- 4.4 the hash not reduced mod p (uint64 overflow); max instead of min; zeros for the empty set;
  b_i forgotten.
- 4.5 overlapping bands; both orders of a pair; one row of a band compared instead of all.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.data import corpus, samples

# ----------------------------------------------------------------------------------------------
# 4.3 shingles
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("4.3")
@pytest.mark.points(1)
def test_word_and_char_shingles_by_hand(impl):
    d = impl.data.dedup
    assert d.shingles("a b c d", k=2) == {"a b", "b c", "c d"}
    assert d.shingles("The  Cat\nthe cat", k=2) == {"the cat", "cat the"}  # normalised: case, spaces
    assert d.shingles("abcd", k=3, unit="char") == {"abc", "bcd"}
    assert d.shingles("A b", k=3, unit="char") == {"a b"}
    assert d.shingles("two words", k=5) == {"two words"}  # shorter than k: the whole text
    assert d.shingles("  \n ", k=2) == set()


@pytest.mark.exercise("4.3")
@pytest.mark.points(1)
@pytest.mark.parametrize(("kwargs", "named"), [({"k": 0}, "k"), ({"unit": "line"}, "unit")])
def test_shingles_reject_bad_arguments(impl, kwargs, named):
    with pytest.raises(ValueError, match=named):
        impl.data.dedup.shingles("some text here", **kwargs)


@pytest.mark.exercise("4.3")
@pytest.mark.points(1)
@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["to", "be", "or", "not"]), min_size=0, max_size=30), st.integers(1, 5))
def test_word_shingles_are_the_distinct_windows(impl, words, k):
    got = impl.data.dedup.shingles(" ".join(words), k=k)
    if not words:
        assert got == set()
    elif len(words) < k:
        assert got == {" ".join(words)}
    else:
        assert got == {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


# ----------------------------------------------------------------------------------------------
# 4.4 MinHash signatures
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("4.4")
@pytest.mark.points(2)
def test_minhash_signature_by_brute_force(impl):
    d = impl.data.dedup
    items = {"to be", "or not", "to be", "that is"}
    a, b = d.minhash_permutations(16, seed=3)
    p = (1 << 31) - 1
    expected = [min((int(ai) * (d.stable_hash64(x) % p) + int(bi)) % p for x in items) for ai, bi in zip(a, b)]
    signature = d.minhash_signature(items, num_perm=16, seed=3)
    assert signature.shape == (16,) and signature.dtype == np.uint64
    assert signature.tolist() == expected
    assert d.minhash_signature(list(items) * 3, 16, 3).tolist() == expected  # a set: repeats change nothing
    assert d.minhash_signature(set(), 16, 3).tolist() == [p] * 16


@pytest.mark.exercise("4.4")
@pytest.mark.points(2)
@pytest.mark.parametrize("overlap", [0.2, 0.5, 0.8])
def test_minhash_estimate_agrees_with_brute_force_and_is_unbiased(impl, overlap):
    d = impl.data.dedup
    k = 256
    shared = {f"shared {i}" for i in range(int(400 * overlap))}
    a = shared | {f"a {i}" for i in range(200 - len(shared) // 2)}
    b = shared | {f"b {i}" for i in range(200 - len(shared) // 2)}
    exact = len(a & b) / len(a | b)
    ours = d.estimate_jaccard(d.minhash_signature(a, k), d.minhash_signature(b, k))
    tolerance = 3 * math.sqrt(exact * (1 - exact) / k)
    assert abs(ours - exact) <= tolerance
    seeds = 20  # P[min h(A) = min h(B)] = J exactly: the mean over independent hash families converges to J
    mean = np.mean([d.estimate_jaccard(d.minhash_signature(a, 64, s), d.minhash_signature(b, 64, s)) for s in range(seeds)])
    assert abs(mean - exact) <= 3 * math.sqrt(exact * (1 - exact) / (64 * seeds))


@pytest.mark.exercise("4.4")
@pytest.mark.points(1)
def test_minhash_error_shrinks_like_one_over_root_k(impl):
    d = impl.data.dedup
    a = {f"x{i}" for i in range(300)}
    b = {f"x{i}" for i in range(100, 400)}  # J = 200 / 400 = 0.5
    errors = {}
    for k in (16, 256):
        estimates = [d.estimate_jaccard(d.minhash_signature(a, k, s), d.minhash_signature(b, k, s)) for s in range(30)]
        errors[k] = float(np.sqrt(np.mean((np.array(estimates) - 0.5) ** 2)))
        assert errors[k] == pytest.approx(math.sqrt(0.25 / k), rel=0.5)
    assert errors[256] < errors[16] / 2


# ----------------------------------------------------------------------------------------------
# 4.5 LSH candidate pairs, and near-duplicates end to end
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("4.5")
@pytest.mark.points(1)
def test_lsh_candidate_pairs_by_hand(impl):
    signatures = np.array(
        [
            [1, 2, 3, 4],
            [1, 2, 9, 9],  # band 0 equals document 0's
            [7, 7, 3, 4],  # band 1 equals document 0's
            [1, 9, 9, 4],  # no full band equal to anyone's
            [7, 7, 8, 8],  # band 0 equals document 2's
        ],
        dtype=np.uint64,
    )
    assert impl.data.dedup.lsh_candidate_pairs(signatures, bands=2, rows=2) == {(0, 1), (0, 2), (2, 4)}
    assert impl.data.dedup.lsh_candidate_pairs(signatures, bands=1, rows=4) == set()
    assert impl.data.dedup.lsh_candidate_pairs(signatures, bands=4, rows=1) == {
        (i, j) for i, j in itertools.combinations(range(5), 2) if (signatures[i] == signatures[j]).any()
    }


@pytest.mark.exercise("4.5")
@pytest.mark.points(1)
def test_lsh_candidate_pairs_match_brute_force(impl):
    rng = np.random.default_rng(0)
    signatures = rng.integers(0, 3, size=(40, 12)).astype(np.uint64)
    bands, rows = 4, 3
    expected = {
        (i, j)
        for i, j in itertools.combinations(range(40), 2)
        if any((signatures[i, b * rows : (b + 1) * rows] == signatures[j, b * rows : (b + 1) * rows]).all() for b in range(bands))
    }
    assert impl.data.dedup.lsh_candidate_pairs(signatures, bands, rows) == expected


@pytest.mark.exercise("4.5")
@pytest.mark.points(1)
def test_lsh_rejects_too_short_signatures(impl):
    with pytest.raises(ValueError, match="bands"):
        impl.data.dedup.lsh_candidate_pairs(np.zeros((3, 8), dtype=np.uint64), bands=3, rows=3)


@pytest.mark.exercise("4.5")
@pytest.mark.points(2)
def test_candidate_frequency_follows_the_s_curve(impl):
    d = impl.data.dedup
    a = {f"x{i}" for i in range(300)}
    b = {f"x{i}" for i in range(100, 400)}  # J = 0.5
    bands, rows, trials = 8, 4, 150
    hits = 0
    for seed in range(trials):
        signatures = np.stack([d.minhash_signature(a, 32, seed), d.minhash_signature(b, 32, seed)])
        hits += (0, 1) in d.lsh_candidate_pairs(signatures, bands, rows)
    expected = 1 - (1 - 0.5**rows) ** bands  # 0.403
    assert d.s_curve(0.5, bands, rows) == pytest.approx(expected)
    assert hits / trials == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / trials))


@pytest.mark.exercise("4.5")
@pytest.mark.points(2)
def test_planted_near_duplicates_are_found(impl):
    prose = [doc.text for doc in corpus.load_source("prose")]
    planted, pairs = samples.plant_near_duplicates(prose, 20, edit_rate=0.05, seed=0)
    found = impl.data.dedup.near_duplicates(planted)
    precision, recall = impl.data.dedup.pair_precision_recall(found, pairs)
    assert recall == 1.0  # word-5-shingle Jaccard of these copies: 0.55 .. 0.75; S-curve midpoint 0.42
    # specification: at most one found pair in five unplanted; unrelated prose shares almost no 5-word shingles
    # (candidate probability ~ 0), so extra pairs can only be texts that genuinely overlap
    assert precision >= 0.8
    strict = impl.data.dedup.near_duplicates(planted, bands=4, rows=32)  # midpoint 0.96: misses most
    assert impl.data.dedup.pair_precision_recall(strict, pairs)[1] <= 0.2
