"""Exercise for Chapter 5: the LLaMA-style causal decoder (also a prefix decoder).

Fill in the bodies that raise NotImplementedError. Build it from the reference parts imported
below: your own parts are graded on their own, in exercises 5.1-5.6, on inputs where their bugs
show (eps-sensitive norms, say), so that 5.7 grades the model's wiring alone and a bug in a part
costs that part's points once. Grade with `llm-course grade 5`. Mirrors `reference/models/llama.py`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reference.attention import MultiHeadAttention, causal_mask
from reference.models.masks import prefix_mask
from reference.models.parts import Block, RMSNorm, SwiGLU, check_token_ids, init_weights
from reference.positional import RotaryEmbedding
from reference.validation import check_int


class TransformerLM(nn.Module):
    """LLaMA-style language model: token ids (batch, seq) -> next-token logits (batch, seq, vocab_size).

    x_0 = E[ids];  x_l = Block_l(x_{l-1}) with  h = x + Attn(RMSNorm(x)),  x' = h + SwiGLU(RMSNorm(h));
    logits = lm_head(RMSNorm(x_L)).

    Args:
        vocab_size: number of token ids.
        context_length: the longest sequence the model accepts.
        d_model: width of the residual stream.
        num_layers: number of blocks.
        num_heads: number of query heads (divides d_model).
        d_ff: hidden width of SwiGLU (about 8/3 * d_model in LLaMA).
        rope_theta: RoPE's base (10000 in LLaMA 1/2, 500000 in LLaMA 3).
        num_kv_heads: key/value heads for grouped-query attention (divides num_heads); default num_heads.
        eps: RMSNorm's epsilon.
        tie_embeddings: share `lm_head.weight` with `token_embeddings.weight` (GPT-2, small LLaMA 3.2).

    Submodules: `token_embeddings` (nn.Embedding), `layers` (nn.ModuleList of
    `reference.models.parts.Block` with `attn` a bias-free `MultiHeadAttention` whose positional
    scheme is one `RotaryEmbedding` (half layout) shared by all layers, `ffn` a `SwiGLU`, `norm_attn`
    and `norm_ffn` RMSNorms), `ln_final` (RMSNorm), `lm_head` (bias-free nn.Linear). Weights start
    from `init_weights`. `config` holds the constructor's arguments (num_kv_heads filled in) as a dict.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        rope_theta: float = 10000.0,
        num_kv_heads: int | None = None,
        eps: float = 1e-5,
        tie_embeddings: bool = False,
    ) -> None:
        # Hint: super().__init__(), validate, then build what the class docstring describes.
        raise NotImplementedError("Exercise 5.7: LLaMA-style causal decoder")

    def forward(
        self,
        token_ids: Tensor,
        positions: Tensor | None = None,
        prefix_length: int | Tensor | None = None,
        cache: Any | None = None,
        last_only: bool = False,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Logits for every position.

        Args:
            token_ids: (batch, seq) integer ids in [0, vocab_size), seq <= context_length.
            positions: RoPE positions, (seq,) or (batch, seq); default 0 .. seq - 1 (with a cache:
                cache.length .. cache.length + seq - 1).
            prefix_length: None for a causal decoder; an int or a (batch,) tensor to run as a prefix
                decoder, bidirectional over the first prefix_length tokens.
            cache: None for the plain forward (training); a `reference.inference.KVCache` to decode
                (Chapter 15): token_ids are the tokens after the cached ones, their keys and values
                are stored in it, and attention also reads the cached ones (causal, padding slots masked).
            last_only: compute the logits of the last position only, (batch, 1, vocab_size): all that
                decoding needs, and the output layer is the largest matrix product of a small model.
            attention_mask: a boolean mask (True = may attend), (seq, seq) or (batch, 1, seq, seq), used
                instead of the causal one: e.g. the block-diagonal causal mask of sequences packed into
                one row (Chapter 11, `reference.finetune.sft.packed_attention_mask`, with `positions`
                restarting per sequence). Not combined with prefix_length or cache.

        Returns:
            (batch, seq, vocab_size) logits; position t predicts token t + 1.
        """
        # Hint: the order of Chapter 5's forward-pass trace; the mask depends on whether a prefix length is given.
        # With a cache, the mask and the positions continue after the tokens already cached, and each
        # layer gets its own part of the cache; `last_only` keeps the last position's logits alone.
        raise NotImplementedError("Exercise 5.7: LLaMA-style causal decoder")

    def generate(
        self, token_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Append `max_new_tokens` sampled tokens to (batch, seq) prompts; returns (batch, seq + max_new_tokens).

        Each token is drawn from softmax(logits / temperature) at the last position (temperature 0:
        the argmax, greedy), with `generator` as the source of randomness. Once the context is full
        the window slides: the next token is predicted from the last context_length tokens alone,
        as if they were the whole text (positions from 0). Runs Chapter 15's key/value-cache decoder,
        `reference.inference.generate`; the exercise writes it without a cache, recomputing the window.
        """
        # Hint: one token per step; the model can only read its last context_length tokens, and only the last
        # position's scores matter. Temperature 0 means the most likely token; otherwise sample from `generator`.
        raise NotImplementedError("Exercise 5.7: LLaMA-style causal decoder")

