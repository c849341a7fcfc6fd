"""The collectives of parallel training, built from point-to-point messages only.

Survey section 2.4(a): broadcast, reduce, all-reduce, reduce-scatter and all-gather (plus
all-to-all, which expert parallelism needs). Every function here is called by all ranks of the
group at once, like `torch.distributed`'s own collectives, and communicates only through
`reference.distributed.p2p` (send / recv / isend / irecv), which counts the bytes.

Algorithms: binomial trees for broadcast and reduce; all-reduce three ways, naive (gather to rank
0, then send back), ring (reduce-scatter then all-gather; Patarasuk and Yuan, 2009, the algorithm
behind Baidu's ring all-reduce and Horovod) and recursive doubling (Thakur, Rabenseifner and Gropp,
2005, with the fold that handles world sizes that are not powers of two); rings for reduce-scatter
and all-gather; pairwise exchange for all-to-all. Any world size, any tensor size (0 elements
included, sizes not divisible by the world size included), any dtype the backend can send.
"""

from __future__ import annotations

import torch
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
    rank, world = p2p.rank_and_world()
    p2p.check_root(src, world, "src")
    buffer = tensor.detach().contiguous()
    v = (rank - src) % world
    mask = 1
    while mask < world:
        if v < mask and v + mask < world:
            p2p.send(buffer, (v + mask + src) % world)
        elif mask <= v < 2 * mask:
            p2p.recv(buffer, (v - mask + src) % world)
        mask <<= 1
    if buffer.data_ptr() != tensor.data_ptr():
        tensor.copy_(buffer)


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
    rank, world = p2p.rank_and_world()
    p2p.check_root(dst, world, "dst")
    accumulator = tensor.detach().clone().contiguous()
    incoming = torch.empty_like(accumulator)
    v = (rank - dst) % world
    mask = 1
    while mask < world:
        if v & mask:
            p2p.send(accumulator, (v - mask + dst) % world)
            break
        if v + mask < world:
            p2p.recv(incoming, (v + mask + dst) % world)
            p2p.combine_(accumulator, incoming, op)
        mask <<= 1
    if rank == dst:
        tensor.copy_(accumulator)


def all_reduce_naive(tensor: Tensor, op: str = "sum") -> None:
    """All-reduce by gathering everything on rank 0 and sending the result back; in place.

    Simple and slow: rank 0 receives n - 1 messages and sends n - 1, so its link carries
    2 (n - 1) S bytes while the others idle; the time grows linearly with n.

    Args:
        tensor: this rank's contribution; the combined result on every rank afterwards.
        op: "sum", "product", "max" or "min".
    """
    rank, world = p2p.rank_and_world()
    result = tensor.detach().clone().contiguous()
    if rank == 0:
        incoming = torch.empty_like(result)
        for source in range(1, world):
            p2p.recv(incoming, source)
            p2p.combine_(result, incoming, op)
        for target in range(1, world):
            p2p.send(result, target)
    else:
        p2p.send(result, 0)
        p2p.recv(result, 0)
    tensor.copy_(result)


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
    rank, world = p2p.rank_and_world()
    p2p.check_list(chunks, world, "chunks")
    right, left = (rank + 1) % world, (rank - 1) % world
    for step in range(world - 1):
        send_index, recv_index = (rank - step - 1) % world, (rank - step - 2) % world
        incoming = torch.empty_like(chunks[recv_index])
        p2p.exchange(chunks[send_index], right, incoming, left)
        p2p.combine_(chunks[recv_index], incoming, op)


def ring_all_gather(chunks: list[Tensor]) -> None:
    """Ring all-gather in place: rank r's `chunks[r]` reaches `chunks[r]` of every rank.

    In step s (0 <= s < n - 1) rank r forwards chunk (r - s) mod n to the right and receives
    chunk (r - s - 1) mod n from the left, so each chunk makes n - 1 hops around the ring.

    Args:
        chunks: n contiguous tensors; on entry only `chunks[rank]` needs to hold data.
    """
    rank, world = p2p.rank_and_world()
    p2p.check_list(chunks, world, "chunks")
    right, left = (rank + 1) % world, (rank - 1) % world
    for step in range(world - 1):
        p2p.exchange(chunks[(rank - step) % world], right, chunks[(rank - step - 1) % world], left)


