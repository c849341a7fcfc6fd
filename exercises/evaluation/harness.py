"""Exercises for Chapter 13: a small benchmark harness: multiple-choice tasks scored by log-likelihood (acc and acc_norm as

Implement multiple_choice_scores (13.12), pass_at_k (13.13): fill in each body that raises NotImplementedError; the docstrings say
what to return. The rest of the module is the reference's own code, so that it runs on your
functions. Grade with `llm-course grade 13`. Mirrors `reference/evaluation/harness.py`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

INVALID = "[invalid]"


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def multiple_choice_scores(loglikelihoods: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, float]:
    """lm-evaluation-harness's `acc` and `acc_norm` of one multiple-choice item.

    `acc` takes the choice of highest log-likelihood; `acc_norm` divides each log-likelihood by the
    length of the choice's text in characters before taking the argmax: the answer text itself, not
    the delimiter (a space) that the scored continuation starts with. Ties go to the first choice
    (numpy's argmax).

    Args:
        loglikelihoods: log p(choice_i | context), one per choice (summed over the choice's tokens).
        choices: the answer texts, in the same order, without the delimiter that precedes them.
        gold: index of the right choice.

    Returns:
        {"acc": 0.0 or 1.0, "acc_norm": 0.0 or 1.0}.
    """
    # Hint: argmax by hand, keeping the first of equal values; the lengths are len(choice) in characters.
    raise NotImplementedError("Exercise 13.12: acc and acc_norm")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c are correct (Chen et al., 2021, eq. 1).

    pass@k = 1 - C(n - c, k) / C(n, k): the chance that k samples drawn without replacement from the
    n include at least one correct one; computed as a product, 1 - prod_{i=n-c+1}^{n} (1 - k / i), to
    stay finite for large n. 1.0 when n - c < k (every draw of k holds a correct sample).

    Args:
        n: samples generated (>= 1).
        c: of them correct, 0 <= c <= n.
        k: 1 <= k <= n.
    """
    # Hint: the product form avoids huge binomials; what happens when n - c < k?
    raise NotImplementedError("Exercise 13.13: unbiased pass@k")


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) with the sample standard deviation (ddof 1), as lm-evaluation-harness."""
    n = len(values)
    if n == 0:
        raise ValueError("values must not be empty")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def extract_answer(text: str, pattern: str = r"(-?\d+)") -> str:
    """The first match of `pattern` in a generated text (its first group if it has one), stripped;
    INVALID when nothing matches (lm-evaluation-harness's "regex" filter)."""
    found = re.search(pattern, text)
    if found is None:
        return INVALID
    return (found.group(1) if found.groups() else found.group(0)).strip()


# ----------------------------------------------------------------------------------------------
# Models: a causal LM with a tokenizer, or the uniform-guess baseline
# ----------------------------------------------------------------------------------------------


class HarnessLM:
    """A causal language model and its tokenizer, with the two requests the harness makes."""

    def __init__(self, model: nn.Module, tokenizer, name: str = "model") -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.device = next(model.parameters()).device
        self.max_length = int(getattr(model, "context_length", 2048))

    @torch.no_grad()
    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        """(log p(continuation | context), whether greedy decoding would produce the continuation).

        Context and continuation are tokenised separately and joined (lm-evaluation-harness's rule,
        so the choice boundary is a token boundary); a sequence longer than the model's context is
        cut from the left.
        """
        ctx = self.tokenizer.encode(context)
        cont = self.tokenizer.encode(continuation)
        if not cont:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens")
        whole = (ctx + cont)[-(self.max_length + 1) :]
        x = torch.tensor(whole[:-1], device=self.device)[None]
        logp = self.model(x).float().log_softmax(-1)[0, -len(cont) :]  # (len(cont), vocab)
        target = torch.tensor(cont, device=self.device)
        ll = float(logp.gather(-1, target[:, None]).sum())
        return ll, bool((logp.argmax(-1) == target).all())

    @torch.no_grad()
    def loglikelihoods(self, context: str, continuations: Sequence[str]) -> list[float]:
        """`loglikelihood(context, c)[0]` for every c, in one forward pass: the sequences are padded on
        the right to one length (a causal model's scores of a position never see the padding)."""
        ctx = self.tokenizer.encode(context)
        conts = [self.tokenizer.encode(c) for c in continuations]
        if not all(conts):
            raise ValueError(f"a continuation of {list(continuations)!r} encodes to no tokens")
        rows = [(ctx + cont)[-(self.max_length + 1) :] for cont in conts]
        width = max(len(r) for r in rows) - 1
        x = torch.tensor([r[:-1] + [0] * (width - len(r) + 1) for r in rows], device=self.device)  # (choices, width)
        logp = self.model(x).float().log_softmax(-1)  # (choices, width, vocab)
        out = []
        for i, (row, cont) in enumerate(zip(rows, conts)):
            end = len(row) - 1
            target = torch.tensor(cont, device=self.device)
            out.append(float(logp[i, end - len(cont) : end].gather(-1, target[:, None]).sum()))
        return out

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int, stop: Sequence[str] = ("\n",)) -> str:
        """Greedy continuation of `prompt`, cut at the first stop string."""
        from reference.inference.generate import generate

        ids = self.tokenizer.encode(prompt)[-(self.max_length - max_new_tokens) :]
        out = generate(self.model, ids, max_new_tokens, temperature=0.0, stop_strings=list(stop) or None,
                       tokenizer=self.tokenizer)  # fmt: skip
        text = out.texts[0]
        for s in stop:
            text = text.split(s)[0]
        return text

    def chat_prompt(self, user_text: str) -> str:
        """One user turn and the opening of the assistant's reply, as text, by the tokenizer's chat
        template (SmolLM2's ChatML with its default system turn), else plain ChatML (Chapter 11's
        `render_chat`, the layout the course's SFT trains on)."""
        from reference.inference.chat import chatml, render_chat

        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.decode(render_chat(self.tokenizer, [{"role": "user", "content": user_text}]))
        return chatml([{"role": "user", "content": user_text}])

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], n: int, max_new_tokens: int, temperature: float = 0.8,
               top_p: float | None = 0.95, stop: Sequence[str] = ("\n",), seed: int = 0) -> list[list[str]]:  # fmt: skip
        """n sampled continuations of each prompt, all prompts and samples decoded as one batch
        (left-padded, `reference.inference.generate`), each cut at its first stop string."""
        from reference.inference.chat import stop_ids
        from reference.inference.generate import generate

        ids = [self.tokenizer.encode(p)[-(self.max_length - max_new_tokens) :] for p in prompts]
        out = generate(self.model, ids, max_new_tokens, temperature=temperature, top_p=top_p, n=n,
                       stop_strings=list(stop) or None, eos_token_id=stop_ids(self.tokenizer) or None,
                       tokenizer=self.tokenizer, generator=torch.Generator().manual_seed(seed))  # fmt: skip
        texts = []
        for text in out.texts:
            for s in (*stop, "<|im_end|>", "<|endoftext|>"):  # an end-of-turn id is kept in the output
                text = text.split(s)[0]
            texts.append(text)
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


