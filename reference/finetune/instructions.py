"""An instruction-following data set built from the course corpus, with held-out task types.

Survey section 2.5(a): supervised fine-tuning (SFT) trains a pretrained model on (instruction,
response) pairs; instruction tuning (FLAN, Wei et al., 2022; T0, Sanh et al., 2022) does so over
many *task types*, each phrased as an instruction, and measures what matters most on task types
that were left out of training entirely: does following instructions transfer?

The course cannot download FLAN, so it writes its own tasks from the text it ships
(`reference.data.corpus`): Shakespeare's plays, laid out as speaker headings in capitals followed
by the speech, and the Python documentation topics and standard-library source.

    speaker   In <play>, who says: "<line>"                       -> the speaker, e.g. "Hermia"
    play      Which of Shakespeare's plays has the line: "<line>"  -> the title
    continue  Continue this line from <play>: "<line>"            -> the speech's next line
    topic     In one sentence, what does the Python documentation topic "<key>" cover?
                                                                  -> the topic's heading and first sentence
    code      Complete this line of Python: <first part>          -> the rest of the line

Each example becomes a conversation (one user turn, one assistant turn) laid out by the
tokenizer's chat template (`reference.inference.chat.render_chat`: SmolLM2's ChatML, or ChatML as
plain text for a tokenizer without a template), the response ending with the end-of-turn id.
`build_dataset` draws the examples with a seed, removes duplicate prompts, and splits the trained
task types into train / validation / test; the held-out task types (default "play" and "code")
appear only in the "held_out" split.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from reference.data.corpus import load_source
from reference.validation import check_int

TASKS = ("speaker", "play", "continue", "topic", "code")
HELD_OUT = ("play", "code")
SPLITS = ("train", "validation", "test", "held_out")

_SPEAKER = re.compile(r"^[A-Z][A-Z .'\-]{1,30}$")  # a speaker heading: a line in capitals


@dataclass(frozen=True)
class Example:
    """One instruction-following example: the user's instruction and the assistant's response."""

    task: str  # one of TASKS
    prompt: str
    response: str
    source: str  # the play, topic or file it was made from

    def messages(self, system: str | None = None) -> list[dict[str, str]]:
        """The conversation without the response: [{"role": "user", "content": prompt}] (after a system turn, if given)."""
        turns = [{"role": "system", "content": system}] if system is not None else []
        return turns + [{"role": "user", "content": self.prompt}]


def speeches(text: str) -> list[tuple[str, list[str]]]:
    """The speeches of a play as (speaker, lines): a capitalised heading line, then its lines up to a blank line.

    Stage directions in square brackets and lines that are themselves headings are skipped.
    """
    found, speaker, lines = [], None, []
    for raw in text.splitlines() + [""]:
        line = raw.strip()
        if not line:
            if speaker and lines:
                found.append((speaker, lines))
            speaker, lines = None, []
        elif speaker is None and _SPEAKER.match(line) and not line.startswith(("ACT", "SCENE")):
            speaker = line.title()
        elif speaker is not None and not line.startswith("["):
            lines.append(line)
    return found


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


def _play_examples(rng: random.Random, n: int) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = {"speaker": [], "play": [], "continue": []}
    candidates = []
    for doc in load_source("books"):
        for speaker, lines in speeches(doc.text):
            for i, line in enumerate(lines):
                if 25 <= len(line) <= 90:
                    following = lines[i + 1] if i + 1 < len(lines) and 15 <= len(lines[i + 1]) <= 90 else None
                    candidates.append((doc.title, speaker, line, following))
    rng.shuffle(candidates)
    for title, speaker, line, following in candidates:
        if len(out["speaker"]) < n:
            out["speaker"].append(Example("speaker", f'In {title}, who says: "{line}"', speaker, title))
        elif len(out["play"]) < n:
            out["play"].append(Example("play", f'Which of Shakespeare\'s plays has the line: "{line}"', title, title))
        elif following is not None and len(out["continue"]) < n:
            out["continue"].append(Example("continue", f'Continue this line from {title}: "{line}"', following, title))
        if all(len(v) >= n for v in out.values()):
            break
    return out


def _topic_examples(rng: random.Random, n: int) -> list[Example]:
    examples = []
    for doc in load_source("prose"):
        key = doc.title.removeprefix("topic: ")
        parts = [p.strip() for p in doc.text.split("\n\n") if p.strip()]
        heading = parts[0].splitlines()[0].strip() if parts else ""
        body = next((p for p in parts[1:] if not p.startswith(("*", "=", "-", " ")) and len(p) > 40), None)
        if not heading or body is None:
            continue
        sentence = " ".join(body.split()).split(". ")[0].rstrip(".:") + "."
        response = f"{heading}: {_clip(sentence, 200)}"
        examples.append(Example("topic", f'In one sentence, what does the Python documentation topic "{key}" cover?', response, doc.title))
    rng.shuffle(examples)
    return examples[:n]


def _code_examples(rng: random.Random, n: int) -> list[Example]:
    documents = load_source("code")
    examples, seen = [], set()
    order = list(range(len(documents)))
    rng.shuffle(order)
    for index in order:
        doc = documents[index]
        lines = [ln.strip() for ln in doc.text.splitlines()]
        lines = [ln for ln in lines if 30 <= len(ln) <= 80 and not ln.startswith(("#", '"', "'")) and ln not in seen]
        if not lines:
            continue
        line = rng.choice(lines)
        seen.add(line)
        cut = rng.randint(len(line) * 2 // 5, len(line) * 3 // 5)
        cut = line.rfind(" ", 0, cut) + 1 or cut  # cut between words when there is a space before
        head, tail = line[:cut], line[cut:]
        if len(head) < 8 or len(tail) < 4:
            continue
        examples.append(Example("code", f"Complete this line of Python: {head}", tail, doc.title))
        if len(examples) >= n:
            break
    return examples


def build_dataset(
    per_task: int = 200,
    held_out: Sequence[str] = HELD_OUT,
    fractions: tuple[float, float] = (0.8, 0.1),
    seed: int = 0,
) -> dict[str, list[Example]]:
    """The instruction data set, split.

    Args:
        per_task: examples drawn per task type (fewer where a source runs out: the 79 topics).
        held_out: task types kept out of train/validation/test, all in the "held_out" split.
        fractions: the shares of train and validation among the trained task types' examples;
            test gets the rest. Each task type is split separately, so every split has all of them.
        seed: the one seed of every random choice.

    Returns:
        {"train", "validation", "test", "held_out"}: lists of `Example`, no prompt in two splits.
    """
    check_int("per_task", per_task, 1)
    unknown = [t for t in held_out if t not in TASKS]
    if unknown or isinstance(held_out, str):
        raise ValueError(f"held_out must be task types from {TASKS}, got {held_out!r}")
    if len(set(held_out)) == len(TASKS):
        raise ValueError("held_out leaves no task type to train on")
    train_share, val_share = fractions
    if not (0 < train_share and 0 <= val_share and train_share + val_share < 1):
        raise ValueError(f"fractions must be positive and sum to less than 1, got {fractions!r}")
    rng = random.Random(seed)
    by_task = _play_examples(rng, per_task)
    by_task["topic"] = _topic_examples(rng, per_task)
    by_task["code"] = _code_examples(rng, per_task)
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    seen: set[str] = set()
    for task in TASKS:
        unique = [e for e in by_task[task] if not (e.prompt in seen or seen.add(e.prompt))]
        if task in held_out:
            splits["held_out"] += unique
            continue
        a, b = int(len(unique) * train_share), int(len(unique) * (train_share + val_share))
        splits["train"] += unique[:a]
        splits["validation"] += unique[a:b]
        splits["test"] += unique[b:]
    rng.shuffle(splits["train"])
    return splits


def encode_example(tokenizer, example: Example, system: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of an example: the conversation through the opening of the
    assistant's turn by the tokenizer's chat template, then the response and the end-of-turn id."""
    from reference.inference.chat import render_chat, stop_ids

    prompt = render_chat(tokenizer, example.messages(system))
    stops = stop_ids(tokenizer)
    if not stops:
        raise ValueError("the tokenizer has no end-of-turn token (<|im_end|> or <|endoftext|>) to end a response with")
    return list(prompt), list(tokenizer.encode(example.response)) + [stops[0]]
