"""Chapter 9: pipeline parallelism (GPipe, 1F1B) on real gloo processes, and the 2-D composition.

Oracles: the single-process gradients of the same model (to 1e-5), PyTorch's
`torch.distributed.pipelining` ScheduleGPipe / Schedule1F1B on the same stages, the schedules'
known action orders and stash sizes (m for GPipe, p - r for 1F1B), and the bubble formula
(p - 1) / (m + p - 1) of the whole run, within 0.05, on stages of known (slept) cost.

Plausible bugs caught (planted by `python -m tests.run_mutants --chapter 9`):
- 9.7 GPipe backwards in reverse order; a forward and a backward interleaved.
- 9.8 1F1B warm-up of p - stage (one too many) or of p - 1 on every stage; the cool-down missing.
- 9.9 the bubble over the busy time instead of p * makespan; the makespan of one rank only.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.distributed as dist
from torch.nn import functional as F

from reference.distributed.launch import Cluster

RUN_TIMEOUT = 90.0


def _pp(package: str):
    return importlib.import_module(f"{package}.distributed.pipeline")


def _model(seed: int = 0):
    from reference.models.llama import TransformerLM

    torch.manual_seed(seed)
    return TransformerLM(vocab_size=48, context_length=16, d_model=32, num_layers=4, num_heads=4, d_ff=64, num_kv_heads=2).double()


def _batch(seed: int = 1, batch: int = 8, seq: int = 6):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 48, (batch, seq + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def _lm_loss(logits, targets):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ----------------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------------


def _run_lm_pipeline(package: str, schedule: str, m: int) -> dict:
    pp = _pp(package)
    rank, world = dist.get_rank(), dist.get_world_size()
    model = _model()
    stage = pp.split_transformer(model, world)[rank]
    ids, targets = _batch()
    result = pp.run_pipeline(stage, schedule, m, (ids.shape[0] // m, ids.shape[1], 32), inputs=ids, targets=targets,
                             loss_fn=_lm_loss, dtype=torch.float64)
    ours = {n: p.grad.clone() for n, p in stage.named_parameters()}
    reference = _model()
    ref_stage = dict(reference.named_modules())
    loss = _lm_loss(reference(ids), targets)
    loss.backward()
    names = {n: p for n, p in reference.named_parameters()}
    theirs = {}
    for n in ours:  # stage names: token_embeddings.*, layers.k.* (k local), ln_final.*, lm_head.*
        if n.startswith("layers."):
            k, rest = n.split(".", 2)[1:]
            first = round(rank * 4 / world)
            theirs[n] = names[f"layers.{int(k) + first}.{rest}"].grad
        else:
            theirs[n] = names[n].grad
    del ref_stage
    return dict(ours=ours, theirs=theirs, loss=result.loss, dense_loss=float(loss), peak=result.peak_stashed,
                events=result.events)


def _run_torch_pipelining(package: str, schedule: str, m: int) -> dict:
    """Ours against torch.distributed.pipelining on the same stages."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    pp = _pp(package)
    rank, world = dist.get_rank(), dist.get_world_size()
    ids, targets = _batch()
    stage = pp.split_transformer(_model(), world)[rank]
    pp.run_pipeline(stage, schedule, m, (ids.shape[0] // m, ids.shape[1], 32), inputs=ids, targets=targets,
                    loss_fn=_lm_loss, dtype=torch.float64)
    ours = {n: p.grad.clone() for n, p in stage.named_parameters()}
    theirs_stage = pp.split_transformer(_model(), world)[rank]
    pipe_stage = PipelineStage(theirs_stage, rank, world, torch.device("cpu"))
    kind = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
    sched = kind(pipe_stage, m, loss_fn=_lm_loss)
    losses: list = []
    if rank == 0:
        sched.step(ids)
    elif rank == world - 1:
        sched.step(target=targets, losses=losses)
    else:
        sched.step()
    theirs = {n: p.grad.clone() for n, p in theirs_stage.named_parameters()}
    return dict(ours=ours, theirs=theirs)


def _run_timed(package: str, schedule: str, m: int, forward_s: float, backward_s: float) -> dict:
    pp = _pp(package)
    torch.manual_seed(0)
    stage = pp.timed_stage(8, forward_s, backward_s, seed=dist.get_rank())
    x, y = torch.randn(m, 8), torch.randn(m, 8)
    result = pp.run_pipeline(stage, schedule, m, (1, 8), inputs=x, targets=y, loss_fn=F.mse_loss)
    return dict(events=result.events, peak=result.peak_stashed)


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
def clusters():
    started: dict[int, Cluster] = {}

    def get(world: int) -> Cluster:
        if world not in started:
            started[world] = Cluster(world, backend="gloo", timeout=RUN_TIMEOUT)
        return started[world]

    yield get
    for cluster in started.values():
        cluster.close()


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


@pytest.mark.exercise("9.8")
@pytest.mark.points(2)
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_matches_torch_pipelining(impl, clusters, schedule):
    for rank, r in enumerate(clusters(4).run(_run_torch_pipelining, impl.package, schedule, 4)):
        for name, grad in r["ours"].items():
            close(grad, r["theirs"][name], f"rank {rank}: {name} against torch.distributed.pipelining")


@pytest.mark.exercise("9.9")
@pytest.mark.points(3)
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_measured_bubble_matches_the_formula(impl, clusters, schedule):
    pp = impl.distributed.pipeline
    p, m = 4, 6
    results = clusters(p).run(_run_timed, impl.package, schedule, m, 0.04, 0.08)
    events = [e for r in results for e in r["events"]]
    measured = pp.bubble_fraction(events)
    assert abs(measured - pp.bubble_formula(p, m)) < 0.05, f"{schedule}: measured {measured:.3f}, formula {pp.bubble_formula(p, m):.3f}"


@pytest.mark.exercise("9.3")
@pytest.mark.points(2)
def test_data_parallel_over_tensor_parallel_on_four_processes(impl, clusters):
    for r in clusters(4).run(_run_dp_tp, impl.package):
        assert set(r["ours"]) == set(r["theirs"])
        for name, grad in r["theirs"].items():
            close(r["ours"][name], grad, f"rank {r['rank']}: {name}")
