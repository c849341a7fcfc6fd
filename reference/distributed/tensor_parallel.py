"""Tensor (intra-layer) model parallelism in the style of Megatron-LM.

Survey sections 2.4(a) (model parallel) and 3.3 (parallelism at inference). Shoeybi et al., 2019,
"Megatron-LM", section 3: split each weight matrix of a transformer layer across the t ranks of a
tensor-parallel group so that every rank holds 1/t of the layer and computes 1/t of its FLOPs.

- A column-parallel linear Y = X A with A = [A_1 ... A_t] split by output columns: rank i computes
  Y_i = X A_i; no communication in the forward (X is replicated).
- A row-parallel linear Z = Y B with B split by input rows, B = [B_1; ...; B_t]: rank i computes
  Y_i B_i and an all-reduce sums the partial products, Z = sum_i Y_i B_i.
- Column then row (the MLP: Megatron eq. 3; the attention: heads split across ranks) needs one
  all-reduce in the forward (`g`) and one in the backward (`f`, which sums the gradient with respect
  to the replicated input): the conjugate operators of Megatron's figure 3,
      f: forward identity,   backward all-reduce;
      g: forward all-reduce, backward identity.
- Per transformer layer, forward and backward, that is 4 all-reduces of b*s*h elements; a ring
  all-reduce sends 2 (t - 1) / t of its data per rank, so each rank sends 8 b s h (t - 1) / t
  elements per layer (Korthikanti et al., 2022, "Reducing Activation Recomputation", section 4.1).
- The embedding is split by vocabulary rows (each rank looks up the ids it owns, zeros elsewhere,
  then `g`), and so is the output layer, whose logits either are gathered to full width or go
  straight into a vocabulary-parallel cross-entropy that never builds the full (tokens, vocab)
  matrix (Megatron section 3, last paragraphs).

Collectives: `comm="torch"` uses `torch.distributed` (any group, gloo or NCCL); `comm="ring"` uses the
course's own ring all-reduce and all-gather (Chapter 7), which count their bytes in
`reference.distributed.p2p.count_traffic`, on the world group only.

Sharded decoding (the API Chapter 15 builds on; stable):

    tp = TensorParallelLM.from_dense(model, group=None)        # on every rank, same dense weights
    logits = tp(token_ids, positions=None, prefix_length=None, cache=None, last_only=False)
    # (batch, seq, vocab_size) full-vocabulary logits, identical on every rank
    cache = KVCache.for_model(tp, batch)                        # a per-rank cache: tp.config holds
    reference.inference.generate.generate(tp, prompt, 8)        # this rank's head counts

`tp.config` is this rank's shard of the dense config: `num_heads` and `num_kv_heads` are per rank,
and `d_model` is this rank's attention width (num_heads_per_rank * head_dim), so that
`config["d_model"] // config["num_heads"]` is still the head dimension; the dense model's config is
`tp.dense_config`. `tp.context_length` and `tp.vocab_size` are the dense model's. `tp.loss(ids,
targets)` is the training loss through the vocabulary-parallel cross-entropy;
`gather_parameters(tp)` (and `grads=True`) rebuilds the dense state dict on every rank.
Sampling with temperature > 0 stays in step across ranks only if every rank passes a generator
with the same seed (greedy decoding needs nothing). Requires num_heads, num_kv_heads, d_ff and
vocab_size divisible by the group size (key/value heads are not replicated: t <= num_kv_heads).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from reference.attention import _fused_attention
from reference.distributed import collectives
from reference.models.parts import Block, RMSNorm, SwiGLU

COMMS = ("torch", "ring")
PARTITION_DIM = "tensor_parallel_dim"  # attribute on a sharded parameter: the dense dimension it was split along


# ----------------------------------------------------------------------------------------------
# Collectives over a tensor-parallel group
# ----------------------------------------------------------------------------------------------


def group_rank_and_size(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(this rank in `group`, group size); the world group when None."""
    if not dist.is_initialized():
        raise ValueError("tensor parallelism needs an initialised process group (use reference.distributed.launch)")
    return dist.get_rank(group), dist.get_world_size(group)


def check_comm(comm: str, group: dist.ProcessGroup | None) -> str:
    """Raise ValueError unless comm is "torch" or "ring" (and "ring" is used on the world group)."""
    if comm not in COMMS:
        raise ValueError(f"comm must be one of {COMMS}, got {comm!r}")
    if comm == "ring" and group is not None and dist.get_world_size(group) != dist.get_world_size():
        raise ValueError("comm='ring' (the course's counted collectives) works on the world group only; pass comm='torch'")
    return comm


