"""Chapter 4: byte-level BPE — pre-tokenisation, merging, chunking, training and the tokenizer.

Oracles: Hugging Face `tokenizers` (its ByteLevel pre-tokeniser, its BPE model encoding with the same
merges, and its BPE trainer for the compression ratio), a deliberately quadratic BPE trainer
written here (re-counts every pair after every merge), and merges computed by hand. The corpus
(`reference.data.corpus`) only provides text. Tokens are compared as byte strings, so that the
oracles' own id layouts do not matter.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 4`):
- 4.10 special tokens not longest first, not escaped, or pre-tokenised; a whitespace split instead
  of GPT-2's pattern.
- 4.11 overlapping occurrences merged; the parts joined in the wrong order; only the first occurrence.
- 4.12 cuts not moved to a token; a token across two reads missed; repeated boundaries; a cut with
  no token ahead left in place.
- 4.13 ties to the smallest pair; special tokens counted and merged; pre-token frequencies ignored;
  stale heap counts trusted; new pairs not indexed; one merge too many.
- 4.14 the leftmost mergeable pair instead of the lowest rank; the highest rank first; one merge only.
- 4.15 broken characters dropped; streaming that settles a pre-token which can still rejoin or cuts
  a special token; special tokens not saved; special tokens encoded as text.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers
from transformers.convert_slow_tokenizer import bytes_to_unicode

from reference.data.corpus import load_corpus, mix, write_corpus

EOT = "<|endoftext|>"
GPT2 = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
BYTE_TO_CHAR = bytes_to_unicode()  # GPT-2's printable stand-in for each byte, as `tokenizers` stores them
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
CS336_TEXT = "low low low low low lower lower widest widest widest newest newest newest newest newest newest"
# Pieces that stress the pre-tokeniser's edges: contractions, runs of spaces before words, newlines,
# digits, multi-byte characters and the special token's own characters.
TRICKY = ["a", "b", "l", "s", "t", "'", " ", "  ", "\n", "\t", "1", "9", "é", "😀", "<", "|", ">", "<|", "endoftext", EOT]


def _from_hf_string(token: str) -> bytes:
    return bytes(CHAR_TO_BYTE[c] for c in token)


def _layout(merges: list[tuple[bytes, bytes]], special_tokens: list[str]) -> dict[int, bytes]:
    """The course's vocabulary layout: bytes, then special tokens, then one id per merge."""
    vocab = {i: bytes([i]) for i in range(256)}
    vocab |= {256 + i: t.encode() for i, t in enumerate(special_tokens)}
    return vocab | {len(vocab) + i: a + b for i, (a, b) in enumerate(merges)}


def _hf_trainer(path: Path, vocab_size: int) -> HFTokenizer:
    """`tokenizers`' BPE trainer on the file's documents (given whole: read from the file, it would train
    on each line apart, and pre-tokens would break at every newline)."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(path.read_text(encoding="utf-8").split(EOT), trainer)
    return hf


def _hf_with_merges(merges: list[tuple[bytes, bytes]]) -> HFTokenizer:
    """`tokenizers`' own BPE model and ByteLevel pre-tokeniser, given our merges."""
    to_str = lambda token: "".join(BYTE_TO_CHAR[b] for b in token)
    vocab = {to_str(token): i for i, token in _layout(merges, []).items()}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[(to_str(a), to_str(b)) for a, b in merges]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.add_special_tokens([EOT])
    return hf


def _quadratic_bpe(text: str, vocab_size: int, special_tokens: list[str]) -> list[tuple[bytes, bytes]]:
    """BPE training as the definition reads: re-count every pair after every merge."""
    pieces = regex.split("|".join(map(regex.escape, sorted(special_tokens, key=len, reverse=True))), text) if special_tokens else [text]
    words = Counter(tuple(bytes([b]) for b in p.encode()) for piece in pieces for p in GPT2.findall(piece))
    merges: list[tuple[bytes, bytes]] = []
    while 256 + len(special_tokens) + len(merges) < vocab_size:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


