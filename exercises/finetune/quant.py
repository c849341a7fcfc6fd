"""Exercises for Chapter 11: the exercises of `reference/finetune/quant.py`.

Fill in each body that raises NotImplementedError; the docstrings say what to do. The helpers
of the module are exact copies of the reference's, so they run on your code. Grade with
`llm-course grade 11`. Mirrors `reference/finetune/quant.py`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from reference.validation import check_int

# The 16 NF4 levels, as bitsandbytes ships them (Dettmers et al., 2023, appendix E): quantiles of
# N(0, 1) normalised to [-1, 1], 7 negative, an exact 0, 8 positive.
NF4_TABLE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip


def quantize_nf4(weight: Tensor, block_size: int = 64) -> tuple[Tensor, Tensor]:
    """NF4-quantize a weight: per block of `block_size` consecutive weights (row-major), the absmax
    c = max |w| and, per weight, the index q of the NF4 level nearest w / c (ties to the lower index).

    Args:
        weight: a floating-point tensor whose number of elements is a multiple of `block_size`.
        block_size: weights per block (64 in QLoRA).

    Returns:
        (codes, absmax): codes uint8 (numel / 2,) with two 4-bit indices per byte, the even element
        in the low nibble and the odd one in the high nibble; absmax float32 (numel / block_size,).
        An all-zero block has absmax 0 and dequantizes to zeros.
    """
    # Hint: scale each block by its absolute maximum, then find the nearest table entry; pack two codes per byte, even one low.
    raise NotImplementedError("Exercise 11.7: NF4 quantization")


def dequantize_nf4(codes: Tensor, absmax: Tensor, shape: Sequence[int], block_size: int = 64,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Undo `quantize_nf4`: w = absmax[block] * NF4[q], returned in `shape` and `dtype`.

    Args:
        codes: uint8 (numel / 2,), two indices per byte (even element in the low nibble).
        absmax: (numel / block_size,) the blocks' scales.
        shape: the weight's shape.
        block_size: weights per block.
        dtype: the result's dtype.
    """
    # Hint: unpack the nibbles in the order quantize_nf4 packed them, look them up, multiply by the block's scale.
    raise NotImplementedError("Exercise 11.8: NF4 dequantization")