def all_reduce(x: Tensor, group: dist.ProcessGroup | None = None, comm: str = "torch", op: str = "sum") -> Tensor:
    """Sum (or max) of `x` over the group, as a new tensor (the input is not changed)."""
    out = x.detach().clone().contiguous()
    if dist.get_world_size(group) == 1:
        return out
    if comm == "ring":
        collectives.all_reduce_ring(out, op)
    else:
        dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=group)
    return out


def all_gather_last(x: Tensor, group: dist.ProcessGroup | None = None, comm: str = "torch") -> Tensor:
    """Concatenate every rank's `x` along the last dimension, in rank order."""
    x = x.detach().contiguous()
    size = dist.get_world_size(group)
    if size == 1:
        return x.clone()
    parts = [torch.empty_like(x) for _ in range(size)]
    if comm == "ring":
        collectives.all_gather(parts, x)
    else:
        dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=-1)


def _own_slice(x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    rank, size = group_rank_and_size(group)
    if x.shape[-1] % size:
        raise ValueError(f"the last dimension ({x.shape[-1]}) must be divisible by the group size {size}")
    width = x.shape[-1] // size
    return x[..., rank * width : (rank + 1) * width].contiguous()


# ----------------------------------------------------------------------------------------------
# The conjugate operators f and g (Megatron-LM, figure 3)
# ----------------------------------------------------------------------------------------------


class CopyToParallel(torch.autograd.Function):
    """Megatron's `f`: identity in the forward, all-reduce (sum) of the gradient in the backward.

    Placed where a replicated activation X enters column-parallel weights: rank i's gradient
    dL/dX = dL/dY_i A_i covers its own columns only, and the true gradient is the sum over ranks.
    Call as `CopyToParallel.apply(x, group, comm)`.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: dist.ProcessGroup | None, comm: str) -> Tensor:
        ctx.group, ctx.comm = group, comm
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return all_reduce(grad, ctx.group, ctx.comm), None, None


class ReduceFromParallel(torch.autograd.Function):
    """Megatron's `g`: all-reduce (sum) in the forward, identity in the backward.

    Placed after row-parallel weights: the output is the sum of the ranks' partial products, and
    each partial product's gradient is the (replicated) gradient of the sum.
    Call as `ReduceFromParallel.apply(x, group, comm)`.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: dist.ProcessGroup | None, comm: str) -> Tensor:
        return all_reduce(x, group, comm)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad, None, None


