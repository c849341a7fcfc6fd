"""Autoregressive generation with a key/value cache: prefill, then one token per step.

Survey section 5 ("Inference"), the decoding loop every serving system is built around. A causal
decoder's keys and values at position t depend only on tokens <= t, so after the prompt has been run
once (the *prefill*), each new token needs only its own query, key and value: the keys and values of
earlier positions are kept per layer in a `KVCache` and attention reads them from there (Pope et
al., 2022, "Efficiently Scaling Transformer Inference", section 2). One step then costs O(t) instead
of recomputing the whole O(t^2) prefix.

The next token is drawn from the last position's logits z (vocab,):
  - greedy (temperature 0): argmax z;
  - temperature T > 0: p = softmax(z / T)  (T < 1 sharpens, T > 1 flattens; Ackley et al., 1985);
  - top-k: only the k largest logits keep their mass, renormalised (Fan et al., 2018);
  - top-p (nucleus): the smallest set of most probable tokens whose probability sums to >= p
    (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration", eq. 3),
applied in that order (temperature, top-k, top-p), as Hugging Face's `generate` does.

Several prompts of different lengths run as one batch, padded on the *left* so that every row's
newest token sits in the last column: pad slots are masked out of every attention row and each real
token keeps the position it would have alone (0 .. len - 1), so a batch gives the same tokens as
each prompt on its own.

Works with any model whose forward is `model(token_ids, positions=..., cache=..., last_only=True)`
(logits of the last position, (batch, 1, vocab)) and that has a
`context_length` and a `config` with `num_layers`, `num_heads`, `num_kv_heads` and `d_model`, such as
`reference.models.llama.TransformerLM`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from reference.attention import causal_mask
from reference.inference.sampling import (
    SamplingParams, TokenHistory, apply_processors, processors_for, top_k_filter, top_p_filter,
)  # fmt: skip

OVERFLOW = ("error", "slide")


# ----------------------------------------------------------------------------------------------
# The key/value cache
# ----------------------------------------------------------------------------------------------


class LayerKVCache:
    """One attention layer's view of a `KVCache`: `update(k, v)` appends and returns all keys/values."""

    def __init__(self, cache: KVCache, layer: int) -> None:
        self.cache, self.layer = cache, layer

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new keys and values (batch, kv_heads, new, head_dim) after the cached ones.

        Returns:
            All keys and values so far, each (batch, kv_heads, length + new, head_dim): views of
            the cache's buffers, no copy.
        """
        cache = self.cache
        start, end = cache.length, cache.length + k.shape[2]
        if k.shape != v.shape or k.shape[:2] != cache.keys.shape[1:3] or k.shape[3] != cache.keys.shape[4]:
            raise ValueError(
                f"keys {tuple(k.shape)} and values {tuple(v.shape)} do not fit a cache of "
                f"(batch, kv_heads, max_len, head_dim) = {tuple(cache.keys.shape[1:])}"
            )
        if end > cache.max_len:
            raise ValueError(f"the cache holds {cache.max_len} positions: cannot add {k.shape[2]} to {start}")
        if end > cache.capacity:  # a growing cache: reallocate (doubling) before writing
            cache.grow(end)
        keys, values = cache.keys[self.layer], cache.values[self.layer]  # (batch, kv_heads, max_len, head_dim)
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys[:, :, :end], values[:, :, :end]


class KVCache:
    """Keys and values of every layer, preallocated: (num_layers, batch, kv_heads, capacity, head_dim).

    By default `capacity` = `max_len`, all allocated up front (what serving systems do, so that a
    step never allocates). With `initial_capacity` the buffers start that small and grow when a
    write would overflow them, doubling (amortised O(1) per token, like a dynamic array) up to
    `max_len`: memory follows the sequence actually decoded. Either way one token costs
    `bytes_per_token` = 2 * num_layers * kv_heads * head_dim * dtype bytes per row (keys and
    values), the formula `kv_cache_bytes_per_token` gives and `nbytes` measures.

    `length` positions are filled (the same for all rows: rows are aligned on the right by left
    padding). `key_mask` (batch, max_len) is False at slots that hold padding, so that no query
    attends to them; `padded` says whether any slot does (a Python bool, so that an unpadded batch
    is decoded without reading the mask back from the device). The model writes through `layer(i).update(k, v)` in each layer and calls
    `advance(new)` once all layers have stored the new positions.

    Args:
        num_layers: number of attention layers.
        batch: number of sequences.
        num_kv_heads: key/value heads per layer.
        head_dim: width of a head.
        max_len: the most positions it can hold.
        device: where the buffers live.
        dtype: the keys' and values' dtype (the model's).
        initial_capacity: None to allocate max_len positions now; else the positions allocated at
            first (>= 1), grown on demand.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        initial_capacity: int | None = None,
    ) -> None:
        for name, value in (("num_layers", num_layers), ("batch", batch), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim), ("max_len", max_len)):
            _check_count(name, value, 1)
        if initial_capacity is not None:
            _check_count("initial_capacity", initial_capacity, 1)
        self.capacity = max_len if initial_capacity is None else min(initial_capacity, max_len)
        self.grown = 0  # how many times the buffers were reallocated
        shape = (num_layers, batch, num_kv_heads, self.capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.key_mask = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.padded = False
        self.num_layers, self.max_len, self.length = num_layers, max_len, 0

    @classmethod
    def for_model(cls, model: nn.Module, batch: int, max_len: int | None = None, *,
                  initial_capacity: int | None = None) -> KVCache:  # fmt: skip
        """An empty cache shaped for `model` (its config, device and dtype); max_len defaults to its context."""
        cfg = model.config
        num_kv_heads = cfg.get("num_kv_heads") or cfg["num_heads"]
        weight = next(model.parameters())
        return cls(cfg["num_layers"], batch, num_kv_heads, cfg["d_model"] // cfg["num_heads"],
                   model.context_length if max_len is None else max_len, device=weight.device, dtype=weight.dtype,
                   initial_capacity=initial_capacity)  # fmt: skip

    @property
    def bytes_per_token(self) -> int:
        """Bytes one position of one row takes in keys and values: 2 * layers * kv_heads * head_dim * itemsize."""
        layers, _, heads, _, dim = self.keys.shape
        return kv_cache_bytes_per_token(layers, heads, dim, self.keys.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes the key and value buffers hold now (allocated, filled or not)."""
        return self.keys.nbytes + self.values.nbytes

    def grow(self, needed: int) -> None:
        """Reallocate the buffers to hold at least `needed` positions: max(needed, 2 * capacity), at most max_len."""
        if needed > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions: cannot grow to {needed}")
        new = min(self.max_len, max(needed, 2 * self.capacity))
        if new <= self.capacity:
            return
        for name in ("keys", "values"):
            old = getattr(self, name)
            buffer = old.new_zeros(*old.shape[:3], new, old.shape[4])
            buffer[:, :, :, : self.capacity] = old
            setattr(self, name, buffer)
        self.capacity = new
        self.grown += 1

    def repeat_interleave(self, n: int) -> KVCache:
        """A cache whose rows are each of this one's rows n times (parallel sampling after one shared prefill)."""
        out = KVCache.__new__(KVCache)
        out.__dict__.update(self.__dict__)
        out.keys = self.keys.repeat_interleave(n, dim=1)
        out.values = self.values.repeat_interleave(n, dim=1)
        out.key_mask = self.key_mask.repeat_interleave(n, dim=0)
        return out

    def layer(self, i: int) -> LayerKVCache:
        """The view that layer `i`'s attention updates."""
        return LayerKVCache(self, i)

    def advance(self, new: int) -> None:
        """Mark `new` more positions as filled (after every layer has stored them)."""
        if self.length + new > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions: cannot advance {self.length} by {new}")
        self.length += new

    def set_padding(self, mask: Tensor) -> None:
        """Mark which of the first mask.shape[1] slots hold real tokens: mask (batch, seq), True = real."""
        self.key_mask[:, : mask.shape[1]] = mask
        self.padded = True

    def attention_mask(self, new: int) -> Tensor | None:
        """Boolean mask (batch, 1, new, length + new) for `new` queries that follow the cached positions.

        Causal (queries are the last `new` positions) and blind to padding slots; a padding query
        sees only itself, so that no row of the scores is empty (its output is never used). Without
        padding: the causal mask (new, length + new), and None for one query, which sees every key.
        """
        end = self.length + new
        if not self.padded:
            return None if new == 1 else causal_mask(new, end, device=self.key_mask.device)
        if new == 1:  # one decoding step: the newest token sees every real slot, itself included
            return self.key_mask[:, None, None, :end]
        allowed = causal_mask(new, end, device=self.key_mask.device)  # (new, end)
        own_slot = torch.arange(end, device=allowed.device)[None, :] == torch.arange(self.length, end, device=allowed.device)[:, None]
        return (allowed & (self.key_mask[:, None, :end] | own_slot))[:, None]  # (batch, 1, new, end)


def kv_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Memory of one cached position of one sequence: 2 (keys and values) * layers * kv_heads * head_dim * bytes.

    SmolLM2-135M (30 layers, 3 key/value heads of 64, float32): 2 * 30 * 3 * 64 * 4 = 46,080 bytes.
    """
    return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------------------------
# From logits to the next token
# ----------------------------------------------------------------------------------------------


def _check_count(name: str, value: object, minimum: int) -> None:
    """TypeError unless `value` is an int (not a bool), ValueError unless it is >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise TypeError/ValueError unless temperature is a finite number >= 0, top_k None or an int >= 1,
    and top_p None or a number in (0, 1]."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None:
        _check_count("top_k", top_k, 1)
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
            raise TypeError(f"top_p must be a number, got {top_p!r}")
        if not 0 < top_p <= 1:  # also refuses NaN
            raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")


def next_token_probs(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """The distribution the next token is drawn from, (..., vocab) float32.

    softmax(z / T) restricted by top-k then top-p; temperature 0 gives the one-hot of argmax z.
    """
    check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    return torch.softmax(logits, dim=-1)


def sample(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row from probs (batch, vocab) -> (batch,) ids (a one-hot row gives its token)."""
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ----------------------------------------------------------------------------------------------
# The decoding loop
# ----------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One decoding step of a batch.

    tokens: the new token of each row, or None for a row that had already stopped.
    logits: the model's logits at the last position, (batch, vocab) float32.
    probs: the distribution each token was drawn from, (batch, vocab) float32.
    finished: for each row, the reason it stopped at this step ("eos", "stop_string", "length") or None.
    """

    tokens: list[int | None]
    logits: Tensor
    probs: Tensor
    finished: list[str | None]


@dataclass
class Generation:
    """What `generate` returns.

    sequences: (batch, prompt + steps) ids: the left-padded prompts, then the new tokens, `pad_token_id`
        after a row has stopped (and in the prompts' padding).
    new_tokens: each row's new tokens, the stopping token included.
    finish_reasons: per row "eos", "stop_string" or "length" (max_new_tokens reached).
    prompt_lengths: each prompt's own length.
    texts: each row's new tokens decoded, when a tokenizer was given.
    logits, probs: (batch, steps, vocab) float32 per step (with `return_scores=True`), else None;
        rows that had stopped hold the step's values all the same.
    """

    sequences: Tensor
    new_tokens: list[list[int]]
    finish_reasons: list[str]
    prompt_lengths: list[int]
    texts: list[str] | None = None
    logits: Tensor | None = None
    probs: Tensor | None = None
    steps: list[Step] = field(default_factory=list, repr=False)


def _batch(
    prompts: Tensor | Sequence[int] | Sequence[Sequence[int]], pad_token_id: int, device: torch.device
) -> tuple[Tensor, Tensor, bool]:
    """Prompts as a left-padded (batch, seq) id tensor, its (batch, seq) mask (True at real tokens),
    and whether any row is padded."""
    if isinstance(prompts, Tensor):
        if prompts.dim() == 1:
            prompts = prompts[None]
        if prompts.dim() != 2 or prompts.is_floating_point() or prompts.dtype == torch.bool:
            raise ValueError(f"prompts must be integer ids of shape (seq,) or (batch, seq), got {prompts.dtype} {tuple(prompts.shape)}")
        ids = prompts.to(device)
        return ids, torch.ones_like(ids, dtype=torch.bool), False
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not len(prompts):
        raise TypeError(f"prompts must be a tensor of ids or a non-empty list of id lists, got {type(prompts).__name__}")
    rows = [prompts] if all(isinstance(t, int) and not isinstance(t, bool) for t in prompts) else prompts
    rows = [list(row) for row in rows]
    for row in rows:
        if not row or not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
            raise ValueError("every prompt must be a non-empty list of int token ids")
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_token_id] * (width - len(row)) + row for row in rows], dtype=torch.long, device=device)
    mask = torch.tensor([[False] * (width - len(row)) + [True] * len(row) for row in rows], device=device)
    return ids, mask, any(len(row) < width for row in rows)


def _positions(mask: Tensor) -> Tensor:
    """Each real token's position among its row's real tokens, (batch, seq); padding gets 0."""
    return (mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def _prefill(model: nn.Module, ids: Tensor, mask: Tensor, max_len: int, padded: bool,
             capacity: int | None = None) -> tuple[Tensor, KVCache]:  # fmt: skip
    """Run the model over the whole of `ids` into a fresh cache; returns last-position logits (batch, vocab) and the cache."""
    cache = KVCache.for_model(model, ids.shape[0], max_len, initial_capacity=capacity)
    if padded:
        cache.set_padding(mask)
    logits = model(ids, positions=_positions(mask), cache=cache, last_only=True)[:, -1]
    return logits.float(), cache


def stream(
    model: nn.Module,
    prompts: Tensor | Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    stop_strings: Sequence[str] | None = None,
    tokenizer=None,
    generator: torch.Generator | None = None,
    pad_token_id: int = 0,
    use_cache: bool = True,
    context_overflow: str = "error",
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    n: int = 1,
    cache_capacity: int | None = None,
) -> Iterator[Step]:
    """Decode token by token, yielding a `Step` as soon as each token is chosen (a Python generator).

    Args:
        model: a causal language model (see the module docstring), put in eval mode by the caller.
        prompts: ids, (seq,) or (batch, seq) as a tensor, or a list of id lists of different
            lengths (padded on the left).
        max_new_tokens: the most tokens to add to each prompt (>= 0).
        temperature: 0 for greedy decoding, else the softmax temperature T (finite, > 0).
        top_k: keep only the k most probable tokens (None: all).
        top_p: keep the smallest set of most probable tokens with probability >= top_p (None or 1: all).
        eos_token_id: id(s) that end a row (the id is kept in its output).
        stop_strings: strings that end a row once its decoded new text contains one (needs `tokenizer`).
        tokenizer: anything with `decode(list[int]) -> str`.
        generator: the torch.Generator that sampling draws from (seeded: reproducible).
        pad_token_id: the id written in padding slots and after a row has stopped.
        use_cache: False recomputes the whole sequence at every step (the reference the cache is
            tested against); True keeps keys and values.
        context_overflow: "error" refuses prompt + max_new_tokens > the model's context_length;
            "slide" lets the window slide: once the context is full, each next token is predicted
            from the last context_length columns alone, recomputed without the cache, positions
            starting again from 0 (what `TransformerLM.generate` does).
        min_p: keep tokens with probability >= min_p * the largest (`sampling.min_p_filter`).
        repetition_penalty, frequency_penalty, presence_penalty: `reference.inference.sampling`'s
            penalties (repetition counts the prompt, the other two only the generated tokens).
        n: sequences per prompt (parallel sampling): the prompts are prefilled once and the cache's
            rows are copied n times; row b * n + i is the i-th sample of prompt b.
        cache_capacity: None preallocates the whole cache; else it starts with this many positions
            and grows by doubling (`KVCache`).

    Yields:
        One `Step` per new token, until every row has stopped or max_new_tokens steps. The
        arguments are checked when `stream` is called, before the first step is asked for.
    """
    _check_count("max_new_tokens", max_new_tokens, 0)
    check_sampling(temperature, top_k, top_p)
    _check_count("n", n, 1)
    if cache_capacity is not None:
        _check_count("cache_capacity", cache_capacity, 1)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=1.0 if top_p is None else top_p,
                            min_p=0.0 if min_p is None else min_p, repetition_penalty=repetition_penalty,
                            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                            max_tokens=max_new_tokens)  # fmt: skip
    if context_overflow not in OVERFLOW:
        raise ValueError(f"context_overflow must be one of {OVERFLOW}, got {context_overflow!r}")
    eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    stops = [] if stop_strings is None else [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
    if stops and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the generated text")
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError(f"stop_strings must be non-empty strings, got {stops!r}")
    device = next(model.parameters()).device
    ids, mask, padded = _batch(prompts, pad_token_id, device)
    batch, width = ids.shape
    context = model.context_length
    if width > context:
        raise ValueError(f"the prompts are {width} tokens long, more than the model's context_length={context}")
    if context_overflow == "error" and width + max_new_tokens > context:
        raise ValueError(
            f"prompt of {width} tokens + max_new_tokens={max_new_tokens} is more than the model's "
            f"context_length={context}; shorten them or pass context_overflow='slide'"
        )
    return _decode(model, ids, mask, padded, max_new_tokens, params, eos, stops, tokenizer,
                   generator, pad_token_id, use_cache, n, cache_capacity)  # fmt: skip


@torch.no_grad()
def _decode(model, ids, mask, padded, max_new_tokens, params, eos, stops, tokenizer,
            generator, pad_token_id, use_cache, n=1, cache_capacity=None) -> Iterator[Step]:  # fmt: skip
    """`stream`'s loop, on checked arguments: prefill, then one token per step."""
    if max_new_tokens == 0:
        return
    batch, width = ids.shape
    device, context = ids.device, model.context_length
    max_len = min(context, width + max_new_tokens)
    processors = processors_for(params)
    prompts = [row[keep].tolist() for row, keep in zip(ids, mask)]
    cache = None
    for step in range(max_new_tokens):
        if step == 0 or not use_cache or cache is None:
            # the prefill (also every step without a cache, and every step once the window slides)
            window = slice(max(0, ids.shape[1] - context), None)
            logits, cache = _prefill(model, ids[:, window], mask[:, window], max_len, padded, cache_capacity)
            if not use_cache or ids.shape[1] >= context:
                cache = None  # nothing to reuse: recompute next time
            if step == 0 and n > 1:  # parallel sampling: one prefill per prompt, its cache rows copied n times
                logits, ids, mask = (t.repeat_interleave(n, dim=0) for t in (logits, ids, mask))
                cache = None if cache is None else cache.repeat_interleave(n)
                prompts = [p for p in prompts for _ in range(n)]
                batch *= n
            if step == 0:
                new: list[list[int]] = [[] for _ in range(batch)]
                done: list[str | None] = [None] * batch
        else:
            positions = mask.sum(dim=1, keepdim=True) - 1  # (batch, 1): the newest token's position in its row
            logits = model(ids[:, -1:], positions=positions, cache=cache, last_only=True)[:, -1].float()
            if cache.length >= context:
                cache = None  # the context is full: from now on the window slides
        processed = apply_processors(processors, logits, TokenHistory(prompts, new)) if processors else logits
        if params.greedy:  # greedy: the argmax, and its one-hot as the distribution
            token = processed.argmax(dim=-1)  # (batch,)
            probs = torch.zeros_like(logits).scatter_(-1, token[:, None], 1.0)
        else:
            probs = torch.softmax(processed, dim=-1)
            token = sample(probs, generator)  # (batch,)
        chosen = token.tolist()
        tokens: list[int | None] = []
        finished: list[str | None] = [None] * batch
        for b in range(batch):
            if done[b] is not None:
                tokens.append(None)
                continue
            tokens.append(chosen[b])
            new[b].append(chosen[b])
            if chosen[b] in eos:
                finished[b] = "eos"
            elif stops and any(s in tokenizer.decode(new[b]) for s in stops):
                finished[b] = "stop_string"
            elif step == max_new_tokens - 1:
                finished[b] = "length"
            done[b] = finished[b]
        written = torch.tensor([pad_token_id if t is None else t for t in tokens], device=device)
        ids = torch.cat([ids, written[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.bool, device=device)], dim=1)
        yield Step(tokens, logits, probs, finished)
        if all(d is not None for d in done):
            return


def generate(
    model: nn.Module,
    prompts: Tensor | Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    stop_strings: Sequence[str] | None = None,
    tokenizer=None,
    generator: torch.Generator | None = None,
    pad_token_id: int = 0,
    use_cache: bool = True,
    context_overflow: str = "error",
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    n: int = 1,
    cache_capacity: int | None = None,
    return_scores: bool = False,
) -> Generation:
    """Generate up to `max_new_tokens` tokens for each prompt; the arguments are `stream`'s.

    With n > 1 the rows are prompt 0's n samples, then prompt 1's, and so on.

    return_scores: also return the logits and the sampling distributions of every step.

    Returns:
        A `Generation` (sequences, new tokens per row, finish reasons, texts with a tokenizer).
    """
    device = next(model.parameters()).device
    ids, mask, _ = _batch(prompts, pad_token_id, device)  # for the lengths and the returned sequences
    steps = list(stream(model, prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        eos_token_id=eos_token_id, stop_strings=stop_strings, tokenizer=tokenizer,
                        generator=generator, pad_token_id=pad_token_id, use_cache=use_cache,
                        context_overflow=context_overflow, min_p=min_p, repetition_penalty=repetition_penalty,
                        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, n=n,
                        cache_capacity=cache_capacity))  # fmt: skip
    if n > 1:
        ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
    batch = ids.shape[0]
    new: list[list[int]] = [[] for _ in range(batch)]
    reasons = ["length"] * batch
    for step in steps:
        for b, (token, reason) in enumerate(zip(step.tokens, step.finished)):
            if token is not None:
                new[b].append(token)
            if reason is not None:
                reasons[b] = reason
    columns = [[pad_token_id if t is None else t for t in step.tokens] for step in steps]
    added = torch.tensor(columns, dtype=torch.long, device=device).T if steps else ids.new_zeros(batch, 0)
    return Generation(
        sequences=torch.cat([ids, added.reshape(batch, -1)], dim=1),
        new_tokens=new,
        finish_reasons=reasons,
        prompt_lengths=mask.sum(dim=1).tolist(),
        texts=None if tokenizer is None else [tokenizer.decode(row) for row in new],
        logits=torch.stack([s.logits for s in steps], dim=1) if return_scores and steps else None,
        probs=torch.stack([s.probs for s in steps], dim=1) if return_scores and steps else None,
        steps=steps,
    )
