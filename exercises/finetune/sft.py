"""Exercises for Chapter 11: the exercises of `reference/finetune/sft.py`.

Fill in each body that raises NotImplementedError; the docstrings say what to do. The helpers
of the module are exact copies of the reference's, so they run on your code. Grade with
`llm-course grade 11`. Mirrors `reference/finetune/sft.py`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from reference.runtime import progress
from reference.training.numerics import AdamW, clip_grad_norm_, cosine_schedule, cross_entropy
from reference.validation import check_int


def sft_example(prompt_ids: Sequence[int], response_ids: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs, targets and loss mask of one SFT example, each of length len(prompt) + len(response) - 1.

    inputs = (prompt + response)[:-1], targets = (prompt + response)[1:], and loss_mask[t] is True
    exactly where targets[t] is a response token (t >= len(prompt) - 1): the prompt is context only.

    Args:
        prompt_ids: the prompt's ids (at least one).
        response_ids: the response's ids (at least one), ending with the end-of-turn id.

    Returns:
        (inputs, targets) int64 tensors and the bool loss mask, all (n - 1,) for n = len(prompt) + len(response).
    """
    # Hint: the last prompt token is the one that predicts the first response token.
    raise NotImplementedError("Exercise 11.4: response-only SFT targets")


@dataclass
class PackedBatch:
    """Examples packed into rows: every field is (rows, context_length).

    segment_ids number the examples within a row from 1 (0 marks padding); positions restart at 0
    with every example; loss_mask is False on prompts and padding.
    """

    input_ids: Tensor
    targets: Tensor
    loss_mask: Tensor
    positions: Tensor
    segment_ids: Tensor
    rows_of: list[tuple[int, int]] = field(default_factory=list)  # example k lies in row rows_of[k][0], segment rows_of[k][1]

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(*(getattr(self, f).to(device) for f in ("input_ids", "targets", "loss_mask", "positions", "segment_ids")),
                           rows_of=list(self.rows_of))


def pack_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], context_length: int, pad_id: int = 0) -> PackedBatch:
    """Pack (prompt ids, response ids) examples into as few rows of `context_length` positions as first-fit finds.

    Each example takes len(prompt) + len(response) - 1 positions (`sft_example`). Examples are
    placed in the given order, each into the first row with room left, else into a new row; an
    example never spans two rows. In its row an example gets the next free positions, the next
    segment id (1, 2, ...) and positions 0, 1, ... of its own; the rest of a row is padding:
    input and target `pad_id`, segment 0, position 0, loss_mask False.

    Args:
        examples: (prompt ids, response ids) pairs.
        context_length: positions per row; an example longer than that raises ValueError.
        pad_id: the id that fills the padding.

    Returns:
        A `PackedBatch`; `rows_of[k]` says where example k went.
    """
    # Hint: first-fit: track the free room of each row; positions restart at 0 for each example; segment ids count from 1.
    raise NotImplementedError("Exercise 11.5: pack examples into rows")


def packed_attention_mask(segment_ids: Tensor) -> Tensor:
    """The block-diagonal causal mask of packed rows: (rows, 1, seq, seq) bool, True = may attend.

    Query i may attend to key j when j <= i and both belong to the same example
    (segment_ids equal). A padding position (segment 0) attends to itself only, so that no row of
    the mask is empty (an empty row would make softmax 0 / 0); padding is never attended to by a
    real token and never counted in the loss.

    Args:
        segment_ids: (rows, seq) integer segment numbers, 0 for padding.
    """
    # Hint: three conditions combined: causal, same segment, not padding; keep the diagonal so no row is empty.
    raise NotImplementedError("Exercise 11.6: block-diagonal causal mask")


def packed_logits(model: nn.Module, batch: PackedBatch) -> Tensor:
    """Run a `TransformerLM` on a packed batch: per-example positions and the block-diagonal mask.
    Returns (rows, context_length, vocab) logits."""
    return model(batch.input_ids, positions=batch.positions, attention_mask=packed_attention_mask(batch.segment_ids))


def sft_loss(model: nn.Module, batch: PackedBatch) -> Tensor:
    """The response-only loss of a packed batch: the mean of -log p(target) over every counted
    position of every example (a token-level mean, as Hugging Face's trainers take it)."""
    return cross_entropy(packed_logits(model, batch), batch.targets, batch.loss_mask)


