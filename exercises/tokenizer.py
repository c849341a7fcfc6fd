"""Exercises for Chapter 4: a byte-level BPE tokenizer — pre-tokenisation, merging, parallel counting,
training, and a tokenizer that encodes, decodes, streams, saves and loads.

Fill in each body that raises NotImplementedError; the docstrings say what to return. Grade with
`llm-course grade 4`. Mirrors `reference/tokenizer.py`: vocabulary ids 0..255 are the single bytes,
then the special tokens in the order given, then one id per merge in creation order.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import BinaryIO

import regex

from reference.validation import check_int

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokeniser: contractions, letter runs, digit runs, other symbols (each with at most
one leading space), then whitespace (a run before a word leaves its last space to the word)."""


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
    # Hint: first cut the text at the special tokens, keeping each as a piece of its own (try longer ones
    # first, so that a token containing another wins); then apply GPT2_PATTERN to the text between them.
    # Joined together, the pieces give back the text.
    raise NotImplementedError("Exercise 4.10: pre-tokenise around special tokens")


def merge_pair(word: tuple[bytes, ...], pair: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    """`word` with every occurrence of `pair` replaced by its concatenation, scanning left to right.

    Occurrences do not overlap: (a, a, a) with the pair (a, a) becomes (aa, a).
    """
    # Hint: scan left to right; where the pair starts, emit the merged symbol and continue after its second
    # member, so that overlapping occurrences (a, a, a) merge from the left.
    raise NotImplementedError("Exercise 4.11: merge one pair in a word")


def find_chunk_boundaries(file: BinaryIO, desired_num_chunks: int, split_special_token: bytes) -> list[int]:
    """Byte offsets that cut a binary file into about `desired_num_chunks` pieces, each cut at the start
    of an occurrence of `split_special_token`, so that pieces can be pre-tokenised independently.

    The cuts start evenly spaced and each moves forward to the next occurrence of the token (or to
    the end of the file). Returns sorted, distinct offsets, the first 0 and the last the file's size:
    piece k is bytes [boundaries[k], boundaries[k + 1]). Fewer pieces than asked when the token is rare.
    """
    # Hint: start from evenly spaced guesses and move each forward to the next occurrence of the split
    # token, reading the file in blocks; the token can straddle two blocks, so let consecutive blocks
    # overlap. Guesses that end up at the same place collapse into one boundary.
    raise NotImplementedError("Exercise 4.12: chunk boundaries at special tokens")


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
    # Hint: count the pre-tokens once (special tokens removed) and treat each distinct one as a tuple of
    # single bytes, weighted by its count. Keep the count of every adjacent pair, and an index from each
    # pair to the words that contain it, so that a merge revisits only those words, not the whole corpus.
    # Ties go to the lexicographically greatest pair, as the docstring says.
    raise NotImplementedError("Exercise 4.13: train byte-level BPE")


def apply_merges(token: bytes, ranks: Mapping[tuple[bytes, bytes], int]) -> list[bytes]:
    """Split one pre-token's bytes into vocabulary tokens by replaying the merges in order of rank.

    Starting from single bytes, repeatedly merge (every occurrence, left to right) the adjacent pair
    with the lowest rank in `ranks` (its position in the merge list), until no adjacent pair has one.
    """
    # Hint: among the adjacent pairs, the one learned earliest (lowest rank) is merged first, everywhere in
    # the word; repeat until no adjacent pair is a learned merge.
    raise NotImplementedError("Exercise 4.14: encode one pre-token by merge rank")


class Tokenizer:
    """Byte-level BPE tokenizer: text to ids and back, from a vocabulary and its merges.

    Args:
        vocab: {id: token bytes}; must hold all 256 single bytes and every merge's parts and result.
        merges: the merges (bytes, bytes) in creation order; earlier merges are applied first.
        special_tokens: strings encoded whole to one id each; those missing from `vocab` are added
            with the next free ids, in order.

    Attributes `vocab`, `merges` and `special_tokens` hold the (completed) arguments.
    """

    def __init__(
        self,
        vocab: Mapping[int, bytes],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Sequence[str] | None = None,
    ) -> None:
        # Hint: keep vocab, merges (as ranks: pair -> index) and special tokens -> ids; an inverse map bytes -> id; validate as the docstring says.
        raise NotImplementedError("Exercise 4.15: tokenizer (encode, decode, stream, save, load)")

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special tokens included (one more than the largest id when ids are dense)."""
        raise NotImplementedError("Exercise 4.15: tokenizer (encode, decode, stream, save, load)")

    def token_to_id(self, token: str) -> int:
        """The id of a special token, or of an ordinary token given as the string its bytes decode to."""
        raise NotImplementedError("Exercise 4.15: tokenizer (encode, decode, stream, save, load)")

    def id_to_token(self, token_id: int) -> bytes:
        """The bytes of token `token_id`."""
        raise NotImplementedError("Exercise 4.15: tokenizer (encode, decode, stream, save, load)")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: special tokens to their ids, every other pre-token by `apply_merges`."""
        # Hint: pretokenize(text, self.special_tokens); a special token's id, else apply_merges on the UTF-8 bytes (a dict cache of pre-token -> ids pays off).
        raise NotImplementedError("Exercise 4.15: tokenizer (encode, decode, stream, save, load)")

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Lazily yield the ids of the concatenation of `iterable`'s strings (e.g. an open text file,
        line by line), exactly `encode("".join(iterable))`, holding back only the unsettled tail."""
        # Hint: keep a buffer; after each chunk, yield the ids of the pieces more text cannot change (special tokens that cannot grow, then all but the last two pre-tokens, as read in the buffer: the prefix re-read alone may end differently) and drop them; encode the rest at the end.
        raise NotImplementedError("Exercise 4.15: tokenizer (encode, decode, stream, save, load)")

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`: their bytes joined and decoded as UTF-8, with invalid sequences (a slice of
        ids that cuts a character) replaced by U+FFFD rather than raising."""
        # Hint: a character can span two tokens, so join the tokens' bytes first and decode the UTF-8 once, at
    # the end; invalid bytes become U+FFFD rather than an error.
        raise NotImplementedError("Exercise 4.15: tokenizer (encode, decode, stream, save, load)")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer to a JSON file, atomically; token bytes are stored as hex strings."""
        # Hint: write atomically (a temporary file in the target's folder, then one rename over the target);
    # tokens are bytes, which JSON cannot hold, so store them as text that round-trips exactly.
        raise NotImplementedError("Exercise 4.15: tokenizer (encode, decode, stream, save, load)")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """A tokenizer read back from a file written by `save`; ValueError naming the file when it is not one."""
        # Hint: the inverse of save, then the constructor (which validates); any parsing error becomes a
        # ValueError that names the path.
        raise NotImplementedError("Exercise 4.15: tokenizer (encode, decode, stream, save, load)")


def train_tokenizer(
    text_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: Sequence[str] = ("<|endoftext|>",),
    num_processes: int = 1,
) -> Tokenizer:
    """`train_bpe` on the file at `text_path`, wrapped in a `Tokenizer` with the same special tokens."""
    vocab, merges = train_bpe(text_path, vocab_size, special_tokens, num_processes)
    return Tokenizer(vocab, merges, special_tokens)