class UniformGuess:
    """The chance baseline: every choice equally likely (a seeded random pick among them), and a
    generation drawn uniformly from the task's answer space."""

    def __init__(self, seed: int = 0, answer_space: Sequence[str] = tuple(str(i) for i in range(200))) -> None:
        self.name, self.rng, self.answer_space = "uniform-guess", random.Random(seed), tuple(answer_space)

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        return math.log(self.rng.random()), False  # i.i.d. scores: the argmax is a uniform pick

    def generate(self, prompt: str, max_new_tokens: int, stop: Sequence[str] = ("\n",)) -> str:
        return self.rng.choice(self.answer_space)


# ----------------------------------------------------------------------------------------------
# Tasks, prompts, the registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    """One test item: the query text, and either choices (answer texts, no leading delimiter) with the
    gold index, or acceptable answers."""

    query: str
    choices: tuple[str, ...] = ()
    gold: int = 0
    answers: tuple[str, ...] = ()


@dataclass
class Task:
    """A benchmark task. kind "multiple_choice": each choice scored by log-likelihood after the
    prompt; kind "generate": greedy generation, `answer_pattern` extracts the answer, exact match."""

    name: str
    kind: str
    docs: list[Doc]
    fewshot_docs: list[Doc] = field(default_factory=list)
    description: str = ""
    num_fewshot: int = 0
    answer_pattern: str = r"(-?\d+)"
    max_new_tokens: int = 8
    answer_space: tuple[str, ...] = ()
    target_delimiter: str = " "
    chat: bool = False  # the query is an instruction: wrapped in the model's chat layout (`HarnessLM.chat_prompt`)

    def __post_init__(self) -> None:
        if self.kind not in ("multiple_choice", "generate"):
            raise ValueError(f"kind must be 'multiple_choice' or 'generate', got {self.kind!r}")
        if self.num_fewshot > len(self.fewshot_docs):
            raise ValueError(f"num_fewshot={self.num_fewshot} but the task has {len(self.fewshot_docs)} few-shot docs")


def target_text(doc: Doc, delimiter: str = " ") -> str:
    """The answer a few-shot example shows after its query: the delimiter, then the gold choice or the
    first acceptable answer."""
    return delimiter + (doc.choices[doc.gold] if doc.choices else doc.answers[0])


def few_shot_prompt(description: str, shots: Sequence[Doc], query: str, delimiter: str = " ") -> str:
    """lm-evaluation-harness's prompt layout: the description, then each example as its query followed
    by its answer, the examples separated by a blank line, then the query to answer."""
    parts = [shot.query + target_text(shot, delimiter) for shot in shots] + [query]
    return description + "\n\n".join(parts)


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")


def evaluate_task(lm: Any, task: Task, limit: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Score `lm` (a `HarnessLM` or `UniformGuess`) on a task: every metric's mean and standard error.

    The few-shot examples of each item are drawn from `task.fewshot_docs` with a seeded RNG
    (the same examples for every model).

    Returns:
        {"task", "kind", "n", "num_fewshot", "metrics": {name: {"value", "stderr"}}, "per_item": {name: [...]}}.
    """
    _check_limit(limit)
    rng = random.Random(seed)
    docs = task.docs[:limit]
    per_item: dict[str, list[float]] = {}
    for doc in docs:
        shots = rng.sample(task.fewshot_docs, task.num_fewshot) if task.num_fewshot else []
        context = few_shot_prompt(task.description, shots, doc.query, task.target_delimiter)
        if task.chat and hasattr(lm, "chat_prompt"):
            context = lm.chat_prompt(context)
        if task.kind == "multiple_choice":
            continuations = [task.target_delimiter + choice for choice in doc.choices]
            if hasattr(lm, "loglikelihoods"):  # all choices in one batch
                lls = lm.loglikelihoods(context, continuations)
            else:
                lls = [lm.loglikelihood(context, c)[0] for c in continuations]
            scores = multiple_choice_scores(lls, doc.choices, doc.gold)
        else:
            if isinstance(lm, UniformGuess) and task.answer_space:  # chance over this task's answers
                text = lm.rng.choice(task.answer_space)
            else:
                text = lm.generate(context, task.max_new_tokens)
            answer = extract_answer(text, task.answer_pattern)
            scores = {"exact_match": float(answer in doc.answers)}
        for name, value in scores.items():
            per_item.setdefault(name, []).append(value)
    metrics = {}
    for name, values in per_item.items():
        mean, stderr = mean_stderr(values)
        metrics[name] = {"value": mean, "stderr": stderr}
    return {"task": task.name, "kind": task.kind, "n": len(docs), "num_fewshot": task.num_fewshot,
            "metrics": metrics, "per_item": per_item}  # fmt: skip


TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: add a task builder (called with `n` and `seed`) to the registry under `name`."""
    def add(builder: Callable[..., Task]) -> Callable[..., Task]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = builder
        return builder

    return add


def get_task(name: str, n: int = 100, seed: int = 0) -> Task:
    """Build a registered task with `n` test items."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the registry has {sorted(TASKS)}")
    return TASKS[name](n=n, seed=seed)


def held_out(source: str) -> list:
    """The documents of a corpus source that the course's own models were not trained on (Chapter 6's validation split)."""
    from reference.data.corpus import load_source
    from reference.training.assets import split_documents

    return split_documents(load_source(source))[1]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if 20 <= len(line.strip()) <= 80 and not line.strip().isupper()]


@register_task("shakespeare_next_line")
def shakespeare_next_line(n: int = 100, seed: int = 0) -> Task:
    """Which line comes next? A line of a held-out play, the true next line and three lines from
    elsewhere in the same play (4 choices, chance 25%). Built from the corpus's "books" source."""
    rng = random.Random(seed)
    plays = [_lines(d.text) for d in held_out("books")]
    plays = [p for p in plays if len(p) > 50]
    docs = []
    while len(docs) < n + 10:
        lines = rng.choice(plays)
        i = rng.randrange(len(lines) - 1)
        others = rng.sample([line for j, line in enumerate(lines) if abs(j - i - 1) > 3], 3)
        choices = [lines[i + 1]] + others
        order = list(range(4))
        rng.shuffle(order)
        docs.append(Doc(f"{lines[i]}\n", tuple(choices[k] for k in order), order.index(0)))
    return Task("shakespeare_next_line", "multiple_choice", docs[:n], fewshot_docs=docs[n:], num_fewshot=0)