class GatherFromParallel(torch.autograd.Function):
    """All-gather along the last dimension in the forward; keep this rank's slice of the gradient in the backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: dist.ProcessGroup | None, comm: str) -> Tensor:
        ctx.group = group
        return all_gather_last(x, group, comm)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return _own_slice(grad, ctx.group), None, None


class ScatterToParallel(torch.autograd.Function):
    """Keep this rank's slice of the last dimension in the forward; all-gather the gradient in the backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: dist.ProcessGroup | None, comm: str) -> Tensor:
        ctx.group, ctx.comm = group, comm
        return _own_slice(x, group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return all_gather_last(grad, ctx.group, ctx.comm), None, None


def copy_to_parallel(x: Tensor, group: dist.ProcessGroup | None = None, comm: str = "torch") -> Tensor:
    """`f`: identity forward, all-reduce backward."""
    return CopyToParallel.apply(x, group, comm)


def reduce_from_parallel(x: Tensor, group: dist.ProcessGroup | None = None, comm: str = "torch") -> Tensor:
    """`g`: all-reduce forward, identity backward."""
    return ReduceFromParallel.apply(x, group, comm)


# ----------------------------------------------------------------------------------------------
# Parallel layers
# ----------------------------------------------------------------------------------------------


def _shard(weight: Tensor, dim: int, group: dist.ProcessGroup | None, name: str) -> nn.Parameter:
    """This rank's contiguous 1/t of `weight` along `dim`, as a new parameter tagged with the dim."""
    rank, size = group_rank_and_size(group)
    if weight.shape[dim] % size:
        raise ValueError(f"{name}: dimension {dim} of size {weight.shape[dim]} is not divisible by the group size {size}")
    part = weight.detach().chunk(size, dim=dim)[rank]
    # a placeholder from `from_dense` (device "meta"): cloning it would run torch's Python reference ops (seconds to import)
    part = torch.empty(part.shape, dtype=part.dtype, device="meta") if part.is_meta else part.clone().contiguous()
    param = nn.Parameter(part, requires_grad=weight.requires_grad)
    setattr(param, PARTITION_DIM, dim)
    return param


class ColumnParallelLinear(nn.Module):
    """Y = X A^T + b with A (out_features, in_features) split by output rows: rank i holds A_i (out/t, in).

    Megatron-LM eq. 3 (the first GEMM of the MLP): Y_i = X A_i^T + b_i needs no communication in the
    forward when X is replicated. The backward must sum dL/dX over ranks: the `f` operator, applied
    here when `copy_input` (turn it off when several column-parallel layers share one `f`, as the
    attention's q, k, v and SwiGLU's w1, w3 do).

    Args:
        in_features: width of X.
        out_features: the dense output width (divisible by the group size).
        bias: whether there is a (split) bias.
        group: the tensor-parallel process group (None: the world).
        comm: "torch" or "ring" (see the module docstring).
        gather_output: all-gather Y to full width (backward: keep own slice); else Y_i (..., out/t).
        copy_input: apply `f` to X first.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group: dist.ProcessGroup | None = None,
                 comm: str = "torch", gather_output: bool = False, copy_input: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.group, self.comm = group, check_comm(comm, group)
        rank, size = group_rank_and_size(group)
        if out_features % size:
            raise ValueError(f"out_features ({out_features}) must be divisible by the group size {size}")
        self.in_features, self.out_features = in_features, out_features
        self.gather_output, self.copy_input = gather_output, copy_input
        dense = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight = _shard(dense.weight, 0, group, "weight")
        self.bias = _shard(dense.bias, 0, group, "bias") if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, **kwargs: Any) -> ColumnParallelLinear:
        """This rank's column shard of a dense `nn.Linear` (same keyword arguments as the constructor)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta", **kwargs)
        layer.weight = _shard(linear.weight, 0, layer.group, "weight")
        layer.bias = None if linear.bias is None else _shard(linear.bias, 0, layer.group, "bias")
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features / t), or (..., out_features) with gather_output."""
        if self.copy_input:
            x = copy_to_parallel(x, self.group, self.comm)
        y = F.linear(x, self.weight, self.bias)
        if self.gather_output:
            y = GatherFromParallel.apply(y, self.group, self.comm)
        return y


class RowParallelLinear(nn.Module):
    """Z = Y B^T + b with B (out_features, in_features) split by input columns: rank i holds B_i (out, in/t).

    Megatron-LM eq. 3 (the second GEMM of the MLP): rank i computes Y_i B_i^T from its slice Y_i of
    the input; `g` sums the partial products over ranks (forward all-reduce, backward identity);
    the bias, replicated, is added once, after the sum.

    Args:
        in_features: the dense input width (divisible by the group size).
        out_features: width of Z.
        bias: whether there is a (replicated) bias.
        group: the tensor-parallel process group (None: the world).
        comm: "torch" or "ring".
        input_is_parallel: the input is already this rank's slice Y_i (..., in/t); else it is the
            full Y and this rank keeps its slice (backward: all-gather).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group: dist.ProcessGroup | None = None,
                 comm: str = "torch", input_is_parallel: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.group, self.comm = group, check_comm(comm, group)
        rank, size = group_rank_and_size(group)
        if in_features % size:
            raise ValueError(f"in_features ({in_features}) must be divisible by the group size {size}")
        self.in_features, self.out_features, self.input_is_parallel = in_features, out_features, input_is_parallel
        dense = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight = _shard(dense.weight, 1, group, "weight")
        self.bias = nn.Parameter(dense.bias.detach().clone()) if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, **kwargs: Any) -> RowParallelLinear:
        """This rank's row shard of a dense `nn.Linear` (same keyword arguments as the constructor)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta", **kwargs)
        layer.weight = _shard(linear.weight, 1, layer.group, "weight")
        layer.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features / t) (or (..., in_features) without input_is_parallel) -> (..., out_features)."""
        if not self.input_is_parallel:
            x = ScatterToParallel.apply(x, self.group, self.comm)
        z = reduce_from_parallel(F.linear(x, self.weight), self.group, self.comm)
        return z if self.bias is None else z + self.bias