@pytest.fixture(scope="module")
def sample(corpus, tmp_path_factory) -> Path:
    """About 1 MB of the course corpus, all three sources, documents joined by the end-of-text token."""
    documents = mix(corpus, {"books": 1.0, "prose": 1.0, "code": 1.0}, total_bytes=1_000_000, seed=0)
    return write_corpus(documents, tmp_path_factory.mktemp("tok") / "sample.txt", separator=EOT)


@pytest.fixture(scope="module")
def hf_merges(sample) -> list[tuple[bytes, bytes]]:
    """Merges that `tokenizers` learns on the sample (vocabulary 2000), as pairs of bytes."""
    state = json.loads(_hf_trainer(sample, 2000).to_str())
    return [(_from_hf_string(a), _from_hf_string(b)) for a, b in state["model"]["merges"]]


@pytest.fixture
def tokenizer(impl, hf_merges):
    """The exercise's Tokenizer over `tokenizers`' merges, in the course's layout (EOT at id 256)."""
    return impl.tokenizer.Tokenizer(_layout(hf_merges, [EOT]), hf_merges, [EOT])


@pytest.fixture
def two_specials(impl, hf_merges):
    """The same, with special tokens that overlap: EOT, and EOT twice (appended as a new id)."""
    return impl.tokenizer.Tokenizer(_layout(hf_merges, [EOT]), hf_merges, [EOT, EOT + EOT])


def _write(folder: Path, text: str | bytes, name: str = "text.txt") -> Path:
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# ----------------------------------------------------------------------------------------------
# 4.10 pre-tokenisation, 4.11 merging one pair
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("4.10")
@pytest.mark.points(2)
def test_pretokenize_by_hand(impl):
    text = "Hello, world! It's 2024...  don't\n\n  stop"
    expected = ["Hello", ",", " world", "!", " It", "'s", " 2024", "...", " ", " don", "'t", "\n\n ", " stop"]
    assert impl.tokenizer.pretokenize(text) == expected
    assert impl.tokenizer.pretokenize("") == []


@pytest.mark.exercise("4.10")
@pytest.mark.points(2)
def test_pretokenize_matches_tokenizers_byte_level_on_the_corpus(impl, corpus):
    hf = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    for document in corpus[::5]:  # every source; a fifth of the documents keeps this quick
        expected = [document.text[start:end] for _, (start, end) in hf.pre_tokenize_str(document.text)]
        assert impl.tokenizer.pretokenize(document.text) == expected, document.title


@pytest.mark.exercise("4.10")
@pytest.mark.points(2)
def test_pretokenize_keeps_special_tokens_whole_longest_first(impl):
    pretokenize = impl.tokenizer.pretokenize
    assert pretokenize(f"a {EOT} b", [EOT]) == ["a", " ", EOT, " b"]
    assert pretokenize(f"x{EOT}{EOT}y", [EOT]) == ["x", EOT, EOT, "y"]
    double = EOT + EOT
    assert pretokenize(f"x{EOT}{EOT}{EOT}y", [EOT, double]) == ["x", double, EOT, "y"]
    assert pretokenize(f"x{EOT}{EOT}{EOT}y", [double, EOT]) == ["x", double, EOT, "y"]
    assert pretokenize("don't<|endoftext|>", []) == ["don", "'t", "<|", "endoftext", "|>"]


@pytest.mark.exercise("4.10")
@pytest.mark.points(1)
@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TRICKY), max_size=30))
def test_pretokenize_joins_back_and_never_crosses_a_special_token(impl, pieces):
    text = "".join(pieces)
    out = impl.tokenizer.pretokenize(text, [EOT])
    assert "".join(out) == text
    assert out.count(EOT) == text.count(EOT)
    assert all(EOT not in piece for piece in out if piece != EOT)
    for segment in text.split(EOT):  # between special tokens: exactly GPT-2's pre-tokens
        assert "".join(GPT2.findall(segment)) == segment


@pytest.mark.exercise("4.10")
@pytest.mark.points(1)
def test_pretokenize_rejects_bad_input(impl):
    with pytest.raises(TypeError, match="text"):
        impl.tokenizer.pretokenize(b"bytes")
    with pytest.raises(ValueError, match="special_tokens"):
        impl.tokenizer.pretokenize("a", [""])
    with pytest.raises(ValueError, match="special_tokens"):
        impl.tokenizer.pretokenize("a", [EOT, EOT])


