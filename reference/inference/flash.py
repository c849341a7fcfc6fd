"""FlashAttention in PyTorch: exact attention, tiled, with the online softmax (Dao et al., 2022; Dao, 2023).

Survey section 3.4 (structural optimisation). Standard attention writes the (N, N) score and
probability matrices to the device's main memory (HBM) and reads them back: Theta(N d + N^2) memory
accesses and N^2 extra memory. FlashAttention never forms them. It walks over blocks of B_r queries
and B_c keys, keeping for each query row a running maximum m, a running normaliser l and an
unnormalised output acc (Milakov and Gimelshein, 2018, "online softmax"):

    S = Q_i K_j^T * scale                                 (B_r, B_c), one tile
    m' = max(m, rowmax S);  P = exp(S - m')
    l  = exp(m - m') l + rowsum P
    acc = exp(m - m') acc + P V_j
    after the last key block: O_i = acc / l,  L_i = m + log l    (the row's log-sum-exp)

The forward keeps only O and L (N numbers per head) for the backward, which recomputes each tile's
probabilities from L instead of storing them (FlashAttention-2, Algorithm 2):

    P = exp(Q_i K_j^T scale - L_i);  dV_j += P^T dO_i;  dP = dO_i V_j^T
    D_i = rowsum(dO_i * O_i);        dS = P * (dP - D_i)
    dQ_i += dS K_j scale;            dK_j += dS^T Q_i scale

With a causal mask a tile whose keys all come after its queries contributes nothing and is skipped
(about half the tiles for self-attention). Accesses to main memory fall to Theta(N^2 d^2 / M) for an
on-chip memory of M elements (Dao et al., 2022, Theorem 2); here, on a CPU, the gain shown is the
memory: the peak grows linearly in N instead of quadratically (`peak_tensor_bytes` measures it).

`FlashAttention.apply(q, k, v, is_causal=False)` takes (..., seq, head_dim) like
`torch.nn.functional.scaled_dot_product_attention`; the causal mask aligns the last query with the
last key (the convention of a decoder step with cached keys; square inputs: the usual triangle).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from reference.validation import check_floating_tensor, check_int

BLOCK_Q = 32
BLOCK_K = 32


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
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    n_q, n_k = q.shape[-2], k.shape[-2]
    offset = n_k - n_q  # the causal diagonal: query i sees keys <= i + offset
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:-1], dtype=q.dtype, device=q.device)
    for i0 in range(0, n_q, block_q):
        i1 = min(i0 + block_q, n_q)
        qi = q[..., i0:i1, :] * scale
        m = torch.full(qi.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)  # (..., B_r)
        l = torch.zeros_like(m)
        acc = torch.zeros_like(qi)
        for j0 in range(0, n_k, block_k):
            if is_causal and j0 > i1 - 1 + offset:
                break  # this tile and every later one lie above the diagonal
            j1 = min(j0 + block_k, n_k)
            s = qi @ k[..., j0:j1, :].transpose(-2, -1)  # (..., B_r, B_c)
            if is_causal and j1 - 1 > i0 + offset:  # the tile crosses the diagonal
                rows = torch.arange(i0, i1, device=q.device)[:, None] + offset
                cols = torch.arange(j0, j1, device=q.device)[None, :]
                s = s.masked_fill(cols > rows, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))
            m_safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)  # rows with no key yet
            p = torch.exp(s - m_safe[..., None])
            correction = torch.exp(m - m_safe)
            l = correction * l + p.sum(dim=-1)
            acc = correction[..., None] * acc + p @ v[..., j0:j1, :]
            m = m_new
        out[..., i0:i1, :] = acc / l[..., None]
        lse[..., i0:i1] = m + torch.log(l)
    return out, lse


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
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    n_q, n_k = q.shape[-2], k.shape[-2]
    offset = n_k - n_q
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    delta = (grad_out * out).sum(dim=-1)  # D_i = rowsum(dO * O) = sum_j P_ij dP_ij, (..., n_q)
    for j0 in range(0, n_k, block_k):
        j1 = min(j0 + block_k, n_k)
        kj, vj = k[..., j0:j1, :], v[..., j0:j1, :]
        for i0 in range(0, n_q, block_q):
            i1 = min(i0 + block_q, n_q)
            if is_causal and j0 > i1 - 1 + offset:
                continue  # fully masked tile: no gradient flows through it
            qi, doi = q[..., i0:i1, :], grad_out[..., i0:i1, :]
            s = (qi @ kj.transpose(-2, -1)) * scale
            if is_causal and j1 - 1 > i0 + offset:
                rows = torch.arange(i0, i1, device=q.device)[:, None] + offset
                cols = torch.arange(j0, j1, device=q.device)[None, :]
                s = s.masked_fill(cols > rows, float("-inf"))
            p = torch.exp(s - lse[..., i0:i1, None])  # the tile's probabilities, recomputed
            dv[..., j0:j1, :] += p.transpose(-2, -1) @ doi
            dp = doi @ vj.transpose(-2, -1)
            ds = p * (dp - delta[..., i0:i1, None])
            dq[..., i0:i1, :] += (ds @ kj) * scale
            dk[..., j0:j1, :] += (ds.transpose(-2, -1) @ qi) * scale
    return dq, dk, dv


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


def standard_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False) -> Tensor:
    """The textbook attention that materialises the (n_q, n_k) scores: the baseline of the memory plot."""
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if is_causal:
        n_q, n_k = q.shape[-2], k.shape[-2]
        keep = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


# ----------------------------------------------------------------------------------------------
# Measuring: peak tensor memory, and the paper's IO count
# ----------------------------------------------------------------------------------------------


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that the operators' outputs hold, while they are alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # data_ptr -> [bytes, tensors alive]
        self.current = self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(t, Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr not in self.live:
                    self.live[ptr] = [storage.nbytes(), 0]
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                self.live[ptr][1] += 1
                weakref.finalize(t, self._release, ptr)
        return result


def peak_tensor_bytes(fn: Callable[[], Any]) -> int:
    """The most bytes held at once by tensors that `fn` creates (its inputs not counted), measured.

    On a GPU `torch.cuda.max_memory_allocated` says the same; this counts, operator by operator,
    the storages of the outputs still referenced, so it works on any device (run `fn` without grad).
    """
    mode = _LiveBytes()
    with mode:
        result = fn()
    del result
    return mode.peak


def attention_io(seq: int, head_dim: int, sram_elements: int) -> dict[str, float]:
    """Main-memory accesses (elements) of one head's forward: the counting of Dao et al. (2022), Theorem 2.

    standard: read Q, K (2 N d), write S (N^2), read S and write P (2 N^2), read P and V (N^2 + N d),
        write O (N d): 4 N d + 4 N^2.
    flash (this module's loop order, queries outside): square tiles of B rows, the largest with
        Q_i, the accumulator, K_j, V_j (4 B d) and one score tile (B^2) in on-chip memory of M
        elements; Q is read and O written once (2 N d), K and V are read once per query block:
        2 N d ceil(N / B). Since B ~ M / 4d, that is about 8 N^2 d^2 / M: Theta(N^2 d^2 / M).
        The saving factor over the standard count, about 2 B / d, does not depend on N but on how
        many rows of width d fit on chip.
    """
    n, d, m = seq, head_dim, sram_elements
    block = max(1, math.floor(-2 * d + math.sqrt(4 * d * d + m)))
    flash = 2 * n * d + 2 * n * d * math.ceil(n / block)
    return {"standard": 4 * n * d + 4 * n * n, "flash": flash, "block": block}