class VocabParallelEmbedding(nn.Module):
    """An embedding table split by vocabulary rows: rank i holds ids [i V/t, (i + 1) V/t).

    Each rank looks up the ids it owns, writes zeros for the others, and `g` sums the ranks'
    outputs, so every token gets exactly its one row. Megatron-LM section 3.

    Args:
        num_embeddings: the dense vocabulary size V (divisible by the group size).
        embedding_dim: the width of a row.
        group, comm: as for `ColumnParallelLinear`.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, group: dist.ProcessGroup | None = None,
                 comm: str = "torch", device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.group, self.comm = group, check_comm(comm, group)
        rank, size = group_rank_and_size(group)
        if num_embeddings % size:
            raise ValueError(f"num_embeddings ({num_embeddings}) must be divisible by the group size {size}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.start = rank * (num_embeddings // size)
        self.end = self.start + num_embeddings // size
        weight = torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype)
        if weight.device.type != "meta":  # nn.Embedding's own init; on "meta" normal_ would import torch's compiler (seconds)
            nn.init.normal_(weight)
        self.weight = _shard(weight, 0, group, "weight")

    @classmethod
    def from_dense(cls, embedding: nn.Embedding, **kwargs: Any) -> VocabParallelEmbedding:
        """This rank's rows of a dense `nn.Embedding`."""
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, device="meta", **kwargs)
        layer.weight = _shard(embedding.weight, 0, layer.group, "weight")
        return layer

    def forward(self, token_ids: Tensor) -> Tensor:
        """Integer ids (...) in [0, V) -> (..., embedding_dim), the same on every rank."""
        outside = (token_ids < self.start) | (token_ids >= self.end)
        local = torch.where(outside, torch.zeros_like(token_ids), token_ids - self.start)
        rows = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_parallel(rows, self.group, self.comm)


class VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of vocabulary-parallel logits (..., V/t) against targets (...): (...) losses, float32 or wider.

    Forward: loss = log sum_v exp(z_v - M) - (z_target - M), M the max over the whole vocabulary,
    from three all-reduces of (...,) numbers (the max, the target's shifted logit from the one rank
    that owns it, the sum of exponentials) instead of an all-gather of (..., V). Backward:
    (softmax(z) - onehot(target)) * grad on this rank's slice of the vocabulary. Rank i holds ids
    [i V/t, (i + 1) V/t). Call as `VocabParallelCrossEntropy.apply(logits, targets, group, comm)`.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, group: dist.ProcessGroup | None, comm: str) -> Tensor:
        rank, size = group_rank_and_size(group)
        width = logits.shape[-1]
        start = rank * width
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision in float32
        top = all_reduce(logits.max(dim=-1).values, group, comm, op="max")  # (...,) the global max
        shifted = logits - top.unsqueeze(-1)
        outside = (targets < start) | (targets >= start + width)
        local = torch.where(outside, torch.zeros_like(targets), targets - start)
        picked = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        picked = all_reduce(picked, group, comm)  # z_target - max, from the one rank that owns it
        exp = shifted.exp()
        total = all_reduce(exp.sum(dim=-1), group, comm)  # sum over the whole vocabulary
        loss = total.log() - picked
        ctx.save_for_backward(exp / total.unsqueeze(-1), local, outside)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        softmax, local, outside = ctx.saved_tensors
        g = softmax.clone()
        g.scatter_add_(-1, local.unsqueeze(-1), -(~outside).to(g.dtype).unsqueeze(-1))  # minus one-hot, own ids only
        return g * grad.unsqueeze(-1), None, None, None


