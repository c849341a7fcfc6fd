"""Templates, verbalizers, calibration, in-context examples, answer extraction and AutoPrompt.

Survey section 1.2(b): a *template* turns an input x into a text with an answer slot; a *verbalizer*
maps each class to label words, and the class whose words the model finds most probable in the slot
is the prediction (Schick & Schütze, 2021, "PET"). Two template shapes:
- prefix (causal models): "Message: {x}\\nThis message is" and the label word follows;
- cloze (masked models): "{x} This message is [MASK]." and the label word fills [MASK];
- chat (instruct models): the question as a user turn, the label word opens the assistant's turn.

Scoring a label word w = (w_1 .. w_m) after a prompt c (Brown et al., 2020, section 2):
    log p(w | c) = sum_j log p(w_j | c, w_<j)                     (causal, summed over the word's tokens)
and a class's score is log sum_{w in V(y)} p(w | c) over its words. Cloze: the m tokens of w fill m
[MASK] slots and their log-probabilities are summed (PET's approximation).

Contextual calibration (Zhao et al., 2021, "Calibrate Before Use", eq. 1): with p_cf the class
probabilities for a content-free input ("N/A", "", "[MASK]"), predict argmax softmax-free
    q = normalise(W p),  W = diag(p_cf)^-1,
which removes the label bias that the template and the examples give the model.

Chain of thought (Wei et al., 2022; Kojima et al., 2022: "Let's think step by step") needs the answer
read back from free text: `extract_answer`.

AutoPrompt (Shin et al., 2020, eq. 2): trigger tokens t_1..t_k in the template are improved one slot
at a time; the candidates for slot i are the top-k tokens w by the first-order estimate of how much
swapping them in lowers the loss, -e_w . grad_{e_{t_i}} L, and the best candidate (by the real loss) is kept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from reference.validation import check_int

# ----------------------------------------------------------------------------------------------
# Exercises: the tensor operations
# ----------------------------------------------------------------------------------------------


def word_logprobs(logits: Tensor, token_ids: Tensor, word_start: Tensor, word_length: Tensor) -> Tensor:
    """Summed log-probability of a label word that follows a prompt in each row (causal models).

    Row b of `token_ids` is [prompt; word; padding]: the word's tokens sit at positions
    word_start[b] .. word_start[b] + word_length[b] - 1, and token t is predicted by the logits at
    position t - 1. Returns sum_j log softmax(logits[b, s + j - 1])[token_ids[b, s + j]].

    Args:
        logits: (batch, seq, vocab) from the model on `token_ids`.
        token_ids: (batch, seq).
        word_start: (batch,) integer, >= 1 (the prompt is not empty).
        word_length: (batch,) integer, >= 1.

    Returns:
        (batch,) float log-probabilities (<= 0), in float32 or wider.
    """
    if logits.dim() != 3 or token_ids.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (batch, seq, vocab) over token_ids (batch, seq), got {tuple(logits.shape)} and {tuple(token_ids.shape)}")
    if word_start.shape != (logits.shape[0],) or word_length.shape != (logits.shape[0],):
        raise ValueError(f"word_start and word_length must be (batch={logits.shape[0]},)")
    if int(word_start.min()) < 1 or int(word_length.min()) < 1 or int((word_start + word_length).max()) > logits.shape[1]:
        raise ValueError("each word must lie after a non-empty prompt and inside the row")
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (batch, seq, vocab)
    seq = logits.shape[1]
    positions = torch.arange(seq, device=logits.device)[None, :]  # (1, seq)
    in_word = (positions >= word_start[:, None]) & (positions < (word_start + word_length)[:, None])  # (batch, seq)
    predicted = log_probs[:, :-1].gather(-1, token_ids[:, 1:, None]).squeeze(-1)  # token t from position t - 1
    return (predicted * in_word[:, 1:]).sum(dim=1)


def calibrate(probs: Tensor, content_free: Tensor) -> Tensor:
    """Contextual calibration (Zhao et al., 2021): q = normalise(p / p_cf) over the classes.

    Args:
        probs: (..., num_classes) class probabilities of the real inputs (each row sums to 1).
        content_free: (num_classes,) the class probabilities of a content-free input, > 0.

    Returns:
        (..., num_classes) calibrated probabilities, each row summing to 1. A content-free input
        itself comes out uniform.
    """
    if probs.shape[-1:] != content_free.shape or content_free.dim() != 1:
        raise ValueError(f"content_free must be (num_classes={probs.shape[-1]},), got {tuple(content_free.shape)}")
    if bool((content_free <= 0).any()):
        raise ValueError("content_free probabilities must be > 0")
    scaled = probs / content_free  # W p with W = diag(p_cf)^-1
    return scaled / scaled.sum(dim=-1, keepdim=True)


def autoprompt_candidates(grad: Tensor, embeddings: Tensor, k: int, exclude: Sequence[int] = ()) -> Tensor:
    """AutoPrompt's candidate tokens for each trigger slot (Shin et al., 2020, eq. 2).

    Swapping slot i's embedding for token w's changes the loss by about (e_w - e_{t_i}) . g_i, so the
    tokens that lower it most are the top-k of -e_w . g_i.

    Args:
        grad: (num_slots, d_model) gradient of the loss with respect to each slot's input embedding.
        embeddings: (vocab, d_model) the model's input embedding table.
        k: candidates per slot (1 <= k <= vocab).
        exclude: token ids never proposed (special tokens), scored -inf.

    Returns:
        (num_slots, k) long tensor of token ids, best first.
    """
    k = check_int("k", k, 1)
    if grad.dim() != 2 or embeddings.dim() != 2 or grad.shape[1] != embeddings.shape[1]:
        raise ValueError(f"grad (num_slots, d) and embeddings (vocab, d) must share d, got {tuple(grad.shape)} and {tuple(embeddings.shape)}")
    if k > embeddings.shape[0]:
        raise ValueError(f"k must be at most the vocabulary size {embeddings.shape[0]}, got {k}")
    scores = -(grad.float() @ embeddings.float().T)  # (num_slots, vocab): first-order decrease of the loss
    if len(exclude):
        scores[:, list(exclude)] = float("-inf")
    return scores.topk(k, dim=-1).indices


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"


def extract_answer(text: str) -> float | None:
    """The number a (chain-of-thought) answer ends on.

    The number after the last "answer is" / "answer:" if there is one, otherwise the last number in
    the text; thousands separators ("1,234") are read, a leading minus sign is kept, a sentence's
    final period is not part of the number. None when the text holds no number.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    cues = list(re.finditer(r"answer\s*(?:is|:)\s*(?:\$|=)?\s*(" + _NUMBER + ")", text, flags=re.IGNORECASE))
    if cues:
        found = cues[-1].group(1)
    else:
        numbers = re.findall(_NUMBER, text)
        if not numbers:
            return None
        found = numbers[-1]
    return float(found.replace(",", "").rstrip("."))


