"""GGUF, llama.cpp's file format for a model, and its block quantization.

A GGUF file (Gerganov et al., llama.cpp / ggml, format version 3) is laid out in four parts, every
number little-endian:

    header        magic b"GGUF", version (uint32), tensor count (uint64), key/value count (uint64)
    metadata      key/value pairs: key (string), value type (uint32), value; a string is a uint64
                  byte length then UTF-8 bytes; an array is an element type (uint32), a count
                  (uint64), then the elements
    tensor infos  per tensor: name (string), number of dimensions (uint32), the dimensions (uint64
                  each, the fastest-varying first, as ggml's ne[0], ne[1], ...), ggml type (uint32),
                  offset (uint64) from the start of the data section
    tensor data   starts at the first multiple of `general.alignment` (default 32) after the infos;
                  each tensor's offset is a multiple of it too

`GGUFFile` reads the first three parts and memory-maps the fourth (`numpy.memmap`), so opening a
file reads only its metadata; `GGUFFile.dequantize` decodes one tensor to float32.

Block quantization (survey section 5, "Model Compression"; Dettmers et al., 2022 for why blocks
help): the weights of each row are cut into blocks of 32, and each block stores small integers plus
its own float16 scale, so one outlier only costs the precision of its own block:

    Q8_0  34 bytes: d (fp16), 32 x int8 q                    w = d * q
    Q4_0  18 bytes: d (fp16), 16 bytes of 4-bit q            w = d * (q - 8)
    Q4_1  20 bytes: d (fp16), m (fp16), 16 bytes of 4-bit q  w = d * q + m

Q4_0 and Q4_1 pack two 4-bit values per byte the way llama.cpp does: byte j holds weight j in its
low nibble and weight j + 16 in its high nibble (not weights 2j and 2j + 1). F32, F16 and BF16
tensors are stored plainly. Q4_0 costs 4.5 bits per weight, Q4_1 5, Q8_0 8.5.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from reference.models.llama import TransformerLM
from reference.positional import RotaryEmbedding, interleaved_to_half
from reference.tokenizer import GPT2_PATTERN, PretrainedTokenizer

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 stored counts as uint32; llama.cpp has written version 3 since 2023
DEFAULT_ALIGNMENT = 32
BLOCK_SIZE = 32  # weights per block in Q8_0, Q4_0 and Q4_1


class ValueType(IntEnum):
    """The type tag before each metadata value (gguf.h's `gguf_type`)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_DTYPES = {
    ValueType.UINT8: np.dtype("<u1"), ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"), ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"), ValueType.INT32: np.dtype("<i4"),
    ValueType.UINT64: np.dtype("<u8"), ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT32: np.dtype("<f4"), ValueType.FLOAT64: np.dtype("<f8"),
    ValueType.BOOL: np.dtype("<u1"),
}

# ggml's tensor types (ggml.h's `ggml_type`), by id, so that an error can name the one it meets.
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
    11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS",
    19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
    27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}

