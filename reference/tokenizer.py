"""Byte-level byte-pair encoding (BPE): training a vocabulary from text, and a tokenizer that uses it.

Survey section 2.1, "Data Collection and Preprocessing": before a model sees its corpus, the text
becomes a sequence of integer ids. BPE (Gage, 1994; for subwords, Sennrich et al., 2016, "Neural
Machine Translation of Rare Words with Subword Units") starts from single symbols and repeatedly
merges the most frequent adjacent pair into a new symbol. GPT-2 (Radford et al., 2019, "Language
Models are Unsupervised Multitask Learners", section 2.2) runs it over UTF-8 *bytes*, so every
string is encodable, and first splits text into pre-tokens with a regular expression so that no
merge crosses a word, number or punctuation boundary. The interface and tie-breaking follow
Stanford CS336 (2025), assignment 1.

Vocabulary layout, always in this order: ids 0..255 are the single bytes, then the special tokens
in the order given, then one id per merge in creation order.
"""

from __future__ import annotations

import heapq
import json
import math
import operator
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from itertools import pairwise
from multiprocessing import get_context
from pathlib import Path
from typing import BinaryIO

import regex

from reference.runtime import atomic_write
from reference.validation import ArgumentTypeError, check_int, is_bool

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokeniser: contractions, letter runs, digit runs, other symbols (each with at most
one leading space), then whitespace (a run before a word leaves its last space to the word)."""

_PRETOKEN = regex.compile(GPT2_PATTERN)
_BYTES = tuple(bytes([b]) for b in range(256))
_CHUNK_BYTES = 16 * 2**20  # training reads the file in pieces of about this size
FORMAT = "understanding-llms byte-level BPE"


# ----------------------------------------------------------------------------------------------
# Pre-tokenisation and merging
# ----------------------------------------------------------------------------------------------


def _check_special_tokens(special_tokens: Sequence[str] | None) -> tuple[str, ...]:
    if special_tokens is None:
        return ()
    if isinstance(special_tokens, str | bytes):
        raise TypeError(f"special_tokens must be a sequence of strings, got {special_tokens!r}")
    tokens = tuple(special_tokens)
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special_tokens must be non-empty strings, got {token!r}")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"special_tokens must not repeat, got {list(tokens)!r}")
    return tokens


@lru_cache(maxsize=64)
def _special_splitter(special_tokens: tuple[str, ...]) -> regex.Pattern | None:
    """One alternation of the special tokens, longest first, so that an overlapping longer one wins."""
    if not special_tokens:
        return None
    ordered = sorted(special_tokens, key=len, reverse=True)
    return regex.compile("(" + "|".join(regex.escape(token) for token in ordered) + ")")


def pretokenize(text: str, special_tokens: Sequence[str] = ()) -> list[str]:
    """Split `text` into GPT-2 pre-tokens, each special token kept whole as one item of its own.

    Special tokens are found first (scanning left to right; where two overlap at the same place the
    longest wins), and the text between them is split by `GPT2_PATTERN`, so no pre-token crosses or
    contains a special token. Joining the result gives `text` back.

    Args:
        text: any string.
        special_tokens: strings never split, e.g. ["<|endoftext|>"].

    Returns:
        the pre-tokens and special tokens in order; an item equal to a special token is one.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    splitter = _special_splitter(_check_special_tokens(special_tokens))
    pieces = splitter.split(text) if splitter else [text]
    out: list[str] = []
    for i, piece in enumerate(pieces):
        if i % 2:  # odd positions of a split on a capturing group are the special tokens
            out.append(piece)
        elif piece:
            out.extend(_PRETOKEN.findall(piece))
    return out