# ----------------------------------------------------------------------------------------------
# Templates and verbalizers
# ----------------------------------------------------------------------------------------------

KINDS = ("prefix", "cloze", "chat")


@dataclass(frozen=True)
class Template:
    """A prompt with one input slot `{x}` and an answer slot.

    kind "prefix": `text` ends where the label word begins (causal models);
    kind "cloze": `text` holds one "[MASK]", the answer slot (masked models);
    kind "chat": `text` is the user's message; the answer opens the assistant's turn (instruct models).
    `space`: label words are written with a leading space (" rude") as after "is"; `capitalize`:
    as the first word of a turn ("Rude").
    """

    name: str
    text: str
    kind: str = "prefix"
    space: bool = True
    capitalize: bool = False
    system: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.text.count("{x}") != 1:
            raise ValueError(f"template text must hold exactly one {{x}}, got {self.text!r}")
        if (self.kind == "cloze") != ("[MASK]" in self.text):
            raise ValueError("a cloze template holds one [MASK] (and only a cloze template does)")

    def word(self, word: str) -> str:
        """How a label word is written in this template's answer slot."""
        w = word.strip()
        w = w[:1].upper() + w[1:] if self.capitalize else w
        return " " + w if self.space else w

    def render(self, x: str, tokenizer=None) -> str:
        """The prompt text for input x (for "chat", laid out by the tokenizer's chat template with
        the assistant's turn opened)."""
        body = self.text.replace("{x}", x)
        if self.kind != "chat":
            return body
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": body}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


@dataclass(frozen=True)
class Verbalizer:
    """Label words per class: words[c] is the tuple of class c's words."""

    name: str
    words: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.words) < 2 or any(not ws for ws in self.words):
            raise ValueError("a verbalizer needs at least two classes, each with at least one word")

    @property
    def num_classes(self) -> int:
        return len(self.words)

    def flat(self) -> tuple[list[str], list[int]]:
        """(every word, the class of each)."""
        words = [w for ws in self.words for w in ws]
        return words, [c for c, ws in enumerate(self.words) for _ in ws]


