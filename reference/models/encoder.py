"""An encoder-only model in the BERT style, with its masked-language-modelling head.

Survey sections 1.2(a) ("Encoder") and 2.3 (masked language modelling). Devlin et al., 2019:
token + learned position + segment embeddings followed by a LayerNorm, post-norm blocks
(x = LN(x + sublayer(x))) with exact GELU, bidirectional attention (only padding is masked), and an
MLM head (dense, GELU, LayerNorm, then an output layer tied to the token embeddings, with a bias).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from reference.attention import MultiHeadAttention
from reference.models.parts import MLP, Block, LayerNorm, check_token_ids, init_weights
from reference.positional import LearnedPositionalEmbedding
from reference.validation import check_int


def key_mask(attention_mask: Tensor | None, token_ids: Tensor) -> Tensor | None:
    """Hugging Face's `attention_mask` (batch, seq), 1 for real tokens and 0 for padding, as a boolean
    key mask (batch, 1, 1, seq) for `MultiHeadAttention`; None stays None."""
    if attention_mask is None:
        return None
    if attention_mask.shape != token_ids.shape:
        raise ValueError(f"attention_mask must have the shape of token_ids {tuple(token_ids.shape)}, got {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]


class BertForMaskedLM(nn.Module):
    """BERT-style encoder with an MLM head: ids (batch, seq) -> logits (batch, seq, vocab_size) at every position.

    Args:
        vocab_size: number of token ids.
        context_length: number of learned positions (512 in BERT).
        d_model: hidden width.
        num_layers: number of blocks.
        num_heads: attention heads (divides d_model).
        d_ff: hidden width of the MLP; default 4 * d_model.
        type_vocab_size: number of segment ids (2 in BERT: sentence A and sentence B).
        eps: LayerNorm's epsilon (1e-12 in BERT).
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int | None = None,
        type_vocab_size: int = 2,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        for name, value in (("vocab_size", vocab_size), ("context_length", context_length), ("d_model", d_model),
                            ("num_layers", num_layers), ("num_heads", num_heads), ("d_ff", d_ff),
                            ("type_vocab_size", type_vocab_size)):
            check_int(name, value, 1)
        self.config: dict[str, Any] = dict(
            vocab_size=vocab_size, context_length=context_length, d_model=d_model, num_layers=num_layers,
            num_heads=num_heads, d_ff=d_ff, type_vocab_size=type_vocab_size, eps=eps,
        )
        self.vocab_size, self.context_length, self.type_vocab_size = vocab_size, context_length, type_vocab_size
        self.token_embeddings = nn.Embedding(vocab_size, d_model)
        self.position_embeddings = LearnedPositionalEmbedding(context_length, d_model)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, d_model)
        self.ln_embeddings = LayerNorm(d_model, eps)
        self.layers = nn.ModuleList(
            Block(
                attn=MultiHeadAttention(d_model, num_heads, bias=True, sdpa=True),
                ffn=MLP(d_model, d_ff, activation="gelu"),
                norm_attn=LayerNorm(d_model, eps),
                norm_ffn=LayerNorm(d_model, eps),
                pre_norm=False,
            )
            for _ in range(num_layers)
        )
        self.head_dense = nn.Linear(d_model, d_model)
        self.head_norm = LayerNorm(d_model, eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=True)
        init_weights(self)
        self.lm_head.weight = self.token_embeddings.weight  # tied; the bias is the head's own

    def encode(self, token_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None) -> Tensor:
        """Contextual vectors (batch, seq, d_model).

        Args:
            token_ids: (batch, seq) ids, seq <= context_length.
            attention_mask: (batch, seq), 1 for real tokens and 0 for padding; None means no padding.
            token_type_ids: (batch, seq) segment ids in [0, type_vocab_size); default all 0.
        """
        check_token_ids(token_ids, self.vocab_size, self.context_length)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(token_ids)
        check_token_ids(token_type_ids, self.type_vocab_size)
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        x = self.token_embeddings(token_ids) + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        x = self.ln_embeddings(x)  # (batch, seq, d_model)
        mask = key_mask(attention_mask, token_ids)  # bidirectional: only padding is hidden
        for layer in self.layers:
            x = layer(x, mask=mask)
        return x

    def forward(self, token_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None) -> Tensor:
        """MLM logits (batch, seq, vocab_size) for every position; see `encode` for the arguments."""
        h = self.encode(token_ids, attention_mask, token_type_ids)
        h = self.head_norm(F.gelu(self.head_dense(h)))
        return self.lm_head(h)
