"""Chapter 7: collectives built from send and receive, on real gloo processes.

Oracle: `torch.distributed`'s own collectives, run on the same inputs in the same processes.
Integers must agree exactly, floats to 1e-6; world sizes 2, 3 and 4; tensors of 0, 1, 7 and 13
elements (primes, not divisible by the world size), a 2-D and a non-contiguous tensor; float32,
float64, int32 and int64. The byte counters must match the formulas exactly.

The worker functions below run on every rank; they take the implementation's package name, so
the processes import `reference` or `exercises` (from `--exercises-path` too: spawned processes
inherit `sys.path`). The launcher (`Cluster`) and the byte counter (`p2p.count_traffic`) are the
harness the code under test runs in, so they come from `reference` for both implementations.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 7`):
- 7.1 ranks not numbered relative to the root; the wrong peer; a flat broadcast (root sends n - 1).
- 7.2 the result written on every rank (only dst's tensor may change); no stop after sending; op ignored.
- 7.3 op ignored; rank 0's own contribution dropped; the result not copied back.
- 7.4 / 7.5 chunk indices off by one; one step too few; the ring turned the wrong way.
- 7.6 the all-gather half skipped; `chunk` instead of `tensor_split` (too few chunks); op not passed.
- 7.7 the fold's partner mapping wrong (visible only with two or more extra ranks: world 6); no
  unfold; op ignored.
- 7.8 the wrong block kept; op not passed.  7.9 own block in slot 0; slots reversed.
- 7.10 own block not copied; the wrong block sent; received into the wrong slot.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.distributed as dist

from reference.distributed.launch import Cluster

WORLD_SIZES = (2, 3, 4)
CASES = (  # (dtype, shape, transpose?)
    (torch.float32, (0,), False),
    (torch.float32, (1,), False),
    (torch.float32, (7,), False),
    (torch.float64, (13,), False),
    (torch.int64, (3, 5), False),
    (torch.int32, (5, 3), True),  # a non-contiguous (3, 5) view
)
OPS = {"sum": dist.ReduceOp.SUM, "product": dist.ReduceOp.PRODUCT, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
RUN_TIMEOUT = 30.0


# ----------------------------------------------------------------------------------------------
# Workers: run on every rank
# ----------------------------------------------------------------------------------------------


def _input(rank: int, dtype: torch.dtype, shape: tuple[int, ...], transpose: bool, salt: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + salt)
    if dtype.is_floating_point:
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    else:
        x = torch.randint(-9, 10, shape, generator=g).to(dtype)
    return x.T if transpose else x


def _collective(package: str, name: str):
    return getattr(importlib.import_module(f"{package}.distributed.collectives"), name)


def _traffic():
    from reference.distributed.p2p import count_traffic

    return count_traffic()


def _run_rooted(package: str, name: str, op: str) -> list[tuple]:
    """broadcast / reduce from every root, ours against torch's."""
    fn = _collective(package, name)
    rank, world = dist.get_rank(), dist.get_world_size()
    out = []
    for dtype, shape, transpose in CASES:
        for root in range(world):
            x = _input(rank, dtype, shape, transpose, salt=root)
            ours, theirs = x.clone(), x.clone()
            with _traffic() as traffic:
                fn(ours, root) if name == "broadcast" else fn(ours, root, op)
            if name == "broadcast":
                dist.broadcast(theirs, root)
            else:
                dist.reduce(theirs, root, OPS[op])
            # torch leaves other ranks' reduce buffers unspecified; ours must leave them unchanged (the task says so)
            keep = name == "broadcast" or rank == root
            out.append((str(dtype), shape, root, ours, theirs if keep else x, traffic.bytes_sent, traffic.messages_sent))
    return out


def _run_all_reduce(package: str, name: str, op: str) -> list[tuple]:
    fn = _collective(package, name)
    rank = dist.get_rank()
    out = []
    for dtype, shape, transpose in CASES:
        x = _input(rank, dtype, shape, transpose)
        ours, theirs = x.clone(), x.clone()
        with _traffic() as traffic:
            fn(ours, op)
        dist.all_reduce(theirs, OPS[op])
        out.append((str(dtype), shape, ours, theirs, traffic.bytes_sent, traffic.messages_sent))
    return out