def class_log_probs(word_lp: Tensor, word_class: Sequence[int], num_classes: int) -> Tensor:
    """Class scores log sum_{w in V(y)} p(w | c) from per-word log-probabilities, normalised over the
    classes: (batch, num_words) -> (batch, num_classes) log-probabilities (rows logsumexp to 0)."""
    cls = torch.as_tensor(list(word_class), device=word_lp.device)
    scores = torch.stack([word_lp[:, cls == c].logsumexp(-1) for c in range(num_classes)], dim=-1)
    return scores.log_softmax(-1)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def score_words(model: nn.Module, tokenizer, prompts: Sequence[str], words: Sequence[str], *, batch_size: int = 16,
                forward: Callable[..., Tensor] | None = None, cache: dict | None = None) -> Tensor:
    """log p(word | prompt) for every prompt and word, (num_prompts, num_words), with a causal model.

    A word that is one token after its prompt is read from the prompt's last position (one forward
    per prompt, all such words at once); a longer word runs as its own row [prompt; word], summed
    by `word_logprobs`. Rows of equal length share a batch (no padding). `forward` replaces `model`
    (e.g. a `PromptedLM`); it must accept `last_only=True`. `cache` (a dict, prompt text -> the
    last position's log-probabilities) lets several verbalizers share the prompts' forward passes."""
    forward = model if forward is None else forward
    device = _model_device(model)
    out = torch.zeros(len(prompts), len(words))
    last_rows: list[tuple[list[int], int, list[tuple[int, int]]]] = []  # (ids, prompt index, [(word index, token)])
    long_rows: list[tuple[list[int], int, int, int, int]] = []  # (ids, prompt, word, start, length)
    for i, p in enumerate(prompts):
        p_ids = tokenizer.encode(p)
        singles = []
        for j, w in enumerate(words):
            ids = tokenizer.encode(p + w)
            w_ids = ids[len(p_ids):] if ids[: len(p_ids)] == p_ids else tokenizer.encode(w)
            if len(w_ids) == 1:
                singles.append((j, w_ids[0]))
            else:
                long_rows.append((p_ids + w_ids, i, j, len(p_ids), len(w_ids)))
        if singles:
            last_rows.append((p_ids, i, singles, p))
    cache = {} if cache is None else cache
    with torch.no_grad():
        for group in _same_length([r for r in last_rows if r[3] not in cache], batch_size):
            ids = torch.tensor([r[0] for r in group], device=device)
            lp = torch.log_softmax(forward(ids, last_only=True)[:, -1].float(), -1).cpu()
            for b, r in enumerate(group):
                cache[r[3]] = lp[b]
        for _, i, singles, p in last_rows:
            for j, t in singles:
                out[i, j] = cache[p][t]
        for group in _same_length(long_rows, batch_size):
            ids = torch.tensor([r[0] for r in group], device=device)
            got = word_logprobs(forward(ids), ids, torch.tensor([r[3] for r in group], device=device),
                                torch.tensor([r[4] for r in group], device=device)).cpu()
            for b, r in enumerate(group):
                out[r[1], r[2]] = got[b]
    return out


def _same_length(rows: list, batch_size: int) -> list[list]:
    """Rows (ids first) grouped by length, in batches of at most batch_size."""
    by: dict[int, list] = {}
    for r in rows:
        by.setdefault(len(r[0]), []).append(r)
    return [g[i : i + batch_size] for g in by.values() for i in range(0, len(g), batch_size)]


def score_cloze(model: nn.Module, tokenizer, prompts: Sequence[str], words: Sequence[str], mask_token: str = "[MASK]",
                batch_size: int = 32) -> Tensor:
    """log p(word | prompt) with a masked model: the word's m tokens fill m [MASK]s in the slot and
    their log-probabilities are summed; (num_prompts, num_words)."""
    mask_id = tokenizer.token_to_id(mask_token)
    rows, targets = [], []
    for p in prompts:
        before, after = p.split(mask_token)
        b_ids, a_ids = tokenizer.encode(before), tokenizer.encode(after)
        for w in words:
            w_ids = tokenizer.encode(w)
            rows.append(b_ids + [mask_id] * len(w_ids) + a_ids)
            targets.append((len(b_ids), w_ids))
    out = []
    device = _model_device(model)
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.tensor([r + [0] * (width - len(r)) for r in chunk], device=device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=device)
            lp = torch.log_softmax(model(ids, attention_mask=mask).float(), -1)
            for j, (start, w_ids) in enumerate(targets[i : i + batch_size]):
                out.append(sum(lp[j, start + t, w].item() for t, w in enumerate(w_ids)))
    return torch.tensor(out).view(len(prompts), len(words))


