"""Planted test material for Chapter 4's filters: noise, near-duplicates, personal data, hostile text.

A filter's precision and recall can only be measured against a ground truth, and real web text
comes without one; so the chapter plants what each filter should find, with a seed, and counts
what it finds (the method of the deduplication study of Lee et al., 2022, and of the PII
evaluations of BigScience's ROOTS, Laurençon et al., 2022). Everything here is synthetic:
- `corrupt`: the noise a quality classifier learns to tell from clean text;
- `plant_near_duplicates`: edited copies of documents, with the pairs to find;
- `planted_pii`: sentences with fake e-mail addresses, phone numbers, IP addresses, card
  numbers and URLs, the character spans of each, decoys that look like personal data but are not,
  and a few written in ways a regular expression does not catch;
- `hostile_neutral_set`: a small hand-written set of mild hostile and neutral sentences
  (`resources/hostile_neutral.tsv`).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import random
import string
from collections.abc import Sequence

from reference.data.corpus import Document, as_text
from reference.validation import check_int

CORRUPTIONS: tuple[str, ...] = ("word_salad", "char_noise", "shouting", "symbols", "repetition")


def corrupt(text: str, kind: str, seed: int = 0) -> str:
    """A noisy version of `text`, of one kind in CORRUPTIONS, deterministic for a seed.

    - "word_salad": the words in a random order (fluent vocabulary, no syntax);
    - "char_noise": a quarter of the letters replaced by random printable characters (OCR or
      encoding damage);
    - "shouting": everything in upper case;
    - "symbols": a symbol token ("#", "|", "@@", "...", "&gt;", "{}") after about every other word
      (markup debris);
    - "repetition": the first eight words repeated to the text's length (boilerplate).
    """
    text = as_text(text)
    if kind not in CORRUPTIONS:
        raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}")
    rng = random.Random(seed)
    words = text.split()
    if kind == "word_salad":
        rng.shuffle(words)
        return " ".join(words)
    if kind == "char_noise":
        noise = string.ascii_letters + string.digits + string.punctuation
        return "".join(rng.choice(noise) if c.isalpha() and rng.random() < 0.25 else c for c in text)
    if kind == "shouting":
        return text.upper()
    if kind == "symbols":
        symbols = ("#", "|", "@@", "...", "&gt;", "{}")
        return " ".join(w + (" " + rng.choice(symbols) if rng.random() < 0.5 else "") for w in words)
    head = words[:8]
    return " ".join(head[i % len(head)] for i in range(len(words))) if head else text


def text_windows(documents: Sequence[Document | str], n: int, words: int = 80, seed: int = 0) -> list[str]:
    """`n` random windows of `words` consecutive words from the documents (each of at least that many words).

    Words are re-joined with single spaces, so windows of prose and of code look alike in layout.
    """
    check_int("n", n)
    check_int("words", words, 1)
    rng = random.Random(seed)
    split = [as_text(d.text if isinstance(d, Document) else d).split() for d in documents]
    long_enough = [w for w in split if len(w) >= words]
    if n and not long_enough:
        raise ValueError(f"no document has at least words={words} words")
    windows = []
    for _ in range(n):
        chosen = rng.choice(long_enough)
        start = rng.randrange(len(chosen) - words + 1)
        windows.append(" ".join(chosen[start : start + words]))
    return windows


def quality_training_set(
    documents: Sequence[Document | str], n: int, words: int = 80, seed: int = 0
) -> tuple[list[str], list[int]]:
    """`n` clean windows (label 0) and `n` corrupted ones (label 1, the kinds in turn), shuffled.

    The clean and the corrupted windows come from different draws, so the classifier cannot
    learn a window's content; only its noise.
    """
    clean = text_windows(documents, n, words, seed)
    noisy = [
        corrupt(w, CORRUPTIONS[i % len(CORRUPTIONS)], seed + i) for i, w in enumerate(text_windows(documents, n, words, seed + 1))
    ]
    pairs = [(t, 0) for t in clean] + [(t, 1) for t in noisy]
    random.Random(seed).shuffle(pairs)
    return [t for t, _ in pairs], [y for _, y in pairs]


def _edit_words(text: str, edit_rate: float, rng: random.Random) -> str:
    """Each word, with probability edit_rate, deleted, replaced by another word of the text, or doubled."""
    words = text.split()
    edited = []
    for word in words:
        if rng.random() >= edit_rate:
            edited.append(word)
            continue
        action = rng.randrange(3)
        if action == 1:
            edited.append(rng.choice(words))
        elif action == 2:
            edited += [word, word]
    return " ".join(edited) if edited else text


def plant_near_duplicates(
    documents: Sequence[Document | str], n: int, edit_rate: float, seed: int = 0
) -> tuple[list[Document | str], list[tuple[int, int]]]:
    """Append `n` edited copies of distinct random documents; returns (the new list, the planted pairs).

    Each copy has a fraction `edit_rate` of its words deleted, replaced or doubled (whitespace is
    normalised to single spaces in the copy). A pair (i, j) says that documents[j] of the new
    list is a near-duplicate of documents[i], with i < j. Documents stay Documents (the copy's
    title says what it copies) and strings stay strings.
    """
    check_int("n", n)
    if n > len(documents):
        raise ValueError(f"n={n} is more than the {len(documents)} documents to copy")
    if not 0.0 <= edit_rate <= 1.0:
        raise ValueError(f"edit_rate must lie in [0, 1], got {edit_rate}")
    rng = random.Random(seed)
    planted: list[Document | str] = list(documents)
    pairs = []
    for original in sorted(rng.sample(range(len(documents)), n)):
        source = documents[original]
        if isinstance(source, Document):
            copy: Document | str = dataclasses.replace(
                source, text=_edit_words(source.text, edit_rate, rng), title=f"near-duplicate of {source.title}"
            )
        else:
            copy = _edit_words(as_text(source, name=f"documents[{original}]"), edit_rate, rng)
        pairs.append((original, len(planted)))
        planted.append(copy)
    return planted, pairs


# ----------------------------------------------------------------------------------------------
# Personal data
# ----------------------------------------------------------------------------------------------

_FIRST = ("alice", "bob", "carol", "dmitri", "erin", "farah", "goran", "hiro", "ines", "jamal")
_DOMAINS = ("example.com", "example.org", "mail.example.net", "uni.example.edu")
_VALID_CARDS = ("4111 1111 1111 1111", "5500-0000-0000-0004", "3400 000000 00009", "6011000000000004", "4012888888881881")
_TEMPLATES = {
    "EMAIL": ("Write to {} for the slides.", "Contact: {}", "Send the form to {} before Friday."),
    "PHONE": ("Call me on {} after six.", "Phone: {}", "The office number is {}."),
    "IP": ("The server at {} stopped answering.", "Blocked requests from {} last night.", "ssh into {} and restart it."),
    "CREDIT_CARD": ("Card number {} expires next year.", "She paid with {}.", "Charge {} for the order."),
    "URL": ("The notes are at {} now.", "See {} for details.", "Download it from {} please."),
}
_DECOYS = (
    "Python 3.11.7 was released in December.",
    "The meeting is on 2024-03-15 at 10:30.",
    "Order number 4111 1111 1111 1112 was cancelled.",  # fails the Luhn check
    "The ratio was 3.14159 in the last run.",
    "Version 10.0.0.1 of the tool is out.",  # four numbers, but a version, in context
    "Section 2.1.4 covers the details.",
    "The room holds 250 people and costs 1200 euros.",
    "Use the @decorator syntax in the example.",
    "Values 999.300.1.7 are out of range.",
)
_MISSED = (  # personal data a regular expression is not written to catch: counted in the recall
    ("EMAIL", "Mail alice at example dot com if you can.", "alice at example dot com"),
    ("PHONE", "Ring five five five, one two three four.", "five five five, one two three four"),
    ("EMAIL", "Reach me as bob(at)example(dot)org today.", "bob(at)example(dot)org"),
)


def _fake(kind: str, rng: random.Random) -> str:
    if kind == "EMAIL":
        return f"{rng.choice(_FIRST)}{rng.choice(('', '.smith', '_42', '+news'))}@{rng.choice(_DOMAINS)}"
    if kind == "PHONE":
        a, b, c = rng.randrange(200, 999), rng.randrange(200, 999), rng.randrange(1000, 9999)
        return rng.choice((f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"+1 {a} {b} {c}", f"+44 20 {b}{c % 10} {c}", f"{a}.{b}.{c}"))
    if kind == "IP":
        if rng.random() < 0.5:
            return ".".join(str(rng.randrange(1, 255)) for _ in range(4))
        return rng.choice(("2001:db8::1", "fe80::1ff:fe23:4567:890a", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "::1"))
    if kind == "CREDIT_CARD":
        return rng.choice(_VALID_CARDS)
    return rng.choice(("https://example.com/notes", "http://www.example.org/a/b?x=1", "https://docs.example.net/page#top"))


def planted_pii(n: int = 100, seed: int = 0) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """`n` sentences with fake personal data and their ground truth, deterministic for a seed.

    Each item is (sentence, [(start, end, kind), ...]): text[start:end] is one item of personal
    data of that kind ("EMAIL", "PHONE", "IP", "CREDIT_CARD", "URL"). About one sentence in
    five is a decoy with none (version numbers, dates, a card number that fails the Luhn check);
    a few hold personal data written so that no pattern in `privacy` catches it ("alice at
    example dot com"), so a perfect recall is not to be expected. All data is fictitious: the
    domains are reserved for examples (RFC 2606), the card numbers are the issuers' test numbers.
    """
    check_int("n", n)
    rng = random.Random(seed)
    kinds = tuple(_TEMPLATES)
    items = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.2:
            items.append((rng.choice(_DECOYS), []))
        elif roll < 0.25:
            kind, sentence, secret = rng.choice(_MISSED)
            start = sentence.index(secret)
            items.append((sentence, [(start, start + len(secret), kind)]))
        else:
            kind = kinds[i % len(kinds)]
            value = _fake(kind, rng)
            before, after = rng.choice(_TEMPLATES[kind]).split("{}")
            items.append((before + value + after, [(len(before), len(before) + len(value), kind)]))
    return items


# ----------------------------------------------------------------------------------------------
# Hostile and neutral sentences
# ----------------------------------------------------------------------------------------------


def _resource_lines(name: str) -> list[str]:
    text = (importlib.resources.files("reference.data") / "resources" / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def hostile_neutral_set() -> tuple[list[str], list[int]]:
    """The labelled sentences of `resources/hostile_neutral.tsv`: (texts, labels), 1 = hostile, in file order.

    Synthetic and mild (see the file's header): about 90 hostile sentences, insults aimed at a
    person, and about 100 neutral ones, some of which use the same words without hostility ("the
    fool in King Lear").
    """
    texts, labels = [], []
    for line in _resource_lines("hostile_neutral.tsv"):
        label, text = line.split("\t", 1)
        texts.append(text)
        labels.append(int(label))
    return texts, labels


def hostile_words() -> frozenset[str]:
    """The word list of `resources/hostile_words.txt` (lower case, mild insults only)."""
    return frozenset(_resource_lines("hostile_words.txt"))
