"""Continuous (iteration-level) batching: which sequences run in the next forward pass.

Survey section 3.5; Yu et al., 2022, "Orca: A Distributed Serving System for Transformer-Based
Generative Models", section 3.1 (iteration-level scheduling); Kwon et al., 2023, section 4.5
(scheduling and preemption). A static batch runs until its longest request ends: short requests
idle in it and new ones wait outside. Orca decides again at *every* step: finished sequences
leave at once and waiting ones join as soon as there is room, so the batch stays full.

Each step the scheduler, under a budget of tokens per forward pass (`max_num_batched_tokens`)
and of sequences (`max_num_seqs`), and the blocks of the KV cache:
1. keeps the running groups, oldest first, giving each live sequence a slot for its next token;
   when blocks run out it *preempts* the most recently arrived running group (vLLM's
   all-or-nothing eviction of a request's blocks) until the older ones fit;
2. if nothing was preempted, brings swapped-out groups back (oldest first);
3. if no group is swapped out and nothing was preempted, admits waiting groups in arrival order
   (first come, first served: it stops at the first that does not fit, it never skips one).

Preemption by *recomputation* frees the blocks and sends the group back to the waiting queue,
its generated tokens appended to its prompt, to be prefilled again; by *swapping* it copies the
blocks to host memory and back later. Recomputation is cheap for short sequences (one prefill, a
parallel pass), swapping when the host link is fast (vLLM section 7.3 compares the two).
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from reference.serving.blocks import BlockManager, blocks_needed
from reference.validation import check_int

PREEMPTION_MODES = ("recompute", "swap")


@dataclass
class Sequence:
    """One sequence of token ids: the prompt, then what was generated.

    `num_computed` positions hold keys and values in the cache; the rest (`tokens[num_computed:]`)
    must run through the model in the next step. `finish_reason` is None while it is live.
    """

    seq_id: int
    prompt: list[int]
    output: list[int] = field(default_factory=list)
    num_computed: int = 0
    finish_reason: str | None = None
    cumulative_logprob: float = 0.0
    index: int = 0  # which of the request's n outputs

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


_arrivals = itertools.count()


@dataclass
class SequenceGroup:
    """One request: the sequences sampled from one prompt (n > 1: several), scheduled together."""

    request_id: Hashable
    seqs: list[Sequence]
    params: Any = None
    arrival: int = field(default_factory=lambda: next(_arrivals))
    status: str = "waiting"  # waiting, running, swapped, finished
    forked: bool = False  # the n samples were made (after the first prefill)
    max_seqs: int = 1  # the live sequences it forks into after its first step (best_of samples, beam_width beams)
    data: dict = field(default_factory=dict)  # the engine's bookkeeping (timings, stop strings)

    @property
    def live(self) -> list[Sequence]:
        return [s for s in self.seqs if not s.finished]

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)

    def prefill_tokens(self) -> int:
        """Tokens the group's live sequences still have to run."""
        return sum(len(s) - s.num_computed for s in self.live)


@dataclass
class SchedulerOutput:
    """What the engine must do in this step.

    prefills: groups whose live sequences run tokens[num_computed:] (just admitted).
    decodes: groups whose live sequences run their last token.
    preempted: groups sent back to the waiting queue (recomputation); swapped_out, swapped_in:
        groups moved to and from host memory.
    blocks_to_swap_out, blocks_to_swap_in, blocks_to_copy: (source, destination) block pairs to
        copy before the forward pass, in that order.
    num_batched_tokens: tokens in the forward pass.
    """

    prefills: list[SequenceGroup] = field(default_factory=list)
    decodes: list[SequenceGroup] = field(default_factory=list)
    preempted: list[SequenceGroup] = field(default_factory=list)
    swapped_out: list[SequenceGroup] = field(default_factory=list)
    swapped_in: list[SequenceGroup] = field(default_factory=list)
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)
    num_batched_tokens: int = 0

    @property
    def empty(self) -> bool:
        return not (self.prefills or self.decodes)


