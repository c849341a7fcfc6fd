"""Length extrapolation: does a decoder trained on windows of L tokens still work on 2L and 4L?

Chapter 2's closing experiment (survey section 1.2(a), positional embedding). Press et al., 2022
("Train Short, Test Long", ALiBi) ask this question of sinusoidal, rotary and T5-bias models;
Haviv et al., 2022 and Kazemnejad et al., 2023 add the decoder with no position information at all (causal attention
alone lets it infer positions). Here the same tiny decoder, built from Chapter 5's parts, is
trained with each scheme on byte-level tokens of the course corpus and evaluated at several
lengths. A learned table has no vector past L, so that scheme cannot even be run there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from reference.attention import MultiHeadAttention, causal_mask
from reference.models.parts import Block, RMSNorm, SwiGLU, check_token_ids, init_weights
from reference.positional import ALiBi, LearnedPositionalEmbedding, RotaryEmbedding, sinusoidal_encoding
from reference.validation import check_int

SCHEMES = ("none", "sinusoidal", "learned", "rope", "alibi")


class PositionalDecoder(nn.Module):
    """A small pre-norm causal decoder (RMSNorm, SwiGLU) whose only varying part is the position scheme.

    "none": no position information (NoPE); "sinusoidal" and "learned": absolute vectors added to
    the token embeddings (scaled by sqrt(d_model) before the sinusoidal table, whose entries are of
    size 1, as in Vaswani et al., 2017, section 3.4); "rope": rotary embedding inside attention; "alibi": linear biases on the
    scores.

    Args:
        vocab_size: number of token ids (256 for bytes).
        d_model: residual width.
        num_layers: number of blocks.
        num_heads: attention heads.
        d_ff: SwiGLU hidden width.
        scheme: one of SCHEMES.
        max_len: size of the learned table (the training context); unused by the other schemes.
    """

    def __init__(
        self, vocab_size: int, d_model: int, num_layers: int, num_heads: int, d_ff: int, scheme: str, max_len: int
    ) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        check_int("max_len", max_len, 1)
        self.scheme, self.vocab_size, self.d_model = scheme, vocab_size, d_model
        self.token_embeddings = nn.Embedding(vocab_size, d_model)
        self.position_embeddings = LearnedPositionalEmbedding(max_len, d_model) if scheme == "learned" else None
        relative = {"rope": lambda: RotaryEmbedding(d_model // num_heads), "alibi": lambda: ALiBi(num_heads)}
        positional = relative[scheme]() if scheme in relative else None
        self.layers = nn.ModuleList(
            Block(MultiHeadAttention(d_model, num_heads, bias=False, positional=positional), SwiGLU(d_model, d_ff),
                  RMSNorm(d_model), RMSNorm(d_model))
            for _ in range(num_layers)
        )
        self.ln_final = RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        init_weights(self, num_layers=num_layers)

    def forward(self, token_ids: Tensor) -> Tensor:
        """(batch, seq) ids -> (batch, seq, vocab_size) logits; "learned" refuses seq > max_len."""
        check_token_ids(token_ids, self.vocab_size)
        seq = token_ids.shape[1]
        positions = torch.arange(seq, device=token_ids.device)
        x = self.token_embeddings(token_ids)  # (batch, seq, d_model)
        if self.scheme == "sinusoidal":  # entries of size 1: scale the embeddings up as Vaswani et al. do (section 3.4)
            x = x * math.sqrt(self.d_model) + sinusoidal_encoding(seq, self.d_model).to(x)
        elif self.scheme == "learned":
            x = x + self.position_embeddings(positions)
        mask = causal_mask(seq, device=token_ids.device)
        relative = positions if self.scheme in ("rope", "alibi") else None  # attention refuses unused positions
        for layer in self.layers:
            x = layer(x, mask=mask, positions=relative)
        return self.lm_head(self.ln_final(x))


def byte_tokens(text: str) -> Tensor:
    """UTF-8 bytes of `text` as a 1-D int64 tensor of ids in [0, 256)."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def random_windows(data: Tensor, length: int, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`batch_size` random windows of `length` + 1 tokens from 1-D `data`: inputs and next-token targets, each (batch, length)."""
    if data.dim() != 1 or data.numel() <= length:
        raise ValueError(f"data must be 1-D and longer than length={length}, got shape {tuple(data.shape)}")
    starts = torch.randint(0, data.numel() - length, (batch_size,), generator=generator)
    windows = torch.stack([data[s : s + length + 1] for s in starts.tolist()])  # (batch, length + 1)
    return windows[:, :-1], windows[:, 1:]


def train_decoder(
    model: nn.Module, data: Tensor, context_length: int, steps: int, batch_size: int = 16, lr: float = 3e-3,
    seed: int = 0, progress: bool = False,
) -> list[float]:
    """Train `model` on random windows of `context_length` tokens with AdamW and a cosine schedule; returns the losses."""
    check_int("steps", steps, 1)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: min(1.0, (it + 1) / (steps // 10 + 1)) * 0.5 * (1 + math.cos(math.pi * it / steps))
    )
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=getattr(model, "scheme", "training"), disable=not progress, leave=False):
        inputs, targets = random_windows(data, context_length, batch_size, generator)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def loss_by_position(model: nn.Module, data: Tensor, length: int, num_windows: int = 32) -> Tensor:
    """Mean next-token loss (nats) at each position of `num_windows` evenly spaced windows of `length` tokens; (length,)."""
    if data.numel() <= length:
        raise ValueError(f"data ({data.numel()} tokens) must be longer than length={length}")
    model.eval()
    starts = torch.linspace(0, data.numel() - length - 1, num_windows).long().tolist()
    windows = torch.stack([data[s : s + length + 1] for s in starts])  # (windows, length + 1)
    logits = model(windows[:, :-1])
    losses = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")  # (windows, length)
    return losses.mean(dim=0)


def length_extrapolation(
    train_data: Tensor, val_data: Tensor, context_length: int, factors: Sequence[int] = (1, 2, 4),
    schemes: Sequence[str] = SCHEMES, steps: int = 200, d_model: int = 64, num_layers: int = 2, num_heads: int = 4,
    seed: int = 0, progress: bool = True,
) -> dict[str, dict[str, object]]:
    """Train one decoder per scheme at `context_length` and measure it at each multiple of it.

    `progress` shows one bar over the schemes. Returns, per scheme: "train_losses" (list), "loss" ({length: mean validation loss, NaN where
    the scheme cannot run}), "by_position" (the loss at each position of the longest windows, or
    of the longest it can run).
    """
    results: dict[str, dict[str, object]] = {}
    bar = tqdm(schemes, desc="training and evaluating", disable=not progress)
    for scheme in bar:
        bar.set_postfix(scheme=scheme)
        torch.manual_seed(seed)
        model = PositionalDecoder(256, d_model, num_layers, num_heads, 4 * d_model, scheme, context_length)
        train_losses = train_decoder(model, train_data, context_length, steps, seed=seed)
        loss, by_position = {}, None
        for factor in factors:
            length = factor * context_length
            if scheme == "learned" and length > context_length:  # the table has no vector past context_length
                loss[length] = float("nan")
                continue
            per_position = loss_by_position(model, val_data, length)
            loss[length], by_position = per_position.mean().item(), per_position
        results[scheme] = {"train_losses": train_losses, "loss": loss, "by_position": by_position}
    return results
