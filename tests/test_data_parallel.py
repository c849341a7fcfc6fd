"""Chapter 8: data parallelism (DDP) from scratch, on real gloo processes.

Oracles: one process training on the whole global batch (the same seed, data and AdamW), and
`torch.nn.parallel.DistributedDataParallel` on the same model, both to 1e-5 after several steps,
on 2 and 4 ranks, for a model with uneven parameter sizes, a tied embedding, a trainable parameter
that gets no gradient and a frozen one. The workers live in `reference.distributed.dp_training`
and import the implementation under test by its package name.

Plausible bugs these tests catch (planted by `python -m tests.run_mutants --chapter 8`):
- 8.1 gradients summed, not averaged; no broadcast at start (replicas drift apart); finish returns
  without waiting; the hook registered twice for a tied weight (it is one parameter).
- 8.2 buckets filled in forward order; the bucket launched one gradient early; the unpacking offset
  not advanced; buckets still waiting at the end never reduced; no averaging.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from reference.distributed import dp_training
from reference.distributed.launch import Cluster

WORLD_SIZES = (2, 4)
TIMEOUT = 60.0
TOL = dict(atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def clusters():
    """One gloo cluster per world size, started on first use and shared by this module's tests."""
    started: dict[int, Cluster] = {}

    def get(world: int) -> Cluster:
        if world not in started:
            started[world] = Cluster(world, backend="gloo", timeout=TIMEOUT)
        return started[world]

    yield get
    for cluster in started.values():
        cluster.close()


def _assert_matches_single(results: list[dict]) -> None:
    for rank, out in enumerate(results):
        torch.testing.assert_close(out["params"], out["single_params"], **TOL, msg=lambda m: f"rank {rank}: {m}")
        assert out["losses"] == pytest.approx(out["single_losses"], abs=1e-5)
    for out in results[1:]:
        torch.testing.assert_close(out["params"], results[0]["params"], atol=0, rtol=0)  # replicas identical


def _hook_calls(package: str, kind: str) -> dict:
    """One backward of a model whose weight is used twice; how many all-reduces and what they carried."""
    import importlib

    from reference.distributed import volume

    ddp = importlib.import_module(f"{package}.distributed.ddp")
    torch.manual_seed(dist.get_rank())
    lin = torch.nn.Linear(3, 3, bias=False)

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(self.lin(x))

    wrapped = ddp.DDPIndividualParameters(Twice()) if kind == "individual" else ddp.DDPBucketed(Twice(), bucket_size_mb=None)
    x = torch.full((2, 3), float(dist.get_rank() + 1))
    with volume.count_collectives() as log:
        wrapped(x).sum().backward()
        wrapped.finish_gradient_synchronization()
    grad = lin.weight.grad.clone()
    expected = torch.zeros_like(grad)
    for r in range(dist.get_world_size()):  # the mean of every rank's gradient, computed locally
        w = lin.weight.detach().clone().requires_grad_()
        xr = torch.full((2, 3), float(r + 1))
        (xr @ w.T @ w.T).sum().backward()
        expected += w.grad / dist.get_world_size()
    return {"calls": log.calls, "grad": grad, "expected": expected}


@pytest.mark.exercise("8.1")
@pytest.mark.points(3)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_ddp_individual_matches_single_process(impl, clusters, world):
    _assert_matches_single(clusters(world).run(dp_training.train_steps, "ddp_individual", impl.package))


@pytest.mark.exercise("8.1")
@pytest.mark.points(2)
def test_ddp_individual_matches_torch_ddp(impl, clusters):
    ours = clusters(2).run(dp_training.train_steps, "ddp_individual", impl.package, oracle=False)
    theirs = clusters(2).run(dp_training.train_steps, "torch_ddp", impl.package, oracle=False)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a["params"], b["params"], **TOL)


@pytest.mark.exercise("8.1")
@pytest.mark.points(1)
def test_ddp_individual_tied_weight_reduced_once(impl, clusters):
    for out in clusters(2).run(_hook_calls, impl.package, "individual"):
        assert out["calls"] == [("all_reduce", 36)]  # one 3 x 3 float32 weight, used twice, reduced once
        torch.testing.assert_close(out["grad"], out["expected"], atol=1e-6, rtol=1e-6)


@pytest.mark.exercise("8.2")
@pytest.mark.points(3)
@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("bucket_size_mb", (None, 0.002))
def test_ddp_bucketed_matches_single_process(impl, clusters, world, bucket_size_mb):
    results = clusters(world).run(dp_training.train_steps, "ddp_bucketed", impl.package, bucket_size_mb=bucket_size_mb)
    _assert_matches_single(results)


@pytest.mark.exercise("8.2")
@pytest.mark.points(2)
def test_ddp_bucketed_matches_torch_ddp(impl, clusters):
    ours = clusters(2).run(dp_training.train_steps, "ddp_bucketed", impl.package, oracle=False)
    theirs = clusters(2).run(dp_training.train_steps, "torch_ddp", impl.package, oracle=False)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a["params"], b["params"], **TOL)


def _bucket_layout(package: str, bucket_size_mb) -> dict:
    import importlib

    from reference.distributed import volume

    ddp = importlib.import_module(f"{package}.distributed.ddp")
    model = dp_training.build_model(0)
    wrapped = ddp.DDPBucketed(model, bucket_size_mb=bucket_size_mb)
    batch = dp_training.batches(1, 4)[0]
    with volume.count_collectives() as log:
        dp_training.loss_of(wrapped, batch).backward()
        wrapped.finish_gradient_synchronization()
    sizes = [(p.numel() * 4, p.grad is not None) for p in model.parameters() if p.requires_grad]
    return {"calls": log.calls, "sizes": sizes}


@pytest.mark.exercise("8.2")
@pytest.mark.points(2)
@pytest.mark.parametrize("bucket_size_mb", (None, 0.002, 1e-9))
def test_ddp_bucketed_packs_in_reverse_order(impl, clusters, bucket_size_mb):
    """Buckets fill from the last parameter back, close before they would exceed the size, one
    all-reduce each; a bucket whose parameters all lack a gradient (the unused one alone) is not sent."""
    out = clusters(2).run(_bucket_layout, impl.package, bucket_size_mb)[0]
    limit = float("inf") if bucket_size_mb is None else bucket_size_mb * 2**20
    expected, size, used = [], 0, False
    for nbytes, has_grad in reversed(out["sizes"]):
        if size and size + nbytes > limit:
            expected += [size] if used else []
            size, used = 0, False
        size, used = size + nbytes, used or has_grad
    expected += [size] if used else []
    assert sorted(c[1] for c in out["calls"]) == sorted(expected)
    assert all(op == "all_reduce" for op, _ in out["calls"])
    assert len(out["calls"]) == len(expected)


@pytest.mark.exercise("8.2")
@pytest.mark.points(1)
def test_ddp_bucketed_tied_weight(impl, clusters):
    for out in clusters(2).run(_hook_calls, impl.package, "bucketed"):
        assert out["calls"] == [("all_reduce", 36)]
        torch.testing.assert_close(out["grad"], out["expected"], atol=1e-6, rtol=1e-6)


@pytest.mark.exercise("8.2")
@pytest.mark.points(1)
def test_ddp_bucketed_rejects_bad_sizes(impl, clusters):
    def bad(size):
        return clusters(2).run(_bucket_layout, impl.package, size)

    with pytest.raises(ValueError, match="bucket_size_mb"):
        bad(0)
    with pytest.raises(TypeError, match="bucket_size_mb"):
        bad("1")
