"""Harness tasks built from Chapter 11's instruction data (`reference.finetune.instructions`).

Survey section 2.6(a) with 2.5(a): a fine-tuned model is judged on examples it was not trained on.
Both tasks are multiple choice, scored like every other task of the harness (`acc`, `acc_norm`),
with the instruction wrapped in the model's chat layout (`HarnessLM.chat_prompt`, the layout
Chapter 11's SFT trains on) and each choice scored as the start of the assistant's reply:

    instruction_speaker  'In <play>, who says: "<line>"' -> the speaker among four speakers of that
                         play (chance 25%); a task type the SFT trains on, items from its *test* split.
    instruction_play     'Which of Shakespeare's plays has the line: "<line>"' -> the play among four
                         titles (chance 25%); a task type held out of SFT entirely ("held_out" split).

No leak: both draw from one `build_dataset(per_task, seed)` whose "train" split is what
`reference.evaluation.run` fine-tunes on, and an item is dropped when its quoted line is quoted in,
or is the response of, any training example (the same line can recur in a play).
"""

from __future__ import annotations

import functools
import random
import re

from reference.evaluation.harness import Doc, Task, register_task

PER_TASK = 1000  # examples drawn per task type: 100 speaker items in the test split (10%)
_QUOTED = re.compile(r'"(.*)"$')


@functools.lru_cache(maxsize=4)
def instruction_data(per_task: int = PER_TASK, seed: int = 0) -> dict:
    """Chapter 11's instruction data set, split ({"train", "validation", "test", "held_out"})."""
    from reference.finetune.instructions import build_dataset

    return build_dataset(per_task=per_task, seed=seed)


def quoted_line(prompt: str) -> str:
    """The line of a play that a "speaker", "play" or "continue" prompt quotes."""
    found = _QUOTED.search(prompt)
    if found is None:
        raise ValueError(f"prompt quotes no line: {prompt!r}")
    return found.group(1)


def training_lines(data: dict) -> set[str]:
    """Every line of a play that the training split shows: quoted in a prompt or given as a response."""
    lines = {quoted_line(e.prompt) for e in data["train"] if e.task in ("speaker", "play", "continue")}
    return lines | {e.response for e in data["train"] if e.task == "continue"}


@functools.lru_cache(maxsize=1)
def speakers_by_play() -> dict[str, tuple[str, ...]]:
    """The speakers of each play, as `instructions.speeches` names them (title case), sorted."""
    from reference.data.corpus import load_source
    from reference.finetune.instructions import speeches

    return {doc.title: tuple(sorted({s for s, _ in speeches(doc.text)})) for doc in load_source("books")}


def _shuffled(rng: random.Random, gold: str, others: list[str]) -> tuple[tuple[str, ...], int]:
    choices = [gold, *others]
    order = list(range(len(choices)))
    rng.shuffle(order)
    return tuple(choices[k] for k in order), order.index(0)


def _task(name: str, docs: list[Doc], n: int) -> Task:
    return Task(name, "multiple_choice", docs[:n], num_fewshot=0, target_delimiter="", chat=True)


@register_task("instruction_speaker")
def instruction_speaker(n: int = 100, seed: int = 0, per_task: int = PER_TASK) -> Task:
    """Who says the line? Chapter 11's "speaker" examples of the test split, four speakers of the
    same play as choices (at most n items: as many as the test split holds)."""
    data = instruction_data(per_task, seed)
    seen, rng, speakers = training_lines(data), random.Random(seed), speakers_by_play()
    docs = []
    for e in data["test"]:
        if e.task != "speaker" or quoted_line(e.prompt) in seen:
            continue
        others = [s for s in speakers[e.source] if s.lower() != e.response.lower()]
        if len(others) < 3:
            continue
        choices, gold = _shuffled(rng, e.response, rng.sample(others, 3))
        docs.append(Doc(e.prompt, choices, gold))
    return _task("instruction_speaker", docs, n)


@register_task("instruction_play")
def instruction_play(n: int = 100, seed: int = 0, per_task: int = PER_TASK) -> Task:
    """Which play has the line? Chapter 11's held-out "play" examples, four titles as choices."""
    data = instruction_data(per_task, seed)
    seen, rng, titles = training_lines(data), random.Random(seed), sorted(speakers_by_play())
    docs = []
    for e in data["held_out"]:
        if e.task != "play" or quoted_line(e.prompt) in seen:
            continue
        choices, gold = _shuffled(rng, e.response, rng.sample([t for t in titles if t != e.response], 3))
        docs.append(Doc(e.prompt, choices, gold))
    return _task("instruction_play", docs, n)