def all_reduce_ring(tensor: Tensor, op: str = "sum") -> None:
    """Ring all-reduce in place: reduce-scatter, then all-gather, over n chunks of the flattened tensor.

    The tensor is cut into n nearly equal chunks (`torch.tensor_split`, so any size works). Each
    rank sends 2 (n - 1) messages carrying 2 (n - 1) / n * S bytes when n divides the size S:
    almost independent of n, which is why the ring is bandwidth-optimal (Patarasuk and Yuan, 2009).

    Args:
        tensor: this rank's contribution; the combined result on every rank afterwards.
        op: "sum", "product", "max" or "min".
    """
    _, world = p2p.rank_and_world()
    flat = tensor.detach().reshape(-1).clone()
    chunks = list(flat.tensor_split(world))  # contiguous views into `flat`
    ring_reduce_scatter(chunks, op)
    ring_all_gather(chunks)
    tensor.copy_(flat.view_as(tensor))


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
    rank, world = p2p.rank_and_world()
    accumulator = tensor.detach().clone().contiguous()
    incoming = torch.empty_like(accumulator)
    power = 1 << (world.bit_length() - 1)
    extra = world - power
    if rank < 2 * extra:  # fold the extra ranks into their odd neighbours
        if rank % 2 == 0:
            p2p.send(accumulator, rank + 1)
            new_rank = -1
        else:
            p2p.recv(incoming, rank - 1)
            p2p.combine_(accumulator, incoming, op)
            new_rank = rank // 2
    else:
        new_rank = rank - extra
    if new_rank >= 0:
        mask = 1
        while mask < power:
            partner_new = new_rank ^ mask
            partner = 2 * partner_new + 1 if partner_new < extra else partner_new + extra
            p2p.exchange(accumulator, partner, incoming, partner)
            p2p.combine_(accumulator, incoming, op)
            mask <<= 1
    if rank < 2 * extra:  # unfold
        if rank % 2 == 0:
            p2p.recv(accumulator, rank + 1)
        else:
            p2p.send(accumulator, rank - 1)
    tensor.copy_(accumulator.view_as(tensor))


def reduce_scatter(output: Tensor, input_list: list[Tensor], op: str = "sum") -> None:
    """Reduce-scatter like `torch.distributed.reduce_scatter`: output = op over ranks of input_list[rank].

    Args:
        output: receives this rank's reduced block; the shape of `input_list[rank]`.
        input_list: n tensors; block i (the same shape on every rank) is destined for rank i.
        op: "sum", "product", "max" or "min".
    """
    rank, world = p2p.rank_and_world()
    p2p.check_list(input_list, world, "input_list")
    if output.shape != input_list[rank].shape:
        raise ValueError(f"output has shape {tuple(output.shape)}, input_list[{rank}] has {tuple(input_list[rank].shape)}")
    chunks = [block.detach().reshape(-1).clone() for block in input_list]
    ring_reduce_scatter(chunks, op)
    output.copy_(chunks[rank].view_as(output))


def all_gather(tensor_list: list[Tensor], tensor: Tensor) -> None:
    """All-gather like `torch.distributed.all_gather`: tensor_list[i] receives rank i's `tensor`.

    Args:
        tensor_list: n output tensors, each of `tensor`'s shape and dtype.
        tensor: this rank's contribution; the same shape on every rank.
    """
    rank, world = p2p.rank_and_world()
    p2p.check_list(tensor_list, world, "tensor_list")
    for i, out in enumerate(tensor_list):
        if out.shape != tensor.shape or out.dtype != tensor.dtype:
            raise ValueError(f"tensor_list[{i}] is {tuple(out.shape)} {out.dtype}, tensor is {tuple(tensor.shape)} {tensor.dtype}")
    chunks = [torch.empty(tensor.numel(), dtype=tensor.dtype, device=tensor.device) for _ in range(world)]
    chunks[rank].copy_(tensor.detach().reshape(-1))
    ring_all_gather(chunks)
    for out, chunk in zip(tensor_list, chunks):
        out.copy_(chunk.view_as(out))


def all_to_all(output_list: list[Tensor], input_list: list[Tensor]) -> None:
    """All-to-all like `torch.distributed.all_to_all`: output_list[i] receives rank i's input_list[rank].

    Pairwise exchange: in step s (1 <= s < n) rank r sends block (r + s) mod n to that rank and
    receives from rank (r - s) mod n, so every pair of ranks meets exactly once.

    Args:
        output_list: n tensors; output_list[i] has the shape of rank i's input_list[rank].
        input_list: n tensors; input_list[i] is destined for rank i.
    """
    rank, world = p2p.rank_and_world()
    p2p.check_list(input_list, world, "input_list")
    p2p.check_list(output_list, world, "output_list")
    output_list[rank].copy_(input_list[rank])
    for step in range(1, world):
        dst, src = (rank + step) % world, (rank - step) % world
        incoming = torch.empty_like(output_list[src]).contiguous()
        p2p.exchange(input_list[dst].detach().contiguous(), dst, incoming, src)
        output_list[src].copy_(incoming)