def classify(model: nn.Module, tokenizer, template: Template, verbalizer: Verbalizer, inputs: Sequence[str], *,
             demonstrations: str = "", forward: Callable[[Tensor], Tensor] | None = None, cache: dict | None = None) -> Tensor:
    """Class log-probabilities (len(inputs), num_classes) of each input under a template and a
    verbalizer; `demonstrations` (in-context examples, `few_shot_prefix`) go before each prompt."""
    words, word_class = verbalizer.flat()
    written = [template.word(w) for w in words]
    if template.kind == "cloze":
        lp = score_cloze(model, tokenizer, [demonstrations + template.render(x) for x in inputs], written)
    else:
        prompts = [_with_demonstrations(template, x, tokenizer, demonstrations) for x in inputs]
        lp = score_words(model, tokenizer, prompts, written, forward=forward, cache=cache)
    return class_log_probs(lp, word_class, verbalizer.num_classes)


def _with_demonstrations(template: Template, x: str, tokenizer, demonstrations: str) -> str:
    if template.kind == "chat":  # examples inside the user's turn, before the question
        return Template(template.name, demonstrations + template.text, "chat", template.space, template.capitalize,
                        template.system).render(x, tokenizer)
    return demonstrations + template.render(x, tokenizer)


def few_shot_prefix(template: Template, verbalizer: Verbalizer, examples: Sequence[tuple[str, int]]) -> str:
    """k in-context examples, each the template filled with its input and its label's first word,
    separated by blank lines (Brown et al., 2020); the query's prompt follows."""
    parts = []
    for x, y in examples:
        body = template.text.replace("{x}", x)
        word = template.word(verbalizer.words[y][0])
        if template.kind == "cloze":
            parts.append(body.replace("[MASK]", word.strip()))
        elif template.kind == "chat":
            parts.append(body + " Answer:" + (" " + word.strip()))
        else:
            parts.append(body + word)
    return "".join(p + "\n\n" for p in parts)


CONTENT_FREE = ("N/A", "", "[MASK]")


def content_free_probs(model, tokenizer, template: Template, verbalizer: Verbalizer, demonstrations: str = "",
                       forward=None, cache: dict | None = None) -> Tensor:
    """p_cf: the class probabilities averaged over the content-free inputs (Zhao et al., 2021), renormalised."""
    p = classify(model, tokenizer, template, verbalizer, list(CONTENT_FREE), demonstrations=demonstrations, forward=forward,
                 cache=cache).exp().mean(0)
    return p / p.sum()


def accuracy(log_probs: Tensor, labels: Sequence[int]) -> float:
    """Fraction of rows whose argmax is the label."""
    return float((log_probs.argmax(-1) == torch.as_tensor(list(labels))).float().mean())


# ----------------------------------------------------------------------------------------------
# AutoPrompt: discrete trigger search
# ----------------------------------------------------------------------------------------------


@dataclass
class AutoPromptResult:
    triggers: list[int]
    losses: list[float] = field(default_factory=list)  # the objective after each step (first: the start)


def autoprompt_search(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor], triggers: Sequence[int], *,
                      steps: int = 10, k: int = 8, exclude: Sequence[int] = (), seed: int = 0) -> AutoPromptResult:
    """Gradient-guided search over trigger tokens prepended to the input (Shin et al., 2020).

    `loss_fn(prompted)` takes a `PromptedLM` whose soft prompt holds the triggers' embeddings and
    returns the scalar objective (lower is better). Each step picks a slot at random, proposes
    `autoprompt_candidates` from the gradient there, and keeps the candidate with the lowest real
    loss if it beats the current one. The model's parameters are not changed.
    """
    from reference.prompting.modules import PromptedLM, SoftPrompt

    check_int("steps", steps, 0)
    rng = torch.Generator().manual_seed(seed)
    current = list(triggers)
    table = model.token_embeddings.weight
    was = [p.requires_grad for p in model.parameters()]

    def evaluate(ids: list[int], grad: bool = False) -> tuple[float, Tensor | None]:
        soft = SoftPrompt.from_text(model, ids)
        prompted = PromptedLM(model, prompt=soft, freeze_model=True)
        if not grad:
            with torch.no_grad():
                return loss_fn(prompted).item(), None
        loss = loss_fn(prompted)
        loss.backward()
        return loss.item(), soft.weight.grad.detach()

    try:
        best, _ = evaluate(current)
        result = AutoPromptResult(list(current), [best])
        for _ in range(steps):
            _, grad = evaluate(current, grad=True)
            slot = int(torch.randint(len(current), (1,), generator=rng))
            candidates = autoprompt_candidates(grad[slot : slot + 1], table.detach(), k, exclude)[0].tolist()
            for c in candidates:
                trial = current[:slot] + [c] + current[slot + 1 :]
                loss, _ = evaluate(trial)
                if loss < best:
                    best, current = loss, trial
            result.losses.append(best)
        result.triggers = current
        return result
    finally:
        for p, r in zip(model.parameters(), was):
            p.requires_grad_(r)
