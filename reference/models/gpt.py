"""A causal decoder in the GPT-2 style.

Survey section 2.2, "Causal decoder". Radford et al., 2019: learned absolute positions, pre-norm
with LayerNorm, a GELU (tanh approximation) MLP of width 4 * d_model, one fused q/k/v projection
with biases, a final LayerNorm, and an output layer tied to the token embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reference.attention import MultiHeadAttention, causal_mask
from reference.models.parts import MLP, Block, LayerNorm, check_token_ids, init_weights
from reference.positional import LearnedPositionalEmbedding
from reference.validation import check_int


class GPT2(nn.Module):
    """GPT-2-style language model: token ids (batch, seq) -> logits (batch, seq, vocab_size).

    x_0 = E[ids] + P[positions];  h = x + Attn(LN(x)),  x' = h + MLP(LN(h));  logits = LN(x_L) E^T.

    Args:
        vocab_size: number of token ids.
        context_length: number of learned positions (1024 in GPT-2).
        d_model: width of the residual stream.
        num_layers: number of blocks.
        num_heads: number of attention heads (divides d_model).
        d_ff: hidden width of the MLP; default 4 * d_model.
        eps: LayerNorm's epsilon.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        for name, value in (("vocab_size", vocab_size), ("context_length", context_length), ("d_model", d_model),
                            ("num_layers", num_layers), ("num_heads", num_heads), ("d_ff", d_ff)):
            check_int(name, value, 1)
        self.config: dict[str, Any] = dict(
            vocab_size=vocab_size, context_length=context_length, d_model=d_model, num_layers=num_layers,
            num_heads=num_heads, d_ff=d_ff, eps=eps,
        )
        self.vocab_size, self.context_length = vocab_size, context_length
        self.token_embeddings = nn.Embedding(vocab_size, d_model)
        self.position_embeddings = LearnedPositionalEmbedding(context_length, d_model)
        self.layers = nn.ModuleList(
            Block(
                attn=MultiHeadAttention(d_model, num_heads, fused_qkv=True, bias=True, sdpa=True),
                ffn=MLP(d_model, d_ff, activation="gelu_tanh"),
                norm_attn=LayerNorm(d_model, eps),
                norm_ffn=LayerNorm(d_model, eps),
            )
            for _ in range(num_layers)
        )
        self.ln_final = LayerNorm(d_model, eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        init_weights(self, num_layers=num_layers)
        self.lm_head.weight = self.token_embeddings.weight  # tied (Press & Wolf, 2017)

    def forward(self, token_ids: Tensor) -> Tensor:
        """(batch, seq) integer ids, seq <= context_length -> (batch, seq, vocab_size) logits."""
        check_token_ids(token_ids, self.vocab_size, self.context_length)
        seq = token_ids.shape[1]
        positions = torch.arange(seq, device=token_ids.device)
        x = self.token_embeddings(token_ids) + self.position_embeddings(positions)  # (batch, seq, d_model)
        mask = causal_mask(seq, device=token_ids.device)
        for layer in self.layers:
            x = layer(x, mask=mask)
        return self.lm_head(self.ln_final(x))