def _run_ring_step(package: str, name: str) -> list[tuple]:
    """ring_reduce_scatter / ring_all_gather on uneven chunks, against torch on the same chunks."""
    fn = _collective(package, name)
    rank, world = dist.get_rank(), dist.get_world_size()
    out = []
    for dtype, shape, transpose in CASES:
        x = _input(rank, dtype, shape, transpose).reshape(-1)
        chunks = [c.clone() for c in x.tensor_split(world)]
        with _traffic() as traffic:
            fn(chunks)
        if name == "ring_reduce_scatter":
            expected = x.clone()
            dist.all_reduce(expected)
            expected = expected.tensor_split(world)[rank]
            out.append((str(dtype), shape, chunks[rank], expected, traffic.bytes_sent, traffic.messages_sent))
        else:
            gathered = [c.clone() for c in x.tensor_split(world)]
            for i, chunk in enumerate(gathered):  # rank i contributes its own chunk i
                dist.broadcast(chunk, i)
            out.append((str(dtype), shape, torch.cat(chunks), torch.cat(gathered), traffic.bytes_sent, traffic.messages_sent))
    return out


def _run_blocks(package: str, name: str, op: str = "sum") -> list[tuple]:
    """reduce_scatter (with `op`) / all_gather / all_to_all on lists of blocks, against torch's."""
    fn = _collective(package, name)
    rank, world = dist.get_rank(), dist.get_world_size()
    out = []
    for dtype, shape, transpose in CASES:
        blocks = [_input(rank, dtype, shape, transpose, salt=i) for i in range(world)]
        with _traffic() as traffic:
            if name == "reduce_scatter":
                ours = torch.empty_like(blocks[rank])
                fn(ours, blocks, op)
            elif name == "all_gather":
                ours_list = [torch.empty_like(blocks[0]) for _ in range(world)]
                fn(ours_list, blocks[0])
                ours = torch.stack(ours_list)
            else:
                ours_list = [torch.empty_like(b) for b in blocks]
                fn(ours_list, blocks)
                ours = torch.stack(ours_list)
        if name == "reduce_scatter":
            theirs = torch.empty_like(blocks[rank], memory_format=torch.contiguous_format)
            dist.reduce_scatter(theirs, [b.contiguous() for b in blocks], op=OPS[op])
        elif name == "all_gather":
            theirs_list = [torch.empty_like(blocks[0]).contiguous() for _ in range(world)]
            dist.all_gather(theirs_list, blocks[0].contiguous())
            theirs = torch.stack(theirs_list)
        else:
            theirs_list = [torch.empty_like(b).contiguous() for b in blocks]
            dist.all_to_all(theirs_list, [b.contiguous() for b in blocks])
            theirs = torch.stack(theirs_list)
        out.append((str(dtype), shape, ours, theirs, traffic.bytes_sent, traffic.messages_sent))
    return out


def _call_with(package: str, name: str, *args) -> None:
    _collective(package, name)(*args)


def _bad_root(package: str, name: str) -> None:
    _collective(package, name)(torch.zeros(3), dist.get_world_size())


def _bad_list(package: str, name: str) -> None:
    world = dist.get_world_size()
    if name == "all_gather":
        _collective(package, name)([torch.zeros(2)] * (world + 1), torch.zeros(2))
    elif name == "reduce_scatter":
        _collective(package, name)(torch.zeros(2), [torch.zeros(2)] * (world - 1))
    else:
        _collective(package, name)([torch.zeros(2)] * world, [torch.zeros(2)] * (world + 1))


# ----------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clusters():
    """One gloo cluster per world size, started on first use and shared by this module's tests."""
    started: dict[int, Cluster] = {}

    def get(world: int) -> Cluster:
        if world not in started:
            started[world] = Cluster(world, backend="gloo", timeout=RUN_TIMEOUT)
        return started[world]

    yield get
    for cluster in started.values():
        cluster.close()


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, where: str) -> None:
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, where
    if ours.is_floating_point():
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6, msg=lambda m: f"{where}: {m}")
    else:
        assert torch.equal(ours, theirs), f"{where}: {ours} != {theirs}"


def element_size(dtype_name: str) -> int:
    return {"torch.float32": 4, "torch.float64": 8, "torch.int64": 8, "torch.int32": 4}[dtype_name]


# ----------------------------------------------------------------------------------------------
# 7.1 broadcast, 7.2 reduce
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("7.1")
@pytest.mark.points(2)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_broadcast_matches_torch_from_every_root(impl, clusters, world):
    results = clusters(world).run(_run_rooted, impl.package, "broadcast", "sum")
    for rank, rows in enumerate(results):
        for dtype, shape, root, ours, theirs, *_ in rows:
            assert_same(ours, theirs, f"rank {rank}, {dtype} {shape}, src {root}")


