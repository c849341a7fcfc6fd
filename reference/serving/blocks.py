"""The key/value cache as a pool of fixed-size blocks: block tables, reference counts, copy-on-write,
prefix sharing and swapping.

Survey section 3.4; Kwon et al., 2023, "Efficient Memory Management for Large Language Model
Serving with PagedAttention" (vLLM), section 4.2-4.4. A serving system that reserves one contiguous
buffer of the maximum length per request wastes most of it: the request's final length is unknown,
so the reservation is the worst case, and the space left over at the end of each buffer is lost
(internal fragmentation) as is the space between buffers (external fragmentation). vLLM measured
that only 20-40% of such a cache held token states. PagedAttention borrows the operating system's
answer, virtual memory with pages:

- the cache is `num_blocks` physical *blocks* of `block_size` token slots each (16 by default);
- each sequence has a *block table*: logical block i (positions i*B .. i*B + B - 1) lives in
  physical block table[i], so position p is stored at slot table[p // B] * B + p % B;
- a block is taken from the free pool only when the sequence reaches it, so at most B - 1 slots
  per sequence are ever empty;
- blocks carry *reference counts*, so sequences can share them: the samples of one prompt
  (parallel sampling, beam search) share the prompt's blocks, and a shared block that one of them
  must write to is first copied (*copy-on-write*);
- full blocks are indexed by a hash of their tokens and of everything before them (*prefix
  sharing*): a new request whose prompt starts like a live one (a system prompt, few-shot
  examples) reuses those blocks and skips their computation;
- when the pool runs out, the scheduler preempts a sequence: its blocks are freed (to be
  recomputed later) or *swapped* to a second pool in host memory.

`BlockManager` holds only block ids; the tensors live in the engine's cache
(`reference.serving.engine.PagedKVCache`), which performs the copies the manager asks for.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from reference.validation import check_float, check_int

DEFAULT_BLOCK_SIZE = 16


class NoFreeBlocksError(RuntimeError):
    """The block pool has no free block left (the scheduler should have preempted a sequence first)."""


# ----------------------------------------------------------------------------------------------
# Addresses and hashes
# ----------------------------------------------------------------------------------------------


def blocks_needed(num_tokens: int, block_size: int) -> int:
    """ceil(num_tokens / block_size): the blocks that hold `num_tokens` positions."""
    return -(-num_tokens // block_size)


def slot_mapping(block_table: Sequence[int], start: int, end: int, block_size: int) -> list[int]:
    """The physical slot of each logical position start .. end - 1 of one sequence.

    Position p lives in logical block p // block_size, at offset p % block_size inside it, so its
    slot in the flat pool of num_blocks * block_size slots is
        slot(p) = block_table[p // block_size] * block_size + p % block_size.

    Args:
        block_table: the sequence's physical block ids, logical block i first.
        start: the first position (>= 0).
        end: one past the last position (start <= end <= len(block_table) * block_size).
        block_size: token slots per block (>= 1).

    Returns:
        end - start slot indices.
    """
    block_size = check_int("block_size", block_size, 1)
    start, end = check_int("start", start, 0), check_int("end", end, 0)
    if end < start:
        raise ValueError(f"end must be >= start, got start={start}, end={end}")
    if end > len(block_table) * block_size:
        raise ValueError(f"positions up to {end} need {blocks_needed(end, block_size)} blocks, "
                         f"the block table has {len(block_table)}")  # fmt: skip
    return [block_table[p // block_size] * block_size + p % block_size for p in range(start, end)]


def block_hashes(token_ids: Sequence[int], block_size: int, parent_hash: Hashable | None = None) -> list[int]:
    """The prefix-sharing key of each *full* block of a token sequence, chained.

    h_0 = hash((parent_hash, tokens of block 0)), h_i = hash((h_{i-1}, tokens of block i)): a
    block's key depends on its own tokens and on every token before it, because its keys and
    values do (causal attention, and positions). Two sequences share block i only if their first
    (i + 1) * block_size tokens are equal. A last, partial block has no key (it will still change).

    Args:
        token_ids: the sequence's tokens.
        block_size: token slots per block (>= 1).
        parent_hash: the key of the block before token_ids[0] (None at the start of a sequence).

    Returns:
        len(token_ids) // block_size integers.
    """
    block_size = check_int("block_size", block_size, 1)
    hashes, previous = [], parent_hash
    for i in range(len(token_ids) // block_size):
        previous = hash((previous, tuple(token_ids[i * block_size : (i + 1) * block_size])))
        hashes.append(previous)
    return hashes


# ----------------------------------------------------------------------------------------------
# The pool of physical blocks
# ----------------------------------------------------------------------------------------------


class BlockAllocator:
    """A pool of `num_blocks` physical blocks with reference counts.

    Blocks are numbered 0 .. num_blocks - 1. `allocate()` takes a free block (the one freed
    longest ago first) with reference count 1, `incref(b)` adds an owner, `free(b)` removes one and
    returns the block to the free pool when none is left. Freeing a free block, or naming a block
    outside the pool, is a ValueError; allocating from an empty pool raises `NoFreeBlocksError`.

    Args:
        num_blocks: the pool's size (>= 1).
        block_size: token slots per block (>= 1), only recorded here.
        name: how error messages call the pool ("device", "host").
    """

    def __init__(self, num_blocks: int, block_size: int = DEFAULT_BLOCK_SIZE, name: str = "device") -> None:
        self.num_blocks = check_int("num_blocks", num_blocks, 1)
        self.block_size = check_int("block_size", block_size, 1)
        self.name = name
        self._free: deque[int] = deque(range(num_blocks))
        self._refcounts = [0] * num_blocks

    @property
    def num_free(self) -> int:
        """How many blocks are free."""
        return len(self._free)

    def allocate(self) -> int:
        """Take a free block; its reference count becomes 1. NoFreeBlocksError if there is none."""
        if not self._free:
            raise NoFreeBlocksError(
                f"the {self.name} KV cache is exhausted: all {self.num_blocks} blocks of {self.block_size} "
                "token slots are in use (preempt or finish a sequence, or give the cache more blocks)"
            )
        block = self._free.popleft()
        self._refcounts[block] = 1
        return block

    def incref(self, block: int) -> int:
        """Add an owner to an allocated block; returns its new reference count."""
        self._check_allocated(block)
        self._refcounts[block] += 1
        return self._refcounts[block]

    def free(self, block: int) -> bool:
        """Remove one owner; True when that was the last one and the block went back to the pool."""
        self._check_allocated(block)
        self._refcounts[block] -= 1
        if self._refcounts[block] == 0:
            self._free.append(block)
            return True
        return False

    def refcount(self, block: int) -> int:
        """How many owners the block has (0: free)."""
        self._check_block(block)
        return self._refcounts[block]

    def _check_block(self, block: int) -> None:
        check_int("block", block, 0)
        if block >= self.num_blocks:
            raise ValueError(f"block {block} is not in the {self.name} pool of {self.num_blocks} blocks")

    def _check_allocated(self, block: int) -> None:
        self._check_block(block)
        if self._refcounts[block] == 0:
            raise ValueError(f"block {block} of the {self.name} pool is free: it has no owner to add or remove")


# ----------------------------------------------------------------------------------------------
# Block tables
# ----------------------------------------------------------------------------------------------


@dataclass
class BlockTable:
    """One sequence's blocks: `blocks[i]` holds positions i*B .. i*B + B - 1; `num_tokens`
    positions have a slot; `hashes` are the prefix keys of its first len(hashes) blocks, which are
    full, computed and (if no other block had the key first) indexed for sharing."""

    blocks: list[int] = field(default_factory=list)
    num_tokens: int = 0
    hashes: list[int] = field(default_factory=list)


class BlockManager:
    """Block tables of every live sequence over a device pool, and a host pool for swapped ones.

    Sequences are named by any hashable id. The engine calls, in a step:
      `allocate(seq, prompt)` when a sequence is admitted (returns how many prompt tokens are
      already cached by prefix sharing), `append_slots(seq, n)` before writing n more positions
      (returns the copies that copy-on-write needs), `commit(seq, tokens, computed)` once
      positions are computed (indexes full blocks for sharing), `fork(parent, child)` for
      parallel samples, `free(seq)` when it finishes or is preempted by recomputation, and
      `swap_out(seqs)` / `swap_in(seqs)` for preemption by swapping.

    Args:
        num_blocks: blocks in the device pool.
        block_size: token slots per block (16 as in vLLM).
        num_host_blocks: blocks in the host pool for swapping (0: no swapping).
        prefix_sharing: share full prompt blocks between sequences with the same prefix.
        watermark: fraction of the device pool that admitting new sequences leaves free, so that
            running ones can grow without being preempted at once (vLLM keeps 1%).
    """

    # the pieces it is built from, as class attributes so that a subclass can swap in its own
    # (the exercises' `BlockManager` runs on the learner's allocator, slot mapping and hashes)
    allocator_cls = BlockAllocator
    hash_blocks = staticmethod(block_hashes)
    map_slots = staticmethod(slot_mapping)

    def __init__(
        self,
        num_blocks: int,
        block_size: int = DEFAULT_BLOCK_SIZE,
        *,
        num_host_blocks: int = 0,
        prefix_sharing: bool = True,
        watermark: float = 0.0,
    ) -> None:
        self.block_size = check_int("block_size", block_size, 1)
        self.device = self.allocator_cls(num_blocks, block_size, "device")
        check_int("num_host_blocks", num_host_blocks, 0)
        self.host = self.allocator_cls(num_host_blocks, block_size, "host") if num_host_blocks else None
        self.prefix_sharing = bool(prefix_sharing)
        self.watermark_blocks = int(check_float("watermark", watermark, minimum=0.0) * num_blocks)
        self.tables: dict[Hashable, BlockTable] = {}
        self.swapped: dict[Hashable, BlockTable] = {}  # block ids in the host pool
        self._by_hash: dict[int, int] = {}  # prefix key -> device block
        self._hash_of: dict[int, int] = {}  # device block -> its prefix key
        # sequence -> the namespace its prefix keys start from (None: the base model); sequences
        # served with different LoRA adapters hold different keys and values for the same tokens
        self.namespaces: dict[Hashable, Hashable] = {}
        self.prefix_hits = 0  # blocks reused through prefix sharing, in all

    # -- queries ---------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return self.device.num_free

    def block_table(self, seq_id: Hashable) -> list[int]:
        """The sequence's physical block ids (a copy)."""
        return list(self._table(seq_id).blocks)

    def num_tokens(self, seq_id: Hashable) -> int:
        return self._table(seq_id).num_tokens

    def slots(self, seq_id: Hashable, start: int, end: int) -> list[int]:
        """Slots of positions start .. end - 1 (see `slot_mapping`)."""
        return self.map_slots(self._table(seq_id).blocks, start, end, self.block_size)

    def _table(self, seq_id: Hashable) -> BlockTable:
        try:
            return self.tables[seq_id]
        except KeyError:
            raise KeyError(f"sequence {seq_id!r} has no blocks on the device") from None

    def _cached_prefix(self, token_ids: Sequence[int], namespace: Hashable | None = None) -> list[int]:
        """Device blocks that already hold the prompt's leading full blocks (never the block of
        the last token: its logits must be computed), keys chained from `namespace`."""
        if not self.prefix_sharing:
            return []
        usable = (len(token_ids) - 1) // self.block_size
        found = []
        for h in self.hash_blocks(token_ids[: usable * self.block_size], self.block_size, namespace):
            if h not in self._by_hash:
                break
            found.append(self._by_hash[h])
        return found

    def can_allocate(self, token_ids: Sequence[int], extra: int = 0) -> bool:
        """Whether a sequence of these tokens (and `extra` more blocks) fits above the watermark."""
        new = blocks_needed(len(token_ids), self.block_size) - len(self._cached_prefix(token_ids)) + extra
        return self.device.num_free - new >= self.watermark_blocks

    def blocks_to_append(self, seq_id: Hashable, num_new: int) -> int:
        """Device blocks that `append_slots(seq_id, num_new)` would take (new ones and copies)."""
        table = self._table(seq_id)
        old, new = table.num_tokens, table.num_tokens + num_new
        grow = blocks_needed(new, self.block_size) - len(table.blocks)
        touched = range(old // self.block_size, min(blocks_needed(new, self.block_size), len(table.blocks)))
        copies = sum(1 for i in touched if self.device.refcount(table.blocks[i]) > 1) if num_new else 0
        return grow + copies

    # -- changes ---------------------------------------------------------------------------------

    def allocate(self, seq_id: Hashable, token_ids: Sequence[int]) -> int:
        """Give a new sequence slots for its tokens; returns how many leading tokens are already
        computed in shared blocks (a multiple of block_size, < len(token_ids))."""
        if seq_id in self.tables or seq_id in self.swapped:
            raise ValueError(f"sequence {seq_id!r} already has blocks")
        if not token_ids:
            raise ValueError("a sequence needs at least one token")
        namespace = self.namespaces.get(seq_id)
        cached = self._cached_prefix(token_ids, namespace)
        need = blocks_needed(len(token_ids), self.block_size) - len(cached)
        if need > self.device.num_free:
            raise NoFreeBlocksError(f"sequence {seq_id!r} needs {need} blocks of the device KV cache, "
                                    f"{self.device.num_free} of its {self.device.num_blocks} are free")
        table = BlockTable()
        for block in cached:
            self.device.incref(block)
        table.blocks = list(cached)
        table.hashes = self.hash_blocks(token_ids[: len(cached) * self.block_size], self.block_size, namespace)
        self.prefix_hits += len(cached)
        while len(table.blocks) < blocks_needed(len(token_ids), self.block_size):
            table.blocks.append(self.device.allocate())
        table.num_tokens = len(token_ids)
        self.tables[seq_id] = table
        return len(cached) * self.block_size

    def append_slots(self, seq_id: Hashable, num_new: int = 1) -> list[tuple[int, int]]:
        """Reserve slots for `num_new` more positions; returns the (source, destination) block
        copies that must happen before they are written (copy-on-write of shared blocks)."""
        check_int("num_new", num_new, 0)
        table = self._table(seq_id)
        old, new = table.num_tokens, table.num_tokens + num_new
        if self.blocks_to_append(seq_id, num_new) > self.device.num_free:
            raise NoFreeBlocksError(
                f"sequence {seq_id!r} needs {self.blocks_to_append(seq_id, num_new)} more blocks, "
                f"{self.device.num_free} are free"
            )
        copies = []
        if num_new:
            for i in range(old // self.block_size, len(table.blocks)):  # blocks the new positions land in
                block = table.blocks[i]
                if self.device.refcount(block) > 1:  # shared: copy before writing
                    fresh = self.device.allocate()
                    self.device.free(block)
                    table.blocks[i] = fresh
                    copies.append((block, fresh))
        while len(table.blocks) < blocks_needed(new, self.block_size):
            table.blocks.append(self.device.allocate())
        table.num_tokens = new
        return copies

    def commit(self, seq_id: Hashable, token_ids: Sequence[int], num_computed: int) -> None:
        """Positions 0 .. num_computed - 1 of the sequence (whose tokens are `token_ids`) now hold
        keys and values: index its full computed blocks for prefix sharing."""
        table = self._table(seq_id)
        if not self.prefix_sharing:
            return
        full = min(num_computed, len(token_ids), table.num_tokens) // self.block_size
        if full <= len(table.hashes):
            return
        parent = table.hashes[-1] if table.hashes else self.namespaces.get(seq_id)
        start = len(table.hashes)
        new = self.hash_blocks(token_ids[start * self.block_size : full * self.block_size], self.block_size, parent)
        for i, h in enumerate(new, start=start):
            block = table.blocks[i]
            if h not in self._by_hash and block not in self._hash_of:
                self._by_hash[h] = block
                self._hash_of[block] = h
        table.hashes.extend(new)

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """The child shares every block of the parent (reference counts + 1); writes will copy."""
        parent = self._table(parent_id)
        if child_id in self.tables or child_id in self.swapped:
            raise ValueError(f"sequence {child_id!r} already has blocks")
        for block in parent.blocks:
            self.device.incref(block)
        self.tables[child_id] = BlockTable(list(parent.blocks), parent.num_tokens, list(parent.hashes))
        if parent_id in self.namespaces:
            self.namespaces[child_id] = self.namespaces[parent_id]

    def _release(self, block: int) -> None:
        if self.device.free(block) and block in self._hash_of:  # last owner gone: forget its prefix key
            del self._by_hash[self._hash_of.pop(block)]

    def free(self, seq_id: Hashable) -> None:
        """Release every block of the sequence (on the device or swapped out); unknown ids are ignored."""
        table = self.tables.pop(seq_id, None)
        if table is not None:
            for block in table.blocks:
                self._release(block)
        swapped = self.swapped.pop(seq_id, None)
        if swapped is not None:
            for block in swapped.blocks:
                self.host.free(block)

    # -- swapping ----------------------------------------------------------------------------------

    def _distinct(self, tables: Iterable[BlockTable]) -> int:
        return len({b for t in tables for b in t.blocks})

    def can_swap_out(self, seq_ids: Sequence[Hashable]) -> bool:
        """Whether the host pool has room for these sequences' blocks (shared ones counted once)."""
        return self.host is not None and self._distinct(self._table(s) for s in seq_ids) <= self.host.num_free

    def can_swap_in(self, seq_ids: Sequence[Hashable], extra: int = 0) -> bool:
        """Whether these swapped sequences' blocks (and `extra` more) fit on the device above the watermark."""
        need = self._distinct(self.swapped[s] for s in seq_ids) + extra
        return self.device.num_free - need >= self.watermark_blocks

    def _move(self, seq_ids, source: dict, target: dict, to_pool: BlockAllocator, drop) -> list[tuple[int, int]]:
        mapping: dict[int, int] = {}  # old block -> new block, so that shared blocks stay shared
        for seq_id in seq_ids:
            table = source.pop(seq_id)
            moved = []
            for block in table.blocks:
                if block in mapping:
                    to_pool.incref(mapping[block])
                else:
                    mapping[block] = to_pool.allocate()
                moved.append(mapping[block])
                drop(block)
            target[seq_id] = BlockTable(moved, table.num_tokens, list(table.hashes) if target is self.tables else [])
        return list(mapping.items())

    def swap_out(self, seq_ids: Sequence[Hashable]) -> list[tuple[int, int]]:
        """Move the sequences' blocks to the host pool; returns (device block, host block) copies,
        to be done before the device blocks are reused. Shared blocks stay shared."""
        if not self.can_swap_out(seq_ids):
            raise NoFreeBlocksError(f"the host pool cannot hold the blocks of {list(seq_ids)!r}")
        return self._move(seq_ids, self.tables, self.swapped, self.host, self._release)

    def swap_in(self, seq_ids: Sequence[Hashable]) -> list[tuple[int, int]]:
        """Move swapped sequences back to the device; returns (host block, device block) copies."""
        if self._distinct(self.swapped[s] for s in seq_ids) > self.device.num_free:
            raise NoFreeBlocksError(f"the device pool cannot hold the blocks of {list(seq_ids)!r}")
        return self._move(seq_ids, self.swapped, self.tables, self.device, self.host.free)

    # -- accounting ----------------------------------------------------------------------------------

    def usage(self) -> dict[str, int]:
        """Device slots holding a token state ("used", shared ones once) against slots in allocated
        blocks ("allocated"), and the block counts."""
        filled: dict[int, int] = {}
        for table in self.tables.values():
            for i, block in enumerate(table.blocks):
                n = min(self.block_size, table.num_tokens - i * self.block_size)
                filled[block] = max(filled.get(block, 0), n)
        allocated = self.device.num_blocks - self.device.num_free
        return dict(used=sum(filled.values()), allocated=allocated * self.block_size, blocks=allocated,
                    logical_blocks=sum(len(t.blocks) for t in self.tables.values()))  # fmt: skip

    def check_invariants(self) -> None:
        """AssertionError unless reference counts equal the owners in the block tables, free blocks
        are exactly those with no owner (each listed once), every table has the blocks its tokens
        need, and the prefix index names live blocks only."""
        for pool, tables in ((self.device, self.tables), (self.host, self.swapped)):
            if pool is None:
                assert not tables, "sequences swapped out without a host pool"
                continue
            owners = [0] * pool.num_blocks
            for seq_id, table in tables.items():
                assert len(table.blocks) == blocks_needed(table.num_tokens, self.block_size), f"{seq_id!r}: wrong block count"
                for block in table.blocks:
                    owners[block] += 1
            assert owners == [pool.refcount(b) for b in range(pool.num_blocks)], f"{pool.name}: reference counts disagree"
            assert pool.num_free == owners.count(0), f"{pool.name}: leaked or double-owned block"
            free = list(getattr(pool, "_free", ()))  # the reference's free list, when there is one
            assert len(free) == len(set(free)), f"{pool.name}: a block is free twice"
            assert not free or set(free) == {b for b in range(pool.num_blocks) if owners[b] == 0}, f"{pool.name}: wrong free list"
        assert all(self._by_hash[h] == b and self.device.refcount(b) > 0 for b, h in self._hash_of.items())
        assert len(self._by_hash) == len(self._hash_of)
