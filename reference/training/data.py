"""Feeding a language model: the tokenised corpus as one long array on disk, and random windows of it.

Survey section 2.4, "Model Training": pre-training reads a corpus far larger than memory. The corpus
is tokenised once into a flat binary file of token ids (uint16 when the vocabulary has at most
65,536 entries, as in nanoGPT and CS336's assignment 1); training opens it as a `numpy.memmap`,
so the operating system pages in only the windows that batches touch, and samples
`batch_size` windows of `context_length + 1` tokens at random positions: the first
`context_length` are the inputs, the last `context_length` the next-token targets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from reference.runtime import atomic_write
from reference.validation import check_int


def get_batch(
    dataset: npt.NDArray[np.integer],
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample `batch_size` random windows of a token array: inputs and their next-token targets.

    Each window starts at an index drawn uniformly from [0, len(dataset) - context_length - 1], so
    that every window holds context_length + 1 tokens: inputs are its first context_length tokens,
    targets its last context_length (the inputs shifted left by one).

    Args:
        dataset: a 1-D integer array of token ids (a `numpy.ndarray` or `numpy.memmap`; uint16, int32, ...).
        batch_size: the number of windows (>= 1).
        context_length: tokens per window (>= 1, < len(dataset)).
        device: where the batch goes, e.g. "cpu" or "cuda:0".
        generator: a CPU `torch.Generator` that draws the starts, for repeatable batches; None uses
            PyTorch's global generator.

    Returns:
        inputs and targets, each a long tensor of shape (batch_size, context_length) on `device`.
    """
    if not isinstance(dataset, np.ndarray) or dataset.ndim != 1 or not np.issubdtype(dataset.dtype, np.integer):
        raise ValueError(
            f"dataset must be a 1-D integer numpy array, got {type(dataset).__name__} {getattr(dataset, 'shape', '')}"
        )
    check_int("batch_size", batch_size, 1)
    check_int("context_length", context_length, 1)
    if context_length >= len(dataset):
        raise ValueError(f"context_length must be < len(dataset) = {len(dataset)}, got {context_length}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must name a device such as 'cpu' or 'cuda', got {device!r}") from None
    starts = torch.randint(0, len(dataset) - context_length, (batch_size,), generator=generator).tolist()
    windows = torch.from_numpy(np.stack([dataset[s : s + context_length + 1] for s in starts]).astype(np.int64))
    if device.type == "cuda":
        windows = windows.pin_memory().to(device, non_blocking=True)  # copy while the CPU goes on
    else:
        windows = windows.to(device)
    return windows[:, :-1], windows[:, 1:]  # (batch_size, context_length) each


class _EncodesFiles(Protocol):
    def encode_iterable(self, lines: Iterable[str]) -> Iterable[int]: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest of uint16 and int32 that holds every id below `vocab_size`."""
    check_int("vocab_size", vocab_size, 1)
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def tokenize_to_memmap(
    tokenizer: _EncodesFiles,
    text_path: str | os.PathLike,
    out_path: str | os.PathLike,
    vocab_size: int,
    chunk_tokens: int = 1 << 20,
) -> np.memmap:
    """Tokenise a text file into a flat binary file of ids, streaming, and open it as a memmap.

    Any tokenizer with `encode_iterable(lines) -> iterable of ids` works (e.g.
    `reference.tokenizer.Tokenizer`); the text is read line by line and the ids written in chunks,
    so neither needs to fit in memory. The file is written to a temporary name in the same folder
    and renamed into place, so a crash never leaves a truncated corpus behind. Beside it goes
    `<out_path>.json` ({"dtype", "count", "vocab_size"}), from which `open_tokens` learns the dtype:
    a file of int32 ids is never read as uint16.

    Args:
        tokenizer: has `encode_iterable`.
        text_path: the UTF-8 text to tokenise.
        out_path: the `.bin` file to write.
        vocab_size: the tokenizer's vocabulary size; picks the dtype (`token_dtype`).
        chunk_tokens: ids buffered in memory between writes.

    Returns:
        The ids as a read-only 1-D `numpy.memmap` of dtype `token_dtype(vocab_size)`.
    """
    dtype = token_dtype(vocab_size)
    check_int("chunk_tokens", chunk_tokens, 1)
    out_path = Path(out_path)
    sidecar = _sidecar(out_path)
    sidecar.unlink(missing_ok=True)  # a crash below leaves no description of another file
    count = 0
    with atomic_write(out_path, "wb") as out, open(text_path, encoding="utf-8") as text:
        buffer: list[int] = []
        for token in tokenizer.encode_iterable(text):
            buffer.append(token)
            if len(buffer) >= chunk_tokens:
                count += _write_ids(out, buffer, dtype, vocab_size)
                buffer.clear()
        count += _write_ids(out, buffer, dtype, vocab_size)
        if count == 0:
            raise ValueError(f"text_path {str(text_path)!r} gave no tokens")
    with atomic_write(sidecar, "w", encoding="utf-8") as file:
        json.dump({"dtype": dtype.name, "count": count, "vocab_size": vocab_size}, file)
    return open_tokens(out_path, dtype)


def _sidecar(path: Path) -> Path:
    """Where `tokenize_to_memmap` describes a token file: `<path>.json`."""
    return path.with_name(path.name + ".json")


def _write_ids(out: BinaryIO, ids: list[int], dtype: np.dtype, vocab_size: int) -> int:
    array = np.asarray(ids, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() >= vocab_size):
        raise ValueError(f"the tokenizer produced id {int(array.max())} outside [0, vocab_size={vocab_size})")
    array.astype(dtype).tofile(out)
    return array.size


def open_tokens(path: str | os.PathLike, dtype: str | np.dtype | None = None) -> np.memmap:
    """A token file written by `tokenize_to_memmap`, opened read-only as a 1-D memmap.

    The dtype comes from the file's description, `<path>.json`, which `tokenize_to_memmap` writes;
    a `dtype` given as well must agree with it. A file without a description (written by other
    code) needs `dtype`: the bytes alone cannot tell uint16 ids from int32 ones, so this refuses to
    guess rather than read the wrong numbers.
    """
    path = Path(path)
    sidecar = _sidecar(path)
    described = None
    if sidecar.is_file():
        try:
            info = json.loads(sidecar.read_text(encoding="utf-8"))
            described, count = np.dtype(info["dtype"]), int(info["count"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{str(sidecar)!r} does not describe a token file: {error}") from None
    if dtype is None and described is None:
        raise ValueError(f"{str(path)!r} has no description {sidecar.name!r} saying its dtype: pass dtype "
                         "(uint16 or int32, as the file was written)")
    if dtype is not None:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype must be an integer numpy dtype, got {dtype!r}") from None
        if described is not None and dtype != described:
            raise ValueError(f"dtype={dtype} was passed, but {str(path)!r} holds {described} ids ({sidecar.name})")
    dtype = described if dtype is None else dtype
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"dtype must be an integer type, got {dtype}")
    size = os.path.getsize(path)
    if size == 0 or size % dtype.itemsize:
        raise ValueError(f"{str(path)!r} holds {size} bytes, not a whole positive number of {dtype} ids")
    if described is not None and size != count * dtype.itemsize:
        raise ValueError(f"{str(path)!r} holds {size // dtype.itemsize} ids, but {sidecar.name} says {count}")
    return np.memmap(path, dtype=dtype, mode="r")
