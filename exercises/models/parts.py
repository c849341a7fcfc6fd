"""Exercises for Chapter 5: the parts every transformer family is built from (norms,
feed-forward blocks, the residual block).

Fill in each body that raises NotImplementedError; the docstrings say what to build. Grade with
`llm-course grade 5`. Mirrors `reference/models/parts.py`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from reference.attention import MultiHeadAttention

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")


class LayerNorm(nn.Module):
    """y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias over the last dimension.

    Ba et al., 2016. The variance is the biased one (divide by d_model), as in `nn.LayerNorm`;
    statistics of half-precision inputs are taken in float32, and the result is cast back.

    Args:
        d_model: size of the last dimension.
        eps: added to the variance.
        bias: whether to learn the shift (`bias`); the scale (`weight`) is always learned.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True) -> None:
        # Hint: super().__init__(), validate, then build what the class docstring describes.
        raise NotImplementedError("Exercise 5.1: LayerNorm")

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (..., d_model) -> (..., d_model)."""
        # Hint: statistics over the last dimension only, one token at a time; which variance does nn.LayerNorm use
        # (divide by d or by d - 1)? Where does eps go? Compute in float32 for half-precision input, return x's dtype.
        raise NotImplementedError("Exercise 5.1: LayerNorm")


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dimension: LayerNorm without the mean.

    Zhang & Sennrich, 2019, eq. 4; used by T5 and LLaMA. Half-precision inputs are normalised in float32 and cast back.

    Args:
        d_model: size of the last dimension.
        eps: added to the mean square.
    """

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        # Hint: super().__init__(), validate, then build what the class docstring describes.
        raise NotImplementedError("Exercise 5.2: RMSNorm")

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (..., d_model) -> (..., d_model)."""
        # Hint: the RMSNorm formula of Zhang & Sennrich (2019): no centring and no bias; eps sits inside the root.
        # The output must not change when x is multiplied by a positive constant (a test checks it).
        raise NotImplementedError("Exercise 5.2: RMSNorm")


class MLP(nn.Module):
    """The position-wise feed-forward block fc_out(act(fc_in(x))) (Vaswani et al., 2017, eq. 2).

    Args:
        d_model: input and output width.
        d_ff: hidden width (4 * d_model in GPT-2 and BERT).
        activation: "gelu" (exact, BERT), "gelu_tanh" (GPT-2's tanh approximation) or "relu" (T5).
        bias: whether both linear layers have biases (T5's have none).
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True) -> None:
        # Hint: super().__init__(), validate, then build what the class docstring describes.
        raise NotImplementedError("Exercise 5.3: GELU / ReLU feed-forward block")

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_model) -> (..., d_model)."""
        raise NotImplementedError("Exercise 5.3: GELU / ReLU feed-forward block")


class SwiGLU(nn.Module):
    """The gated feed-forward block w2(silu(w1 x) * w3 x) of PaLM and LLaMA (Shazeer, 2020, eq. 6).

    Three bias-free `nn.Linear` layers: `w1` and `w3` (d_ff, d_model), `w2` (d_model, d_ff). With
    d_ff about 8/3 * d_model it costs what a 4 * d_model MLP costs.

    Args:
        d_model: input and output width.
        d_ff: hidden width.
    """

    def __init__(self, d_model: int, d_ff: int) -> None:
        # Hint: super().__init__(), validate, then build what the class docstring describes.
        raise NotImplementedError("Exercise 5.4: SwiGLU feed-forward block")

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_model) -> (..., d_model)."""
        raise NotImplementedError("Exercise 5.4: SwiGLU feed-forward block")


class Block(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, feed-forward, each residual.

    Pre-norm (GPT-2, LLaMA, T5):   x = x + sublayer(norm(x))
    Post-norm (Vaswani, BERT):     x = norm(x + sublayer(x))

    The block owns no positions and no mask: the model passes them, so the same block serves a
    causal decoder, a prefix decoder and a bidirectional encoder.

    Args:
        attn: self-attention, a `reference.attention.MultiHeadAttention`.
        ffn: the feed-forward block, (..., d_model) -> (..., d_model).
        norm_attn: the norm around `attn`.
        norm_ffn: the norm around `ffn`.
        pre_norm: pre-norm (True) or post-norm (False).
        cross_attn: cross-attention to an encoder's output (encoder-decoder models), or None.
        norm_cross: the norm around `cross_attn`; required with it.
    """

    def __init__(
        self,
        attn: MultiHeadAttention,
        ffn: nn.Module,
        norm_attn: nn.Module,
        norm_ffn: nn.Module,
        pre_norm: bool = True,
        cross_attn: MultiHeadAttention | None = None,
        norm_cross: nn.Module | None = None,
    ) -> None:
        # Hint: super().__init__(), validate, then build what the class docstring describes.
        raise NotImplementedError("Exercise 5.5: pre-norm and post-norm residual block")


    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        cache: Any | None = None,
    ) -> Tensor:
        """Apply the layer to x, (batch, seq, d_model) -> (batch, seq, d_model).

        Args:
            x: the layer's input, (batch, seq, d_model).
            mask: self-attention mask (boolean, True = may attend, or additive float),
                broadcastable to (batch, heads, seq, seq).
            positions: token positions for a relative scheme inside `attn` (RoPE), (seq,) or (batch, seq).
            context: the encoder's output, (batch, seq_k, d_model); needed when there is cross-attention.
            context_mask: cross-attention mask, broadcastable to (batch, heads, seq, seq_k).
            cache: the self-attention's key/value cache when decoding (see `MultiHeadAttention`), or None.
        """
        # Hint: pre-norm is x + f(norm(x)), post-norm is norm(x + f(x)); self-attention (handing it the
        # cache), cross-attention if any, then ffn.
        raise NotImplementedError("Exercise 5.5: pre-norm and post-norm residual block")