def vocab_parallel_cross_entropy(
    logits: Tensor, targets: Tensor, group: dist.ProcessGroup | None = None, comm: str = "torch"
) -> Tensor:
    """Per-token cross-entropy from vocabulary-parallel logits, without gathering them
    (`VocabParallelCrossEntropy`, with its shapes checked). Megatron-LM section 3.

    Args:
        logits: this rank's slice (..., V/t) of the logits; rank i holds ids [i V/t, (i + 1) V/t).
        targets: integer ids (...) in [0, V).
        group, comm: as for `ColumnParallelLinear`.

    Returns:
        (...) losses in float32 or wider (take `.mean()` for the usual loss), the same on every rank.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must be logits' shape without the last dim, {tuple(logits.shape)}")
    return VocabParallelCrossEntropy.apply(logits, targets, group, comm)


class ParallelSwiGLU(nn.Module):
    """SwiGLU w2(silu(w1 x) * w3 x) with w1, w3 column-parallel and w2 row-parallel: one `f`, one `g`."""

    def __init__(self, dense: SwiGLU, *, group: dist.ProcessGroup | None = None, comm: str = "torch") -> None:
        super().__init__()
        self.group, self.comm = group, check_comm(comm, group)
        self.w1 = ColumnParallelLinear.from_dense(dense.w1, group=group, comm=comm, copy_input=False)
        self.w3 = ColumnParallelLinear.from_dense(dense.w3, group=group, comm=comm, copy_input=False)
        self.w2 = RowParallelLinear.from_dense(dense.w2, group=group, comm=comm)

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_model) replicated -> (..., d_model) replicated."""
        x = copy_to_parallel(x, self.group, self.comm)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ParallelAttention(nn.Module):
    """Multi-head (grouped-query) attention with its heads split across ranks (Megatron-LM section 3).

    q_proj, k_proj, v_proj are column-parallel (rank i owns query heads [i H/t, (i + 1) H/t) and
    key/value heads [i K/t, (i + 1) K/t): a query head keeps its key/value head because the
    grouping h -> h // (H/K) maps each rank's query heads onto its own key/value heads); the
    attention of each head is local; out_proj is row-parallel. One `f` before the projections, one
    `g` after out_proj. Accepts the same (x, mask, positions, cache) as `MultiHeadAttention`; a cache
    holds this rank's key/value heads only.
    """

    def __init__(self, dense: nn.Module, *, group: dist.ProcessGroup | None = None, comm: str = "torch") -> None:
        super().__init__()
        self.group, self.comm = group, check_comm(comm, group)
        _, size = group_rank_and_size(group)
        if getattr(dense, "fused_qkv", False):
            raise ValueError("ParallelAttention shards separate q/k/v projections; fused_qkv is not supported")
        if dense.num_heads % size or dense.num_kv_heads % size:
            raise ValueError(f"num_heads ({dense.num_heads}) and num_kv_heads ({dense.num_kv_heads}) must be divisible "
                             f"by the tensor-parallel size {size} (replicating key/value heads is not supported)")
        self.num_heads, self.num_kv_heads = dense.num_heads // size, dense.num_kv_heads // size
        self.head_dim, self.scale, self.positional = dense.head_dim, dense.scale, dense.positional
        kw = dict(group=group, comm=comm)
        self.q_proj = ColumnParallelLinear.from_dense(dense.q_proj, copy_input=False, **kw)
        self.k_proj = ColumnParallelLinear.from_dense(dense.k_proj, copy_input=False, **kw)
        self.v_proj = ColumnParallelLinear.from_dense(dense.v_proj, copy_input=False, **kw)
        self.out_proj = RowParallelLinear.from_dense(dense.out_proj, **kw)

    def forward(self, x: Tensor, mask: Tensor | None = None, positions: Tensor | None = None, cache: Any | None = None) -> Tensor:
        """(batch, seq, d_model) replicated -> (batch, seq, d_model) replicated."""
        x = copy_to_parallel(x, self.group, self.comm)
        q = self.q_proj(x).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_proj(x).unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)
        if self.positional is not None:
            pos = torch.arange(x.shape[1], device=x.device) if positions is None else positions
            q, k = self.positional.rotate(q, k, pos, pos)
        if cache is not None:
            k, v = cache.update(k, v)
        out = _fused_attention(q, k, v, mask, self.scale, self.num_heads // self.num_kv_heads)
        return self.out_proj(out.transpose(1, 2).flatten(2))


# ----------------------------------------------------------------------------------------------
# The sharded language model
# ----------------------------------------------------------------------------------------------


class TensorParallelLM(nn.Module):
    """A `reference.models.llama.TransformerLM` sharded across a tensor-parallel group.

    Build it on every rank from the same dense model with `from_dense`; its forward takes the dense
    forward's arguments and returns the same full-vocabulary logits on every rank. See the module
    docstring for `config`, `dense_config`, `loss` and `gather_parameters`.
    """

    def __init__(self) -> None:
        raise TypeError("build a TensorParallelLM with TensorParallelLM.from_dense(model, group=None)")

    @classmethod
    def from_dense(cls, model: nn.Module, group: dist.ProcessGroup | None = None, comm: str = "torch") -> TensorParallelLM:
        """Shard `model` (a TransformerLM; the same weights on every rank) over `group` (None: the world)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        check_comm(comm, group)
        rank, size = group_rank_and_size(group)
        cfg = dict(model.config)
        for name in ("num_heads", "num_kv_heads", "d_ff", "vocab_size"):
            if cfg[name] % size:
                raise ValueError(f"{name} ({cfg[name]}) must be divisible by the tensor-parallel size {size}")
        self.group, self.comm, self.tensor_parallel_rank, self.tensor_parallel_size = group, comm, rank, size
        self.dense_config = dict(cfg)
        head_dim = cfg["d_model"] // cfg["num_heads"]
        self.config = dict(cfg, num_heads=cfg["num_heads"] // size, num_kv_heads=cfg["num_kv_heads"] // size,
                           d_model=head_dim * cfg["num_heads"] // size, d_ff=cfg["d_ff"] // size)
        self.vocab_size, self.context_length = model.vocab_size, model.context_length
        kw = dict(group=group, comm=comm)
        self.token_embeddings = VocabParallelEmbedding.from_dense(model.token_embeddings, **kw)
        self.layers = nn.ModuleList(
            Block(attn=ParallelAttention(layer.attn, **kw), ffn=ParallelSwiGLU(layer.ffn, **kw),
                  norm_attn=_copy_norm(layer.norm_attn), norm_ffn=_copy_norm(layer.norm_ffn))
            for layer in model.layers
        )
        self.ln_final = _copy_norm(model.ln_final)
        self.lm_head = ColumnParallelLinear.from_dense(model.lm_head, gather_output=True, **kw)
        if model.lm_head.weight is model.token_embeddings.weight:  # tied: the same vocabulary rows
            self.lm_head.weight = self.token_embeddings.weight
        return self

    def forward(self, token_ids: Tensor, positions: Tensor | None = None, prefix_length: int | Tensor | None = None,
                cache: Any | None = None, last_only: bool = False) -> Tensor:
        """The dense `TransformerLM.forward` (same arguments), run on the shards: (batch, seq, vocab_size) logits."""
        from reference.models.llama import TransformerLM

        return TransformerLM.forward(self, token_ids, positions=positions, prefix_length=prefix_length, cache=cache,
                                     last_only=last_only)

    def loss(self, token_ids: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy through `vocab_parallel_cross_entropy` (logits never gathered)."""
        self.lm_head.gather_output = False
        try:
            logits = self.forward(token_ids)  # (batch, seq, V/t)
        finally:
            self.lm_head.gather_output = True
        return vocab_parallel_cross_entropy(logits, targets, self.group, self.comm).mean()


def _copy_norm(norm: nn.Module) -> nn.Module:
    copy = RMSNorm(norm.d_model, norm.eps)
    copy.load_state_dict(norm.state_dict())
    return copy


def gather_parameters(model: nn.Module, grads: bool = False, group: dist.ProcessGroup | None = None) -> dict[str, Tensor]:
    """The dense state dict (or the dense gradients, with `grads`) of a sharded model, on every rank.

    Sharded parameters (tagged with `tensor_parallel_dim`) are all-gathered along that dimension;
    replicated ones are returned as they are (their gradients are the same on every rank). Names
    are those of the dense model, tied parameters under both names.
    """
    group = getattr(model, "group", group)
    size = dist.get_world_size(group)
    out: dict[str, Tensor] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        value = param.grad if grads else param
        if value is None:
            raise ValueError(f"{name} has no gradient: run a backward first")
        value = value.detach().contiguous()
        dim = getattr(param, PARTITION_DIM, None)
        if dim is not None and size > 1:
            parts = [torch.empty_like(value) for _ in range(size)]
            dist.all_gather(parts, value, group=group)
            value = torch.cat(parts, dim=dim)
        out[name] = value.clone()
    return out


def grid_groups(tensor_parallel_size: int) -> tuple[dist.ProcessGroup, dist.ProcessGroup, int, int]:
    """The 2-D grid of data parallel over tensor parallel: (tp_group, dp_group, dp_rank, dp_size).

    Ranks [k t, (k + 1) t) form tensor-parallel group k (neighbours, as Megatron places them on
    one node's fast links); ranks r, r + t, r + 2t, ... form a data-parallel group, whose members
    hold the same shard and all-reduce its gradients. Every rank must call this (in the same order),
    since `torch.distributed.new_group` is collective.
    """
    rank, world = group_rank_and_size(None)
    t = tensor_parallel_size
    if isinstance(t, bool) or not isinstance(t, int) or t < 1 or world % t:
        raise ValueError(f"tensor_parallel_size must be a positive int dividing the world size {world}, got {t!r}")
    tp_group = dp_group = None
    for k in range(world // t):
        group = dist.new_group(list(range(k * t, (k + 1) * t)))
        if rank // t == k:
            tp_group = group
    for r in range(t):
        group = dist.new_group(list(range(r, world, t)))
        if rank % t == r:
            dp_group = group
    return tp_group, dp_group, rank // t, world // t


def layer_traffic(batch: int, seq: int, d_model: int = 64, num_heads: int = 8, d_ff: int = 128, seed: int = 0) -> dict[str, int]:
    """Bytes and messages this rank sends in one tensor-parallel layer's forward and backward.

    Builds a one-layer dense `TransformerLM` (float32, the same seed on every rank), shards it with
    the course's counted ring collectives (`comm="ring"`) over the world, and counts one block's
    forward + backward on (batch, seq, d_model) inputs: compare with 8 b s h (t - 1) / t elements.
    """
    from reference.attention import causal_mask
    from reference.distributed.p2p import count_traffic
    from reference.models.llama import TransformerLM

    torch.manual_seed(seed)
    dense = TransformerLM(vocab_size=64, context_length=max(seq, 8), d_model=d_model, num_layers=1, num_heads=num_heads, d_ff=d_ff)
    layer = TensorParallelLM.from_dense(dense, comm="ring").layers[0]
    x = torch.randn(batch, seq, d_model, requires_grad=True, generator=torch.Generator().manual_seed(seed))
    with count_traffic() as forward:
        y = layer(x, mask=causal_mask(seq))
    with count_traffic() as backward:
        y.sum().backward()
    return dict(forward_bytes=forward.bytes_sent, backward_bytes=backward.bytes_sent,
                messages=forward.messages_sent + backward.messages_sent)


def _small_lm(seed: int, num_heads: int, num_kv_heads: int) -> nn.Module:
    from reference.models.llama import TransformerLM

    torch.manual_seed(seed)
    return TransformerLM(vocab_size=64, context_length=16, d_model=64, num_layers=2, num_heads=num_heads, d_ff=96,
                         num_kv_heads=num_kv_heads).double()


def dense_agreement(num_heads: int = 8, num_kv_heads: int = 4, tensor_parallel_size: int | None = None, seed: int = 0) -> dict[str, float]:
    """Largest |sharded - dense| of the logits, the loss and every gradient (gathered), float64.

    Runs on every rank: a two-layer GQA `TransformerLM` sharded over the world
    (`tensor_parallel_size=None`) or, data parallel over tensor parallel (`grid_groups`), over
    groups of `tensor_parallel_size` ranks, each data-parallel replica taking its share of the
    batch and the replicas averaging their gradients with an all-reduce.
    """
    dense = _small_lm(seed, num_heads, num_kv_heads)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 64, (4, 9), generator=g)
    ids, targets = ids[:, :-1], ids[:, 1:]
    if tensor_parallel_size is None:
        group, dp_group, dp_rank, dp_size = None, None, 0, 1
    else:
        group, dp_group, dp_rank, dp_size = grid_groups(tensor_parallel_size)
    sharded = TensorParallelLM.from_dense(dense, group=group)
    share = ids.shape[0] // dp_size
    part = slice(dp_rank * share, (dp_rank + 1) * share)
    logits = sharded(ids[part])
    loss = sharded.loss(ids[part], targets[part])
    loss.backward()
    if dp_size > 1:
        for param in sharded.parameters():
            dist.all_reduce(param.grad, group=dp_group)
            param.grad /= dp_size
    grads = gather_parameters(sharded, grads=True)
    dense_logits = dense(ids)
    dense_loss = F.cross_entropy(dense_logits.flatten(0, 1), targets.flatten())
    dense_loss.backward()
    grad_error = max(float((grads[n] - p.grad).abs().max()) for n, p in dense.named_parameters())
    return dict(logits=float((logits - dense_logits[part]).detach().abs().max()),
                loss=abs(loss.item() - F.cross_entropy(dense_logits[part].flatten(0, 1), targets[part].flatten()).item()),
                gradients=grad_error)
