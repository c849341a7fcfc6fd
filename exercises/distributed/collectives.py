"""Exercises for Chapter 7: the collectives built from point-to-point messages.

Fill in each body that raises NotImplementedError; the docstrings say what to do. Communicate only
through `reference.distributed.p2p` (send, recv, isend, irecv, exchange; combine_ for the
reduction), which counts your bytes for the tests; its rank_and_world, check_root and check_list
do the bookkeeping and the input checks. Grade with `llm-course grade 7`. Mirrors
`reference/distributed/collectives.py`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from reference.distributed import p2p


def broadcast(tensor: Tensor, src: int = 0) -> None:
    """Copy rank `src`'s `tensor` into every rank's `tensor`, in place, along a binomial tree.

    Number the ranks relative to the root, v = (rank - src) mod n. In round j (mask = 2^j) every
    rank with v < mask already holds the data and sends it to v + mask: the set of holders doubles
    each round, so ceil(log2 n) rounds and n - 1 messages in all.

    Args:
        tensor: the data on `src`, the destination on the other ranks; any shape, same on all ranks.
        src: the root rank.
    """
    # Hint: renumber the ranks relative to the root; in round j the ranks that already hold the data each send it
    # to one rank that does not, so the holders double. Send and receive only through p2p.
    raise NotImplementedError("Exercise 7.1: broadcast along a binomial tree")


def reduce(tensor: Tensor, dst: int = 0, op: str = "sum") -> None:
    """Combine every rank's `tensor` with `op` into rank `dst`'s `tensor`, along a binomial tree.

    With v = (rank - dst) mod n, in round j a rank whose bit j of v is set sends its partial result
    to v - 2^j and stops; the others receive from v + 2^j (if that rank exists) and combine. After
    ceil(log2 n) rounds rank `dst` holds the result. Only `dst`'s tensor changes.

    Args:
        tensor: this rank's contribution; the result on `dst`.
        dst: the root rank.
        op: "sum", "product", "max" or "min".
    """
    # Hint: the broadcast's tree run backwards: partial results flow toward the root, each rank sends once and then
    # stops. Don't change the input on ranks that are not the root.
    raise NotImplementedError("Exercise 7.2: reduce along a binomial tree")


def all_reduce_naive(tensor: Tensor, op: str = "sum") -> None:
    """All-reduce by gathering everything on rank 0 and sending the result back; in place.

    Simple and slow: rank 0 receives n - 1 messages and sends n - 1, so its link carries
    2 (n - 1) S bytes while the others idle; the time grows linearly with n.

    Args:
        tensor: this rank's contribution; the combined result on every rank afterwards.
        op: "sum", "product", "max" or "min".
    """
    # Hint: one rank collects and combines every contribution, then returns the result to each rank.
    raise NotImplementedError("Exercise 7.3: naive all-reduce")


def ring_reduce_scatter(chunks: list[Tensor], op: str = "sum") -> None:
    """Ring reduce-scatter in place: afterwards `chunks[rank]` holds the combination of every rank's `chunks[rank]`.

    The ranks form a ring (send right to rank + 1, receive from the left, rank - 1). In step s
    (0 <= s < n - 1) rank r sends its partial chunk (r - s - 1) mod n and adds the incoming chunk
    (r - s - 2) mod n to its own. Each chunk travels once around the ring collecting one
    contribution per hop, and ends complete on its owner. Chunks other than `chunks[rank]` are
    left holding partial results.

    Args:
        chunks: n contiguous tensors (n = world size); chunk i has the same shape on every rank,
            and shapes may differ between chunks.
        op: "sum", "product", "max" or "min".
    """
    # Hint: n - 1 steps; in each, every rank sends one partial chunk to its right neighbour and folds the chunk from
    # its left into its own copy. Work out which chunk index each rank sends in step s so that chunk r ends on rank r.
    raise NotImplementedError("Exercise 7.4: ring reduce-scatter step")


def ring_all_gather(chunks: list[Tensor]) -> None:
    """Ring all-gather in place: rank r's `chunks[r]` reaches `chunks[r]` of every rank.

    In step s (0 <= s < n - 1) rank r forwards chunk (r - s) mod n to the right and receives
    chunk (r - s - 1) mod n from the left, so each chunk makes n - 1 hops around the ring.

    Args:
        chunks: n contiguous tensors; on entry only `chunks[rank]` needs to hold data.
    """
    # Hint: n - 1 steps around the same ring: each step forwards the complete chunk received last (at first, your own)
    # and overwrites, rather than combines, the chunk that arrives. Which index arrives in step s?
    raise NotImplementedError("Exercise 7.5: ring all-gather step")


def all_reduce_ring(tensor: Tensor, op: str = "sum") -> None:
    """Ring all-reduce in place: reduce-scatter, then all-gather, over n chunks of the flattened tensor.

    The tensor is cut into n nearly equal chunks (`torch.tensor_split`, so any size works). Each
    rank sends 2 (n - 1) messages carrying 2 (n - 1) / n * S bytes when n divides the size S:
    almost independent of n, which is why the ring is bandwidth-optimal (Patarasuk and Yuan, 2009).

    Args:
        tensor: this rank's contribution; the combined result on every rank afterwards.
        op: "sum", "product", "max" or "min".
    """
    # Hint: reduce-scatter then all-gather on n nearly equal pieces of a flat copy (any size must work, even one not
    # divisible by n); the pieces must be views of that copy so the result can be written back into `tensor`.
    raise NotImplementedError("Exercise 7.6: ring all-reduce")


def all_reduce_recursive_doubling(tensor: Tensor, op: str = "sum") -> None:
    """Recursive-doubling all-reduce in place (Thakur, Rabenseifner and Gropp, 2005).

    With p the largest power of two <= n and e = n - p: first the ranks below 2e pair up, each even
    one sending its data to the odd one after it and sitting out. The remaining p ranks then
    exchange their whole partial result with the partner whose (renumbered) rank differs in bit j,
    for j = 0 .. log2(p) - 1, combining each time; finally the odd ranks send the result back to the
    even ones that sat out. log2(p) (+2) rounds, each moving all S bytes: good for small messages.

    Args:
        tensor: this rank's contribution; the combined result on every rank afterwards.
        op: "sum", "product", "max" or "min".
    """
    # Hint: with p the largest power of two <= n, the extra ranks first hand their data to a partner and sit out;
    # the p ranks swap whole tensors with the rank whose number differs in one bit, one bit per round; then unfold.
    raise NotImplementedError("Exercise 7.7: recursive-doubling all-reduce")


def reduce_scatter(output: Tensor, input_list: list[Tensor], op: str = "sum") -> None:
    """Reduce-scatter like `torch.distributed.reduce_scatter`: output = op over ranks of input_list[rank].

    Args:
        output: receives this rank's reduced block; the shape of `input_list[rank]`.
        input_list: n tensors; block i (the same shape on every rank) is destined for rank i.
        op: "sum", "product", "max" or "min".
    """
    # Hint: the ring reduce-scatter does the work; leave the caller's list of blocks unchanged.
    raise NotImplementedError("Exercise 7.8: reduce-scatter")


def all_gather(tensor_list: list[Tensor], tensor: Tensor) -> None:
    """All-gather like `torch.distributed.all_gather`: tensor_list[i] receives rank i's `tensor`.

    Args:
        tensor_list: n output tensors, each of `tensor`'s shape and dtype.
        tensor: this rank's contribution; the same shape on every rank.
    """
    # Hint: the ring all-gather does the work, with your tensor in your own slot.
    raise NotImplementedError("Exercise 7.9: all-gather")


def all_to_all(output_list: list[Tensor], input_list: list[Tensor]) -> None:
    """All-to-all like `torch.distributed.all_to_all`: output_list[i] receives rank i's input_list[rank].

    Pairwise exchange: in step s (1 <= s < n) rank r sends block (r + s) mod n to that rank and
    receives from rank (r - s) mod n, so every pair of ranks meets exactly once.

    Args:
        output_list: n tensors; output_list[i] has the shape of rank i's input_list[rank].
        input_list: n tensors; input_list[i] is destined for rank i.
    """
    # Hint: keep your own block; in each of n - 1 steps send to one rank and receive from another so that every
    # pair meets exactly once and nobody waits on a rank that is sending elsewhere.
    raise NotImplementedError("Exercise 7.10: all-to-all")

