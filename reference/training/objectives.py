"""Pre-training objectives: what a model is asked to predict from a stream of token ids.

Survey section 2.3, "Pre-training tasks": language modelling (next-token prediction, GPT: Radford
et al., 2018), masked language modelling (BERT: Devlin et al., 2019, section 3.1, 15% of tokens
with the 80/10/10 rule), span corruption with sentinel tokens (T5: Raffel et al., 2020, section
3.1.4, and its `random_spans_noise_mask`) and the prefix language model (UniLM: Dong et al., 2019;
T5's section 3.2.1). Each takes ids of shape (seq,) or (batch, seq) and returns
`(inputs, targets, loss_mask)`: the model reads `inputs`, is scored on `targets` where
`loss_mask` is true (`reference.training.numerics.cross_entropy(logits, targets, loss_mask)`).
The prefix LM also returns each row's prefix length, which its attention mask needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reference.validation import check_float, check_int


def _check_ids(ids: Tensor) -> None:
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"ids must be an integer tensor, got {getattr(ids, 'dtype', type(ids))}")
    if ids.dim() not in (1, 2):
        raise ValueError(f"ids must have shape (seq,) or (batch, seq), got {tuple(ids.shape)}")


def next_token_prediction(ids: Tensor, pad_id: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Causal language modelling: predict token t + 1 from tokens 0 .. t.

    The inputs are every token but the last, the targets every token but the first, so that
    position t of the model's output is scored against ids[t + 1].

    Args:
        ids: (seq,) or (batch, seq) integer token ids, seq >= 2.
        pad_id: if given, targets equal to it do not count (their loss_mask is False).

    Returns:
        inputs (..., seq - 1), targets (..., seq - 1), loss_mask (..., seq - 1) bool.
    """
    _check_ids(ids)
    if ids.shape[-1] < 2:
        raise ValueError(f"ids need at least 2 tokens to predict one, got shape {tuple(ids.shape)}")
    inputs, targets = ids[..., :-1], ids[..., 1:]
    if pad_id is not None:
        check_int("pad_id", pad_id, None)
    loss_mask = torch.ones_like(targets, dtype=torch.bool) if pad_id is None else targets != pad_id
    return inputs, targets, loss_mask


def masked_language_modeling(
    ids: Tensor,
    generator: torch.Generator,
    mask_token_id: int,
    vocab_size: int,
    mask_probability: float = 0.15,
    special_ids: Sequence[int] = (),
) -> tuple[Tensor, Tensor, Tensor]:
    """BERT's masked language modelling: choose 15% of the tokens and ask for them back.

    Each token that is not special is chosen independently with probability `mask_probability`.
    A chosen token is replaced by `mask_token_id` with probability 0.8, by a token drawn uniformly
    from [0, vocab_size) with probability 0.1, and left as it is with probability 0.1 (Devlin et al.,
    2019, section 3.1 and appendix C.2): the model cannot tell which unmasked tokens it will be
    asked about, so it must represent every token well.

    Args:
        ids: (seq,) or (batch, seq) integer token ids.
        generator: the source of randomness (a CPU `torch.Generator`).
        mask_token_id: the id of [MASK].
        vocab_size: the number of ids random replacements are drawn from.
        mask_probability: the chance that a token is chosen (in [0, 1]).
        special_ids: ids that are never chosen ([CLS], [SEP], padding, ...).

    Returns:
        inputs (the corrupted ids), targets (the original ids) and loss_mask (the chosen
        positions, bool), each of ids' shape.
    """
    _check_ids(ids)
    check_int("vocab_size", vocab_size, 1)
    check_float("mask_probability", mask_probability, minimum=0.0, maximum=1.0)
    check_int("mask_token_id", mask_token_id)
    for special in special_ids:
        check_int("special_ids entry", special, None)
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id must lie in [0, {vocab_size}), got {mask_token_id!r}")
    cpu_ids = ids.cpu()
    eligible = ~torch.isin(cpu_ids, torch.tensor(list(special_ids), dtype=cpu_ids.dtype))
    chosen = (torch.rand(cpu_ids.shape, generator=generator) < mask_probability) & eligible
    action = torch.rand(cpu_ids.shape, generator=generator)  # < 0.8: [MASK]; < 0.9: random; else keep
    random_ids = torch.randint(0, vocab_size, cpu_ids.shape, generator=generator, dtype=cpu_ids.dtype)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(cpu_ids, mask_token_id), cpu_ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs.to(ids.device), ids.clone(), chosen.to(ids.device)


