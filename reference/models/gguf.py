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
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

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
