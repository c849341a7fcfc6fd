"""Chapter 16: the block manager (slot addresses, prefix keys, the block pool, block tables).

Property tests drive a `BlockManager` through random allocate / append / fork / free / swap /
preempt sequences and check its invariants after every operation: reference counts equal the
owners in the block tables, no block is leaked or owned twice, free blocks are listed once.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.mark.exercise("16.1")
@pytest.mark.points(2)
def test_slot_mapping_known_values(impl):
    slot_mapping = impl.serving.blocks.slot_mapping
    assert slot_mapping([7, 2, 5], 0, 10, 4) == [28, 29, 30, 31, 8, 9, 10, 11, 20, 21]
    assert slot_mapping([7, 2, 5], 3, 6, 4) == [31, 8, 9]
    assert slot_mapping([3], 0, 1, 16) == [48]
    assert slot_mapping([3], 2, 2, 16) == []


@pytest.mark.exercise("16.1")
@pytest.mark.points(1)
def test_slot_mapping_refuses_positions_past_the_table(impl):
    with pytest.raises(ValueError, match="blocks"):
        impl.serving.blocks.slot_mapping([1, 2], 0, 9, 4)
    with pytest.raises(ValueError):
        impl.serving.blocks.slot_mapping([1, 2], 5, 3, 4)


@pytest.mark.exercise("16.2")
@pytest.mark.points(2)
def test_block_hashes_chain_over_the_prefix(impl):
    block_hashes = impl.serving.blocks.block_hashes
    a = block_hashes(list(range(10)), 4)
    assert len(a) == 2  # the partial last block has no key
    assert block_hashes(list(range(8)) + [99, 98], 4) == a  # same full blocks, same keys
    b = block_hashes([5] + list(range(1, 10)), 4)  # first block differs ...
    assert b[0] != a[0] and b[1] != a[1]  # ... so the second, with equal tokens, differs too
    c = block_hashes(list(range(4)) + [0, 0, 0, 0], 4)
    assert c[0] == a[0] and c[1] != a[1]
    assert block_hashes(list(range(4, 8)), 4, parent_hash=a[0]) == a[1:]
    assert block_hashes([1, 2, 3], 4) == []


@pytest.mark.exercise("16.3")
@pytest.mark.points(2)
def test_allocator_reference_counts_and_errors(impl):
    blocks = impl.serving.blocks
    pool = blocks.BlockAllocator(3, 16)
    got = [pool.allocate() for _ in range(3)]
    assert sorted(got) == [0, 1, 2] and pool.num_free == 0
    with pytest.raises(blocks.NoFreeBlocksError, match="exhausted"):
        pool.allocate()
    assert pool.incref(got[0]) == 2
    assert pool.free(got[0]) is False and pool.refcount(got[0]) == 1
    assert pool.free(got[0]) is True and pool.num_free == 1
    with pytest.raises(ValueError, match="free"):
        pool.free(got[0])
    with pytest.raises(ValueError):
        pool.incref(got[0])
    with pytest.raises(ValueError):
        pool.refcount(3)
    assert pool.allocate() == got[0]


@given(st.lists(st.tuples(st.sampled_from(["alloc", "incref", "free"]), st.integers(0, 7)), max_size=60))
@settings(max_examples=60, deadline=None)
@pytest.mark.exercise("16.3")
@pytest.mark.points(2)
def test_allocator_never_leaks_or_double_owns(impl, ops):
    blocks = impl.serving.blocks
    pool = blocks.BlockAllocator(5, 4)
    owners = {}
    for op, pick in ops:
        held = sorted(owners)
        if op == "alloc":
            if len(owners) == 5:
                with pytest.raises(blocks.NoFreeBlocksError):
                    pool.allocate()
                continue
            b = pool.allocate()
            assert b not in owners and 0 <= b < 5
            owners[b] = 1
        elif held:
            b = held[pick % len(held)]
            if op == "incref":
                owners[b] += 1
                pool.incref(b)
            else:
                owners[b] -= 1
                assert pool.free(b) is (owners[b] == 0)
                if not owners[b]:
                    del owners[b]
        assert pool.num_free == 5 - len(owners)
        assert all(pool.refcount(b) == owners.get(b, 0) for b in range(5))


# -- the block manager built on them (its own pieces come from the reference) --------------------


def _manager(impl, **kw):
    return impl.serving.blocks.BlockManager(kw.pop("num_blocks", 12), kw.pop("block_size", 4), **kw)


@pytest.mark.exercise("16.3")
@pytest.mark.points(1)
def test_manager_allocates_on_demand_and_frees(impl):
    m = _manager(impl)
    assert m.allocate("a", list(range(5))) == 0
    assert len(m.block_table("a")) == 2 and m.num_free_blocks == 10
    assert m.append_slots("a", 3) == [] and len(m.block_table("a")) == 2  # 8 tokens in 2 blocks
    m.append_slots("a", 1)
    assert len(m.block_table("a")) == 3
    assert m.usage()["used"] == 9 and m.usage()["allocated"] == 12
    m.free("a")
    assert m.num_free_blocks == 12
    m.check_invariants()


@pytest.mark.exercise("16.3")
@pytest.mark.points(1)
def test_manager_copy_on_write_after_fork(impl):
    m = _manager(impl)
    m.allocate("p", list(range(6)))  # blocks: [full, 2 of 4]
    m.fork("p", "c")
    assert m.block_table("p") == m.block_table("c") and m.num_free_blocks == 10
    copies = m.append_slots("c", 1)  # the child writes into the shared, partial block: copy it first
    assert len(copies) == 1 and copies[0][0] == m.block_table("p")[1] and copies[0][1] == m.block_table("c")[1]
    assert m.block_table("p")[0] == m.block_table("c")[0]  # the full block stays shared
    assert m.append_slots("p", 1) == []  # the parent now owns its block alone
    m.check_invariants()


@pytest.mark.exercise("16.3")
@pytest.mark.points(1)
def test_manager_prefix_sharing(impl):
    m = _manager(impl)
    shared = list(range(9))
    m.allocate("a", shared + [50, 51])
    assert m.allocate("x", shared + [60]) == 0  # nothing computed yet: nothing to share
    m.commit("a", shared + [50, 51], 11)
    assert m.allocate("b", shared + [70, 71, 72]) == 8  # two full blocks reused
    assert m.block_table("b")[:2] == m.block_table("a")[:2] and m.block_table("b")[2] != m.block_table("a")[2]
    assert m.allocate("c", list(range(8))) == 4  # the block of the last token is never taken from the cache
    m.check_invariants()
    for s in ("a", "b", "c", "x"):
        m.free(s)
    assert m.num_free_blocks == 12 and m.allocate("d", shared + [1]) == 0  # freed blocks forget their keys
    m.check_invariants()


@pytest.mark.exercise("16.3")
@pytest.mark.points(1)
def test_manager_exhaustion_is_a_clear_error(impl):
    blocks = impl.serving.blocks
    m = _manager(impl, num_blocks=2)
    m.allocate("a", list(range(8)))
    with pytest.raises(blocks.NoFreeBlocksError, match="free"):
        m.append_slots("a", 1)
    with pytest.raises(blocks.NoFreeBlocksError):
        m.allocate("b", [1])
    assert not m.can_allocate([1])
    m.check_invariants()


OPS = st.lists(st.tuples(st.sampled_from(["add", "append", "fork", "free", "commit", "swap_out", "swap_in", "preempt"]),
                         st.integers(0, 50), st.integers(1, 9)), max_size=50)  # fmt: skip


@given(OPS)
@settings(max_examples=80, deadline=None)
@pytest.mark.exercise("16.3")
@pytest.mark.points(3)
def test_manager_invariants_under_random_operations(impl, ops):
    blocks = impl.serving.blocks
    m = blocks.BlockManager(10, 4, num_host_blocks=6)
    tokens: dict[int, list[int]] = {}
    swapped: set[int] = set()
    next_id = 0
    for op, pick, size in ops:
        live = sorted(s for s in tokens if s not in swapped)
        seq = live[pick % len(live)] if live else None
        try:
            if op == "add":
                ids = [pick % 3] * 4 + list(range(size))  # common first blocks: prefix sharing happens
                m.allocate(next_id, ids)
                tokens[next_id] = ids
                next_id += 1
            elif seq is None:
                pass
            elif op == "append":
                m.append_slots(seq, size % 3 + 1)
                tokens[seq] = tokens[seq] + [pick] * (size % 3 + 1)
            elif op == "fork":
                m.fork(seq, next_id)
                tokens[next_id] = list(tokens[seq])
                next_id += 1
            elif op == "commit":
                m.commit(seq, tokens[seq], len(tokens[seq]))
            elif op in ("free", "preempt"):
                m.free(seq)
                del tokens[seq]
            elif op == "swap_out" and m.can_swap_out([seq]):
                m.swap_out([seq])
                swapped.add(seq)
            elif op == "swap_in" and swapped:
                back = sorted(swapped)[pick % len(swapped)]
                if m.can_swap_in([back]):
                    m.swap_in([back])
                    swapped.discard(back)
        except blocks.NoFreeBlocksError:
            pass  # refused whole: nothing changed
        m.check_invariants()
        for s in tokens:
            if s not in swapped:
                assert m.num_tokens(s) == len(tokens[s])
    for s in list(tokens):
        m.free(s)
    m.check_invariants()
    assert m.num_free_blocks == 10 and m.host.num_free == 6
