"""Exercises for Chapter 16: the block manager's pieces.

Fill in each body that raises NotImplementedError; the docstrings say what to do. The
`BlockManager` below is the reference's, built on *your* allocator, slot mapping and hashes, so
its tests (copy-on-write, prefix sharing, the random-operation invariants) grade them too. Grade
with `llm-course grade 16`. Mirrors `reference/serving/blocks.py`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from reference.serving.blocks import DEFAULT_BLOCK_SIZE, BlockTable, NoFreeBlocksError, blocks_needed
from reference.serving.blocks import BlockManager as _ReferenceBlockManager
from reference.validation import check_int

__all__ = ["BlockAllocator", "BlockManager", "BlockTable", "NoFreeBlocksError", "block_hashes", "blocks_needed",
           "slot_mapping", "check_int"]

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
    # Hint: one line per position: which logical block, which offset, and where that block lives.
    raise NotImplementedError("Exercise 16.1: slot mapping through a block table")


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
    # Hint: walk the full blocks in order, hashing a tuple of (the previous key, this block's tokens as a tuple).
    raise NotImplementedError("Exercise 16.2: chained prefix hashes of full blocks")


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
        # Hint: a free list (which order do blocks leave it in?) and one reference count per block; validate the arguments.
        raise NotImplementedError("Exercise 16.3: BlockAllocator.__init__")

    @property
    def num_free(self) -> int:
        """How many blocks are free."""
        raise NotImplementedError("Exercise 16.3: BlockAllocator.num_free")

    def allocate(self) -> int:
        """Take a free block; its reference count becomes 1. NoFreeBlocksError if there is none."""
        # Hint: refuse clearly when nothing is free.
        raise NotImplementedError("Exercise 16.3: BlockAllocator.allocate")

    def incref(self, block: int) -> int:
        """Add an owner to an allocated block; returns its new reference count."""
        # Hint: only an allocated block can gain an owner.
        raise NotImplementedError("Exercise 16.3: BlockAllocator.incref")

    def free(self, block: int) -> bool:
        """Remove one owner; True when that was the last one and the block went back to the pool."""
        # Hint: a block returns to the pool only when its last owner leaves.
        raise NotImplementedError("Exercise 16.3: BlockAllocator.free")

    def refcount(self, block: int) -> int:
        """How many owners the block has (0: free)."""
        raise NotImplementedError("Exercise 16.3: BlockAllocator.refcount")



class BlockManager(_ReferenceBlockManager):
    """The reference's block manager on this module's allocator, slot mapping and prefix hashes."""

    allocator_cls = BlockAllocator
    hash_blocks = staticmethod(block_hashes)
    map_slots = staticmethod(slot_mapping)