@pytest.mark.exercise("4.11")
@pytest.mark.points(2)
def test_merge_pair_by_hand(impl):
    merge = impl.tokenizer.merge_pair
    assert merge((b"a", b"a", b"a"), (b"a", b"a")) == (b"aa", b"a")
    assert merge((b"a", b"a", b"a", b"a"), (b"a", b"a")) == (b"aa", b"aa")
    assert merge((b"l", b"o", b"w", b"l", b"o"), (b"l", b"o")) == (b"lo", b"w", b"lo")
    assert merge((b"x", b"y"), (b"y", b"x")) == (b"x", b"y")
    assert merge((b"th", b"e"), (b"th", b"e")) == (b"the",)
    assert merge((), (b"a", b"b")) == ()
    assert merge((b"a",), (b"a", b"b")) == (b"a",)


@pytest.mark.exercise("4.11")
@pytest.mark.points(1)
@given(st.lists(st.sampled_from([b"a", b"b", b"ab"]), max_size=20), st.sampled_from([(b"a", b"b"), (b"a", b"a"), (b"ab", b"a")]))
def test_merge_pair_keeps_bytes_and_leaves_no_pair_behind(impl, word, pair):
    out = impl.tokenizer.merge_pair(tuple(word), pair)
    assert isinstance(out, tuple)
    assert b"".join(out) == b"".join(word)
    assert pair not in itertools.pairwise(out)  # (a, a, a) -> (aa, a): none left, even with overlaps
    joined = pair[0] + pair[1]
    assert out.count(joined) - word.count(joined) == len(word) - len(out)


# ----------------------------------------------------------------------------------------------
# 4.12 chunk boundaries
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("4.12")
@pytest.mark.points(2)
def test_chunk_boundaries_sit_on_special_tokens(impl):
    data = EOT.join(f"document {i} " * (i + 1) for i in range(40)).encode()
    for n in (1, 2, 3, 7, 50):
        bounds = impl.tokenizer.find_chunk_boundaries(io.BytesIO(data), n, EOT.encode())
        assert bounds[0] == 0 and bounds[-1] == len(data) and bounds == sorted(set(bounds))
        assert 2 <= len(bounds) <= n + 1
        assert all(data[b:].startswith(EOT.encode()) for b in bounds[1:-1])
        assert b"".join(data[a:b] for a, b in itertools.pairwise(bounds)) == data
    assert impl.tokenizer.find_chunk_boundaries(io.BytesIO(data), 1, EOT.encode()) == [0, len(data)]
    assert len(impl.tokenizer.find_chunk_boundaries(io.BytesIO(data), 4, EOT.encode())) == 5


@pytest.mark.exercise("4.12")
@pytest.mark.points(1)
def test_chunk_boundaries_find_a_token_across_reads_and_stop_at_the_end(impl):
    token = EOT.encode()
    for block in (1024, 4096, 8192, 65536):  # the token straddles the first read of a common block size
        where = 2 * block + 13
        data = b"a" * where + token + b"b" * 10
        assert len(data) // 2 + block - 5 == where
        assert impl.tokenizer.find_chunk_boundaries(io.BytesIO(data), 2, token) == [0, where, len(data)]
    data = b"no token here " * 100
    assert impl.tokenizer.find_chunk_boundaries(io.BytesIO(data), 4, token) == [0, len(data)]


@pytest.mark.exercise("4.12")
@pytest.mark.points(1)
def test_chunk_boundaries_reject_bad_arguments(impl):
    with pytest.raises(ValueError, match="desired_num_chunks"):
        impl.tokenizer.find_chunk_boundaries(io.BytesIO(b"abc"), 0, b"x")
    with pytest.raises(ValueError, match="split_special_token"):
        impl.tokenizer.find_chunk_boundaries(io.BytesIO(b"abc"), 2, b"")


# ----------------------------------------------------------------------------------------------
# 4.13 training
# ----------------------------------------------------------------------------------------------