# The types this reader decodes: name -> (ggml id, weights per block, bytes per block).
SUPPORTED_TYPES = {
    "F32": (0, 1, 4),
    "F16": (1, 1, 2),
    "BF16": (30, 1, 2),
    "Q8_0": (8, BLOCK_SIZE, 2 + BLOCK_SIZE),
    "Q4_0": (2, BLOCK_SIZE, 2 + BLOCK_SIZE // 2),
    "Q4_1": (3, BLOCK_SIZE, 2 + 2 + BLOCK_SIZE // 2),
}
_BY_ID = {ggml_id: (name, block, nbytes) for name, (ggml_id, block, nbytes) in SUPPORTED_TYPES.items()}


def type_name(ggml_type: int) -> str:
    """ggml's name for a tensor type id, e.g. 3 -> "Q4_1"."""
    return GGML_TYPE_NAMES.get(ggml_type, f"unknown type {ggml_type}")


def _unsupported(ggml_type: int, what: str) -> ValueError:
    return ValueError(
        f"{what} has ggml type {type_name(ggml_type)} ({ggml_type}), which this reader does not decode; "
        f"it supports {', '.join(SUPPORTED_TYPES)}"
    )


# ----------------------------------------------------------------------------------------------
# Dequantization: one function per block layout, each vectorised over all the blocks at once
# ----------------------------------------------------------------------------------------------


def _fp16(column: np.ndarray) -> np.ndarray:
    """(n_blocks, 2) uint8 bytes of little-endian float16 -> (n_blocks, 1) float32."""
    return np.ascontiguousarray(column).view("<f2").astype(np.float32)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """(n_blocks, 16) packed bytes -> (n_blocks, 32) uint8 values in 0..15: the 16 low nibbles are
    weights 0..15 of the block, the 16 high nibbles weights 16..31 (llama.cpp's order)."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1)


def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    """Q8_0 blocks (n_blocks, 34) uint8 -> weights (n_blocks, 32) float32: w = d * q, q an int8."""
    d = _fp16(blocks[:, :2])  # (n_blocks, 1)
    q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8).astype(np.float32)  # (n_blocks, 32)
    return d * q


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (n_blocks, 18) uint8 -> weights (n_blocks, 32) float32: w = d * (q - 8), q in 0..15."""
    d = _fp16(blocks[:, :2])  # (n_blocks, 1)
    q = _nibbles(blocks[:, 2:]).astype(np.int8) - 8  # (n_blocks, 32), in -8..7
    return d * q.astype(np.float32)


def dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    """Q4_1 blocks (n_blocks, 20) uint8 -> weights (n_blocks, 32) float32: w = d * q + m, q in 0..15.

    d is the step and m the block's minimum, so the 16 levels span [m, m + 15 d].
    """
    d, m = _fp16(blocks[:, :2]), _fp16(blocks[:, 2:4])  # (n_blocks, 1) each
    q = _nibbles(blocks[:, 4:]).astype(np.float32)  # (n_blocks, 32)
    return d * q + m


def _dequantize_plain(data: np.ndarray, name: str) -> np.ndarray:
    if name == "F32":
        return data.view("<f4").copy()
    if name == "F16":
        return data.view("<f2").astype(np.float32)
    # BF16 is the top half of a float32: shift its 16 bits up and read them as one
    return (data.view("<u2").astype(np.uint32) << 16).view(np.float32)


_BLOCK_DECODERS = {"Q8_0": dequantize_q8_0, "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1}


def dequantize(data: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a tensor's raw bytes to float32.

    Args:
        data: the tensor's bytes, uint8 of any shape (e.g. a slice of a memory map).
        ggml_type: its ggml type id (see `SUPPORTED_TYPES`).
        shape: its shape in NumPy order (the GGUF dimensions reversed); the blocks run along the last axis.

    Returns:
        a new float32 array of `shape`.
    """
    if ggml_type not in _BY_ID:
        raise _unsupported(ggml_type, "the tensor")
    name, block, nbytes = _BY_ID[ggml_type]
    count = int(np.prod(shape, dtype=np.int64))
    if shape and shape[-1] % block:
        raise ValueError(f"a {name} tensor's rows must be whole blocks of {block}, got shape {shape}")
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    if data.size != count // block * nbytes:
        raise ValueError(f"a {name} tensor of shape {shape} takes {count // block * nbytes} bytes, got {data.size}")
    if block == 1:
        return _dequantize_plain(data, name).reshape(shape)
    return _BLOCK_DECODERS[name](data.reshape(-1, nbytes)).reshape(shape)


# ----------------------------------------------------------------------------------------------
# The reader
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies: `shape` in NumPy order (GGUF's dimensions reversed), its ggml type id,
    and the absolute byte offset and length of its data in the file."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)


class _Cursor:
    """Reads little-endian values from a byte buffer, moving forward; errors name the offset."""

    def __init__(self, buffer: np.ndarray, path: str) -> None:
        self.buffer, self.path, self.offset = buffer, path, 0

    def take(self, dtype: np.dtype, count: int = 1) -> np.ndarray:
        end = self.offset + dtype.itemsize * count
        if end > self.buffer.size:
            raise ValueError(f"{self.path} ends at byte {self.buffer.size}, inside a value at byte {self.offset}")
        values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.offset)
        self.offset = end
        return values

    def scalar(self, dtype: np.dtype) -> Any:
        return self.take(dtype)[0].item()

    def string(self) -> str:
        length = self.scalar(_SCALAR_DTYPES[ValueType.UINT64])
        raw = self.take(np.dtype("u1"), length).tobytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: the string at byte {self.offset - length} is not UTF-8") from None

    def value(self, value_type: int) -> Any:
        """One metadata value of type `value_type`: int, float, bool, str, or a list for an array."""
        if value_type == ValueType.STRING:
            return self.string()
        if value_type == ValueType.ARRAY:
            element_type = self.scalar(_SCALAR_DTYPES[ValueType.UINT32])
            count = self.scalar(_SCALAR_DTYPES[ValueType.UINT64])
            if element_type in _SCALAR_DTYPES:  # numbers: one read for the whole array
                values = self.take(_SCALAR_DTYPES[ValueType(element_type)], count)
                return [bool(v) for v in values] if element_type == ValueType.BOOL else values.tolist()
            return [self.value(element_type) for _ in range(count)]
        if value_type not in _SCALAR_DTYPES:
            raise ValueError(f"{self.path}: unknown metadata value type {value_type} at byte {self.offset - 4}")
        value = self.scalar(_SCALAR_DTYPES[ValueType(value_type)])
        return bool(value) if value_type == ValueType.BOOL else value


def _value_type(tag: int, key: str) -> ValueType:
    try:
        return ValueType(tag)
    except ValueError:
        raise ValueError(f"metadata key {key!r} has an unknown value type {tag}") from None


class GGUFFile:
    """A GGUF file, opened for reading: its metadata in memory, its tensor data memory-mapped.

    Attributes:
        path: the file.
        version: the format version (2 or 3).
        metadata: {key: value} in file order; arrays are lists, e.g. metadata["tokenizer.ggml.tokens"].
        value_types: {key: ValueType}, and for an array (ValueType.ARRAY, element ValueType).
        tensors: {name: TensorInfo} in file order.
        alignment: the data section's alignment in bytes.
        data_offset: where the data section starts.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        cursor = _Cursor(self._map, str(self.path))
        if cursor.take(np.dtype("u1"), 4).tobytes() != MAGIC:
            raise ValueError(f"{self.path} is not a GGUF file: it does not start with {MAGIC!r}")
        self.version = cursor.scalar(_SCALAR_DTYPES[ValueType.UINT32])
        if self.version not in VERSIONS:
            hint = " (it looks big-endian)" if self.version & 0xFFFF == 0 else ""
            raise ValueError(f"{self.path} is GGUF version {self.version}{hint}; this reader reads versions {VERSIONS}")
        tensor_count = cursor.scalar(_SCALAR_DTYPES[ValueType.UINT64])
        kv_count = cursor.scalar(_SCALAR_DTYPES[ValueType.UINT64])

        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, Any] = {}
        for _ in range(kv_count):
            key = cursor.string()
            value_type = cursor.scalar(_SCALAR_DTYPES[ValueType.UINT32])
            if key in self.metadata:
                raise ValueError(f"{self.path} repeats the metadata key {key!r}")
            if value_type == ValueType.ARRAY:  # peek at the element type, then read the whole array
                element = int(np.frombuffer(self._map, dtype="<u4", count=1, offset=cursor.offset)[0])
                self.value_types[key] = (ValueType.ARRAY, _value_type(element, key))
            else:
                self.value_types[key] = _value_type(value_type, key)
            self.metadata[key] = cursor.value(value_type)

        self.alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(self.alignment, int) or self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise ValueError(f"{self.path}: general.alignment must be a power of two, got {self.alignment!r}")

        infos = []
        for _ in range(tensor_count):
            name = cursor.string()
            n_dims = cursor.scalar(_SCALAR_DTYPES[ValueType.UINT32])
            dims = cursor.take(_SCALAR_DTYPES[ValueType.UINT64], n_dims).tolist()
            ggml_type = cursor.scalar(_SCALAR_DTYPES[ValueType.UINT32])
            offset = cursor.scalar(_SCALAR_DTYPES[ValueType.UINT64])
            infos.append((name, tuple(reversed(dims)), ggml_type, offset))
        self.data_offset = -(-cursor.offset // self.alignment) * self.alignment  # round up

        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, ggml_type, offset in infos:
            if name in self.tensors:
                raise ValueError(f"{self.path} holds two tensors named {name!r}")
            if offset % self.alignment:
                raise ValueError(f"{self.path}: tensor {name!r} starts at {offset}, not a multiple of {self.alignment}")
            nbytes = self._nbytes(name, shape, ggml_type)
            start = self.data_offset + offset
            if nbytes is not None and start + nbytes > self._map.size:
                raise ValueError(f"{self.path}: tensor {name!r} runs past the end of the file (truncated?)")
            self.tensors[name] = TensorInfo(name, shape, ggml_type, start, -1 if nbytes is None else nbytes)

    @staticmethod
    def _nbytes(name: str, shape: tuple[int, ...], ggml_type: int) -> int | None:
        """Bytes of a tensor of a supported type; None for a type this reader does not know the size of."""
        if ggml_type not in _BY_ID:
            return None
        _, block, nbytes = _BY_ID[ggml_type]
        count = int(np.prod(shape, dtype=np.int64))
        if shape and shape[-1] % block:
            raise ValueError(f"tensor {name!r} of type {type_name(ggml_type)} has rows of {shape[-1]}, not whole blocks of {block}")
        return count // block * nbytes

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of tensor `name`, a read-only uint8 view into the memory map (no copy)."""
        info = self._info(name)
        if info.nbytes < 0:
            raise _unsupported(info.ggml_type, f"tensor {name!r}")
        return self._map[info.offset : info.offset + info.nbytes]

    def dequantize(self, name: str) -> np.ndarray:
        """Tensor `name` decoded to a new float32 array of its NumPy shape."""
        info = self._info(name)
        if info.ggml_type not in _BY_ID:
            raise _unsupported(info.ggml_type, f"tensor {name!r}")
        return dequantize(self.raw(name), info.ggml_type, info.shape)

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"{self.path} has no tensor {name!r}")
        return self.tensors[name]

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, version={self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"


# ----------------------------------------------------------------------------------------------
# A llama.cpp "llama" file (SmolLM2, LLaMA 2-style models) into the course's TransformerLM
# ----------------------------------------------------------------------------------------------

# Metadata under "llama." that the course's TransformerLM can represent; any other key is refused.
_LLAMA_KEYS = {
    "context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.dimension_count",
    "vocab_size", "attention.key_length", "attention.value_length", "rope.scaling.type", "rope.scaling.factor",
    "expert_count", "expert_used_count",
}
# GGUF tensor name -> the course's parameter name; {i} is the block's index.
LLAMA_TENSOR_NAMES = {
    "token_embd.weight": "token_embeddings.weight",
    "output_norm.weight": "ln_final.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.norm_attn.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.attn.out_proj.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.norm_ffn.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.ffn.w1.weight",  # SwiGLU: w2(silu(w1 x) * w3 x)
    "blk.{i}.ffn_up.weight": "layers.{i}.ffn.w3.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.ffn.w2.weight",
}


def llama_config(file: GGUFFile) -> dict[str, Any]:
    """`TransformerLM`'s constructor arguments from a GGUF file's "llama.*" metadata.

    Refuses, with a ValueError naming the key, what the course's model cannot represent: another
    architecture, RoPE scaling, a rotary or key/value width other than d_model / num_heads, experts,
    per-layer head counts, and any "llama.*" key this converter does not know (a sliding window,
    logit soft-capping, ...), rather than building a silently different model.
    """
    meta = file.metadata
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"general.architecture is {arch!r}; the course's TransformerLM reads 'llama' files only")
    unknown = sorted(k for k in meta if k.startswith("llama.") and k.removeprefix("llama.") not in _LLAMA_KEYS)
    if unknown:
        raise ValueError(f"metadata {unknown[0]!r} = {meta[unknown[0]]!r} has no counterpart in the course's TransformerLM")

    def need(key: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise ValueError(f"metadata 'llama.{key}' is missing")
        if isinstance(value, list | str | bool):
            raise ValueError(f"metadata 'llama.{key}' = {value!r}: expected one number")
        return value

    d_model, num_heads = need("embedding_length"), need("attention.head_count")
    head_dim = d_model // num_heads if num_heads and d_model % num_heads == 0 else None
    if head_dim is None:
        raise ValueError(f"metadata 'llama.attention.head_count' = {num_heads} does not divide d_model = {d_model}")
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if need(key, head_dim) != head_dim:
            raise ValueError(f"metadata 'llama.{key}' = {meta[f'llama.{key}']} differs from d_model / heads = {head_dim}")
    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"metadata 'llama.rope.scaling.type' = {scaling!r}: the course's RoPE has no scaling")
    if need("rope.scaling.factor", 1.0) != 1.0:
        raise ValueError(f"metadata 'llama.rope.scaling.factor' = {meta['llama.rope.scaling.factor']}: no RoPE scaling")
    for key in ("expert_count", "expert_used_count"):
        if need(key, 0) != 0:
            raise ValueError(f"metadata 'llama.{key}' = {meta[f'llama.{key}']}: the course's model has no experts")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab_size = need("vocab_size", len(tokens) if isinstance(tokens, list) else None)
    return dict(
        vocab_size=vocab_size,
        context_length=need("context_length"),
        d_model=d_model,
        num_layers=need("block_count"),
        num_heads=num_heads,
        d_ff=need("feed_forward_length"),
        rope_theta=float(need("rope.freq_base", 10000.0)),
        num_kv_heads=need("attention.head_count_kv", num_heads),
        eps=float(need("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in file.tensors,
    )


def unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of a query or key projection for its RoPE layout.

    llama.cpp rotates pairs of adjacent dimensions (2i, 2i+1) of each head (the interleaved layout
    of Meta's LLaMA), so its converter reorders the rows of Hugging Face's W_q and W_k, which
    rotate dimensions (i, i + head_dim/2) (the half layout), within each head. The course's
    TransformerLM uses the half layout, so each head's rows go back through Chapter 2's
    `interleaved_to_half`.

    Args:
        weight: (num_heads * head_dim, d_in), rows in the interleaved order.
        num_heads: heads in this projection (the key/value heads for W_k).

    Returns:
        (num_heads * head_dim, d_in), rows in the half order.
    """
    per_head = rearrange(weight, "(h d) i -> h i d", h=num_heads)  # (heads, d_in, head_dim)
    return rearrange(interleaved_to_half(per_head), "h i d -> (h d) i").contiguous()


def llama_state_dict(file: GGUFFile, config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The course's parameters {name: float32 tensor} from a GGUF file's tensors (see `LLAMA_TENSOR_NAMES`).

    Every tensor of the file must map to a parameter of the shape `config` implies (bias tensors,
    "rope_freqs.weight" and any other name are refused by name), and every parameter must be
    found; with tied embeddings the file has no "output.weight" and `lm_head` shares the embedding.
    """
    config = llama_config(file) if config is None else config
    d, layers, heads, kv = config["d_model"], config["num_layers"], config["num_heads"], config["num_kv_heads"]
    head_dim, d_ff, vocab = d // heads, config["d_ff"], config["vocab_size"]
    shapes = {
        "token_embd.weight": (vocab, d), "output_norm.weight": (d,), "output.weight": (vocab, d),
        "blk.{i}.attn_norm.weight": (d,), "blk.{i}.ffn_norm.weight": (d,),
        "blk.{i}.attn_q.weight": (heads * head_dim, d), "blk.{i}.attn_k.weight": (kv * head_dim, d),
        "blk.{i}.attn_v.weight": (kv * head_dim, d), "blk.{i}.attn_output.weight": (d, heads * head_dim),
        "blk.{i}.ffn_gate.weight": (d_ff, d), "blk.{i}.ffn_up.weight": (d_ff, d), "blk.{i}.ffn_down.weight": (d, d_ff),
    }
    expected: dict[str, tuple[str, tuple[int, ...], int | None]] = {}  # gguf name -> (ours, shape, heads to unpermute)
    for pattern, ours in LLAMA_TENSOR_NAMES.items():
        if pattern == "output.weight" and config["tie_embeddings"]:
            continue
        permuted = heads if "attn_q" in pattern else kv if "attn_k" in pattern else None
        for i in range(layers) if "{i}" in pattern else [None]:
            expected[pattern.format(i=i)] = (ours.format(i=i), shapes[pattern], permuted)
    unknown = [name for name in file.tensors if name not in expected]
    if unknown:
        raise ValueError(f"tensor {unknown[0]!r} has no counterpart in the course's TransformerLM")
    missing = [name for name in expected if name not in file.tensors]
    if missing:
        raise ValueError(f"the file lacks tensor {missing[0]!r}")
    state = {}
    for name, (ours, shape, permuted) in expected.items():
        if file.tensors[name].shape != shape:
            raise ValueError(f"tensor {name!r} has shape {file.tensors[name].shape}; the config implies {shape}")
        weight = torch.from_numpy(file.dequantize(name))
        state[ours] = unpermute_rope_rows(weight, permuted) if permuted else weight
    return state


def load_llama(path: str | os.PathLike | GGUFFile, dtype: torch.dtype = torch.float32) -> TransformerLM:
    """A `TransformerLM` in eval mode holding a llama.cpp "llama" GGUF file's weights, dequantized to `dtype`."""
    file = path if isinstance(path, GGUFFile) else GGUFFile(path)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
    config = llama_config(file)
    state = llama_state_dict(file, config)
    with torch.device("meta"):  # no memory and no random initialisation: every weight comes from the file
        model = TransformerLM(**config)
    model.load_state_dict(state, strict=False, assign=True)
    if config["tie_embeddings"]:
        model.lm_head.weight = model.token_embeddings.weight
    rope = RotaryEmbedding(config["d_model"] // config["num_heads"], config["rope_theta"], layout="half")
    for layer in model.layers:  # the one RoPE table all layers share, built for real
        layer.attn.positional = rope
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"the conversion left {left[0]!r} unset")
    return model.to(dtype).eval()


# ----------------------------------------------------------------------------------------------
# The tokenizer a "gpt2" (byte-level BPE) GGUF file describes, as the course's PretrainedTokenizer
# ----------------------------------------------------------------------------------------------

# tokenizer.ggml.pre -> the pre-tokenizer's regular expressions, applied in turn (llama.cpp's
# `regex_exprs` in llama-vocab.cpp). "smollm" (also StarCoder's) first cuts every digit off on its
# own, then splits the rest with GPT-2's expression; llama.cpp's copy of that expression drops the
# final "|\s+", which only matters for text it leaves unmatched, and unmatched text is kept as a
# piece anyway, so GPT-2's full expression splits identically. This equals the `Digits(individual_
# digits=True)` then `ByteLevel` pre-tokenizer of SmolLM2's own tokenizer.json.
PRE_TOKENIZERS = {
    "gpt2": (GPT2_PATTERN,),
    "smollm": (r"\p{N}", GPT2_PATTERN),
}
_CONTROL, _USER_DEFINED, _NORMAL = 3, 4, 1  # llama.cpp's token types (llama_token_type)


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet, read backwards: {printable character: the byte it stands for}.

    GPT-2 (Radford et al., 2019) writes each token's bytes as printable characters so that its
    vocabulary is text: the 188 bytes that are printable Latin-1 characters stand for themselves,
    and the other 68 (control bytes, space, 0x7F-0xA0, 0xAD) become chr(256), chr(257), ... in
    order, so a space is written "Ġ" (chr(288)) and a newline "Ċ".
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


@lru_cache(maxsize=1)
def _alphabet() -> tuple[re.Pattern, dict[int, str]]:
    """A pattern matching strings of GPT-2's alphabet, and a `str.translate` table from it to Latin-1
    characters, so that `text.translate(table).encode("latin-1")` gives the bytes (fast, in C)."""
    table = unicode_to_byte()
    pattern = re.compile("[" + "".join(re.escape(ch) for ch in table) + "]*")
    return pattern, {ord(ch): chr(b) for ch, b in table.items()}


def byte_level_to_bytes(token: str) -> bytes | None:
    """The bytes a token written in GPT-2's alphabet stands for ("Ġthe" -> b" the"); None if it is not so written."""
    pattern, translation = _alphabet()
    return token.translate(translation).encode("latin-1") if pattern.fullmatch(token) else None


def _token_bytes(token: str, index: int, token_type: int) -> bytes:
    raw = byte_level_to_bytes(token)
    if raw is not None:
        return raw
    if token_type in (_CONTROL, _USER_DEFINED):  # an added token stored as plain text
        return token.encode("utf-8")
    raise ValueError(f"tokenizer.ggml.tokens[{index}] = {token!r} is not written in GPT-2's byte alphabet")


def tokenizer_from_gguf(file: GGUFFile) -> PretrainedTokenizer:
    """The `PretrainedTokenizer` of a GGUF file whose tokenizer.ggml.model is "gpt2" (byte-level BPE).

    Vocabulary, merges, special tokens (token types CONTROL and USER_DEFINED, matched whole), the
    bos/eos/pad tokens and `tokenizer.chat_template` all come from the file's metadata; the
    pre-tokenizer from `PRE_TOKENIZERS[tokenizer.ggml.pre]`. Refused by name: another tokenizer
    model or pre-tokenizer, a file that asks for a BOS/EOS token or a space to be added to every text.
    """
    meta = file.metadata
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"tokenizer.ggml.model is {meta.get('tokenizer.ggml.model')!r}; only 'gpt2' (byte-level BPE) is read")
    pre = meta.get("tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"tokenizer.ggml.pre is {pre!r}; the pre-tokenizers known here are {sorted(PRE_TOKENIZERS)}")
    for key in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix"):
        if meta.get(key, False):
            raise ValueError(f"{key} is true; the course's tokenizer adds nothing to the text it encodes")
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not isinstance(merges, list):
        raise ValueError("the file lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    types = meta.get("tokenizer.ggml.token_type", [_NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise ValueError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    odd = next((i for i, t in enumerate(types) if t not in (_NORMAL, _CONTROL, _USER_DEFINED)), None)
    if odd is not None:
        raise ValueError(f"tokenizer.ggml.token_type[{odd}] = {types[odd]}: only normal, control and user-defined tokens are read")
    vocab = {i: _token_bytes(token, i, types[i]) for i, token in enumerate(tokens)}
    special = {token: i for i, token in enumerate(tokens) if types[i] in (_CONTROL, _USER_DEFINED)}
    pairs = []
    for rank, merge in enumerate(merges):
        parts = [byte_level_to_bytes(part) for part in merge.split(" ")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"tokenizer.ggml.merges[{rank}] = {merge!r} is not two byte-level tokens")
        pairs.append((parts[0], parts[1]))

    def named(key: str) -> str | None:
        token_id = meta.get(f"tokenizer.ggml.{key}")
        if token_id is None:
            return None
        if not 0 <= token_id < len(tokens) or tokens[token_id] not in special:
            raise ValueError(f"tokenizer.ggml.{key} = {token_id} is not the id of a special token")
        return tokens[token_id]

    return PretrainedTokenizer(
        vocab, pairs, special, patterns=PRE_TOKENIZERS[pre], chat_template=meta.get("tokenizer.chat_template"),
        bos_token=named("bos_token_id"), eos_token=named("eos_token_id"), pad_token=named("padding_token_id"),
    )