class SchedulerBase:
    """The queues and the bookkeeping of a scheduler; `Scheduler` adds the policy
    (`schedule` and `preempt`).

    Args:
        block_manager: the KV cache's `BlockManager`.
        max_num_seqs: the most sequences in one forward pass.
        max_num_batched_tokens: the most tokens in one forward pass (prefill tokens plus one per
            decoding sequence); a prompt longer than this can never be scheduled.
        preemption_mode: "recompute" or "swap" (needs host blocks; falls back to recomputation
            when the host pool is full).
    """

    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
        preemption_mode: str = "recompute",
    ) -> None:
        if preemption_mode not in PREEMPTION_MODES:
            raise ValueError(f"preemption_mode must be one of {PREEMPTION_MODES}, got {preemption_mode!r}")
        if preemption_mode == "swap" and block_manager.host is None:
            raise ValueError("preemption_mode='swap' needs a block manager with host blocks (num_host_blocks > 0)")
        self.block_manager = block_manager
        self.max_num_seqs = check_int("max_num_seqs", max_num_seqs, 1)
        self.max_num_batched_tokens = check_int("max_num_batched_tokens", max_num_batched_tokens, 1)
        self.preemption_mode = preemption_mode
        self.waiting: deque[SequenceGroup] = deque()
        self.running: list[SequenceGroup] = []
        self.swapped: deque[SequenceGroup] = deque()
        self.num_preemptions = 0

    def add(self, group: SequenceGroup) -> None:
        """Queue a new request (it keeps its place by arrival)."""
        group.status = "waiting"
        self._enqueue(self.waiting, group)

    @staticmethod
    def _enqueue(queue: deque[SequenceGroup], group: SequenceGroup) -> None:
        """Insert by arrival, so that a preempted (older) group goes before younger waiting ones."""
        arrivals = [g.arrival for g in queue]
        queue.insert(bisect.bisect(arrivals, group.arrival), group)

    def abort(self, request_id: Hashable) -> SequenceGroup | None:
        """Remove a request wherever it is and free its blocks; returns it (None if unknown)."""
        for queue in (self.waiting, self.running, self.swapped):
            for group in list(queue):
                if group.request_id == request_id:
                    queue.remove(group)
                    self.free(group, "abort")
                    return group
        return None

    def free(self, group: SequenceGroup, reason: str | None = None) -> None:
        """Release the blocks of every sequence of the group; live ones finish with `reason`."""
        for seq in group.seqs:
            if reason is not None and not seq.finished:
                seq.finish_reason = reason
            self.block_manager.free(seq.seq_id)
        group.status = "finished"

    def finish_done(self) -> list[SequenceGroup]:
        """Take the groups whose sequences have all finished out of the running list."""
        done = [g for g in self.running if g.finished]
        for group in done:
            self.running.remove(group)
            self.free(group)
        return done

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    def num_running_seqs(self) -> int:
        """Live sequences of the running groups; a group not forked yet counts as the sequences it
        will fork into (`max_seqs`), so that max_num_seqs holds after its first step too."""
        return sum(len(g.live) if g.forked else max(len(g.live), g.max_seqs) for g in self.running)

    def cached_tokens(self, seq: Sequence) -> int:
        """Leading tokens of the sequence that prefix sharing would find computed."""
        manager = self.block_manager
        return len(manager._cached_prefix(seq.tokens, manager.namespaces.get(seq.seq_id))) * manager.block_size

    def blocks_to_admit(self, group: SequenceGroup) -> int:
        """Device blocks the group's live sequences need to be admitted (prefix hits excluded)."""
        size = self.block_manager.block_size
        return sum(blocks_needed(len(s), size) - self.cached_tokens(s) // size for s in group.live)

    def _recompute(self, group: SequenceGroup) -> None:
        """Free the group's blocks and queue it again; it will be prefilled over all its tokens."""
        for seq in group.live:
            self.block_manager.free(seq.seq_id)
            seq.num_computed = 0
        group.status = "waiting"
        self._enqueue(self.waiting, group)

    def _swap_out(self, group: SequenceGroup, out: SchedulerOutput) -> None:
        """Copy the group's blocks to host memory and park it in the swapped queue."""
        out.blocks_to_swap_out += self.block_manager.swap_out([s.seq_id for s in group.live])
        group.status = "swapped"
        self._enqueue(self.swapped, group)
        out.swapped_out.append(group)


class Scheduler(SchedulerBase):
    """First-come-first-served continuous batching with preemption (see the module docstring)."""

    def preempt(self, group: SequenceGroup, out: SchedulerOutput) -> None:
        """Take a running group off the device to make room for older ones.

        With preemption_mode "swap" and room in the host pool, its blocks are swapped out (the
        copies go to `out.blocks_to_swap_out`, the group to the swapped queue and to
        `out.swapped_out`); otherwise it is recomputed: its blocks are freed, its sequences forget
        what is cached (num_computed = 0) and it goes back to the waiting queue, in arrival order,
        and to `out.preempted`. The caller has already taken it out of the running list.
        """
        self.num_preemptions += 1
        if self.preemption_mode == "swap" and self.block_manager.can_swap_out([s.seq_id for s in group.live]):
            self._swap_out(group, out)
        else:
            self._recompute(group)
            out.preempted.append(group)

    def schedule(self) -> SchedulerOutput:
        """Choose the next step's work (Orca's iteration-level scheduling, vLLM's policy).

        1. Running groups, oldest first: each live sequence gets a slot for one more token
           (`BlockManager.append_slots`, copy-on-write pairs into `blocks_to_copy`); while the
           free blocks do not cover a group, preempt the youngest running group (the group
           itself when it is the youngest left) with `preempt`.
        2. Only if nothing was preempted: swapped groups, oldest first, come back while their
           blocks (plus one new slot per sequence) fit, as decodes.
        3. Only if nothing was preempted and no group is swapped out: waiting groups, oldest
           first, are admitted while their prefill tokens fit the token budget, their sequences
           fit max_num_seqs and their blocks fit (`BlockManager.can_allocate`); admission stops at
           the first group that does not fit. An admitted sequence's `num_computed` is set to the
           tokens found cached by prefix sharing (`BlockManager.allocate`'s return).

        Every decoding sequence costs one token of the budget, a prefill its uncached tokens.
        """
        manager, out = self.block_manager, SchedulerOutput()
        budget = self.max_num_batched_tokens
        queue = deque(sorted(self.running, key=lambda g: g.arrival))
        self.running = []
        while queue:
            group = queue.popleft()
            need = sum(manager.blocks_to_append(s.seq_id, 1) for s in group.live)
            while need > manager.num_free_blocks and queue:
                self.preempt(queue.pop(), out)  # the youngest goes first
            if need > manager.num_free_blocks:
                self.preempt(group, out)
                break
            for seq in group.live:
                out.blocks_to_copy += manager.append_slots(seq.seq_id, 1)
            self.running.append(group)
            out.decodes.append(group)
            budget -= len(group.live)
        preempted = bool(out.preempted or out.swapped_out)
        while not preempted and self.swapped:
            group = self.swapped[0]
            ids = [s.seq_id for s in group.live]
            if (self.num_running_seqs() + len(ids) > self.max_num_seqs or len(ids) > budget
                    or not manager.can_swap_in(ids, extra=len(ids))):  # fmt: skip
                break
            self.swapped.popleft()
            out.blocks_to_swap_in += manager.swap_in(ids)
            for seq in group.live:
                out.blocks_to_copy += manager.append_slots(seq.seq_id, 1)
            group.status = "running"
            self.running.append(group)
            out.decodes.append(group)
            out.swapped_in.append(group)
            budget -= len(ids)
        while not preempted and not self.swapped and self.waiting:
            group = self.waiting[0]
            cost = sum(len(s) - self.cached_tokens(s) for s in group.live)
            if (self.num_running_seqs() + len(group.live) > self.max_num_seqs or cost > budget
                    or manager.num_free_blocks - self.blocks_to_admit(group) < manager.watermark_blocks):  # fmt: skip
                break
            self.waiting.popleft()
            for seq in group.live:
                seq.num_computed = manager.allocate(seq.seq_id, seq.tokens)
            group.status = "running"
            self.running.append(group)
            out.prefills.append(group)
            budget -= cost
        out.num_batched_tokens = self.max_num_batched_tokens - budget
        return out
