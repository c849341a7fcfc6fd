"""Exercises for Chapter 4, deduplication: shingles, MinHash signatures and LSH candidate pairs (exercises 4.3, 4.4, 4.5).

Fill in each body that raises NotImplementedError; the docstrings say what to return. The rest of
the module is the reference's own code, so that it runs on your functions. Grade with
`llm-course grade 4`. Mirrors `reference/data/dedup.py`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from reference.data.corpus import as_text
from reference.validation import check_int

MERSENNE_PRIME = (1 << 31) - 1  # p = 2^31 - 1, so a * x + b < 2^62 never overflows 64 bits


def normalize(text: str) -> str:
    """The form exact deduplication compares: Unicode NFKC, case-folded, whitespace runs as one space, stripped."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", as_text(text)).casefold()).strip()


def exact_hash(text: str) -> str:
    """SHA-256 hex digest of `normalize(text)`: equal for texts that differ only in case and spacing."""
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


def exact_duplicates(texts: Sequence[str]) -> list[int]:
    """Indices of the texts whose `exact_hash` an earlier text already has (the ones to drop), ascending."""
    seen: set[str] = set()
    drop = []
    for i, text in enumerate(texts):
        digest = exact_hash(as_text(text, name=f"texts[{i}]"))
        if digest in seen:
            drop.append(i)
        seen.add(digest)
    return drop


def shingles(text: str, k: int = 5, unit: str = "word") -> set[str]:
    """The set of k-shingles of `text`: every run of k consecutive words (unit="word") or characters (unit="char").

    Words are the whitespace-separated tokens of `normalize(text)`, and a word shingle is
    those k words joined by single spaces; character shingles are taken from `normalize(text)`.
    A text shorter than k units gives a single shingle, the whole normalised text, and an empty
    (or all-blank) text gives the empty set.

    Args:
        text: the document.
        k: shingle length (>= 1).
        unit: "word" or "char".

    Returns:
        set of str.
    """
    # Hint: normalize(text) first; for words split on single spaces, for chars slide over the string.
    raise NotImplementedError("Exercise 4.3: shingles")


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity |a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def stable_hash64(item: str) -> int:
    """A 64-bit hash of a string that is the same in every process: the first 8 bytes of BLAKE2b, little-endian.

    (Python's own `hash` of a str is salted per process, so it cannot make signatures that
    other processes, or a later run, can compare.)
    """
    return int.from_bytes(hashlib.blake2b(item.encode("utf-8"), digest_size=8).digest(), "little")


