"""Text in, text out: streaming a model's reply as text, and a multi-turn chat session.

The generator (`reference.inference.generate`) works on token ids; a person reads text. Two details
make streaming text correct: a token can end in the middle of a UTF-8 character (byte-level BPE), so
a piece is printed only once the decoded text no longer ends in an incomplete character; and a chat
model ends its turn with a special token (ChatML's "<|im_end|>"), which stops the reply and is not
printed. A conversation is laid out with the tokenizer's chat template (ChatML for SmolLM2:
"<|im_start|>role\\n...<|im_end|>\\n"); a tokenizer without one gets ChatML written as plain text.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from reference.inference.generate import stream

CHATML_END = "<|im_end|>"


def chatml(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """ChatML: each message as "<|im_start|>{role}\\n{content}<|im_end|>\\n", then "<|im_start|>assistant\\n"."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}{CHATML_END}\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def render_chat(tokenizer, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of a conversation followed by the opening of the assistant's turn, by the tokenizer's
    own chat template when it has one, else by `chatml`."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    return tokenizer.encode(chatml(messages))


def _special_id(tokenizer, token: str | None) -> int | None:
    """The id of a special token that the tokenizer encodes whole, else None."""
    if not token or token not in getattr(tokenizer, "special_tokens", ()):
        return None
    ids = tokenizer.encode(token)
    return ids[0] if len(ids) == 1 else None


def stop_ids(tokenizer) -> list[int]:
    """Ids that end a reply: the tokenizer's end-of-sequence token, ChatML's "<|im_end|>" and
    "<|endoftext|>", those of them the vocabulary holds as special tokens."""
    found = [_special_id(tokenizer, t) for t in (getattr(tokenizer, "eos_token", None), CHATML_END, "<|endoftext|>")]
    return list(dict.fromkeys(i for i in found if i is not None))


def stream_text(
    model: nn.Module,
    tokenizer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    stop_at: Sequence[int] = (),
    **sampling,
) -> Iterator[str]:
    """Yield the reply to `prompt_ids` as pieces of text, as the tokens come (one prompt).

    A stopping id (`stop_at`) ends the reply and is not shown; a piece is held back while the text
    ends in an incomplete UTF-8 character. `sampling` goes to `reference.inference.stream`
    (temperature, top_k, top_p, generator, ...).
    """
    shown, new = "", []
    for step in stream(model, [list(prompt_ids)], max_new_tokens, eos_token_id=list(stop_at) or None, **sampling):
        token = step.tokens[0]
        if token is None or token in stop_at:
            break
        new.append(token)
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):
            continue  # a character cut in the middle: wait for its other bytes
        yield text[len(shown) :]
        shown = text
    text = tokenizer.decode(new)
    if len(text) > len(shown):
        yield text[len(shown) :]


class ChatSession:
    """A conversation with a chat model: `reply(user_text)` streams the assistant's answer and keeps
    it in the history, so the next turn sees the whole conversation.

    When the conversation no longer fits the context with room for `max_new_tokens`, the oldest
    turns (after the system prompt) are dropped.

    Args:
        model: a causal language model with a `context_length` (eval mode).
        tokenizer: its tokenizer (`encode`, `decode`, optionally a chat template).
        system: the system prompt, or None.
        max_new_tokens: the longest reply.
        sampling: passed to `reference.inference.stream` (temperature, top_k, top_p, generator).
    """

    def __init__(self, model: nn.Module, tokenizer, system: str | None = None, max_new_tokens: int = 256, **sampling) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.messages: list[dict[str, str]] = [] if system is None else [{"role": "system", "content": system}]
        self.max_new_tokens, self.sampling = max_new_tokens, sampling
        self.stop = stop_ids(tokenizer)

    def _prompt(self) -> list[int]:
        budget = self.model.context_length - self.max_new_tokens
        keep = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        while True:
            ids = render_chat(self.tokenizer, self.messages)
            if len(ids) <= budget or len(self.messages) <= keep + 1:
                break
            del self.messages[keep]  # forget the oldest turn
        if len(ids) > budget:
            raise ValueError(f"the message is {len(ids)} tokens: no room for a reply of {self.max_new_tokens} "
                             f"tokens in a context of {self.model.context_length}")  # fmt: skip
        return ids

    def reply(self, user_text: str) -> Iterator[str]:
        """Add the user's message, then yield the assistant's reply piece by piece (kept in the history)."""
        self.messages.append({"role": "user", "content": user_text})
        pieces = []
        with torch.no_grad():
            for piece in stream_text(self.model, self.tokenizer, self._prompt(), self.max_new_tokens,
                                     stop_at=self.stop, **self.sampling):  # fmt: skip
                pieces.append(piece)
                yield piece
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
