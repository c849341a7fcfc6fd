"""What the collectives cost: exact bytes per rank, and the alpha-beta (latency-bandwidth) model.

Survey section 2.4(a). Sending a message of m bytes takes alpha + beta * m seconds (Hockney, 1994):
alpha is the start-up latency, 1 / beta the bandwidth. An algorithm that makes L sequential message
rounds and moves W bytes along its critical path costs about alpha * L + beta * W (Thakur,
Rabenseifner and Gropp, 2005; Chan et al., 2007). The byte counts below are exact for the
implementations in `reference.distributed.collectives`, uneven chunks included.
"""

from __future__ import annotations

import math

import numpy as np

ALGORITHMS = (
    "broadcast",
    "reduce",
    "all_reduce_naive",
    "all_reduce_ring",
    "all_reduce_recursive_doubling",
    "reduce_scatter",
    "all_gather",
    "all_to_all",
)


def _check(algorithm: str, world: int, rank: int = 0) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be a positive int, got {world!r}")
    if not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, {world}), got {rank}")


def chunk_sizes(numel: int, world: int) -> list[int]:
    """Sizes of `torch.tensor_split(x, world)` for a 1-D x of `numel` elements: the first numel % world get one more."""
    base, rest = divmod(numel, world)
    return [base + (i < rest) for i in range(world)]


def bytes_sent(algorithm: str, numel: int, world: int, rank: int, element_size: int = 4, root: int = 0) -> int:
    """Bytes that `rank` sends in one call of `algorithm` on `numel` elements per rank.

    For reduce_scatter, all_gather and all_to_all, `numel` is the size of one block (one rank's
    share); for the others it is the size of the whole tensor. `root` is the src / dst of
    broadcast and reduce.
    """
    _check(algorithm, world, rank)
    size = numel * element_size
    if world == 1:
        return 0
    if algorithm == "broadcast":
        v = (rank - root) % world
        rounds = math.ceil(math.log2(world))
        return size * sum(1 for j in range(rounds) if v < 2**j and v + 2**j < world)
    if algorithm == "reduce":
        return 0 if rank == root else size
    if algorithm == "all_reduce_naive":
        return (world - 1) * size if rank == 0 else size
    if algorithm == "all_reduce_ring":
        chunks = chunk_sizes(numel, world)
        return (2 * numel - chunks[rank] - chunks[(rank + 1) % world]) * element_size
    if algorithm == "all_reduce_recursive_doubling":
        power = 1 << (world.bit_length() - 1)
        extra, rounds = world - power, int(math.log2(power))
        if rank < 2 * extra:
            return size if rank % 2 == 0 else size * (rounds + 1)
        return size * rounds
    return (world - 1) * size  # reduce_scatter, all_gather, all_to_all: every other block once


def latency_and_volume(algorithm: str, nbytes: int, world: int) -> tuple[float, float]:
    """(L, W): sequential message rounds and bytes on the critical path, so time = alpha L + beta W.

    `nbytes` is the size of the whole tensor (for reduce_scatter / all_gather / all_to_all: all n
    blocks together).
    """
    _check(algorithm, world)
    n = world
    if n == 1:
        return 0.0, 0.0
    rounds = math.ceil(math.log2(n))
    if algorithm in ("broadcast", "reduce"):
        return rounds, rounds * nbytes
    if algorithm == "all_reduce_naive":  # rank 0 receives n - 1 messages, then sends n - 1
        return 2 * (n - 1), 2 * (n - 1) * nbytes
    if algorithm == "all_reduce_ring":
        return 2 * (n - 1), 2 * (n - 1) / n * nbytes
    if algorithm == "all_reduce_recursive_doubling":
        power = 1 << (n.bit_length() - 1)
        steps = int(math.log2(power)) + (2 if power != n else 0)
        return steps, steps * nbytes
    return n - 1, (n - 1) / n * nbytes  # reduce_scatter, all_gather, all_to_all


def predicted_seconds(algorithm: str, nbytes: int, world: int, alpha: float, beta: float) -> float:
    """alpha * L + beta * W for one call (see `latency_and_volume`)."""
    latency, volume = latency_and_volume(algorithm, nbytes, world)
    return alpha * latency + beta * volume


def fit_alpha_beta(algorithm: str, nbytes: list[int], seconds: list[float], world: int) -> tuple[float, float]:
    """Least-squares (alpha, beta) >= 0 that make `predicted_seconds` match measured times."""
    if len(nbytes) != len(seconds) or len(nbytes) < 2:
        raise ValueError(f"need at least two (size, time) pairs of equal count, got {len(nbytes)} and {len(seconds)}")
    design = np.array([latency_and_volume(algorithm, b, world) for b in nbytes], dtype=float)
    times = np.asarray(seconds, dtype=float)
    (alpha, beta), *_ = np.linalg.lstsq(design, times, rcond=None)
    if alpha < 0:  # refit with the latency fixed at zero
        alpha, beta = 0.0, float(design[:, 1] @ times / (design[:, 1] @ design[:, 1]))
    if beta < 0:
        alpha, beta = float(design[:, 0] @ times / (design[:, 0] @ design[:, 0])), 0.0
    return float(alpha), float(beta)