@pytest.mark.exercise("7.1")
@pytest.mark.points(1)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_broadcast_is_a_binomial_tree(impl, clusters, world):
    """n - 1 messages in all; every rank but the root receives once; no rank sends more than ceil(log2 n)."""
    results = clusters(world).run(_run_rooted, impl.package, "broadcast", "sum")
    rows = len(results[0])
    for i in range(rows):
        messages = [results[rank][i][6] for rank in range(world)]
        nbytes = [results[rank][i][5] for rank in range(world)]
        dtype, shape = results[0][i][0], results[0][i][1]
        size = math.prod(shape) * element_size(dtype)
        assert sum(messages) == world - 1
        assert max(messages) <= math.ceil(math.log2(world))
        assert sum(nbytes) == (world - 1) * size


@pytest.mark.exercise("7.1")
@pytest.mark.points(1)
def test_broadcast_rejects_a_bad_root(impl, clusters):
    with pytest.raises(ValueError, match="src"):
        clusters(2).run(_bad_root, impl.package, "broadcast")


@pytest.mark.exercise("7.2")
@pytest.mark.points(2)
@pytest.mark.parametrize("op", ["sum", "max", "product"])
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_reduce_matches_torch_at_every_root(impl, clusters, world, op):
    results = clusters(world).run(_run_rooted, impl.package, "reduce", op)
    for rank, rows in enumerate(results):
        for dtype, shape, root, ours, theirs, nbytes, messages in rows:
            assert_same(ours, theirs, f"rank {rank}, {dtype} {shape}, dst {root}, {op}")
            assert messages == (0 if rank == root else 1), "every rank but the root sends exactly once"
            assert nbytes == (0 if rank == root else math.prod(shape) * element_size(dtype))


@pytest.mark.exercise("7.2")
@pytest.mark.points(1)
def test_reduce_rejects_a_bad_root(impl, clusters):
    with pytest.raises(ValueError, match="dst"):
        clusters(3).run(_bad_root, impl.package, "reduce")


# ----------------------------------------------------------------------------------------------
# 7.3 naive all-reduce
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("7.3")
@pytest.mark.points(2)
@pytest.mark.parametrize("op", ["sum", "max"])
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_all_reduce_naive_matches_torch(impl, clusters, world, op):
    results = clusters(world).run(_run_all_reduce, impl.package, "all_reduce_naive", op)
    for rank, rows in enumerate(results):
        for dtype, shape, ours, theirs, nbytes, messages in rows:
            assert_same(ours, theirs, f"rank {rank}, {dtype} {shape}, {op}")
            size = math.prod(shape) * element_size(dtype)
            assert nbytes == ((world - 1) * size if rank == 0 else size), "root sends n - 1 copies, the others one"
            assert messages == (world - 1 if rank == 0 else 1)


# ----------------------------------------------------------------------------------------------
# 7.4 ring reduce-scatter, 7.5 ring all-gather
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("7.4")
@pytest.mark.points(2)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_ring_reduce_scatter_on_uneven_chunks(impl, clusters, world):
    results = clusters(world).run(_run_ring_step, impl.package, "ring_reduce_scatter")
    for rank, rows in enumerate(results):
        for dtype, shape, ours, theirs, nbytes, messages in rows:
            assert_same(ours, theirs, f"rank {rank}, {dtype} {shape}")
            chunks = [c.numel() for c in torch.empty(math.prod(shape)).tensor_split(world)]
            assert messages == world - 1
            assert nbytes == (sum(chunks) - chunks[rank]) * element_size(dtype), "every chunk but your own, once"


@pytest.mark.exercise("7.5")
@pytest.mark.points(2)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_ring_all_gather_on_uneven_chunks(impl, clusters, world):
    results = clusters(world).run(_run_ring_step, impl.package, "ring_all_gather")
    for rank, rows in enumerate(results):
        for dtype, shape, ours, theirs, nbytes, messages in rows:
            assert_same(ours, theirs, f"rank {rank}, {dtype} {shape}")
            chunks = [c.numel() for c in torch.empty(math.prod(shape)).tensor_split(world)]
            assert messages == world - 1
            assert nbytes == (sum(chunks) - chunks[(rank + 1) % world]) * element_size(dtype)


# ----------------------------------------------------------------------------------------------
# 7.6 ring all-reduce, 7.7 recursive doubling
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("7.6")
@pytest.mark.points(2)
@pytest.mark.parametrize("op", ["sum", "min", "product"])
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_all_reduce_ring_matches_torch(impl, clusters, world, op):
    results = clusters(world).run(_run_all_reduce, impl.package, "all_reduce_ring", op)
    for rank, rows in enumerate(results):
        for dtype, shape, ours, theirs, *_ in rows:
            assert_same(ours, theirs, f"rank {rank}, {dtype} {shape}, {op}")