def merge_pair(word: tuple[bytes, ...], pair: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    """`word` with every occurrence of `pair` replaced by its concatenation, scanning left to right.

    Occurrences do not overlap: (a, a, a) with the pair (a, a) becomes (aa, a).
    """
    first, second = pair
    out: list[bytes] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def find_chunk_boundaries(file: BinaryIO, desired_num_chunks: int, split_special_token: bytes) -> list[int]:
    """Byte offsets that cut a binary file into about `desired_num_chunks` pieces, each cut at the start
    of an occurrence of `split_special_token`, so that pieces can be pre-tokenised independently.

    The cuts start evenly spaced and each moves forward to the next occurrence of the token (or to
    the end of the file). Returns sorted, distinct offsets, the first 0 and the last the file's size:
    piece k is bytes [boundaries[k], boundaries[k + 1]). Fewer pieces than asked when the token is rare.
    """
    check_int("desired_num_chunks", desired_num_chunks, 1)
    if not isinstance(split_special_token, bytes) or not split_special_token:
        raise ValueError(f"split_special_token must be non-empty bytes, got {split_special_token!r}")
    size = file.seek(0, os.SEEK_END)
    step = size // desired_num_chunks
    boundaries = [i * step for i in range(desired_num_chunks)] + [size]
    overlap = len(split_special_token) - 1  # so that a token across two reads is still found
    for k in range(1, desired_num_chunks):
        position = boundaries[k]
        file.seek(position)
        window = b""
        while True:
            block = file.read(1 << 16)
            if not block:
                boundaries[k] = size
                break
            window = window[-overlap:] + block if overlap else block
            found = window.find(split_special_token)
            if found != -1:
                boundaries[k] = position + len(block) - len(window) + found
                break
            position += len(block)
    return sorted(set(boundaries))


def _split_token(special_tokens: tuple[str, ...]) -> str | None:
    """A special token at whose occurrences cutting the text cannot change how it is read: one that no
    other special token contains or overlaps from the left. None when every one does."""
    for token in special_tokens:
        if all(
            token not in other and not any(other.endswith(token[:k]) for k in range(1, len(token)))
            for other in special_tokens
            if other != token
        ):
            return token
    return None


def _count_pretokens(path: str, start: int, end: int, special_tokens: tuple[str, ...]) -> Counter[str]:
    """Pre-token frequencies of bytes [start, end) of a file, special tokens left out (a pool worker)."""
    with open(path, "rb") as file:
        file.seek(start)
        data = file.read(end - start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"input_path {path!r} is not UTF-8: byte {data[error.start]:#04x} at offset {start + error.start}"
        ) from None
    specials = set(special_tokens)
    return Counter(piece for piece in pretokenize(text, special_tokens) if piece not in specials)


class _Greatest:
    """A pair that sorts before every lexicographically smaller pair, so that Python's min-heap pops the
    greatest pair first among pairs of equal count."""

    __slots__ = ("pair",)

    def __init__(self, pair: tuple[bytes, bytes]) -> None:
        self.pair = pair

    def __lt__(self, other: _Greatest) -> bool:
        return self.pair > other.pair


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    num_processes: int = 1,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE vocabulary on the UTF-8 text file at `input_path`.

    Pre-tokens (GPT-2's regular expression, never across a special token; special tokens themselves
    are not counted) are counted once; then, until the vocabulary holds `vocab_size` tokens, the most
    frequent adjacent pair of tokens inside a pre-token is merged, ties going to the lexicographically
    greatest pair of byte strings. An index from each pair to its count and to the pre-tokens that
    contain it makes each merge touch only those pre-tokens, and a heap of (count, pair), updated
    lazily, finds the next pair without scanning them all. Counting runs in `num_processes`
    processes over pieces of the file (about 16 MiB each, and at least one per process), cut where a
    special token begins that no other special token contains or overlaps; without one, the whole
    file is one piece. Training stops early when no pair is left.

    Args:
        input_path: a UTF-8 text file, e.g. documents joined by "<|endoftext|>".
        vocab_size: the size of the final vocabulary, at least 256 + len(special_tokens).
        special_tokens: strings added to the vocabulary whole, never split and never merged across.
        num_processes: worker processes for counting pre-tokens (1: in this process).

    Returns:
        vocab: {id: token bytes}; ids 0..255 the single bytes, then the special tokens in order,
            then one id per merge in order.
        merges: the merged pairs (bytes, bytes), in the order they were created.
    """
    tokens = _check_special_tokens(special_tokens)
    minimum = 256 + len(tokens)
    vocab_size = check_int("vocab_size", vocab_size, None)  # numpy integers too; bools and floats refused
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be at least 256 bytes + {len(tokens)} special tokens = {minimum}, got {vocab_size!r}"
        )
    check_int("num_processes", num_processes, 1)
    path = os.fspath(input_path)
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            raise ValueError(f"input_path {path!r} is empty: there is no text to train on")
        split = _split_token(tokens)
        num_chunks = max(num_processes, math.ceil(size / _CHUNK_BYTES)) if split else 1
        boundaries = find_chunk_boundaries(file, num_chunks, split.encode("utf-8")) if split else [0, size]
    jobs = [(path, start, end, tokens) for start, end in pairwise(boundaries)]
    counts: Counter[str] = Counter()
    if num_processes == 1 or len(jobs) == 1:
        for job in jobs:
            counts.update(_count_pretokens(*job))
    else:
        with get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            for part in pool.starmap(_count_pretokens, jobs):
                counts.update(part)

    vocab = {i: _BYTES[i] for i in range(256)}
    vocab.update({256 + i: token.encode("utf-8") for i, token in enumerate(tokens)})
    words = [tuple(_BYTES[b] for b in pretoken.encode("utf-8")) for pretoken in counts]
    freqs = list(counts.values())
    pair_counts: dict[tuple[bytes, bytes], int] = defaultdict(int)
    where: dict[tuple[bytes, bytes], set[int]] = defaultdict(set)  # pair -> indices of the words holding it
    for i, word in enumerate(words):
        for pair in pairwise(word):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-count, _Greatest(pair), pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    while len(vocab) < vocab_size and heap:
        negative, _, pair = heapq.heappop(heap)
        count = pair_counts.get(pair)
        if count is None:
            continue  # merged already, or no longer anywhere
        if count != -negative:  # its count fell since this entry was pushed: queue it again at its count
            heapq.heappush(heap, (-count, _Greatest(pair), pair))
            continue
        merges.append(pair)
        vocab[len(vocab)] = pair[0] + pair[1]
        delta: dict[tuple[bytes, bytes], int] = defaultdict(int)
        for i in where.pop(pair):
            old, new = words[i], merge_pair(words[i], pair)
            words[i] = new
            for p in pairwise(old):
                delta[p] -= freqs[i]
            for p in pairwise(new):
                delta[p] += freqs[i]
            old_pairs, new_pairs = set(pairwise(old)), set(pairwise(new))
            for p in old_pairs - new_pairs - {pair}:
                where[p].discard(i)
            for p in new_pairs - old_pairs:
                where[p].add(i)
        for p, change in delta.items():
            if change:
                pair_counts[p] += change
                if not pair_counts[p]:
                    del pair_counts[p]
                elif change > 0:  # a fall is caught when the stale entry comes up
                    heapq.heappush(heap, (-pair_counts[p], _Greatest(p), p))
    return vocab, merges


# ----------------------------------------------------------------------------------------------
# Encoding and decoding
# ----------------------------------------------------------------------------------------------


def apply_merges(token: bytes, ranks: Mapping[tuple[bytes, bytes], int]) -> list[bytes]:
    """Split one pre-token's bytes into vocabulary tokens by replaying the merges in order of rank.

    Starting from single bytes, repeatedly merge (every occurrence, left to right) the adjacent pair
    with the lowest rank in `ranks` (its position in the merge list), until no adjacent pair has one.
    """
    parts = tuple(_BYTES[b] for b in token)
    while len(parts) > 1:
        best = min(pairwise(parts), key=lambda pair: ranks.get(pair, math.inf))
        if best not in ranks:
            break
        parts = merge_pair(parts, best)
    return list(parts)


class Tokenizer:
    """Byte-level BPE tokenizer: text to ids and back, from a vocabulary and its merges.

    Args:
        vocab: {id: token bytes}; must hold all 256 single bytes and every merge's parts and result.
        merges: the merges (bytes, bytes) in creation order; earlier merges are applied first.
        special_tokens: strings encoded whole to one id each; those missing from `vocab` are added
            with the next free ids, in order.

    Attributes `vocab`, `merges` and `special_tokens` hold the (completed) arguments.
    """

    CACHE_SIZE = 1 << 16  # pre-tokens whose ids are remembered

    def __init__(
        self,
        vocab: Mapping[int, bytes],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(vocab, Mapping):
            raise TypeError(f"vocab must be a mapping of int ids to bytes, got {type(vocab).__name__}")
        for token_id, token in vocab.items():
            if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0 or not isinstance(token, bytes):
                raise TypeError(f"vocab must map int ids >= 0 to bytes, got {token_id!r}: {token!r}")
        self.vocab = dict(vocab)
        self.special_tokens = _check_special_tokens(special_tokens)
        self._special_ids: dict[str, int] = {}
        for token in self.special_tokens:  # the lowest id >= 256 holding its bytes, else a new one
            encoded = token.encode("utf-8")
            taken = set(self._special_ids.values())
            found = [i for i, t in self.vocab.items() if t == encoded and i >= 256 and i not in taken]
            self._special_ids[token] = min(found) if found else max(self.vocab, default=255) + 1
            self.vocab[self._special_ids[token]] = encoded
        specials = set(self._special_ids.values())
        self._ids = {t: i for i, t in sorted(self.vocab.items(), reverse=True) if i not in specials}  # lowest id wins
        missing = [b for b in _BYTES if b not in self._ids]
        if missing:
            raise ValueError(f"vocab must hold all 256 single bytes; it lacks {len(missing)}, e.g. {missing[0]!r}")
        self.merges = [tuple(pair) for pair in merges]
        for rank, pair in enumerate(self.merges):
            if len(pair) != 2 or not all(isinstance(part, bytes) for part in pair):
                raise ValueError(f"merges[{rank}] must be a pair of bytes, got {pair!r}")
            absent = [token for token in (*pair, pair[0] + pair[1]) if token not in self._ids]
            if absent:
                raise ValueError(f"merges[{rank}] = {pair!r} needs {absent[0]!r}, which is not in vocab")
        self._ranks = {pair: rank for rank, pair in reversed(list(enumerate(self.merges)))}
        self._longest_special = max(map(len, self.special_tokens), default=0)
        self._cache = {token: [i] for token, i in self._special_ids.items()}

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special tokens included (one more than the largest id when ids are dense)."""
        return len(self.vocab)

    def token_to_id(self, token: str) -> int:
        """The id of a special token, or of an ordinary token given as the string its bytes decode to."""
        if token in self._special_ids:
            return self._special_ids[token]
        encoded = token.encode("utf-8")
        if encoded not in self._ids:
            raise ValueError(f"token {token!r} is not one token of the vocabulary")
        return self._ids[encoded]

    def id_to_token(self, token_id: int) -> bytes:
        """The bytes of token `token_id`."""
        token = self.vocab.get(operator.index(token_id))
        if token is None:
            raise ValueError(f"token_id {token_id!r} is not in the vocabulary of {self.vocab_size} tokens")
        return token

    def _encode_new(self, pretoken: str) -> list[int]:
        """Ids of a pre-token not in the cache, which then remembers them (it starts over when full)."""
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
            self._cache.update({token: [i] for token, i in self._special_ids.items()})
        ids = self._cache[pretoken] = [self._ids[part] for part in apply_merges(pretoken.encode("utf-8"), self._ranks)]
        return ids

    def _pieces_to_ids(self, pieces: Iterable[str]) -> list[int]:
        ids: list[int] = []
        cache = self._cache  # pre-token -> ids, special tokens included
        for piece in pieces:
            ids.extend(cache.get(piece) or self._encode_new(piece))
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: special tokens to their ids, every other pre-token by `apply_merges`."""
        return self._pieces_to_ids(pretokenize(text, self.special_tokens))

    def _settled(self, text: str) -> tuple[int, list[str]]:
        """The longest start of `text` that no continuation can change: its length and its pieces.

        A special token that could still grow starts after `limit`; special tokens found before it
        are final. Between the last of them and `limit`, every pre-token but the last two is final:
        more text can extend the last one ("don" + "'t") or rejoin the last two ("'" "l" + "l"). The
        pieces are those read in context: the same prefix alone can read differently (".\n\nThe"
        gives "\n" "\n", but ".\n\n" alone gives "\n\n").
        """
        limit = len(text) - max(self._longest_special - 1, 0)
        start = 0
        splitter = _special_splitter(self.special_tokens)
        if splitter is not None:
            for match in splitter.finditer(text):
                if match.start() >= limit:
                    break
                start = match.end()
        pieces = pretokenize(text[:start], self.special_tokens)  # ends with a special token
        if start >= limit:
            return start, pieces
        final = _PRETOKEN.findall(text[start:limit])[:-2]
        return start + sum(map(len, final)), pieces + final

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Lazily yield the ids of the concatenation of `iterable`'s strings (e.g. an open text file,
        line by line), exactly `encode("".join(iterable))`, holding back only the unsettled tail."""
        buffer = ""
        for chunk in iterable:
            if not isinstance(chunk, str):
                raise TypeError(f"iterable must yield str, got {type(chunk).__name__}")
            buffer += chunk
            cut, pieces = self._settled(buffer)
            yield from self._pieces_to_ids(pieces)
            buffer = buffer[cut:]
        yield from self.encode(buffer)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`: their bytes joined and decoded as UTF-8, with invalid sequences (a slice of
        ids that cuts a character) replaced by U+FFFD rather than raising."""
        parts = []
        for token_id in ids:
            if is_bool(token_id):
                raise ArgumentTypeError(f"ids holds the bool {token_id!r}, not a token id")
            try:
                token = self.vocab.get(operator.index(token_id))  # ints, NumPy and 0-d PyTorch integers
            except TypeError:
                token = None
            if token is None:
                raise ValueError(f"ids holds {token_id!r}, not an id of this vocabulary of {self.vocab_size} tokens")
            parts.append(token)
        return b"".join(parts).decode("utf-8", errors="replace")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer to a JSON file, atomically; token bytes are stored as hex strings."""
        state = {
            "format": FORMAT,
            "version": 1,
            "special_tokens": list(self.special_tokens),
            "vocab": {str(i): token.hex() for i, token in sorted(self.vocab.items())},
            "merges": [[first.hex(), second.hex()] for first, second in self.merges],
        }
        target = Path(path)
        with atomic_write(target, "w", encoding="utf-8") as file:
            json.dump(state, file, ensure_ascii=False)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """A tokenizer read back from a file written by `save`; ValueError naming the file when it is not one."""
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != 1:
                raise ValueError(f"it is not a version-1 {FORMAT!r} file")
            vocab = {int(i): bytes.fromhex(token) for i, token in state["vocab"].items()}
            merges = [(bytes.fromhex(first), bytes.fromhex(second)) for first, second in state["merges"]]
            return cls(vocab, merges, state["special_tokens"])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:  # RecursionError: nested JSON
            raise ValueError(f"path {os.fspath(path)!r} does not hold a tokenizer: {error!r:.200}") from None


def train_tokenizer(
    text_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: Sequence[str] = ("<|endoftext|>",),
    num_processes: int = 1,
) -> Tokenizer:
    """`train_bpe` on the file at `text_path`, wrapped in a `Tokenizer` with the same special tokens."""
    vocab, merges = train_bpe(text_path, vocab_size, special_tokens, num_processes)
    return Tokenizer(vocab, merges, special_tokens)


# ----------------------------------------------------------------------------------------------
# A pretrained model's tokenizer: its own pre-tokenizer, special-token ids and chat template
# ----------------------------------------------------------------------------------------------


def split_pieces(text: str, patterns: Sequence[regex.Pattern]) -> list[str]:
    """Split `text` by each pattern in turn: every piece becomes its matches and the text between them.

    This is Hugging Face's `Split(behavior="isolated")` chained in a `Sequence`, and llama.cpp's
    list of `regex_exprs`. With one pattern that matches every character (GPT-2's) it is `findall`.
    """
    pieces = [text]
    for pattern in patterns:
        out = []
        for piece in pieces:
            start = 0
            for match in pattern.finditer(piece):
                if match.start() > start:
                    out.append(piece[start : match.start()])
                out.append(match.group())
                start = match.end()
            if start < len(piece):
                out.append(piece[start:])
        pieces = out
    return pieces


PRETRAINED_FORMAT = "understanding-llms pretrained byte-level BPE"


class PretrainedTokenizer(Tokenizer):
    """The byte-level BPE tokenizer of a pretrained model (e.g. SmolLM2, read from its GGUF file).

    The same merges and decoding as `Tokenizer`, with three things a trained model fixes for itself:
    its pre-tokenizer (a chain of regular expressions, see `split_pieces`), the ids of its special
    tokens (anywhere in the vocabulary, e.g. "<|im_start|>" = 1), and a chat template that lays a
    conversation out as the model was fine-tuned to read it.

    Args:
        vocab: {id: token bytes}; the single bytes it lacks are listed in `absent_bytes`.
        merges: the merges (bytes, bytes), best first.
        special_tokens: {token: id}, each matched whole in text before pre-tokenisation; vocab[id]
            must be the token's UTF-8 bytes.
        patterns: the pre-tokenizer's regular expressions, applied in turn.
        chat_template: a Jinja template over `messages` (Hugging Face's convention), or None.
        bos_token, eos_token, pad_token: names of special tokens, or None.
    """

    def __init__(
        self,
        vocab: Mapping[int, bytes],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Mapping[str, int],
        patterns: Sequence[str] = (GPT2_PATTERN,),
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
    ) -> None:
        if not isinstance(vocab, Mapping):
            raise TypeError(f"vocab must be a mapping of int ids to bytes, got {type(vocab).__name__}")
        # A trained vocabulary may lack a few bytes (SmolLM2's has no token for 21 control bytes):
        # they stand in at ids past the end while `Tokenizer` checks the merges, then leave again,
        # and text that holds one is refused by `encode`.
        held = set(vocab.values())
        absent = {b: max(vocab, default=-1) + 1 + k for k, b in enumerate(b for b in _BYTES if b not in held)}
        super().__init__({**vocab, **{i: b for b, i in absent.items()}}, merges)
        for b, i in absent.items():
            del self.vocab[i], self._ids[b]
        self.absent_bytes = frozenset(b[0] for b in absent)
        if not isinstance(special_tokens, Mapping):
            raise TypeError(f"special_tokens must map token strings to ids, got {type(special_tokens).__name__}")
        self.special_tokens = _check_special_tokens(list(special_tokens))
        for token, token_id in special_tokens.items():
            if self.vocab.get(token_id) != token.encode("utf-8"):
                raise ValueError(f"special_tokens[{token!r}] = {token_id!r}, but vocab[{token_id!r}] is {self.vocab.get(token_id)!r}")
        self._special_ids = dict(special_tokens)
        specials = set(self._special_ids.values())
        self._ids = {t: i for t, i in self._ids.items() if i not in specials}
        self._cache = {token: [i] for token, i in self._special_ids.items()}
        self._longest_special = max(map(len, self.special_tokens), default=0)
        if isinstance(patterns, str) or not patterns:
            raise TypeError(f"patterns must be a non-empty sequence of regular expressions, got {patterns!r}")
        self.patterns = tuple(patterns)
        self._patterns = tuple(regex.compile(p) for p in self.patterns)
        if chat_template is not None and not isinstance(chat_template, str):
            raise TypeError(f"chat_template must be a str or None, got {type(chat_template).__name__}")
        self.chat_template = chat_template
        for role, token in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
            if token is not None and token not in self._special_ids:
                raise ValueError(f"{role} {token!r} is not one of the special tokens")
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token

    def _pretokenize(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        splitter = _special_splitter(self.special_tokens)
        pieces = splitter.split(text) if splitter else [text]
        out: list[str] = []
        for i, piece in enumerate(pieces):
            if i % 2:
                out.append(piece)
            elif piece:
                out.extend(split_pieces(piece, self._patterns))
        return out

    def _encode_new(self, pretoken: str) -> list[int]:
        if self.absent_bytes and not self.absent_bytes.isdisjoint(pretoken.encode("utf-8")):
            byte = next(b for b in pretoken.encode("utf-8") if b in self.absent_bytes)
            raise ValueError(f"text holds the byte {byte:#04x} (in {pretoken!r}), which this vocabulary cannot encode")
        return super()._encode_new(pretoken)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: special tokens to their ids, the rest pre-tokenised by `patterns` and merged.
        ValueError when the text holds a byte that the vocabulary lacks (`absent_bytes`)."""
        return self._pieces_to_ids(self._pretokenize(text))

    def _settled(self, text: str) -> tuple[int, list[str]]:
        """As `Tokenizer._settled`, with this tokenizer's pre-tokenizer: all but the last two pieces
        after the last final special token are final (a digit split off by "\\p{N}" never regrows)."""
        limit = len(text) - max(self._longest_special - 1, 0)
        start = 0
        splitter = _special_splitter(self.special_tokens)
        if splitter is not None:
            for match in splitter.finditer(text):
                if match.start() >= limit:
                    break
                start = match.end()
        pieces = self._pretokenize(text[:start])
        if start >= limit:
            return start, pieces
        final = split_pieces(text[start:limit], self._patterns)[:-2]
        return start + sum(map(len, final)), pieces + final

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False, tokenize: bool = False
    ) -> str | list[int]:
        """A conversation laid out by the model's chat template, e.g. ChatML's
        "<|im_start|>user\\nWhat is 2 + 2?<|im_end|>\\n".

        Args:
            messages: [{"role": "system" | "user" | "assistant", "content": str}, ...].
            add_generation_prompt: end with the opening of an assistant turn, for the model to continue.
            tokenize: return the ids (`encode` of the text) instead of the text.

        The template is rendered in a sandboxed Jinja environment with trim_blocks and lstrip_blocks,
        as Hugging Face's `apply_chat_template` does.
        """
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
            raise TypeError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise ValueError(f"messages[{i}] must be a dict with str 'role' and 'content', got {message!r}")
        text = _chat_environment().from_string(self.chat_template).render(
            messages=[dict(m) for m in messages], add_generation_prompt=bool(add_generation_prompt),
            bos_token=self.bos_token or "", eos_token=self.eos_token or "",
        )
        return self.encode(text) if tokenize else text

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer, pre-tokenizer, special ids and chat template included, to JSON, atomically."""
        state = {
            "format": PRETRAINED_FORMAT,
            "version": 1,
            "special_tokens": self._special_ids,
            "patterns": list(self.patterns),
            "chat_template": self.chat_template,
            "named_tokens": {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token},
            "vocab": {str(i): token.hex() for i, token in sorted(self.vocab.items())},
            "merges": [[first.hex(), second.hex()] for first, second in self.merges],
        }
        target = Path(path)
        with atomic_write(target, "w", encoding="utf-8") as file:
            json.dump(state, file, ensure_ascii=False)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> PretrainedTokenizer:
        """A tokenizer read back from a file written by `PretrainedTokenizer.save`."""
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(state, dict) or state.get("format") != PRETRAINED_FORMAT or state.get("version") != 1:
                raise ValueError(f"it is not a version-1 {PRETRAINED_FORMAT!r} file")
            vocab = {int(i): bytes.fromhex(token) for i, token in state["vocab"].items()}
            merges = [(bytes.fromhex(first), bytes.fromhex(second)) for first, second in state["merges"]]
            return cls(vocab, merges, state["special_tokens"], state["patterns"], state["chat_template"], **state["named_tokens"])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:  # RecursionError: nested JSON
            raise ValueError(f"path {os.fspath(path)!r} does not hold a pretrained tokenizer: {error!r:.200}") from None


@lru_cache(maxsize=1)
def _chat_environment():
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise ValueError(f"the chat template refused the messages: {message}")

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.globals["raise_exception"] = raise_exception
    return environment
