"""An encoder-decoder in the T5 style.

Survey section 2.2, "Encoder-decoder architecture". Raffel et al., 2020 (T5): one embedding table
shared by encoder, decoder and (when tied) the output layer; pre-norm blocks with RMSNorm and no
biases anywhere; a ReLU feed-forward block; scores q . k without the 1/sqrt(d) factor; position
enters only as T5's learned relative bias (Chapter 2), computed once per stack (bidirectional
buckets in the encoder, causal ones in the decoder) and added in every layer; the decoder's
cross-attention sees every real encoder token. With tied embeddings the decoder's output is
scaled by d_model^-1/2 before the output layer, as in T5.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reference.attention import MultiHeadAttention, causal_mask
from reference.models.encoder import key_mask
from reference.models.parts import MLP, Block, RMSNorm, check_token_ids, init_weights
from reference.positional import RelativePositionBias
from reference.validation import check_int


def _t5_block(d_model: int, num_heads: int, d_ff: int, eps: float, cross: bool) -> Block:
    attention = lambda: MultiHeadAttention(d_model, num_heads, bias=False, scale=1.0, sdpa=True)  # noqa: E731
    return Block(
        attn=attention(),
        ffn=MLP(d_model, d_ff, activation="relu", bias=False),
        norm_attn=RMSNorm(d_model, eps),
        norm_ffn=RMSNorm(d_model, eps),
        cross_attn=attention() if cross else None,
        norm_cross=RMSNorm(d_model, eps) if cross else None,
    )


def _with_bias(mask: Tensor, bias: Tensor) -> Tensor:
    """Fold a boolean mask into an additive bias: -inf where the mask is False."""
    return torch.where(mask, bias, torch.tensor(float("-inf"), dtype=bias.dtype, device=bias.device))


class T5(nn.Module):
    """T5-style encoder-decoder: (input ids, decoder input ids) -> logits (batch, seq_dec, vocab_size).

    Args:
        vocab_size: number of token ids.
        d_model: hidden width.
        num_layers: encoder blocks.
        num_heads: attention heads (divides d_model).
        d_ff: hidden width of the ReLU feed-forward block.
        num_decoder_layers: decoder blocks; default num_layers.
        num_buckets: relative-position buckets (32 in T5).
        max_distance: distance from which all positions share a bucket (128 in T5).
        eps: RMSNorm's epsilon (1e-6 in T5).
        tie_embeddings: output layer tied to the shared embedding (T5 1.0) or separate (T5 1.1).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        num_decoder_layers: int | None = None,
        num_buckets: int = 32,
        max_distance: int = 128,
        eps: float = 1e-6,
        tie_embeddings: bool = True,
    ) -> None:
        super().__init__()
        num_decoder_layers = num_layers if num_decoder_layers is None else num_decoder_layers
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("num_layers", num_layers),
                            ("num_heads", num_heads), ("d_ff", d_ff), ("num_decoder_layers", num_decoder_layers),
                            ("num_buckets", num_buckets), ("max_distance", max_distance)):
            check_int(name, value, 1)
        self.config: dict[str, Any] = dict(
            vocab_size=vocab_size, d_model=d_model, num_layers=num_layers, num_heads=num_heads, d_ff=d_ff,
            num_decoder_layers=num_decoder_layers, num_buckets=num_buckets, max_distance=max_distance, eps=eps,
            tie_embeddings=tie_embeddings,
        )
        self.vocab_size, self.d_model, self.tie_embeddings = vocab_size, d_model, tie_embeddings
        self.token_embeddings = nn.Embedding(vocab_size, d_model)
        self.encoder_bias = RelativePositionBias(num_heads, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance)
        self.encoder_layers = nn.ModuleList(_t5_block(d_model, num_heads, d_ff, eps, cross=False) for _ in range(num_layers))
        self.encoder_norm = RMSNorm(d_model, eps)
        self.decoder_bias = RelativePositionBias(num_heads, bidirectional=False, num_buckets=num_buckets, max_distance=max_distance)
        self.decoder_layers = nn.ModuleList(
            _t5_block(d_model, num_heads, d_ff, eps, cross=True) for _ in range(num_decoder_layers)
        )
        self.decoder_norm = RMSNorm(d_model, eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        init_weights(self)
        if tie_embeddings:
            self.lm_head.weight = self.token_embeddings.weight

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Encoder output (batch, seq_enc, d_model) for ids (batch, seq_enc); attention_mask (batch, seq_enc) 1 = real token."""
        check_token_ids(input_ids, self.vocab_size)
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device)
        bias = self.encoder_bias.bias(positions, positions)  # (heads, seq, seq), shared by every layer
        padding = key_mask(attention_mask, input_ids)
        mask = bias if padding is None else _with_bias(padding, bias)  # (batch or 1, heads, seq, seq)
        x = self.token_embeddings(input_ids)
        for layer in self.encoder_layers:
            x = layer(x, mask=mask)
        return self.encoder_norm(x)

    def decode(
        self, decoder_input_ids: Tensor, encoder_output: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Logits (batch, seq_dec, vocab_size) given the encoder's output (batch, seq_enc, d_model) and its padding mask."""
        check_token_ids(decoder_input_ids, self.vocab_size)
        seq = decoder_input_ids.shape[1]
        positions = torch.arange(seq, device=decoder_input_ids.device)
        bias = self.decoder_bias.bias(positions, positions)  # (heads, seq, seq)
        mask = _with_bias(causal_mask(seq, device=decoder_input_ids.device), bias)
        context_mask = None
        if attention_mask is not None:
            if attention_mask.shape != encoder_output.shape[:2]:
                raise ValueError(f"attention_mask must be (batch, seq_enc) = {tuple(encoder_output.shape[:2])}, got {tuple(attention_mask.shape)}")
            context_mask = attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, seq_enc)
        x = self.token_embeddings(decoder_input_ids)
        for layer in self.decoder_layers:
            x = layer(x, mask=mask, context=encoder_output, context_mask=context_mask)
        x = self.decoder_norm(x)
        if self.tie_embeddings:
            x = x * self.d_model**-0.5
        return self.lm_head(x)

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(batch, seq_enc) and (batch, seq_dec) ids -> (batch, seq_dec, vocab_size) logits."""
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask)