@pytest.mark.exercise("7.6")
@pytest.mark.points(2)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_all_reduce_ring_sends_2_n_minus_1_over_n_of_the_data(impl, clusters, world):
    """Per rank: 2 (n - 1) messages and 2S - |chunk r| - |chunk r+1| bytes, = 2 (n - 1) / n * S when n divides S."""
    results = clusters(world).run(_run_all_reduce, impl.package, "all_reduce_ring", "sum")
    for rank, rows in enumerate(results):
        for dtype, shape, _, _, nbytes, messages in rows:
            numel, item = math.prod(shape), element_size(dtype)
            chunks = [c.numel() for c in torch.empty(numel).tensor_split(world)]
            assert messages == 2 * (world - 1)
            assert nbytes == (2 * numel - chunks[rank] - chunks[(rank + 1) % world]) * item
            if numel % world == 0:
                assert nbytes * world == 2 * (world - 1) * numel * item


@pytest.mark.exercise("7.7")
@pytest.mark.points(2)
@pytest.mark.parametrize("op", ["sum", "max"])
@pytest.mark.parametrize("world", (*WORLD_SIZES, 6))  # 6 = 4 + 2: the first size whose fold pairs up two extra ranks
def test_all_reduce_recursive_doubling_matches_torch(impl, clusters, world, op):
    results = clusters(world).run(_run_all_reduce, impl.package, "all_reduce_recursive_doubling", op)
    for rank, rows in enumerate(results):
        for dtype, shape, ours, theirs, nbytes, messages in rows:
            assert_same(ours, theirs, f"rank {rank}, {dtype} {shape}, {op}")
            power = 1 << (world.bit_length() - 1)
            extra, rounds = world - power, int(math.log2(power))
            expected = 1 if rank < 2 * extra and rank % 2 == 0 else rounds + (rank < 2 * extra)
            assert messages == expected, "log2(p) exchanges, plus the fold for world sizes that are not powers of 2"
            assert nbytes == expected * math.prod(shape) * element_size(dtype), "every message carries the whole tensor"


# ----------------------------------------------------------------------------------------------
# 7.8 reduce_scatter, 7.9 all_gather, 7.10 all_to_all
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("7.8")
@pytest.mark.points(2)
@pytest.mark.parametrize("op", ["sum", "max"])
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_reduce_scatter_matches_torch(impl, clusters, world, op):
    results = clusters(world).run(_run_blocks, impl.package, "reduce_scatter", op)
    for rank, rows in enumerate(results):
        for dtype, shape, ours, theirs, nbytes, _ in rows:
            assert_same(ours, theirs, f"rank {rank}, {dtype} {shape}, {op}")
            assert nbytes == (world - 1) * math.prod(shape) * element_size(dtype)


@pytest.mark.exercise("7.9")
@pytest.mark.points(2)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_all_gather_matches_torch(impl, clusters, world):
    results = clusters(world).run(_run_blocks, impl.package, "all_gather")
    for rank, rows in enumerate(results):
        for dtype, shape, ours, theirs, nbytes, _ in rows:
            assert_same(ours, theirs, f"rank {rank}, {dtype} {shape}")
            assert nbytes == (world - 1) * math.prod(shape) * element_size(dtype)


@pytest.mark.exercise("7.10")
@pytest.mark.points(2)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_all_to_all_matches_torch(impl, clusters, world):
    results = clusters(world).run(_run_blocks, impl.package, "all_to_all")
    for rank, rows in enumerate(results):
        for dtype, shape, ours, theirs, nbytes, messages in rows:
            assert_same(ours, theirs, f"rank {rank}, {dtype} {shape}")
            assert messages == world - 1
            assert nbytes == (world - 1) * math.prod(shape) * element_size(dtype), "every other rank's block, once"


@pytest.mark.exercise("7.8")
@pytest.mark.points(1)
def test_reduce_scatter_rejects_a_short_list(impl, clusters):
    with pytest.raises(ValueError, match="input_list"):
        clusters(3).run(_bad_list, impl.package, "reduce_scatter")


@pytest.mark.exercise("7.9")
@pytest.mark.points(1)
def test_all_gather_rejects_a_long_list(impl, clusters):
    with pytest.raises(ValueError, match="tensor_list"):
        clusters(3).run(_bad_list, impl.package, "all_gather")


@pytest.mark.exercise("7.10")
@pytest.mark.points(1)
def test_all_to_all_rejects_mismatched_lists(impl, clusters):
    with pytest.raises(ValueError, match="input_list"):
        clusters(3).run(_bad_list, impl.package, "all_to_all")
