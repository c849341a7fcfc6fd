"""Chapter 16: the continuous-batching scheduler (FCFS admission, budgets, preemption), and the
engine driven by it: greedy outputs equal Chapter 15's `generate` whatever the batching and the
preemptions."""

from __future__ import annotations

import random

import pytest
import torch

from reference.inference.generate import generate
from reference.inference.sampling import SamplingParams
from reference.models.llama import TransformerLM
from reference.serving.blocks import BlockManager
from reference.serving.engine import LLMEngine
from reference.serving.scheduler import Sequence, SequenceGroup, SchedulerOutput


def _group(rid, n_tokens, arrival):
    return SequenceGroup(rid, [Sequence(hash((rid, 1)) % 10**9, list(range(1, n_tokens + 1)))], arrival=arrival)


def _scheduler(impl, blocks=8, host=0, **kw):
    return impl.serving.scheduler.Scheduler(BlockManager(blocks, 4, num_host_blocks=host), **kw)


def _decode(groups):
    """What the engine does after a step: every running sequence gets its next token, computed."""
    for g in groups:
        for s in g.live:
            s.num_computed = len(s)
            s.output.append(7)


@pytest.mark.exercise("16.6")
@pytest.mark.points(2)
def test_preempt_by_recompute_frees_and_requeues_in_arrival_order(impl):
    sch = _scheduler(impl)
    old, young = _group("old", 6, 0), _group("young", 3, 5)
    sch.add(young)
    out = sch.schedule()
    assert out.prefills == [young]
    _decode([young])
    sch.add(_group("later", 2, 9))
    sch.running.remove(young)
    sch.add(old)
    out = SchedulerOutput()
    sch.preempt(young, out)
    assert out.preempted == [young] and young.status == "waiting"
    assert young.seqs[0].num_computed == 0 and sch.block_manager.num_free_blocks == 8
    assert [g.request_id for g in sch.waiting] == ["old", "young", "later"]
    sch.block_manager.check_invariants()


@pytest.mark.exercise("16.6")
@pytest.mark.points(2)
def test_preempt_by_swap_and_fallback(impl):
    sch = _scheduler(impl, host=2, preemption_mode="swap")
    a, b = _group("a", 8, 0), _group("b", 5, 1)
    sch.add(a)
    sch.add(b)
    sch.schedule()
    _decode([a, b])
    sch.running = [a]
    out = SchedulerOutput()
    sch.preempt(b, out)  # 2 blocks: fits the host pool
    assert out.swapped_out == [b] and list(sch.swapped) == [b] and len(out.blocks_to_swap_out) == 2
    assert b.seqs[0].num_computed == len(b.seqs[0]) - 1  # its cache survives on the host
    sch.running = []
    out = SchedulerOutput()
    sch.preempt(a, out)  # 3 blocks: the host is full, so recomputation
    assert out.preempted == [a] and a.seqs[0].num_computed == 0
    sch.block_manager.check_invariants()


@pytest.mark.exercise("16.7")
@pytest.mark.points(2)
def test_schedule_admits_first_come_first_served_under_budgets(impl):
    sch = _scheduler(impl, blocks=6, max_num_batched_tokens=19, max_num_seqs=3)
    groups = [_group("a", 8, 0), _group("b", 10, 1), _group("c", 2, 2), _group("d", 1, 3)]
    for g in groups:
        sch.add(g)
    out = sch.schedule()
    assert out.prefills == groups[:2] and out.num_batched_tokens == 18  # c (2 tokens) fits no more in 19
    _decode(out.prefills)
    out = sch.schedule()
    assert out.decodes == groups[:2] and out.prefills == []  # a's 9th token took the last free block
    assert sch.block_manager.num_free_blocks == 0
    groups[1].seqs[0].finish_reason = "stop"
    sch.finish_done()
    _decode(out.decodes[:1])
    out = sch.schedule()
    assert out.decodes == groups[:1] and [g.request_id for g in out.prefills] == ["c", "d"]