# CS336's example under GPT-2 pre-tokenisation: pre-tokens "low" x1, " low" x4, " lower" x2,
# " widest" x3, " newest" x6. First merge: (e, s) and (s, t) both count 9, the greater pair (s, t)
# wins; then (e, st) 9; (l, o) and (o, w) tie at 7, (o, w) wins; (l, ow) 7; at 6, (w, est) beats
# (n, e), (e, w), ( , low) and ( , n) because b"w" is the greatest first element; ...
CS336_MERGES = [
    (b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"), (b"w", b"est"), (b"n", b"e"),
    (b"ne", b"west"), (b" ", b"newest"), (b" ", b"low"), (b"w", b"i"), (b"wi", b"d"),
    (b"wid", b"est"), (b" ", b"widest"), (b"e", b"r"), (b" low", b"er"),
]  # fmt: skip


@pytest.mark.exercise("4.13")
@pytest.mark.points(3)
def test_train_bpe_merges_by_hand_with_ties(impl, tmp_path):
    path = _write(tmp_path, CS336_TEXT)
    vocab, merges = impl.tokenizer.train_bpe(path, 1000, [EOT])  # more room than merges: stops early
    assert merges == CS336_MERGES
    assert vocab == _layout(CS336_MERGES, [EOT])
    vocab, merges = impl.tokenizer.train_bpe(str(path), 256 + 1 + 6, [EOT])
    assert merges == CS336_MERGES[:6] and len(vocab) == 263


@pytest.mark.exercise("4.13")
@pytest.mark.points(2)
def test_train_bpe_types_and_layout(impl, tmp_path):
    path = _write(tmp_path, "the cat sat on the mat" + EOT + "the end" + "<pad>")
    vocab, merges = impl.tokenizer.train_bpe(path, 270, [EOT, "<pad>"])
    assert isinstance(vocab, dict) and isinstance(merges, list)
    assert all(isinstance(i, int) and isinstance(t, bytes) for i, t in vocab.items())
    assert all(isinstance(m, tuple) and len(m) == 2 and all(isinstance(p, bytes) for p in m) for m in merges)
    assert sorted(vocab) == list(range(270)) and len(merges) == 270 - 258
    assert vocab[256] == EOT.encode() and vocab[257] == b"<pad>"
    assert [vocab[258 + i] for i in range(len(merges))] == [a + b for a, b in merges]


@pytest.mark.exercise("4.13")
@pytest.mark.points(2)
def test_train_bpe_never_merges_across_or_inside_special_tokens(impl, tmp_path):
    path = _write(tmp_path, ("ab" + EOT + "cd" + EOT) * 20)
    _, merges = impl.tokenizer.train_bpe(path, 300, [EOT])
    assert merges == [(b"c", b"d"), (b"a", b"b")]  # equal counts: the greater pair first
    path = _write(tmp_path, ("x" + EOT) * 50)
    assert impl.tokenizer.train_bpe(path, 300, [EOT])[1] == []  # the only pairs are inside EOT


@pytest.mark.exercise("4.13")
@pytest.mark.points(3)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(TRICKY), min_size=1, max_size=60), extra=st.integers(1, 40))
def test_train_bpe_matches_quadratic_definition(impl, tmp_path, pieces, extra):
    text = "".join(pieces)
    path = _write(tmp_path, text)
    vocab, merges = impl.tokenizer.train_bpe(path, 257 + extra, [EOT])
    assert merges == _quadratic_bpe(text, 257 + extra, [EOT])
    assert vocab == _layout(merges, [EOT])


@pytest.mark.exercise("4.13")
@pytest.mark.points(1)
def test_train_bpe_two_processes_equal_one(impl, sample):
    one = impl.tokenizer.train_bpe(sample, 400, [EOT], num_processes=1)
    two = impl.tokenizer.train_bpe(sample, 400, [EOT], num_processes=2)
    assert one == two


@pytest.mark.exercise("4.13")
@pytest.mark.points(1)
def test_train_bpe_two_processes_cut_only_where_no_special_token_overlaps(impl, tmp_path):
    path = _write(tmp_path, ("hello world ab" + EOT) * 50)  # cutting at EOT would leave " ab" as text
    specials = [EOT, "ab" + EOT]
    assert impl.tokenizer.train_bpe(path, 400, specials, num_processes=2) == impl.tokenizer.train_bpe(path, 400, specials)
    assert (b"a", b"b") not in impl.tokenizer.train_bpe(path, 400, specials)[1]


