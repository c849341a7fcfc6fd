"""The parts every transformer family is built from: norms, feed-forward blocks, residual blocks.

Survey sections 1.2(a) and 2.2. The families of Chapter 5 (GPT-2, LLaMA, prefix decoder, BERT, T5)
differ only in which of these parts they pick and in the attention mask they feed them:
- LayerNorm (Ba et al., 2016) and RMSNorm (Zhang & Sennrich, 2019);
- a two-layer MLP with GELU (Hendrycks & Gimpel, 2016) or ReLU, and SwiGLU (Shazeer, 2020);
- a residual block that normalises before (pre-norm, GPT-2 and later) or after (post-norm, the
  original transformer and BERT) each sub-layer (Xiong et al., 2020 compare the two).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from reference.attention import MultiHeadAttention
from reference.validation import ArgumentTypeError, check_bool, check_float, check_int, value_range

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
        super().__init__()
        d_model, eps = check_int("d_model", d_model, 1), check_float("eps", eps, positive=True)
        self.d_model, self.eps = d_model, eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if check_bool("bias", bias) else None

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (..., d_model) -> (..., d_model)."""
        _check_norm_input(x, self.d_model)
        h = x.to(torch.promote_types(x.dtype, torch.float32))  # half precision is normalised in float32
        mean = h.mean(dim=-1, keepdim=True)
        var = (h - mean).pow(2).mean(dim=-1, keepdim=True)
        y = (h - mean) * torch.rsqrt(var + self.eps) * self.weight.to(h.dtype)
        if self.bias is not None:
            y = y + self.bias.to(h.dtype)
        return y.to(x.dtype)


def _check_norm_input(x: Tensor, d_model: int) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ArgumentTypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 1 or x.shape[-1] != d_model:
        raise ValueError(f"x must end in d_model={d_model}, got shape {tuple(x.shape)}")


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dimension: LayerNorm without the mean.

    Zhang & Sennrich, 2019, eq. 4; used by T5 and LLaMA. Half-precision inputs are normalised in float32 and cast back.

    Args:
        d_model: size of the last dimension.
        eps: added to the mean square.
    """

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        d_model, eps = check_int("d_model", d_model, 1), check_float("eps", eps, positive=True)
        self.d_model, self.eps = d_model, eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (..., d_model) -> (..., d_model)."""
        _check_norm_input(x, self.d_model)
        h = x.to(torch.promote_types(x.dtype, torch.float32))  # half precision is normalised in float32
        y = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (y * self.weight.to(h.dtype)).to(x.dtype)


class MLP(nn.Module):
    """The position-wise feed-forward block fc_out(act(fc_in(x))) (Vaswani et al., 2017, eq. 2).

    Args:
        d_model: input and output width.
        d_ff: hidden width (4 * d_model in GPT-2 and BERT).
        activation: "gelu" (exact, BERT), "gelu_tanh" (GPT-2's tanh approximation) or "relu" (T5).
        bias: whether both linear layers have biases (T5's have none).
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        d_model, d_ff = check_int("d_model", d_model, 1), check_int("d_ff", d_ff, 1)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_model) -> (..., d_model)."""
        h = self.fc_in(x)  # (..., d_ff)
        if self.activation == "relu":
            h = F.relu(h)
        else:
            h = F.gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return self.fc_out(h)


class SwiGLU(nn.Module):
    """The gated feed-forward block w2(silu(w1 x) * w3 x) of PaLM and LLaMA (Shazeer, 2020, eq. 6).

    Three bias-free `nn.Linear` layers: `w1` and `w3` (d_ff, d_model), `w2` (d_model, d_ff). With
    d_ff about 8/3 * d_model it costs what a 4 * d_model MLP costs.

    Args:
        d_model: input and output width.
        d_ff: hidden width.
    """

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        d_model, d_ff = check_int("d_model", d_model, 1), check_int("d_ff", d_ff, 1)
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_model) -> (..., d_model)."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


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
        super().__init__()
        if (cross_attn is None) != (norm_cross is None):
            raise ValueError("cross_attn and norm_cross come together: give both or neither")
        self.attn, self.ffn, self.norm_attn, self.norm_ffn = attn, ffn, norm_attn, norm_ffn
        self.cross_attn, self.norm_cross = cross_attn, norm_cross
        self.pre_norm = pre_norm

    def _residual(self, x: Tensor, norm: nn.Module, sublayer) -> Tensor:
        if self.pre_norm:
            return x + sublayer(norm(x))
        return norm(x + sublayer(x))

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
        x = self._residual(x, self.norm_attn, lambda h: self.attn(h, mask=mask, positions=positions, cache=cache))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass the encoder output as context")
            x = self._residual(x, self.norm_cross, lambda h: self.cross_attn(h, context, mask=context_mask))
        return self._residual(x, self.norm_ffn, self.ffn)


def check_token_ids(token_ids: Tensor, vocab_size: int, context_length: int | None = None) -> None:
    """Raise unless `token_ids` is an integer (batch, seq) tensor of ids in [0, vocab_size) with
    seq <= context_length (when a context length is given): ArgumentTypeError (a TypeError) for a
    wrong type or dtype, ValueError for a wrong shape or value. Reads the values once (one
    host synchronisation on a GPU): call it at a model's entry, not per layer."""
    if not isinstance(token_ids, Tensor):
        raise ArgumentTypeError(f"token_ids must be a torch.Tensor, got {type(token_ids).__name__}")
    if token_ids.is_floating_point() or token_ids.dtype == torch.bool or token_ids.is_complex():
        raise ArgumentTypeError(f"token_ids must hold integers, got dtype {token_ids.dtype}")
    if token_ids.dim() != 2:
        raise ValueError(f"token_ids must be (batch, seq), got shape {tuple(token_ids.shape)}")
    if context_length is not None and token_ids.shape[1] > context_length:
        raise ValueError(f"sequence of length {token_ids.shape[1]} is longer than context_length={context_length}")
    if token_ids.numel():
        low, high = value_range(token_ids)  # the one read of the values
        if low < 0 or high >= vocab_size:
            raise ValueError(f"token id {low if low < 0 else high} is out of range for vocab_size={vocab_size}")


def init_weights(model: nn.Module, std: float = 0.02, num_layers: int | None = None) -> None:
    """GPT-2's initialisation: every `nn.Linear` and `nn.Embedding` weight ~ N(0, std^2), biases 0,
    norms' scales 1; output projections of residual branches (`out_proj`, `fc_out`, `w2`) scaled by
    1/sqrt(2 * num_layers) so the residual stream's variance does not grow with depth (Radford et
    al., 2019, section 2.3)."""
    residual_std = std / (2 * num_layers) ** 0.5 if num_layers else std
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            last = name.rsplit(".", 1)[-1]
            nn.init.normal_(module.weight, 0.0, residual_std if last in ("out_proj", "fc_out", "w2") else std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (LayerNorm, RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
