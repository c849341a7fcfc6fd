"""Chapter 9: pipeline parallelism (GPipe, 1F1B, interleaved 1F1B) on real gloo processes, and the 2-D composition.

Oracles: the single-process gradients of the same model (to 1e-5), PyTorch's
`torch.distributed.pipelining` ScheduleGPipe / Schedule1F1B / ScheduleInterleaved1F1B on the same
stages (gradients, and for the interleaved schedule its action list), the schedules' known action
orders and stash sizes (m for GPipe, p - r for 1F1B, min((v - 1) p + 2 (p - r - 1) + 1, v m) chunk
activations interleaved), and the bubble formula (p - 1) / (v m + p - 1) of the whole run (v = 1
without interleaving), within 0.05, on stages of known (slept) cost.

Plausible bugs caught (planted by `python -m tests.run_mutants --chapter 9`):
- 9.7 GPipe backwards in reverse order; a forward and a backward interleaved.
- 9.8 1F1B warm-up of p - stage (one too many) or of p - 1 on every stage; the cool-down missing.
- 9.9 the bubble over the busy time instead of p * makespan; the makespan of one rank only.
- 9.10 the 1F1B warm-up without the (v - 1) p of the other chunks, or with one hop (not two) per
  stage; the backwards through the chunks in forward order; micro-batches not grouped by p.

The clusters (2 and 4 ranks) are shared with tests/test_tensor_parallel.py for the session.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.distributed as dist
from torch.nn import functional as F

from tests.model_parallel_clusters import shared_clusters


def _pp(package: str):
    return importlib.import_module(f"{package}.distributed.pipeline")


def _model(seed: int = 0, layers: int = 4):
    from reference.models.llama import TransformerLM

    torch.manual_seed(seed)
    return TransformerLM(vocab_size=48, context_length=16, d_model=32, num_layers=layers, num_heads=4, d_ff=64, num_kv_heads=2).double()


def _this_ranks_stage(pp, model, schedule: str, chunks: int):
    """Stage `rank` of p, or for the interleaved schedule the chunks rank, rank + p, ... of p v."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if schedule == "interleaved":
        return pp.split_transformer(model, world * chunks)[rank::world]
    return pp.split_transformer(model, world)[rank]