def minhash_permutations(num_perm: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The k = num_perm hash functions h_i(x) = (a_i x + b_i) mod p: (a, b), uint64 arrays of shape (num_perm,).

    a_i is drawn uniformly from [1, p) and b_i from [0, p), p = MERSENNE_PRIME, with numpy's
    default generator seeded by `seed`; signatures are comparable only when they share a seed.
    """
    check_int("num_perm", num_perm, 1)
    rng = np.random.default_rng(seed)
    a = rng.integers(1, MERSENNE_PRIME, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, MERSENNE_PRIME, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signature(items: Iterable[str], num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """The MinHash signature of a set of strings: the minimum of each of k hash functions over the set.

    Each item x is first reduced to an integer below p, x' = stable_hash64(x) mod p; then
    signature[i] = min over items of (a_i x' + b_i) mod p, with (a, b) =
    minhash_permutations(num_perm, seed) and p = MERSENNE_PRIME. Duplicate items change
    nothing (it is a set). The empty set has the signature p everywhere (no minimum), so two
    empty sets agree.

    Args:
        items: the shingles.
        num_perm: k, the number of hash functions (>= 1).
        seed: which hash functions.

    Returns:
        uint64 array of shape (num_perm,), entries in [0, p].
    """
    # Hint: reduce each distinct item to an integer below p once, evaluate all num_perm functions
    # (a_i x + b_i) mod p on all items at once by broadcasting (the products stay below 2^62, so 64-bit
    # integers do not overflow), and keep each function's minimum over the items. Mind the empty set.
    raise NotImplementedError("Exercise 4.4: MinHash signature")


def estimate_jaccard(signature_a: np.ndarray, signature_b: np.ndarray) -> float:
    """The fraction of positions where two MinHash signatures (same num_perm and seed) agree."""
    if signature_a.shape != signature_b.shape or signature_a.ndim != 1:
        raise ValueError(f"signatures must be 1-D of one length, got shapes {signature_a.shape} and {signature_b.shape}")
    return float(np.mean(signature_a == signature_b))


def lsh_candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs of documents whose signatures agree exactly on at least one band (LSH banding).

    The first bands * rows entries of each signature are cut into `bands` consecutive bands of
    `rows` entries; within each band, documents with identical entries fall into one bucket, and
    every two documents sharing a bucket form a candidate pair.

    Args:
        signatures: integer array of shape (n_documents, num_perm), num_perm >= bands * rows.
        bands: b (>= 1).
        rows: r (>= 1).

    Returns:
        set of (i, j) with i < j.
    """
    # Hint: two documents are candidates when all `rows` entries of some band are equal. Group the
    # documents by the content of each band (it needs a hashable key) and pair up every group's members;
    # never compare all pairs of documents.
    raise NotImplementedError("Exercise 4.5: LSH candidate pairs")


def s_curve(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(two documents of Jaccard similarity s become candidates) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=np.float64) ** rows) ** bands


def lsh_threshold(bands: int, rows: int) -> float:
    """The similarity (1/b)^(1/r) near which the S-curve rises most steeply."""
    return (1.0 / bands) ** (1.0 / rows)


def near_duplicates(
    texts: Sequence[str],
    k: int = 5,
    unit: str = "word",
    num_perm: int = 128,
    bands: int = 32,
    rows: int = 4,
    threshold: float | None = None,
    seed: int = 1,
) -> list[tuple[int, int, float]]:
    """Near-duplicate pairs: shingles -> MinHash signatures -> LSH candidates -> (optionally) a check.

    Candidates come from `lsh_candidate_pairs`; with a `threshold`, a pair is kept only if its
    estimated Jaccard similarity reaches it (discarding the S-curve's false positives). The
    defaults (32 bands of 4 rows, S-curve midpoint (1/32)^(1/4) = 0.42) find word-5-shingle
    copies with about 10% of their words edited.

    Returns:
        sorted list of (i, j, estimated Jaccard) with i < j.
    """
    signatures = np.zeros((len(texts), num_perm), dtype=np.uint64)  # (n_documents, num_perm)
    for i, text in enumerate(texts):
        signatures[i] = minhash_signature(shingles(as_text(text, name=f"texts[{i}]"), k, unit), num_perm, seed)
    found = []
    for i, j in sorted(lsh_candidate_pairs(signatures, bands, rows)):
        similarity = estimate_jaccard(signatures[i], signatures[j])
        if threshold is None or similarity >= threshold:
            found.append((i, j, similarity))
    return found


def clusters_to_drop(n: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Given n documents and duplicate pairs, the indices to drop: all but the first of each connected group."""
    check_int("n", n)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"pair ({i}, {j}) is outside 0..{n - 1}")
        ri, rj = root(i), root(j)
        parent[max(ri, rj)] = min(ri, rj)
    return [i for i in range(n) if root(i) != i]


def pair_precision_recall(found: Iterable[tuple[int, int]], truth: Iterable[tuple[int, int]]) -> tuple[float, float]:
    """(precision, recall) of found pairs against true pairs, order inside a pair ignored (1.0 when a set is empty)."""
    f = {tuple(sorted(p[:2])) for p in found}
    t = {tuple(sorted(p[:2])) for p in truth}
    hits = len(f & t)
    return (hits / len(f) if f else 1.0, hits / len(t) if t else 1.0)
