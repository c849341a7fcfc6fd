"""Exercises for Chapter 16: the continuous-batching scheduler's policy.

`SchedulerBase` (imported from the reference) keeps the queues and does the bookkeeping
(`_recompute`, `_swap_out`, `cached_tokens`, `blocks_to_admit`, `num_running_seqs`); you write the
policy: which group to take off the device and how, and what runs in the next step. The engine
tests run `LLMEngine` with this `Scheduler`. Grade with `llm-course grade 16`. Mirrors
`reference/serving/scheduler.py`.
"""

from __future__ import annotations

from collections import deque

from reference.serving.scheduler import SchedulerBase, SchedulerOutput, Sequence, SequenceGroup



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
        # Hint: SchedulerBase has a helper for each way; count the preemption.
        raise NotImplementedError("Exercise 16.6: preemption by recomputation or swapping")

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
        # Hint: three passes, in the docstring's order; keep a running token budget and remember whether anything was preempted.
        raise NotImplementedError("Exercise 16.7: iteration-level FCFS scheduling")