@pytest.mark.exercise("16.7")
@pytest.mark.points(2)
def test_schedule_never_skips_the_oldest_waiting(impl):
    sch = _scheduler(impl, blocks=4)
    big, small = _group("big", 20, 0), _group("small", 2, 1)
    sch.add(_group("first", 6, -1))
    out = sch.schedule()
    _decode(out.prefills)
    sch.add(big)
    sch.add(small)
    out = sch.schedule()
    assert out.prefills == []  # big does not fit, and small may not overtake it
    assert [g.request_id for g in sch.waiting] == ["big", "small"]


@pytest.mark.exercise("16.7")
@pytest.mark.points(2)
def test_schedule_preempts_the_youngest_and_prefers_swapped(impl):
    sch = _scheduler(impl, blocks=4, host=8, preemption_mode="swap")
    a, b = _group("a", 8, 0), _group("b", 8, 1)
    sch.add(a)
    sch.add(b)
    out = sch.schedule()
    assert out.prefills == [a, b] and sch.block_manager.num_free_blocks == 0
    _decode([a, b])
    out = sch.schedule()  # a needs a new block: b (the youngest) is swapped out
    assert out.decodes == [a] and out.swapped_out == [b] and out.blocks_to_swap_out
    sch.add(_group("c", 1, 2))
    _decode([a])
    out = sch.schedule()  # a still holds the blocks b needs: c may not overtake b
    assert out.decodes == [a] and out.prefills == [] and list(sch.swapped) == [b]
    a.seqs[0].finish_reason = "stop"
    sch.finish_done()
    out = sch.schedule()
    assert out.swapped_in == [b] and out.decodes == [b] and [g.request_id for g in out.prefills] == ["c"]
    sch.block_manager.check_invariants()


@pytest.mark.exercise("16.7")
@pytest.mark.points(1)
def test_schedule_preempts_the_youngest_of_several(impl):
    sch = _scheduler(impl, blocks=6)
    groups = [_group("a", 8, 0), _group("b", 8, 1), _group("c", 8, 2)]
    for g in groups:
        sch.add(g)
    sch.schedule()
    _decode(groups)
    out = sch.schedule()  # a needs a block, none is free: c goes, b stays
    assert out.preempted[0] is groups[2] and groups[1] in out.decodes


@pytest.mark.exercise("16.7")
@pytest.mark.points(1)
def test_schedule_counts_prefix_hits(impl):
    sch = _scheduler(impl, blocks=10)
    a = _group("a", 10, 0)
    sch.add(a)
    sch.schedule()
    sch.block_manager.commit(a.seqs[0].seq_id, a.seqs[0].tokens, 10)
    b = _group("b", 11, 1)
    sch.add(b)
    out = sch.schedule()
    assert out.prefills == [b] and b.seqs[0].num_computed == 8 and out.num_batched_tokens == 3 + 1


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return TransformerLM(64, 96, 32, 2, 4, 64, num_kv_heads=2).double().eval()  # float64: no argmax near-ties


@pytest.mark.exercise("16.7")
@pytest.mark.points(4)
@pytest.mark.parametrize("mode,blocks,host", [("recompute", 200, 0), ("recompute", 16, 0), ("swap", 16, 40)])
def test_engine_greedy_equals_generate_whatever_the_batching(impl, tiny_model, mode, blocks, host):
    rng = random.Random(blocks + host)
    shared = [rng.randrange(64) for _ in range(9)]
    prompts = [(shared if i % 3 == 0 else []) + [rng.randrange(64) for _ in range(rng.randint(1, 30))] for i in range(12)]
    lengths = [rng.randint(1, 30) for _ in prompts]
    engine = LLMEngine(tiny_model, block_size=4, num_blocks=blocks, num_host_blocks=host, preemption_mode=mode,
                       max_num_seqs=5, max_num_batched_tokens=64, scheduler_cls=impl.serving.scheduler.Scheduler)
    outs = engine.generate(prompts, [SamplingParams(temperature=0, max_tokens=k) for k in lengths])
    for out, prompt, k in zip(outs, prompts, lengths):
        assert out.outputs[0].token_ids == generate(tiny_model, [prompt], k).new_tokens[0]
        assert out.outputs[0].finish_reason == "length"
    if blocks < 100:
        assert engine.stats["preemptions"] + engine.stats["swaps"] > 0, "the small pool must force preemption"
    engine.block_manager.check_invariants()
    assert engine.block_manager.num_free_blocks == blocks