@pytest.mark.exercise("4.13")
@pytest.mark.points(3)
def test_train_bpe_compresses_like_tokenizers(impl, sample):
    """Same text, same vocabulary size (2000): bytes per token within 5% of Hugging Face's trainer."""
    text = sample.read_text(encoding="utf-8")
    start = time.perf_counter()
    vocab, merges = impl.tokenizer.train_bpe(sample, 2000, [EOT])
    seconds = time.perf_counter() - start
    assert len(vocab) == 2000
    ours = impl.tokenizer.Tokenizer(vocab, merges, [EOT]).encode(text)
    theirs = _hf_trainer(sample, 2000).encode(text).ids
    ratio = len(ours) / len(theirs)
    assert 0.95 <= ratio <= 1.05, f"{len(text.encode()) / len(ours):.3f} vs {len(text.encode()) / len(theirs):.3f} bytes/token"
    assert seconds < 30, f"training 2000 tokens on 1 MB took {seconds:.1f} s: are merges incremental?"


@pytest.mark.exercise("4.13")
@pytest.mark.points(1)
def test_train_tokenizer_wraps_train_bpe(impl, tmp_path):
    path = _write(tmp_path, CS336_TEXT + EOT + CS336_TEXT)
    tok = impl.tokenizer.train_tokenizer(path, 300)
    assert tok.vocab_size == 256 + 1 + len(CS336_MERGES)
    assert [tok.id_to_token(i) for i in tok.encode(" lower" + EOT)] == [b" lower", EOT.encode()]


@pytest.mark.exercise("4.13")
@pytest.mark.points(2)
def test_train_bpe_rejects_bad_input(impl, tmp_path):
    train = impl.tokenizer.train_bpe
    good = _write(tmp_path, CS336_TEXT)
    with pytest.raises(ValueError, match="vocab_size"):
        train(good, 256, [EOT])  # no room for the special token
    with pytest.raises(ValueError, match="vocab_size"):
        train(good, 100, [])
    with pytest.raises(ValueError, match="UTF-8"):
        train(_write(tmp_path, b"caf\xe9 au lait" + EOT.encode(), "latin1.txt"), 300, [EOT])
    with pytest.raises(ValueError, match="empty"):
        train(_write(tmp_path, b"", "empty.txt"), 300, [EOT])
    with pytest.raises(ValueError, match="special_tokens"):
        train(good, 300, [EOT, EOT])
    with pytest.raises(ValueError, match="num_processes"):
        train(good, 300, [EOT], num_processes=0)


# ----------------------------------------------------------------------------------------------
# 4.14 one pre-token by merge rank
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("4.14")
@pytest.mark.points(2)
def test_apply_merges_by_hand(impl):
    apply = impl.tokenizer.apply_merges
    ranks = {(b"t", b"h"): 0, (b" ", b"c"): 1, (b" ", b"a"): 2, (b"th", b"e"): 3, (b" a", b"t"): 4}  # CS336 handout
    assert [apply(p.encode(), ranks) for p in ["the", " cat", " ate"]] == [[b"the"], [b" c", b"a", b"t"], [b" at", b"e"]]
    assert apply(b"abc", {(b"b", b"c"): 0, (b"a", b"b"): 1}) == [b"a", b"bc"]  # rank, not position, decides
    assert apply(b"abc", {(b"a", b"b"): 0, (b"b", b"c"): 1}) == [b"ab", b"c"]
    assert apply(b"aaaaa", {(b"a", b"a"): 0, (b"aa", b"aa"): 1}) == [b"aaaa", b"a"]
    assert apply(b"", ranks) == [] and apply(b"z", ranks) == [b"z"]
    assert apply("é".encode(), {}) == [b"\xc3", b"\xa9"]