def _batch(seed: int = 1, batch: int = 8, seq: int = 6):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 48, (batch, seq + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def _lm_loss(logits, targets):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ----------------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------------


def _run_lm_pipeline(package: str, schedule: str, m: int, chunks: int = 1, layers: int = 4) -> dict:
    pp = _pp(package)
    model = _model(layers=layers)
    stage = _this_ranks_stage(pp, model, schedule, chunks)
    ids, targets = _batch()
    result = pp.run_pipeline(stage, schedule, m, (ids.shape[0] // m, ids.shape[1], 32), inputs=ids, targets=targets,
                             loss_fn=_lm_loss, dtype=torch.float64)
    mine = {id(q) for part in (stage if isinstance(stage, list) else [stage]) for q in part.parameters()}
    ours = {n: q.grad.clone() for n, q in model.named_parameters() if id(q) in mine}  # the stages hold the model's own modules
    reference = _model(layers=layers)
    loss = _lm_loss(reference(ids), targets)
    loss.backward()
    theirs = {n: q.grad for n, q in reference.named_parameters() if n in ours}
    return dict(ours=ours, theirs=theirs, loss=result.loss, dense_loss=float(loss), peak=result.peak_stashed,
                events=result.events, messages=result.messages_sent)


def _run_torch_pipelining(package: str, schedule: str, m: int, chunks: int = 1, layers: int = 4) -> dict:
    """Ours against torch.distributed.pipelining on the same stages (same model, same cut)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

    pp = _pp(package)
    rank, world = dist.get_rank(), dist.get_world_size()
    ids, targets = _batch()
    ours_model, theirs_model = _model(layers=layers), _model(layers=layers)
    stage = _this_ranks_stage(pp, ours_model, schedule, chunks)
    result = pp.run_pipeline(stage, schedule, m, (ids.shape[0] // m, ids.shape[1], 32), inputs=ids, targets=targets,
                             loss_fn=_lm_loss, dtype=torch.float64)
    theirs_stage = _this_ranks_stage(pp, theirs_model, schedule, chunks)
    cpu = torch.device("cpu")
    if schedule == "interleaved":
        stages = [PipelineStage(part, c * world + rank, world * chunks, cpu) for c, part in enumerate(theirs_stage)]
        sched = ScheduleInterleaved1F1B(stages, m, loss_fn=_lm_loss)
        actions = [("F" if a.computation_type.name == "FORWARD" else "B", a.microbatch_index, a.stage_index // world)
                   for a in sched.pipeline_order[rank] if a is not None]
    else:
        sched = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule](PipelineStage(theirs_stage, rank, world, cpu), m, loss_fn=_lm_loss)
        actions = None
    losses: list = []
    if rank == 0:
        sched.step(ids)
    elif rank == world - 1:
        sched.step(target=targets, losses=losses)
    else:
        sched.step()
    grads = lambda model: {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}  # noqa: E731
    ours_order = [(e.kind, e.microbatch, e.chunk) for e in result.events]
    return dict(ours=grads(ours_model), theirs=grads(theirs_model), ours_order=ours_order, theirs_order=actions)


def _run_timed(package: str, schedule: str, m: int, forward_s: float, backward_s: float, chunks: int = 2) -> dict:
    """A step on slept stages of equal cost; interleaved: `chunks` chunks of 1/chunks of a stage's cost each."""
    result = _pp(package).measure_schedule(schedule, m, forward_s, backward_s, width=8, num_chunks=chunks)
    return dict(events=result.events, peak=result.peak_stashed)


def _run_report(package: str, m: int, v: int) -> list:
    return _pp(package).schedule_report(m, v, 0.0, 0.0)


def _run_dp_tp(package: str) -> dict:
    """DP over TP on 4 processes: two tensor-parallel pairs {0, 1}, {2, 3}; data parallel across them."""
    from reference.models.llama import TransformerLM

    tp = importlib.import_module(f"{package}.distributed.tensor_parallel")
    from reference.distributed.tensor_parallel import gather_parameters, grid_groups

    rank = dist.get_rank()
    tp_group, dp_group, dp_rank, dp_size = grid_groups(tensor_parallel_size=2)
    torch.manual_seed(0)
    dense = TransformerLM(vocab_size=32, context_length=8, d_model=32, num_layers=1, num_heads=4, d_ff=64, num_kv_heads=2).double()
    ids, targets = _batch(3, batch=4, seq=6)
    ids, targets = ids % 32, targets % 32
    sharded = tp.TensorParallelLM.from_dense(dense, group=tp_group)
    part = slice(dp_rank * 2, dp_rank * 2 + 2)  # each data-parallel replica takes half the batch
    sharded.loss(ids[part], targets[part]).backward()
    for param in sharded.parameters():  # average the replicas' gradients
        dist.all_reduce(param.grad, group=dp_group)
        param.grad /= dp_size
    ours = gather_parameters(sharded, grads=True)
    _lm_loss(dense(ids), targets).backward()
    theirs = {n: p.grad for n, p in dense.named_parameters(remove_duplicate=False)}
    return dict(ours=ours, theirs=theirs, rank=rank)


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clusters(request):
    return shared_clusters(request)


def close(a, b, where, atol=1e-5):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=atol, msg=lambda msg: f"{where}: {msg}")


# ----------------------------------------------------------------------------------------------
# 9.7 GPipe order, 9.8 1F1B order (no processes needed)
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("9.7")
@pytest.mark.points(2)
def test_gpipe_order(impl):
    assert impl.distributed.pipeline.gpipe_order(3, 2, 1) == [("F", 0), ("F", 1), ("B", 0), ("B", 1)]
    for p, m in ((2, 5), (4, 8), (4, 2)):
        for s in range(p):
            order = impl.distributed.pipeline.gpipe_order(p, m, s)
            assert order == [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
            assert impl.distributed.pipeline.peak_stashed(order) == m


@pytest.mark.exercise("9.8")
@pytest.mark.points(3)
def test_one_f_one_b_order(impl):
    pp = impl.distributed.pipeline
    assert pp.one_f_one_b_order(4, 6, 0) == [("F", 0), ("F", 1), ("F", 2), ("F", 3), ("B", 0), ("F", 4), ("B", 1),
                                             ("F", 5), ("B", 2), ("B", 3), ("B", 4), ("B", 5)]  # fmt: skip
    assert pp.one_f_one_b_order(4, 6, 3) == [x for i in range(6) for x in (("F", i), ("B", i))]
    assert pp.one_f_one_b_order(4, 2, 0) == [("F", 0), ("F", 1), ("B", 0), ("B", 1)]  # fewer micro-batches than stages
    for p, m in ((2, 5), (4, 8), (4, 2), (3, 3)):
        for s in range(p):
            order = pp.one_f_one_b_order(p, m, s)
            assert sorted(order) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
            assert [i for k, i in order if k == "B"] == list(range(m)), "backwards in micro-batch order"
            assert pp.peak_stashed(order) == min(p - s, m), "1F1B stashes at most p - stage micro-batches"


@pytest.mark.exercise("9.8")
@pytest.mark.points(1)
def test_orders_reject_bad_arguments(impl):
    with pytest.raises(ValueError, match="stage"):
        impl.distributed.pipeline.one_f_one_b_order(4, 2, 4)
    with pytest.raises(ValueError, match="num_microbatches"):
        impl.distributed.pipeline.gpipe_order(4, 0, 0)


@pytest.mark.exercise("9.9")
@pytest.mark.points(2)
def test_bubble_fraction_of_a_made_up_timeline(impl):
    pp = impl.distributed.pipeline
    # two stages, one micro-batch each way: F on 0 then 1, B on 1 then 0, each 1 s: makespan 4, busy 4 of 8
    events = [pp.Event(0, 0, "F", 0, 1), pp.Event(1, 0, "F", 1, 2), pp.Event(1, 0, "B", 2, 3), pp.Event(0, 0, "B", 3, 4)]
    assert pp.bubble_fraction(events) == pytest.approx(0.5)
    assert pp.bubble_fraction(events, num_stages=4) == pytest.approx(0.75)
    shifted = [pp.Event(e.rank, e.microbatch, e.kind, e.start + 10, e.end + 10) for e in events]
    assert pp.bubble_fraction(shifted) == pytest.approx(0.5)
    assert pp.bubble_formula(4, 8) == pytest.approx(3 / 11)
    assert pp.bubble_formula(4, 8, interleave=2) == pytest.approx(3 / 19)


# ----------------------------------------------------------------------------------------------
# Running the schedules
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("9.8")
@pytest.mark.points(3)
@pytest.mark.parametrize("schedule,world,m", [("gpipe", 2, 4), ("1f1b", 2, 4), ("gpipe", 4, 8), ("1f1b", 4, 8), ("1f1b", 4, 2)])
def test_pipeline_gradients_equal_single_process(impl, clusters, schedule, world, m):
    results = clusters(world).run(_run_lm_pipeline, impl.package, schedule, m)
    for rank, r in enumerate(results):
        for name, grad in r["ours"].items():
            close(grad, r["theirs"][name], f"rank {rank}: {name}")
        expected = m if schedule == "gpipe" else min(world - rank, m)
        assert r["peak"] == expected, f"rank {rank}: {r['peak']} micro-batches stashed, expected {expected}"
    assert results[-1]["loss"] == pytest.approx(results[-1]["dense_loss"], abs=1e-9)
    assert len(results[0]["events"]) == 2 * m
    assert sum(r["messages"] for r in results) == 2 * m * (world - 1), "one activation and one gradient per boundary and micro-batch"


@pytest.mark.exercise("9.8")
@pytest.mark.points(2)
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_matches_torch_pipelining(impl, clusters, schedule):
    """On 2 ranks: importing torch.distributed.pipelining costs seconds per rank; 4 ranks are
    checked against the single process above."""
    for rank, r in enumerate(clusters(2).run(_run_torch_pipelining, impl.package, schedule, 4)):
        assert set(r["ours"]) == set(r["theirs"]) and r["ours"], f"rank {rank}: different parameters"
        for name, grad in r["ours"].items():
            close(grad, r["theirs"][name], f"rank {rank}: {name} against torch.distributed.pipelining")


@pytest.mark.exercise("9.9")
@pytest.mark.points(3)
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_measured_bubble_matches_the_formula(impl, clusters, schedule):
    """Stages of 60 ms forward / 120 ms backward. Message and wake-up latency only ever adds idle
    time, and on a loaded machine it can add a lot: the best of up to three runs is compared."""
    pp = impl.distributed.pipeline
    p, m = 4, 6
    formula = pp.bubble_formula(p, m)
    measured = []
    for _ in range(3):
        results = clusters(p).run(_run_timed, impl.package, schedule, m, 0.06, 0.12)
        measured.append(pp.bubble_fraction([e for r in results for e in r["events"]]))
        if abs(measured[-1] - formula) < 0.05:
            break
    assert min(abs(b - formula) for b in measured) < 0.05, f"{schedule}: measured {measured}, formula {formula:.3f}"


@pytest.mark.exercise("9.3")
@pytest.mark.points(2)
def test_data_parallel_over_tensor_parallel_on_four_processes(impl, clusters):
    for r in clusters(4).run(_run_dp_tp, impl.package):
        assert set(r["ours"]) == set(r["theirs"])
        for name, grad in r["theirs"].items():
            close(r["ours"][name], grad, f"rank {r['rank']}: {name}")


# ----------------------------------------------------------------------------------------------
# 9.10 The interleaved 1F1B schedule (Narayanan et al., 2021, section 2.2.2)
# ----------------------------------------------------------------------------------------------


def _torch_interleaved_order(p: int, m: int, rank: int, v: int) -> list[tuple[str, int, int]]:
    """ScheduleInterleaved1F1B's own action list for `rank`, computed without processes."""
    from types import SimpleNamespace

    from torch.distributed.pipelining.schedules import ScheduleInterleaved1F1B

    rounds = max(1, m // p)
    schedule = SimpleNamespace(n_local_stages=v, microbatches_per_round=m // rounds, pp_group_size=p, _n_microbatches=m)
    actions = ScheduleInterleaved1F1B._calculate_single_rank_operations(schedule, rank)
    return [("F" if a.computation_type.name == "FORWARD" else "B", a.microbatch_index, a.stage_index // p)
            for a in actions if a is not None]


def _interleaved_warmup(p: int, m: int, rank: int, v: int) -> int:
    return min((v - 1) * p + 2 * (p - rank - 1), v * m)


@pytest.mark.exercise("9.10")
@pytest.mark.points(3)
def test_interleaved_order(impl):
    pp = impl.distributed.pipeline
    # p = 2, v = 2, m = 4; rank 0 holds virtual stages 0 and 2, rank 1 stages 1 and 3 (written out by hand)
    assert pp.interleaved_order(2, 4, 0, 2) == [
        ("F", 0, 0), ("F", 1, 0), ("F", 0, 1), ("F", 1, 1), ("F", 2, 0), ("B", 0, 1), ("F", 3, 0), ("B", 1, 1),
        ("F", 2, 1), ("B", 0, 0), ("F", 3, 1), ("B", 1, 0), ("B", 2, 1), ("B", 3, 1), ("B", 2, 0), ("B", 3, 0)]  # fmt: skip
    assert pp.interleaved_order(2, 4, 1, 2) == [
        ("F", 0, 0), ("F", 1, 0), ("F", 0, 1), ("B", 0, 1), ("F", 1, 1), ("B", 1, 1), ("F", 2, 0), ("B", 0, 0),
        ("F", 3, 0), ("B", 1, 0), ("F", 2, 1), ("B", 2, 1), ("F", 3, 1), ("B", 3, 1), ("B", 2, 0), ("B", 3, 0)]  # fmt: skip
    for p, m, v in ((2, 2, 2), (2, 6, 3), (4, 4, 2), (4, 8, 2), (4, 12, 3), (3, 6, 4)):
        for r in range(p):
            order = pp.interleaved_order(p, m, r, v)
            assert sorted(order) == sorted((k, i, c) for k in "FB" for i in range(m) for c in range(v)), "each F and B once"
            for c in range(v):  # every chunk sees its micro-batches in order, both ways
                assert [i for k, i, cc in order if k == "F" and cc == c] == list(range(m))
                assert [i for k, i, cc in order if k == "B" and cc == c] == list(range(m))
            w = _interleaved_warmup(p, m, r, v)
            assert all(k == "F" for k, _, _ in order[:w]) and (w == v * m or order[w + 1][0] == "B"), f"warm-up of {w}"
            assert pp.peak_stashed(order) == min(w + 1, v * m), "stash: the warm-up plus one"


@pytest.mark.exercise("9.10")
@pytest.mark.points(2)
def test_interleaved_order_equals_torch_schedule_interleaved_1f1b(impl):
    pp = impl.distributed.pipeline
    for p, m, v in ((2, 2, 2), (2, 4, 2), (2, 6, 3), (4, 4, 2), (4, 8, 2), (4, 8, 4), (3, 9, 2)):
        for r in range(p):
            assert pp.interleaved_order(p, m, r, v) == _torch_interleaved_order(p, m, r, v), f"p={p} m={m} v={v} rank {r}"


@pytest.mark.exercise("9.10")
@pytest.mark.points(1)
def test_interleaved_order_rejects_bad_arguments(impl):
    pp = impl.distributed.pipeline
    with pytest.raises(ValueError, match="multiple"):
        pp.interleaved_order(4, 6, 0, 2)  # micro-batches go in groups of p
    with pytest.raises(ValueError, match="num_chunks"):
        pp.interleaved_order(4, 8, 0, 1)
    with pytest.raises(ValueError, match="stage"):
        pp.interleaved_order(4, 8, 4, 2)


@pytest.mark.exercise("9.10")
@pytest.mark.points(3)
@pytest.mark.parametrize("world,m,chunks,layers", [(2, 4, 2, 4), (2, 2, 3, 6), (4, 4, 2, 8)])
def test_interleaved_gradients_equal_single_process(impl, clusters, world, m, chunks, layers):
    results = clusters(world).run(_run_lm_pipeline, impl.package, "interleaved", m, chunks, layers)
    names = set()
    for rank, r in enumerate(results):
        for name, grad in r["ours"].items():
            close(grad, r["theirs"][name], f"rank {rank}: {name}")
        names |= set(r["ours"])
        w = _interleaved_warmup(world, m, rank, chunks)
        assert r["peak"] == min(w + 1, chunks * m), f"rank {rank}: {r['peak']} chunk activations stashed"
        assert sorted({(e.chunk, e.kind) for e in r["events"]}) == sorted((c, k) for c in range(chunks) for k in "BF")
        assert len(r["events"]) == 2 * m * chunks
    assert names == {n for n, _ in _model(layers=layers).named_parameters()}, "every parameter on some rank"
    assert sum(r["messages"] for r in results) == 2 * m * (world * chunks - 1), "p v - 1 boundaries each way"
    assert results[-1]["loss"] == pytest.approx(results[-1]["dense_loss"], abs=1e-9)


@pytest.mark.exercise("9.10")
@pytest.mark.points(2)
def test_interleaved_matches_torch_schedule_interleaved_1f1b(impl, clusters):
    for rank, r in enumerate(clusters(2).run(_run_torch_pipelining, impl.package, "interleaved", 4, 2, 4)):
        assert r["ours_order"] == r["theirs_order"], f"rank {rank}: the order run differs from torch's"
        assert set(r["ours"]) == set(r["theirs"]) and r["ours"], f"rank {rank}: different parameters"
        for name, grad in r["ours"].items():
            close(grad, r["theirs"][name], f"rank {rank}: {name} against ScheduleInterleaved1F1B")


@pytest.mark.exercise("9.10")
@pytest.mark.points(3)
def test_interleaved_bubble_matches_the_formula(impl, clusters):
    """p = 4 ranks of v = 2 chunks, m = 4: (p - 1) / (v m + p - 1) = 3 / 11 of the run, against
    3 / 7 for 1F1B on the same per-rank cost (60 ms forward, 120 ms backward per rank and
    micro-batch, each chunk half of that). Best of up to three runs, as above."""
    pp = impl.distributed.pipeline
    p, m, v = 4, 4, 2
    formula = pp.bubble_formula(p, m, interleave=v)
    measured = []
    for _ in range(3):
        results = clusters(p).run(_run_timed, impl.package, "interleaved", m, 0.06, 0.12, v)
        measured.append(pp.bubble_fraction([e for r in results for e in r["events"]]))
        if abs(measured[-1] - formula) < 0.05:
            break
    assert min(abs(b - formula) for b in measured) < 0.05, f"interleaved: measured {measured}, formula {formula:.3f}"
    for rank, r in enumerate(results):
        assert r["peak"] == min(_interleaved_warmup(p, m, rank, v) + 1, v * m)


@pytest.mark.exercise("9.10")
@pytest.mark.points(1)
def test_schedule_report_of_the_command(impl, clusters):
    """`python -m reference.distributed.pipeline` prints this report (here shrunk: 2 ranks, m = 2, no sleep)."""
    pp = impl.distributed.pipeline
    p, m, v = 2, 2, 2
    results = clusters(p).run(_run_report, impl.package, m, v)
    assert results[1] == results[0], "every rank reports the same gathered timelines"
    rows = {row["schedule"]: row for row in results[0]}
    assert list(rows) == ["gpipe", "1f1b", "interleaved"]
    assert [rows[n]["messages"] for n in rows] == [2 * m * (p - 1), 2 * m * (p - 1), 2 * m * (p * v - 1)]
    assert rows["gpipe"]["peaks"] == [m, m] and rows["1f1b"]["peaks"] == [min(p - r, m) for r in range(p)]
    assert rows["interleaved"]["peaks"] == [min(_interleaved_warmup(p, m, r, v) + 1, v * m) for r in range(p)]
    assert rows["interleaved"]["formula"] == pytest.approx((p - 1) / (v * m + p - 1))
    assert all(0.0 <= row["bubble"] < 1.0 for row in rows.values())
