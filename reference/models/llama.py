"""A causal decoder in the LLaMA style, which is also the course's prefix decoder.

Survey section 2.2, "Causal decoder" and "Prefix decoder". Touvron et al., 2023 (LLaMA): pre-norm
with RMSNorm, SwiGLU feed-forward, rotary position embedding (Su et al., 2021), no biases, a final
norm and an untied output layer; Ainslie et al., 2023 (grouped-query attention) as in LLaMA 2/3.
A prefix decoder (PaLM-style U-PaLM, GLM) is the same network driven by another mask: pass
`prefix_length` and the prefix attends bidirectionally (`reference.models.masks.prefix_mask`).

Parameter names follow CS336's `TransformerLM` (`token_embeddings`, `layers`, `ln_final`,
`lm_head`), so a checkpoint of one loads into the other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reference.attention import MultiHeadAttention, causal_mask
from reference.models.masks import prefix_mask
from reference.models.parts import Block, RMSNorm, SwiGLU, check_token_ids, init_weights
from reference.positional import RotaryEmbedding
from reference.validation import check_int, check_positions


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
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context_length", context_length), ("d_model", d_model),
                            ("num_layers", num_layers), ("num_heads", num_heads), ("d_ff", d_ff)):
            check_int(name, value, 1)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model}) into an even head_dim for RoPE")
        if num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
        self.config: dict[str, Any] = dict(
            vocab_size=vocab_size, context_length=context_length, d_model=d_model, num_layers=num_layers,
            num_heads=num_heads, d_ff=d_ff, rope_theta=rope_theta, num_kv_heads=num_kv_heads, eps=eps,
            tie_embeddings=tie_embeddings,
        )
        self.vocab_size, self.context_length = vocab_size, context_length
        rope = RotaryEmbedding(d_model // num_heads, rope_theta, layout="half")  # one table, shared by all layers
        self.token_embeddings = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            Block(
                attn=MultiHeadAttention(d_model, num_heads, num_kv_heads, bias=False, positional=rope, sdpa=True),
                ffn=SwiGLU(d_model, d_ff),
                norm_attn=RMSNorm(d_model, eps),
                norm_ffn=RMSNorm(d_model, eps),
            )
            for _ in range(num_layers)
        )
        self.ln_final = RMSNorm(d_model, eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        init_weights(self, num_layers=num_layers)
        if tie_embeddings:
            self.lm_head.weight = self.token_embeddings.weight

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
        check_token_ids(token_ids, self.vocab_size, self.context_length)
        seq = token_ids.shape[1]
        if positions is not None:
            check_positions("positions", positions)
            if positions.shape[-1] != seq or (positions.dim() == 2 and positions.shape[0] not in (1, token_ids.shape[0])):
                raise ValueError(f"positions must be ({seq},) or (batch={token_ids.shape[0]}, {seq}), "
                                 f"got shape {tuple(positions.shape)}")
        if attention_mask is not None:
            if prefix_length is not None or cache is not None:
                raise ValueError("attention_mask replaces the causal mask: it cannot be combined with prefix_length or cache")
            if attention_mask.dtype != torch.bool or attention_mask.shape[-2:] != (seq, seq) or attention_mask.dim() not in (2, 4):
                raise ValueError(f"attention_mask must be a bool ({seq}, {seq}) or (batch, 1, {seq}, {seq}) tensor, "
                                 f"got {attention_mask.dtype} {tuple(attention_mask.shape)}")
            mask = attention_mask
        elif cache is not None:
            if prefix_length is not None:
                raise ValueError("prefix_length and cache cannot be combined: decoding with a cache is causal")
            if cache.length + seq > self.context_length:
                raise ValueError(f"{cache.length} cached + {seq} new tokens is more than context_length={self.context_length}")
            mask = cache.attention_mask(seq)  # (batch, 1, seq, cache.length + seq)
            if positions is None:
                positions = torch.arange(cache.length, cache.length + seq, device=token_ids.device)
        elif prefix_length is None:
            mask = causal_mask(seq, device=token_ids.device)  # (seq, seq)
        else:
            mask = prefix_mask(seq, prefix_length, device=token_ids.device)
        # One positions tensor for every layer: the shared RotaryEmbedding reads its values (>= 0,
        # how far to grow its table) once, at the first layer, and reuses the angles after.
        if positions is None:
            positions = torch.arange(seq, device=token_ids.device)
        x = self.token_embeddings(token_ids)  # (batch, seq, d_model)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask=mask, positions=positions, cache=None if cache is None else cache.layer(i))
        if cache is not None:
            cache.advance(seq)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.ln_final(x))  # (batch, seq, vocab_size)

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
        from reference.inference.generate import generate

        was_training = self.training
        self.eval()
        try:
            return generate(self, token_ids, max_new_tokens, temperature=temperature, generator=generator,
                            context_overflow="slide").sequences  # fmt: skip
        finally:
            self.train(was_training)