@pytest.mark.exercise("4.14")
@pytest.mark.points(2)
def test_apply_merges_matches_tokenizers_bpe_model(impl, hf_merges, corpus):
    ranks = {pair: rank for rank, pair in enumerate(hf_merges)}
    hf = _hf_with_merges(hf_merges)
    words = sorted({w for d in corpus[::20] for w in GPT2.findall(d.text)})
    for word in words:
        expected = [_from_hf_string(t.value) for t in hf.model.tokenize("".join(BYTE_TO_CHAR[b] for b in word.encode()))]
        assert impl.tokenizer.apply_merges(word.encode(), ranks) == expected, word


# ----------------------------------------------------------------------------------------------
# 4.15 the tokenizer
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("4.15")
@pytest.mark.points(2)
def test_tokenizer_encode_decode_by_hand(impl):
    merges = [(b"t", b"h"), (b" ", b"c"), (b" ", b"a"), (b"th", b"e"), (b" a", b"t")]
    tok = impl.tokenizer.Tokenizer(_layout(merges, []), merges)
    ids = tok.encode("the cat ate")
    assert ids == [259, 257, ord("a"), ord("t"), 260, ord("e")]
    assert tok.decode(ids) == "the cat ate"
    assert tok.encode("") == [] and tok.decode([]) == ""
    assert tok.vocab_size == 261


@pytest.mark.exercise("4.15")
@pytest.mark.points(3)
def test_tokenizer_matches_tokenizers_on_the_sample(impl, tokenizer, hf_merges, sample):
    text = sample.read_text(encoding="utf-8")
    ids = tokenizer.encode(text)
    theirs = _hf_with_merges(hf_merges).encode(text).tokens
    assert [tokenizer.id_to_token(i) for i in ids] == [t.encode() if t == EOT else _from_hf_string(t) for t in theirs]
    assert ids.count(256) == text.count(EOT)


@pytest.mark.exercise("4.15")
@pytest.mark.points(2)
def test_tokenizer_special_tokens(impl, hf_merges, two_specials):
    double, tok = EOT + EOT, two_specials
    assert tok.token_to_id(EOT) == 256 and tok.token_to_id(double) == 256 + 1 + len(hf_merges)  # appended
    ids = tok.encode(f"a{EOT}{EOT}{EOT}b{EOT}")
    assert ids == [ord("a"), tok.token_to_id(double), 256, ord("b"), 256]
    assert tok.decode(ids) == f"a{EOT}{EOT}{EOT}b{EOT}"
    assert tok.id_to_token(256) == EOT.encode()
    plain = impl.tokenizer.Tokenizer(_layout(hf_merges, []), hf_merges)  # no special tokens: EOT is text
    assert len(plain.encode(EOT)) > 1 and plain.decode(plain.encode(EOT)) == EOT


@pytest.mark.exercise("4.15")
@pytest.mark.points(2)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_tokenizer_round_trips_arbitrary_unicode(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert tokenizer.decode(ids) == text


@pytest.mark.exercise("4.15")
@pytest.mark.points(2)
def test_tokenizer_round_trips_every_corpus_document(tokenizer, corpus):
    for document in corpus:
        assert tokenizer.decode(tokenizer.encode(document.text)) == document.text, document.title


@pytest.mark.exercise("4.15")
@pytest.mark.points(1)
def test_tokenizer_decode_replaces_broken_characters_and_rejects_unknown_ids(tokenizer):
    partial = [ord("a"), 0xC3]  # the first byte of a two-byte character alone
    assert tokenizer.decode(partial) == "a\ufffd"
    with pytest.raises(ValueError, match=str(10**6)):
        tokenizer.decode([1, 10**6])


@pytest.mark.exercise("4.15")
@pytest.mark.points(3)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(TRICKY + ["ll", "'ll", "ve", " the", EOT + EOT, "\n\n", "The", "."]), max_size=60), data=st.data())
def test_encode_iterable_equals_encode_for_any_chunking(tokenizer, two_specials, pieces, data):
    text = "".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    for tok in (tokenizer, two_specials):
        assert list(tok.encode_iterable(chunks)) == tok.encode(text)
        assert list(tok.encode_iterable(iter(text))) == tok.encode(text)  # one character at a time


