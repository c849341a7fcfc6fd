"""Exercises for Chapter 15 (FlashAttention). Fill in each body that raises NotImplementedError; the
docstrings say what to do. Grade with `llm-course grade 15`. Mirrors `reference/inference/flash.py`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reference.inference.flash import BLOCK_K, BLOCK_Q, attention_io, peak_tensor_bytes, standard_attention  # noqa: F401
from reference.validation import check_floating_tensor, check_int


def _check(q: Tensor, k: Tensor, v: Tensor, block_q: int, block_k: int) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_floating_tensor(name, t)
        if t.dim() < 2:
            raise ValueError(f"{name} must be (..., seq, head_dim), got shape {tuple(t.shape)}")
    if k.shape != v.shape or q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit (..., seq, head_dim)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_int("block_q", block_q, 1)
    check_int("block_k", block_k, 1)


def flash_attention_forward(
    q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, scale: float | None = None,
    block_q: int = BLOCK_Q, block_k: int = BLOCK_K,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Tiled attention forward with the online softmax (FlashAttention-2, Algorithm 1).

    Args:
        q: (..., n_q, d); k, v: (..., n_k, d).
        is_causal: query i sees keys j <= i + n_k - n_q; tiles entirely above that line are skipped.
        scale: the score scale, default 1 / sqrt(d).
        block_q, block_k: tile sizes B_r, B_c (any lengths: the last tiles are shorter).
    Returns:
        O (..., n_q, d) and the row log-sum-exp L (..., n_q) of the scaled (masked) scores, float
        in q's dtype. Never forms more than one (B_r, B_c) tile of scores per batch element.
    """
    # Hint: Loop over query blocks, then key blocks; keep a running max m, normaliser l and accumulator per row, rescaling them by exp(m_old - m_new). Skip key tiles entirely above the causal diagonal; mask the ones that cross it.
    raise NotImplementedError("Exercise 15.7: FlashAttention forward (online softmax, L)")


def flash_attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, is_causal: bool = False,
    scale: float | None = None, block_q: int = BLOCK_Q, block_k: int = BLOCK_K,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The backward pass, recomputing each tile's probabilities from L (FlashAttention-2, Algorithm 2).

    Args:
        grad_out: dO (..., n_q, d); q, k, v, out, lse: the forward's inputs, output and L.
        is_causal, scale, block_q, block_k: as in the forward.
    Returns:
        dq (..., n_q, d), dk and dv (..., n_k, d).
    """
    # Hint: Precompute D = rowsum(dO * O). For each tile recompute P = exp(S - L) (masked like the forward), then accumulate dV, dS = P * (dP - D), dQ and dK; the scale multiplies dQ and dK.
    raise NotImplementedError("Exercise 15.8: FlashAttention backward (recompute tile by tile)")


class FlashAttention(torch.autograd.Function):
    """`FlashAttention.apply(q, k, v, is_causal=False, scale=None, block_q=32, block_k=32)` -> O.

    Saves for the backward only q, k, v, O and L (`ctx.saved_tensors`); the backward recomputes
    the probabilities tile by tile (`flash_attention_backward`).
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, scale: float | None = None,
                block_q: int = BLOCK_Q, block_k: int = BLOCK_K) -> Tensor:  # fmt: skip
        _check(q, k, v, block_q, block_k)
        out, lse = flash_attention_forward(q, k, v, is_causal, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (is_causal, scale, block_q, block_k)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(grad_out.contiguous(), q, k, v, out, lse, *ctx.config)
        return dq, dk, dv, None, None, None, None


def flash_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, scale: float | None = None,
                    block_q: int = BLOCK_Q, block_k: int = BLOCK_K) -> Tensor:  # fmt: skip
    """`FlashAttention.apply` with keyword arguments."""
    return FlashAttention.apply(q, k, v, is_causal, scale, block_q, block_k)
