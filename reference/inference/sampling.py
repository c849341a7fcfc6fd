"""Sampling parameters and composable logits processors: from a model's logits to the next token.

Survey section 5 (inference) and the decoding strategies every serving system exposes. The names
follow OpenAI's completions API and vLLM's `SamplingParams`, so that a request maps onto them field
by field; Chapter 16's serving engine uses them as they are (the names below are stable).

`SamplingParams` (a frozen, validated dataclass):
    n                   sequences returned per prompt (parallel sampling; with beam search: beams returned)
    best_of             sequences sampled per prompt, the n most probable returned (None: n)
    temperature         T >= 0; 0 is greedy (argmax), else p = softmax(z / T)
    top_k               keep the k largest logits (None: all)                     Fan et al., 2018
    top_p               keep the smallest most-probable set with mass >= top_p    Holtzman et al., 2020
    min_p               keep tokens with p >= min_p * max p (0: all)              Nguyen et al., 2024
    repetition_penalty  rho >= 1 divides the positive logits and multiplies the negative logits
                        of every token already in the prompt or the output     Keskar et al., 2019 (CTRL)
    frequency_penalty   alpha_f: z_j -= alpha_f * c_j, c_j = times j was generated    (OpenAI definition)
    presence_penalty    alpha_p: z_j -= alpha_p * [c_j > 0]                           (OpenAI definition)
    max_tokens          the most new tokens per sequence
    min_tokens          the stop ids are masked out until this many tokens were generated
    stop                strings that end a sequence (the text up to, not including, the string is kept)
    stop_token_ids      ids that end a sequence (the id is kept in the output)
    ignore_eos          do not stop at the model's end-of-sequence id
    seed                seeds the sequence's own torch.Generator (None: the caller's generator)
    logprobs            how many top log-probabilities to report per token (None: none)
    use_beam_search     beam search instead of sampling; beam_width beams, scored with length_penalty
    beam_width          beams kept per prompt (>= n)
    length_penalty      a finished beam scores sum(log p) / length ** length_penalty (Wu et al., 2016;
                        length = the new tokens, the end id included, as `reference.inference.beam`
                        and Hugging Face's `generate` count it for decoder-only models)

The processors are small callables `processor(logits, context) -> logits` on (batch, vocab) logits,
where `context` is a `TokenHistory` (each row's prompt ids and generated ids), applied in the order of
Hugging Face's `generate` and vLLM: penalties, then temperature, then top-k, top-p and min-p.
`processors_for(params)` builds that list, `apply_processors` runs one, `next_token_distribution`
gives the distribution a token is drawn from and `choose_next` draws it:

    from reference.inference.sampling import SamplingParams, TokenHistory, choose_next
    params = SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.2)
    tokens, logprobs = choose_next(logits, TokenHistory(prompts, outputs), params, generator=g)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from reference.validation import ArgumentTypeError, check_bool, check_float, check_int, check_optional_int

LogitsProcessor = Callable[[Tensor, "TokenHistory"], Tensor]


# ----------------------------------------------------------------------------------------------
# The parameters
# ----------------------------------------------------------------------------------------------


def _ids(name: str, value: object) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ArgumentTypeError(f"{name} must be a list of int token ids, got {value!r}")
    return tuple(check_int(f"{name}[{i}]", t, 0) for i, t in enumerate(value))


def _strings(name: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Sequence) or not all(isinstance(s, str) for s in value):
        raise ArgumentTypeError(f"{name} must be a string or a list of strings, got {value!r}")
    if any(not s for s in value):
        raise ValueError(f"{name} must hold non-empty strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class SamplingParams:
    """How to choose the tokens of one request; see the module docstring for each field.

    Validated on construction (TypeError for a wrong type, ValueError for a wrong value, naming the
    field); `stop` and `stop_token_ids` are stored as tuples. `replace(params, field=value)` (or
    `params.replace(...)`) makes a changed copy, validated again.
    """

    n: int = 1
    best_of: int | None = None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    max_tokens: int = 16
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    use_beam_search: bool = False
    beam_width: int = 1
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        check_int("n", self.n, 1)
        best_of = check_optional_int("best_of", self.best_of, 1)
        if best_of is not None and best_of < self.n:
            raise ValueError(f"best_of must be >= n={self.n}, got {best_of}")
        check_float("temperature", self.temperature, minimum=0.0)
        check_optional_int("top_k", self.top_k, 1)
        check_float("top_p", self.top_p, maximum=1.0)
        if not self.top_p > 0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        check_float("min_p", self.min_p, minimum=0.0, maximum=1.0)
        check_float("repetition_penalty", self.repetition_penalty, positive=True)
        check_float("frequency_penalty", self.frequency_penalty, minimum=-2.0, maximum=2.0)
        check_float("presence_penalty", self.presence_penalty, minimum=-2.0, maximum=2.0)
        check_int("max_tokens", self.max_tokens, 0)
        check_int("min_tokens", self.min_tokens, 0)
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens={self.min_tokens} must be <= max_tokens={self.max_tokens}")
        object.__setattr__(self, "stop", _strings("stop", self.stop))
        object.__setattr__(self, "stop_token_ids", _ids("stop_token_ids", self.stop_token_ids))
        check_bool("ignore_eos", self.ignore_eos)
        check_optional_int("seed", self.seed, 0)
        check_optional_int("logprobs", self.logprobs, 0)
        check_bool("use_beam_search", self.use_beam_search)
        check_int("beam_width", self.beam_width, 1)
        check_float("length_penalty", self.length_penalty)
        if self.use_beam_search:
            if self.beam_width < self.n:
                raise ValueError(f"beam search returns n={self.n} of its beams: beam_width must be >= n, got {self.beam_width}")
            if self.temperature != 0 and self.temperature != 1.0 or self.top_k or self.top_p < 1 or self.min_p > 0:
                raise ValueError("beam search is deterministic: leave temperature, top_k, top_p and min_p at their defaults")

    @property
    def greedy(self) -> bool:
        """Whether the next token is the argmax (temperature 0)."""
        return self.temperature == 0

    @property
    def sequences_to_sample(self) -> int:
        """How many sequences are decoded per prompt: best_of, else n."""
        return self.n if self.best_of is None else self.best_of

    def replace(self, **changes) -> SamplingParams:
        """A copy with `changes` applied (validated again)."""
        return replace(self, **changes)

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """A torch.Generator on `device` seeded with `seed`, or None when no seed was given."""
        return None if self.seed is None else torch.Generator(device=device).manual_seed(self.seed)


# ----------------------------------------------------------------------------------------------
# What the processors see: each row's tokens so far
# ----------------------------------------------------------------------------------------------


@dataclass
class TokenHistory:
    """Each row's prompt ids and generated ids (ragged lists), what the penalties depend on.

    prompts: per row, the prompt's ids (repetition penalty counts them; frequency and presence
        penalties do not, as in OpenAI's and vLLM's definitions).
    outputs: per row, the ids generated so far.
    """

    prompts: Sequence[Sequence[int]]
    outputs: Sequence[Sequence[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.prompts, Tensor):
            self.prompts = self.prompts.tolist()
        if isinstance(self.outputs, Tensor):
            self.outputs = self.outputs.tolist()
        if not self.outputs:
            self.outputs = [[] for _ in self.prompts]
        if len(self.outputs) != len(self.prompts):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.outputs)} outputs")

    @classmethod
    def empty(cls, batch: int) -> TokenHistory:
        """No prompt, no output, for `batch` rows (penalties then do nothing)."""
        return cls([[] for _ in range(batch)], [[] for _ in range(batch)])

    def counts(self, vocab: int, device: torch.device | str = "cpu", *, prompt: bool = False) -> Tensor:
        """How often each id occurs in each row's output (and prompt when `prompt`): (batch, vocab) float32."""
        rows = [list(o) + list(p) if prompt else list(o) for o, p in zip(self.outputs, self.prompts)]
        width = max((len(r) for r in rows), default=0)
        out = torch.zeros(len(rows), vocab + 1, device=device)  # column `vocab` absorbs the padding
        if width:
            ids = torch.tensor([r + [vocab] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
            if ids.min() < 0 or ids.max() > vocab:
                raise ValueError(f"token ids must lie in [0, {vocab}), got {ids.min().item()} .. {ids.max().item()}")
            out.scatter_add_(1, ids, torch.ones_like(ids, dtype=out.dtype))
        return out[:, :vocab]


# ----------------------------------------------------------------------------------------------
# The penalties
# ----------------------------------------------------------------------------------------------


def repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019, eq. 1 as Hugging Face implements it).

    For every token that occurs in the row (`seen` True), z -> z / penalty if z > 0 else z * penalty:
    with penalty > 1 a seen token always becomes less likely, whatever the sign of its logit.

    Args:
        logits: (batch, vocab).
        seen: (batch, vocab) bool, True where the token occurs in the prompt or the output.
        penalty: rho > 0 (1: no change).
    Returns:
        (batch, vocab) logits, a new tensor.
    """
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def frequency_presence_penalty(logits: Tensor, counts: Tensor, frequency: float, presence: float) -> Tensor:
    """OpenAI's penalties: z_j - frequency * c_j - presence * [c_j > 0], c_j the count of j in the output.

    Args:
        logits: (batch, vocab).
        counts: (batch, vocab) how often each token was generated so far (not counting the prompt).
    Returns:
        (batch, vocab) logits, a new tensor.
    """
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


# ----------------------------------------------------------------------------------------------
# The filters (each sets the removed logits to -inf)
# ----------------------------------------------------------------------------------------------


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties with the k-th kept too), -inf elsewhere; (..., vocab)."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most probable tokens whose probability sums to >= p.

    Sort each row by decreasing probability; a token stays if the probability of the tokens before
    it is still < p (so the most probable token always stays). -inf elsewhere; (..., vocab).
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (..., vocab), probability of the more probable tokens
    remove_sorted = mass_before >= p
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Min-p filtering (Nguyen et al., 2024): keep the tokens whose probability is >= min_p * max p.

    The threshold scales with the model's confidence: a peaked distribution keeps few tokens, a flat
    one many; the most probable token always stays. In logits: z_j >= z_max + log(min_p).

    Args:
        logits: (..., vocab) (after temperature).
        min_p: in [0, 1]; 0 keeps everything.
    Returns:
        (..., vocab), -inf at the removed tokens.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


# ----------------------------------------------------------------------------------------------
# Processors: the pieces above as callables, composed in order
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepetitionPenalty:
    """`repetition_penalty` on the tokens of each row's prompt and output."""

    penalty: float

    def __call__(self, logits: Tensor, history: TokenHistory) -> Tensor:
        seen = history.counts(logits.shape[-1], logits.device, prompt=True) > 0
        return repetition_penalty(logits, seen, self.penalty)


@dataclass(frozen=True)
class FrequencyPresencePenalty:
    """`frequency_presence_penalty` on the counts of each row's output."""

    frequency: float
    presence: float

    def __call__(self, logits: Tensor, history: TokenHistory) -> Tensor:
        counts = history.counts(logits.shape[-1], logits.device).to(logits.dtype)
        return frequency_presence_penalty(logits, counts, self.frequency, self.presence)


@dataclass(frozen=True)
class MinTokens:
    """Mask the stop ids out (-inf) while a row has fewer than `min_tokens` generated tokens."""

    min_tokens: int
    stop_ids: tuple[int, ...]

    def __call__(self, logits: Tensor, history: TokenHistory) -> Tensor:
        short = torch.tensor([len(o) < self.min_tokens for o in history.outputs], device=logits.device)
        banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        banned[list(self.stop_ids)] = True
        return logits.masked_fill(short[:, None] & banned[None, :], float("-inf"))


@dataclass(frozen=True)
class Temperature:
    """z / T (T > 0)."""

    temperature: float

    def __call__(self, logits: Tensor, history: TokenHistory) -> Tensor:
        return logits / self.temperature


@dataclass(frozen=True)
class TopK:
    """`top_k_filter`."""

    k: int

    def __call__(self, logits: Tensor, history: TokenHistory) -> Tensor:
        return top_k_filter(logits, self.k)


@dataclass(frozen=True)
class TopP:
    """`top_p_filter`."""

    p: float

    def __call__(self, logits: Tensor, history: TokenHistory) -> Tensor:
        return top_p_filter(logits, self.p)


@dataclass(frozen=True)
class MinP:
    """`min_p_filter`."""

    min_p: float

    def __call__(self, logits: Tensor, history: TokenHistory) -> Tensor:
        return min_p_filter(logits, self.min_p)


def processors_for(params: SamplingParams, eos_token_ids: Sequence[int] = ()) -> list[LogitsProcessor]:
    """The processors `params` asks for, in order: min-tokens, repetition, frequency/presence,
    then (unless greedy) temperature, top-k, top-p, min-p. Identity settings add nothing.

    eos_token_ids: the model's end ids, masked like `stop_token_ids` under `min_tokens`.
    """
    chain: list[LogitsProcessor] = []
    stop_ids = tuple(params.stop_token_ids) + (() if params.ignore_eos else tuple(eos_token_ids))
    if params.min_tokens and stop_ids:
        chain.append(MinTokens(params.min_tokens, stop_ids))
    if params.repetition_penalty != 1.0:
        chain.append(RepetitionPenalty(params.repetition_penalty))
    if params.frequency_penalty or params.presence_penalty:
        chain.append(FrequencyPresencePenalty(params.frequency_penalty, params.presence_penalty))
    if params.greedy or params.use_beam_search:
        return chain
    if params.temperature != 1.0:
        chain.append(Temperature(params.temperature))
    if params.top_k is not None:
        chain.append(TopK(params.top_k))
    if params.top_p < 1.0:
        chain.append(TopP(params.top_p))
    if params.min_p > 0.0:
        chain.append(MinP(params.min_p))
    return chain


def apply_processors(processors: Sequence[LogitsProcessor], logits: Tensor, history: TokenHistory) -> Tensor:
    """Run `processors` one after the other on float32 logits (batch, vocab)."""
    logits = logits.float()
    for processor in processors:
        logits = processor(logits, history)
    return logits


def next_token_distribution(
    logits: Tensor, history: TokenHistory, params: SamplingParams, eos_token_ids: Sequence[int] = ()
) -> Tensor:
    """The distribution the next token is drawn from, (batch, vocab) float32: softmax of the
    processed logits, or the one-hot of their argmax when greedy."""
    processed = apply_processors(processors_for(params, eos_token_ids), logits, history)
    if params.greedy or params.use_beam_search:
        return torch.zeros_like(processed).scatter_(-1, processed.argmax(dim=-1, keepdim=True), 1.0)
    return torch.softmax(processed, dim=-1)


def choose_next(
    logits: Tensor,
    history: TokenHistory,
    params: SamplingParams,
    *,
    generator: torch.Generator | None = None,
    eos_token_ids: Sequence[int] = (),
) -> tuple[Tensor, Tensor]:
    """Choose each row's next token.

    Args:
        logits: (batch, vocab) the model's last-position logits.
        history: each row's prompt and output ids so far.
        params: the sampling parameters (temperature 0: argmax of the processed logits).
        generator: what sampling draws from (params.generator() gives a seeded one).
        eos_token_ids: the model's end ids (for min_tokens).
    Returns:
        tokens (batch,) long, and the log-probabilities of the distribution they were drawn from,
        (batch, vocab) float32 (-inf at filtered tokens; the raw log-softmax when greedy).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, vocab), got shape {tuple(logits.shape)}")
    if len(history.prompts) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but a history of {len(history.prompts)} rows")
    processed = apply_processors(processors_for(params, eos_token_ids), logits, history)
    logprobs = torch.log_softmax(processed, dim=-1)
    if params.greedy or params.use_beam_search:
        return processed.argmax(dim=-1), logprobs
    return torch.multinomial(logprobs.exp(), 1, generator=generator)[:, 0], logprobs


def top_logprobs(logprobs: Tensor, k: int) -> list[dict[int, float]]:
    """The k most probable ids of each row with their log-probabilities, for OpenAI's `logprobs` field."""
    if k == 0:
        return [{} for _ in range(logprobs.shape[0])]
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
    return [dict(zip(i.tolist(), v.tolist())) for i, v in zip(ids, values)]


__all__ = [
    "FrequencyPresencePenalty", "LogitsProcessor", "MinP", "MinTokens", "RepetitionPenalty", "SamplingParams",
    "Temperature", "TokenHistory", "TopK", "TopP", "apply_processors", "choose_next", "frequency_presence_penalty",
    "min_p_filter", "next_token_distribution", "processors_for", "repetition_penalty", "top_k_filter",
    "top_logprobs", "top_p_filter",
]  # fmt: skip