def example_losses(logits: Tensor, batch: PackedBatch) -> Tensor:
    """Each example's own mean response loss from a packed batch's logits, (examples,), in the
    order the examples were given to `pack_examples`."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)  # (rows, seq)
    out = []
    for row, segment in batch.rows_of:
        where = (batch.segment_ids[row] == segment) & batch.loss_mask[row]
        out.append(nll[row][where].mean())
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# Training and scoring
# ----------------------------------------------------------------------------------------------


@dataclass
class SFTConfig:
    """The settings of `train_sft`. Batches are packed from `examples_per_batch` shuffled examples."""

    steps: int = 100
    examples_per_batch: int = 16
    context_length: int = 256
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "examples_per_batch", "context_length"):
            check_int(name, getattr(self, name), 1)
        check_int("warmup_steps", self.warmup_steps)
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps must be < steps={self.steps}, got {self.warmup_steps}")


def train_sft(model: nn.Module, examples: Sequence[tuple[list[int], list[int]]], config: SFTConfig,
              pad_id: int = 0) -> dict[str, list[float] | float]:
    """Fine-tune the parameters of `model` that require gradients on encoded examples, in place.

    Each step draws `examples_per_batch` examples (a fresh shuffle of the data each epoch, from
    `config.seed`), packs them (`pack_examples`), and takes one AdamW step on `sft_loss` with the
    learning rate of Chapter 6's `cosine_schedule` and gradients clipped to `grad_clip`.

    Returns:
        {"loss": per-step losses, "seconds": wall time, "tokens": input positions processed}.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("no parameter of the model requires a gradient: nothing to fine-tune")
    device = trainable[0].device
    fitting = [e for e in examples if len(e[0]) + len(e[1]) - 1 <= config.context_length]
    if not fitting:
        raise ValueError(f"no example fits in context_length={config.context_length}")
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = AdamW([g for g in groups if g["params"]], lr=config.learning_rate, betas=(0.9, 0.999))
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)  # dropout
    order: list[int] = []
    losses, tokens, start = [], 0, time.perf_counter()
    model.train()
    for step in progress(range(config.steps), desc="SFT", disable=not config.progress, leave=False):
        chosen = []
        while len(chosen) < config.examples_per_batch:
            if not order:
                order = list(range(len(fitting)))
                rng.shuffle(order)
            chosen.append(fitting[order.pop()])
        batch = pack_examples(chosen, config.context_length, pad_id).to(device)
        lr = cosine_schedule(step, config.learning_rate, config.min_learning_rate, config.warmup_steps, config.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = sft_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        tokens += batch.input_ids.numel()
    model.eval()
    return {"loss": losses, "seconds": time.perf_counter() - start, "tokens": tokens}


@torch.no_grad()
def score_examples(model: nn.Module, examples: Sequence[tuple[list[int], list[int]]], context_length: int,
                   batch_examples: int = 32, pad_id: int = 0) -> dict[str, float]:
    """How well a model predicts the responses, teacher-forced: {"loss": mean response nats per token,
    "token_accuracy": share of response tokens that are the argmax, "exact": share of examples
    whose every response token is the argmax (greedy decoding would reproduce the response),
    "examples": how many fitted into `context_length`}."""
    if not examples:
        raise ValueError("score_examples needs at least one example")
    fitting = [e for e in examples if len(e[0]) + len(e[1]) - 1 <= context_length]
    if not fitting:
        raise ValueError(f"no example fits in context_length={context_length}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll_sum, hits, count, exact = 0.0, 0, 0, 0
    for i in range(0, len(fitting), batch_examples):
        batch = pack_examples(fitting[i : i + batch_examples], context_length, pad_id).to(device)
        logits = packed_logits(model, batch).float()
        nll = -torch.log_softmax(logits, dim=-1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
        right = logits.argmax(-1) == batch.targets
        mask = batch.loss_mask
        nll_sum += nll[mask].sum().item()
        hits += int(right[mask].sum())
        count += int(mask.sum())
        for row, segment in batch.rows_of:
            where = (batch.segment_ids[row] == segment) & mask[row]
            exact += bool(right[row][where].all())
    model.train(was_training)
    return {"loss": nll_sum / count, "token_accuracy": hits / count, "exact": exact / len(fitting), "examples": len(fitting),
            "perplexity": math.exp(nll_sum / count)}