def double_quantize(absmax: Tensor, block_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Quantize the first-level constants to 8 bits (QLoRA's double quantization).

    The mean mu of all constants is subtracted; each block of `block_size` centred constants keeps
    one float32 scale s = max |c - mu| / 127 and int8 codes round((c - mu) / s).

    Returns:
        (codes int8 (n,), scales float32 (ceil(n / block_size),), mean float32 ()).
    """
    # Hint: centre the constants on their mean first; pad the last block; one scale per block of 256.
    raise NotImplementedError("Exercise 11.9: double quantization of the constants")


def double_dequantize(codes: Tensor, scales: Tensor, mean: Tensor, block_size: int = 256) -> Tensor:
    """Undo `double_quantize`: c = codes * scales[block] + mean, float32 (n,)."""
    n = codes.numel()
    pad = (-n) % block_size
    blocks = F.pad(codes.float(), (0, pad)).reshape(-1, block_size)
    return (blocks * scales[:, None]).reshape(-1)[:n] + mean


def dequantize_q4_1(blocks: Tensor) -> Tensor:
    """GGUF Q4_1 blocks (..., 20) uint8 -> weights (..., 32) float32, in torch: w = d * q + m.

    Bytes 0-1 are d and 2-3 are m (little-endian float16), bytes 4-19 the 32 4-bit q: byte j holds
    weight j in its low nibble and weight j + 16 in its high one (llama.cpp's order, as
    `reference.models.gguf.dequantize_q4_1` reads it with NumPy).
    """
    # Hint: bytes 0-1 and 2-3 are little-endian float16; the low nibbles are weights 0-15, the high nibbles 16-31.
    raise NotImplementedError("Exercise 11.10: GGUF Q4_1 dequantization in torch")


def quantize_q4_1(weight: Tensor) -> Tensor:
    """Quantize (out, in) weights to Q4_1 blocks (out, in / 32, 20) uint8: per block of 32,
    m = min, d = (max - min) / 15 (both rounded to float16), q = round((w - m) / d) in 0..15."""
    if weight.dim() != 2 or weight.shape[1] % 32:
        raise ValueError(f"weight must be (out, in) with in a multiple of 32, got {tuple(weight.shape)}")
    w = weight.detach().float().reshape(weight.shape[0], -1, 32)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    d, m = ((hi - lo) / 15).half(), lo.half()
    step = torch.where(d.float() == 0, torch.ones_like(lo), d.float())
    q = torch.round((w - m.float()) / step).clamp(0, 15).to(torch.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    return torch.cat((d.view(torch.uint8), m.view(torch.uint8), packed), dim=-1)


class _DequantizeMatmul(torch.autograd.Function):
    """y = x W^T with W = dequantize() recomputed in both passes; gradients flow to x only."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: QuantizedLinear) -> Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize(x.dtype))

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight = ctx.layer.dequantize(grad.dtype)  # again: nothing weight-sized was kept
        return grad @ weight, None


class QuantizedLinear(nn.Module):
    """A frozen, bias-free linear layer whose weight is stored in 4 bits: "nf4" or "q4_1".

    The forward dequantizes the weight to the input's dtype (`_DequantizeMatmul`), in the
    backward again; the layer holds no parameter (the stored bytes are buffers), so only adapters
    put on top (`reference.finetune.lora.LoRALinear`) train.

    Args:
        in_features, out_features: the weight is (out_features, in_features).
        kind: "nf4" (blocks of 64, absmax double-quantized) or "q4_1" (GGUF blocks of 32).
        storage: the format's buffers: for "nf4" {"codes", "absmax_codes", "absmax_scales",
            "absmax_mean"}, for "q4_1" {"blocks"} (out, in / 32, 20).
    """

    def __init__(self, in_features: int, out_features: int, kind: str, storage: dict[str, Tensor]) -> None:
        super().__init__()
        if kind not in ("nf4", "q4_1"):
            raise ValueError(f"kind must be 'nf4' or 'q4_1', got {kind!r}")
        self.in_features, self.out_features, self.kind = in_features, out_features, kind
        self.compute_dtype = torch.float32
        for name, tensor in storage.items():
            self.register_buffer(name, tensor)

    @classmethod
    def from_linear(cls, linear: nn.Linear, kind: str = "nf4") -> QuantizedLinear:
        """Quantize an `nn.Linear`'s weight (a bias is refused: the course's LLaMA has none)."""
        if not isinstance(linear, nn.Linear) or linear.bias is not None:
            raise ValueError(f"only a bias-free nn.Linear can be quantized, got {linear!r}")
        weight = linear.weight
        if kind == "nf4":
            codes, absmax = quantize_nf4(weight, 64)
            a_codes, a_scales, a_mean = double_quantize(absmax, 256)
            storage = {"codes": codes, "absmax_codes": a_codes, "absmax_scales": a_scales, "absmax_mean": a_mean}
        elif kind == "q4_1":
            storage = {"blocks": quantize_q4_1(weight)}
        else:
            raise ValueError(f"kind must be 'nf4' or 'q4_1', got {kind!r}")
        layer = cls(linear.in_features, linear.out_features, kind, storage)
        layer.compute_dtype = weight.dtype
        return layer

    @property
    def weight(self) -> Tensor:
        """A meta tensor with the weight's shape and compute dtype (no memory): for code that reads
        `layer.weight.dtype`; `dequantize()` gives the values."""
        return torch.empty(self.out_features, self.in_features, dtype=self.compute_dtype, device="meta")

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The weight (out_features, in_features), dequantized to `dtype` (default: the compute dtype)."""
        dtype = self.compute_dtype if dtype is None else dtype
        shape = (self.out_features, self.in_features)
        if self.kind == "q4_1":
            return dequantize_q4_1(self.blocks).reshape(shape).to(dtype)
        absmax = double_dequantize(self.absmax_codes, self.absmax_scales, self.absmax_mean, 256)
        return dequantize_nf4(self.codes, absmax, shape, 64, dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in_features) -> (..., out_features)."""
        return _DequantizeMatmul.apply(x, self)

    def storage_bytes(self) -> int:
        """Bytes of the stored weight (codes and scales)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        bits = 8 * self.storage_bytes() / (self.in_features * self.out_features)
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind!r}, {bits:.3f} bits/weight"


LINEAR_TARGETS = r"layers\.\d+\.(attn\.(q|k|v|out)_proj|ffn\.w[123])"  # every projection of a TransformerLM's blocks


def quantize_model(model: nn.Module, kind: str = "nf4", targets: str = LINEAR_TARGETS) -> list[str]:
    """Replace each `nn.Linear` whose full name matches the regular expression `targets` by a
    `QuantizedLinear`, in place, and freeze every parameter; returns the names replaced."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(targets, n)]
    if not names:
        raise ValueError(f"no nn.Linear of {type(model).__name__} matches {targets!r}")
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, QuantizedLinear.from_linear(model.get_submodule(name), kind))
    return names


def from_gguf(path: str | os.PathLike | None = None) -> nn.Module:
    """SmolLM2-135M-Instruct (or another llama GGUF file) whose Q4_1 projections stay the file's
    own Q4_1 blocks (`QuantizedLinear` "q4_1"); everything else is dequantized as `load_llama` does.

    The query and key rows are reordered from llama.cpp's interleaved RoPE layout to the course's
    half layout; a block never spans two rows, so reordering rows moves whole blocks (no re-quantization).
    """
    from reference.models.gguf import LLAMA_TENSOR_NAMES, GGUFFile, load_llama, llama_config
    from reference.positional import interleaved_to_half
    from reference.pretrained import gguf_path

    file = GGUFFile(gguf_path() if path is None else path)
    model = load_llama(file)
    config = llama_config(file)
    head_dim = config["d_model"] // config["num_heads"]
    for pattern, ours in LLAMA_TENSOR_NAMES.items():
        if "{i}" not in pattern or not ours.endswith("_proj.weight") and ".ffn.w" not in ours:
            continue
        for i in range(config["num_layers"]):
            name, module_name = pattern.format(i=i), ours.format(i=i).removesuffix(".weight")
            info = file.tensors[name]
            if info.type_name != "Q4_1":
                continue
            out_features, in_features = info.shape
            blocks = torch.from_numpy(file.raw(name).copy()).reshape(out_features, in_features // 32, 20)
            heads = config["num_heads"] if "attn_q" in name else config["num_kv_heads"] if "attn_k" in name else None
            if heads:  # rows (h d) in interleaved order -> half order, moving whole rows of blocks
                order = interleaved_to_half(torch.arange(heads * head_dim).reshape(heads, 1, head_dim)).reshape(-1)
                blocks = blocks[order]
            parent, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent), child, QuantizedLinear(in_features, out_features, "q4_1", {"blocks": blocks}))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