def random_spans_noise_mask(
    length: int, generator: torch.Generator, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> Tensor:
    """T5's noise mask: which of `length` tokens to drop, in spans alternating with kept spans.

    As `random_spans_noise_mask` in T5's preprocessors (without its random roll). The counts are
    fixed by the arguments:

        num_noise = round(length * noise_density), clamped to [1, length - 1]
        num_spans = max(1, round(num_noise / mean_noise_span_length))

    The kept tokens are cut into `num_spans` non-empty spans and so are the noise tokens, every
    such cut equally likely; the spans alternate kept, noise, kept, noise, ..., so the first token
    is always kept and the last always noise.

    Args:
        length: the number of tokens (>= 2).
        generator: the source of randomness (a CPU `torch.Generator`).
        noise_density: the fraction of tokens to drop, in (0, 1).
        mean_noise_span_length: the mean length of a dropped span (> 0).

    Returns:
        bool tensor of shape (length,), True at the noise tokens.
    """
    check_int("length", length, 2)
    check_float("noise_density", noise_density)
    check_float("mean_noise_span_length", mean_noise_span_length)
    if not 0 < noise_density < 1:
        raise ValueError(f"noise_density must lie in (0, 1), got {noise_density!r}")
    if not mean_noise_span_length > 0:
        raise ValueError(f"mean_noise_span_length must be > 0, got {mean_noise_span_length!r}")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(1, round(num_noise / mean_noise_span_length))
    num_spans = min(num_spans, num_noise, length - num_noise)  # every span must hold a token

    def segment_lengths(num_items: int) -> Tensor:
        """A random cut of num_items into num_spans positive parts: choose num_spans - 1 of the gaps."""
        cuts = torch.randperm(num_items - 1, generator=generator)[: num_spans - 1].sort().values + 1
        bounds = torch.cat([torch.tensor([0]), cuts, torch.tensor([num_items])])
        return bounds.diff()  # (num_spans,)

    kept, noise = segment_lengths(length - num_noise), segment_lengths(num_noise)
    span_lengths = torch.stack([kept, noise], dim=1).flatten()  # kept_1, noise_1, kept_2, noise_2, ...
    span_index = torch.repeat_interleave(torch.arange(2 * num_spans), span_lengths)  # (length,)
    return span_index % 2 == 1


def _spans_to_sentinels(row: Tensor, mask: Tensor, sentinels: Tensor) -> Tensor:
    """Replace each run of True in `mask` by one sentinel (the k-th run by sentinels[k]); (seq,) -> (shorter,)."""
    first = mask & ~torch.cat([torch.tensor([False]), mask[:-1]])  # the first token of each run
    if int(first.sum()) > len(sentinels):
        raise ValueError(f"{int(first.sum())} spans need as many sentinel_ids, got {len(sentinels)}")
    run = (torch.cumsum(first, 0) - 1).clamp(min=0)  # index of the run each token is in (or follows)
    return torch.where(first, sentinels[run], row)[~mask | first]


def span_corruption(
    ids: Tensor,
    generator: torch.Generator,
    sentinel_ids: Sequence[int],
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """T5's span corruption: drop random spans, mark each with a sentinel, ask for the spans back.

    For ids "a b c d e f g" with noise spans "c d" and "g", and sentinels <0>, <1>:

        inputs  = a b <0> e f <1>          (each noise span becomes one sentinel)
        targets = <0> c d <1> g            (each noise span, after its sentinel)

    Noise spans come from `random_spans_noise_mask`, one draw per sequence; since the counts
    depend only on the length, every row of a batch has the same input and target lengths.

    Args:
        ids: (seq,) or (batch, seq) integer token ids, seq >= 2.
        generator: the source of randomness (a CPU `torch.Generator`).
        sentinel_ids: the ids of the sentinels, in the order they are used (T5: <extra_id_0> =
            vocab_size - 1, <extra_id_1> = vocab_size - 2, ...); at least as many as spans.
        noise_density: the fraction of tokens to drop.
        mean_noise_span_length: the mean length of a dropped span.

    Returns:
        inputs (..., seq - num_noise + num_spans), targets (..., num_noise + num_spans) and
        loss_mask (all True, the shape of targets).
    """
    _check_ids(ids)
    batched = ids if ids.dim() == 2 else ids[None]
    sentinels = torch.tensor(list(sentinel_ids), dtype=ids.dtype)
    inputs, targets = [], []
    for row in batched.cpu():
        noise = random_spans_noise_mask(row.shape[0], generator, noise_density, mean_noise_span_length)
        inputs.append(_spans_to_sentinels(row, noise, sentinels))
        targets.append(_spans_to_sentinels(row, ~noise, sentinels))  # kept span k precedes noise span k
    inputs_t, targets_t = torch.stack(inputs).to(ids.device), torch.stack(targets).to(ids.device)
    if ids.dim() == 1:
        inputs_t, targets_t = inputs_t[0], targets_t[0]
    return inputs_t, targets_t, torch.ones_like(targets_t, dtype=torch.bool)


def prefix_language_modeling(
    ids: Tensor, generator: torch.Generator | None = None, prefix_length: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Prefix LM: read a prefix with full (bidirectional) attention, then predict the rest causally.

    The inputs and targets are those of `next_token_prediction`, but only the suffix is scored:
    input position t (which predicts ids[t + 1]) counts when t + 1 >= prefix length. The model
    needs a prefix-LM attention mask: query i may attend key j when j <= i or j < prefix length
    (the prefix sees all of itself; nothing sees a suffix token ahead of it). The prefix length of
    each row is returned so that the model can build that mask.

    Args:
        ids: (seq,) or (batch, seq) integer token ids, seq >= 2.
        generator: draws each row's prefix length uniformly from [1, seq - 1] when `prefix_length`
            is None.
        prefix_length: the same prefix length for every row, in [1, seq - 1].

    Returns:
        inputs (..., seq - 1), targets (..., seq - 1), loss_mask (..., seq - 1) bool, and
        prefix_lengths (...) long: (batch,) for batched ids, a 0-d tensor otherwise.
    """
    _check_ids(ids)
    seq = ids.shape[-1]
    if seq < 2:
        raise ValueError(f"ids need at least 2 tokens, got shape {tuple(ids.shape)}")
    rows = ids.shape[:-1]
    if prefix_length is not None:
        check_int("prefix_length", prefix_length, 1)
        if prefix_length > seq - 1:
            raise ValueError(f"prefix_length must lie in [1, {seq - 1}], got {prefix_length}")
        lengths = torch.full(rows, prefix_length, dtype=torch.long)
    elif generator is None:
        raise ValueError("prefix_length is None, so a generator is needed to draw it")
    else:
        lengths = torch.randint(1, seq, rows, generator=generator)
    lengths = lengths.to(ids.device)
    inputs, targets = ids[..., :-1], ids[..., 1:]
    positions = torch.arange(seq - 1, device=ids.device)
    loss_mask = positions + 1 >= lengths[..., None]  # (..., seq - 1)
    return inputs, targets, loss_mask, lengths