@pytest.mark.exercise("4.15")
@pytest.mark.points(1)
@pytest.mark.parametrize(
    "chunks",
    [
        ["iterables.\n", "\n", "The following code, long", " enough\n"],  # alone, ".\n\n" reads "\n\n"
        ["don", "'t stop"],
        ["x '", "ll be", " there"],
        ["a <|endo", "ftext|><|endoftext|> b"],  # a special token, then the longer one, across chunks
        ["a ", "\n", "b ", " ", " c"],
    ],
)
def test_encode_iterable_across_awkward_boundaries(tokenizer, two_specials, chunks):
    for tok in (tokenizer, two_specials):
        assert list(tok.encode_iterable(chunks)) == tok.encode("".join(chunks))


@pytest.mark.exercise("4.15")
@pytest.mark.points(2)
def test_encode_iterable_streams_a_file_lazily(tokenizer, corpus, tmp_path):
    text = EOT.join(d.text for d in corpus if d.source == "prose")
    path = _write(tmp_path, text)
    with open(path, encoding="utf-8") as file:
        assert list(tokenizer.encode_iterable(file)) == tokenizer.encode(text)
    random_chunks = random.Random(0)
    pieces, at = [], 0
    while at < len(text):
        step = random_chunks.randint(1, 5000)
        pieces.append(text[at : at + step])
        at += step
    assert list(tokenizer.encode_iterable(pieces)) == tokenizer.encode(text)
    endless = itertools.cycle(["the quick brown fox\n", "jumps over", " the lazy dog", EOT])
    assert len(list(itertools.islice(tokenizer.encode_iterable(endless), 1000))) == 1000  # never joins it all


@pytest.mark.exercise("4.15")
@pytest.mark.points(2)
def test_tokenizer_save_load_round_trip(impl, tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"], "written atomically, no leftovers"
    json.loads(path.read_text(encoding="utf-8"))
    again = impl.tokenizer.Tokenizer.load(path)
    text = f"It's 2024 — naïve café 😀{EOT}def f(x):\n    return x ** 2\n"
    assert again.encode(text) == tokenizer.encode(text)
    assert again.vocab_size == tokenizer.vocab_size and again.token_to_id(EOT) == 256
    assert all(again.id_to_token(i) == tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size))
    tokenizer.save(path)  # overwriting is fine
    assert impl.tokenizer.Tokenizer.load(str(path)).encode(text) == tokenizer.encode(text)


@pytest.mark.exercise("4.15")
@pytest.mark.points(2)
def test_tokenizer_load_rejects_corrupt_files(impl, tokenizer, tmp_path):
    good = tokenizer.save(tmp_path / "good.json")
    text = Path(good).read_text(encoding="utf-8")
    broken = {
        "truncated.json": text[: len(text) // 2],
        "not_json.json": "hello",
        "list.json": "[1, 2, 3]",
        "empty.json": "",
        "no_merges.json": json.dumps({k: v for k, v in json.loads(text).items() if k != "merges"}),
    }
    for name, content in broken.items():
        path = _write(tmp_path, content, name)
        with pytest.raises(ValueError, match=name):
            impl.tokenizer.Tokenizer.load(path)


@pytest.mark.exercise("4.15")
@pytest.mark.points(1)
def test_tokenizer_rejects_inconsistent_vocabularies(impl, hf_merges):
    Tokenizer = impl.tokenizer.Tokenizer
    vocab = _layout(hf_merges, [])
    with pytest.raises(ValueError, match="merges"):
        Tokenizer({i: t for i, t in vocab.items() if i != 300}, hf_merges)  # a merge's result is missing
    with pytest.raises(ValueError, match="vocab"):
        Tokenizer({i: t for i, t in vocab.items() if i != ord("a")}, hf_merges)  # a single byte is missing
    with pytest.raises(TypeError, match="vocab"):
        Tokenizer({i: t.decode("latin-1") for i, t in vocab.items()}, hf_merges)
    with pytest.raises(ValueError, match="special_tokens"):
        Tokenizer(vocab, hf_merges, [""])
    with pytest.raises(ValueError):
        Tokenizer(vocab, hf_merges).encode("\ud800")  # a lone surrogate has no UTF-8 form