@register_task("python_docs_cloze")
def python_docs_cloze(n: int = 100, seed: int = 0) -> Task:
    """The last word of a sentence from the Python documentation ("prose" source) among four words
    of the same documentation (held-out topics; chance 25%); the choices differ in length, so acc and acc_norm can disagree."""
    rng = random.Random(seed)
    sentences, vocab = [], set()
    for doc in held_out("prose"):
        for s in re.split(r"(?<=[.!?])\s+", doc.text):
            words = s.split()
            if 8 <= len(words) <= 30 and re.fullmatch(r"[a-z]{3,}\.", words[-1]):
                sentences.append((" ".join(words[:-1]), words[-1][:-1]))
                vocab.add(words[-1][:-1])
    vocab_list = sorted(vocab)
    rng.shuffle(sentences)
    docs = []
    for prefix, word in sentences[: n + 10]:
        others = rng.sample([w for w in vocab_list if w != word], 3)
        choices = [w + "." for w in [word] + others]
        order = list(range(4))
        rng.shuffle(order)
        docs.append(Doc(prefix, tuple(choices[k] for k in order), order.index(0)))
    return Task("python_docs_cloze", "multiple_choice", docs[:n], fewshot_docs=docs[n:], num_fewshot=0)


@register_task("arithmetic")
def arithmetic(n: int = 100, seed: int = 0) -> Task:
    """Two-number addition under 100, answered by generation ("Question: What is 12 plus 30?
    Answer: 42"); 3-shot, the first integer of the reply is the answer (exact match)."""
    rng = random.Random(seed)

    def doc() -> Doc:
        a, b = rng.randrange(1, 100), rng.randrange(1, 100)
        return Doc(f"Question: What is {a} plus {b}?\nAnswer:", answers=(str(a + b),))

    docs = [doc() for _ in range(n + 10)]
    return Task("arithmetic", "generate", docs[:n], fewshot_docs=docs[n:], num_fewshot=3, max_new_tokens=6,
                answer_space=tuple(str(i) for i in range(2, 199)))  # fmt: skip


def results_table(results: Sequence[dict[str, Any]], models: Sequence[str]) -> str:
    """A text table: one row per (task, metric), one column per model, "value ± stderr" in percent.

    Args:
        results: `evaluate_task` outputs, each with an added "model" key.
        models: the column order.
    """
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for r in results:
        for metric, m in r["metrics"].items():
            rows.setdefault((f"{r['task']} (n={r['n']}, {r['num_fewshot']}-shot)", metric), {})[r["model"]] = (
                f"{100 * m['value']:5.1f} ± {100 * m['stderr']:4.1f}"
            )
    header = ["task", "metric", *models]
    body = [[task, metric, *(cells.get(model, "—") for model in models)] for (task, metric), cells in rows.items()]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
