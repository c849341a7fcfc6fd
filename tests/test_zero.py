"""Chapter 8: ZeRO stages 1, 2 and 3, optimizer offloading, and their memory and communication.

Oracles: one process training on the whole global batch (same seed, data, AdamW) to 1e-5 after
several steps on 2 and 4 gloo ranks, for a model with a tied embedding and 3,133 (odd) trainable
parameters plus an unused and a frozen one; stage 1 against torch's DDP + `ZeroRedundancyOptimizer`,
stage 3 against FSDP2 (`fully_shard` on every layer and the root, on a CPU gloo device mesh); the
paper's 7.5B-parameter, 64-GPU numbers (Rajbhandari et al., 2020, figure 1); the bytes each rank
holds, counted from its tensors, equal to the formulas with the padding of flat sharding; and the
bytes each rank sends, by the ring formula and as really sent by Chapter 7's counted collectives.

Plausible bugs these tests catch (planted by `python -m tests.run_mutants --chapter 8`):
- 8.3 shard size rounded down (the last elements are lost); no padding (n * S < total); offsets one tensor late.
- 8.4 stage 1 counted as sharding gradients, stage 2 as sharding parameters; the baseline sharded.
- 8.5 stage 3 counted like stage 2; (n - 1) / n left out.
- 8.6 gradients summed, not averaged; the shard's slice off by one rank; the updated shards never
  gathered; stage 2 keeping the full gradients; a changed learning rate not passed to the inner optimizer.
- 8.7 no re-gather before backward (freed parameters read as garbage); gradients not divided by n;
  the full parameters not freed after forward; every rank keeping shard 0.
- 8.8 a shared storage counted twice; optimizer state left out.
"""

from __future__ import annotations

import pytest
import torch

from reference.distributed import dp_training
from reference.distributed.launch import Cluster
from reference.distributed.zero import flat_shard_layout as reference_layout

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


# ----------------------------------------------------------------------------------------------
# 8.3 flat sharding, 8.4 memory formulas, 8.5 communication formulas
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("8.3")
@pytest.mark.points(2)
@pytest.mark.parametrize(("numels", "world", "expected"), [
    ([3, 4], 2, ([0, 3], 4, 8)),
    ([3, 4], 4, ([0, 3], 2, 8)),
    ([5], 3, ([0], 2, 6)),
    ([6, 6], 3, ([0, 6], 4, 12)),
    ([1, 1, 1], 1, ([0, 1, 2], 3, 3)),
    ([0], 4, ([0], 1, 4)),
])  # fmt: skip
def test_flat_shard_layout_known_values(impl, numels, world, expected):
    assert impl.distributed.zero.flat_shard_layout(numels, world) == expected


@pytest.mark.exercise("8.3")
@pytest.mark.points(1)
def test_flat_shard_layout_covers_everything_with_less_than_n_padding(impl):
    for world in range(1, 9):
        for numels in ([1], [7, 13], [3133], [2, 2, 2, 2], [11, 0, 5]):
            offsets, shard, padded = impl.distributed.zero.flat_shard_layout(numels, world)
            total = sum(numels)
            assert padded == shard * world and total <= padded < total + world or (total == 0 and padded == world)
            assert offsets == [sum(numels[:i]) for i in range(len(numels))]


@pytest.mark.exercise("8.3")
@pytest.mark.points(1)
def test_flat_shard_layout_rejects_bad_input(impl):
    with pytest.raises(ValueError, match="world_size"):
        impl.distributed.zero.flat_shard_layout([3], 0)
    with pytest.raises(ValueError, match="numels"):
        impl.distributed.zero.flat_shard_layout([3, -1], 2)


@pytest.mark.exercise("8.4")
@pytest.mark.points(2)
def test_zero_memory_paper_example(impl):
    """Rajbhandari et al. (2020), figure 1: Ψ = 7.5B, N_d = 64, K = 12: 120, 31.4, 16.6 and 1.88 GB."""
    gb = [impl.distributed.zero.zero_memory_bytes(stage, 7.5e9, 64)["total"] / 1e9 for stage in range(4)]
    assert gb == pytest.approx([120.0, 31.40625, 16.640625, 1.875], rel=1e-12)


@pytest.mark.exercise("8.4")
@pytest.mark.points(1)
def test_zero_memory_by_part(impl):
    f = impl.distributed.zero.zero_memory_bytes
    assert f(1, 100, 4) == {"parameters": 200, "gradients": 200, "optimizer_states": 300, "total": 700}
    assert f(2, 100, 4, k=8, param_bytes=4, grad_bytes=4) == {"parameters": 400, "gradients": 100, "optimizer_states": 200, "total": 700}
    assert f(3, 100, 5, k=8, param_bytes=4, grad_bytes=4)["total"] == pytest.approx(320)
    assert f(0, 100, 8)["total"] == 1600
    with pytest.raises(ValueError, match="stage"):
        f(4, 100, 4)


@pytest.mark.exercise("8.5")
@pytest.mark.points(2)
def test_zero_communication_formula(impl):
    f = impl.distributed.zero.zero_communication_bytes
    assert f(0, 1000, 4) == pytest.approx(2 * 3 / 4 * 4000)
    assert f(1, 1000, 4) == f(2, 1000, 4) == f(0, 1000, 4)
    assert f(3, 1000, 4) == pytest.approx(1.5 * f(0, 1000, 4))
    assert f(3, 1000, 1) == 0
    assert f(2, 10, 2, element_bytes=2) == pytest.approx(20)
    with pytest.raises(ValueError, match="stage"):
        f(-1, 10, 2)


# ----------------------------------------------------------------------------------------------
# 8.6 ZeroOptimizer (stages 1 and 2, offloading)
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("8.6")
@pytest.mark.points(3)
@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("strategy", ("zero1", "zero2", "zero2_offload"))
def test_zero_optimizer_matches_single_process(impl, clusters, world, strategy):
    _assert_matches_single(clusters(world).run(dp_training.train_steps, strategy, impl.package, bucket_size_mb=None))


@pytest.mark.exercise("8.6")
@pytest.mark.points(2)
@pytest.mark.parametrize("strategy", ("zero1", "zero2"))
def test_zero_optimizer_small_buckets_match_single_process(impl, clusters, strategy):
    _assert_matches_single(clusters(4).run(dp_training.train_steps, strategy, impl.package, bucket_size_mb=0.002))


@pytest.mark.exercise("8.6")
@pytest.mark.points(2)
def test_zero_stage1_matches_torch_zero_redundancy_optimizer(impl, clusters):
    ours = clusters(2).run(dp_training.train_steps, "zero1", impl.package, oracle=False)
    theirs = clusters(2).run(dp_training.train_steps, "torch_zero1", impl.package, oracle=False)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a["params"], b["params"], **TOL)


def _schedule_and_groups(package: str) -> dict:
    """A ZeroOptimizer is a torch Optimizer: groups, add_param_group, a learning rate changed between steps."""
    import importlib

    import torch.distributed as dist

    from reference.training.numerics import AdamW

    zero = importlib.import_module(f"{package}.distributed.zero")
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3, 3))
    ref_a, ref_b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    opt = zero.ZeroOptimizer([{"params": [a], "lr": 0.1}], AdamW, lr=0.5, weight_decay=0.0)
    opt.add_param_group({"params": [b], "weight_decay": 0.2})
    ref = AdamW([{"params": [ref_a], "lr": 0.1}], lr=0.5, weight_decay=0.0)
    ref.add_param_group({"params": [ref_b], "weight_decay": 0.2})
    rank, world = dist.get_rank(), dist.get_world_size()
    for step in range(3):
        for o in (opt, ref):
            o.zero_grad()
            for g in o.param_groups:
                g["lr"] = g["lr"] * 0.5  # a schedule sets the outer groups' lr
        ((a * (rank + 1)).sum() + (b**2).sum() * (rank + 1)).backward()
        mean = sum(r + 1 for r in range(world)) / world
        ((ref_a * mean).sum() + (ref_b**2).sum() * mean).backward()
        opt.step()
        ref.step()
    return {"groups": len(opt.param_groups), "a": (a.detach(), ref_a.detach()), "b": (b.detach(), ref_b.detach()),
            "is_optimizer": isinstance(opt, torch.optim.Optimizer)}


@pytest.mark.exercise("8.6")
@pytest.mark.points(2)
def test_zero_optimizer_is_an_optimizer_with_groups_and_schedules(impl, clusters):
    for out in clusters(2).run(_schedule_and_groups, impl.package):
        assert out["is_optimizer"] and out["groups"] == 2
        for ours, theirs in (out["a"], out["b"]):
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def _padded(numels: list[int], world: int) -> tuple[int, int]:
    """(sum of padded sizes, sum of shard sizes) of these units, by the reference's layout."""
    layouts = [reference_layout([n], world) for n in numels]
    return sum(lay[2] for lay in layouts), sum(lay[1] for lay in layouts)


@pytest.mark.exercise("8.6")
@pytest.mark.points(3)
@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("strategy", ("zero1", "zero2", "zero2_offload"))
def test_zero_optimizer_memory_matches_formula(impl, clusters, world, strategy):
    """fp32, K = 8: stage 1 holds 4 Ψ + 4 Ψ + 8 Ψ / n, stage 2 4 Ψ + 12 Ψ / n, with flat padding;
    offloading adds the shard's master copy (4 Ψ / n) on the host beside its gradient and state."""
    out = clusters(world).run(dp_training.memory_and_traffic, strategy, impl.package)[0]
    psi = out["psi"]
    padded, shard = _padded(out["unit_numels"], world)
    memory = out["memory"]
    assert memory["parameters"] == 4 * padded
    assert memory["gradients"] == (4 * psi if strategy == "zero1" else 4 * shard)
    assert memory["optimizer_states"] == (12 if strategy.endswith("offload") else 8) * shard
    assert memory["host"] == (16 * shard if strategy.endswith("offload") else 0)
    stage = 1 if strategy == "zero1" else 2
    formula = impl.distributed.zero.zero_memory_bytes(stage, psi, world, k=8, param_bytes=4, grad_bytes=4)
    if not strategy.endswith("offload"):
        assert abs(memory["parameters"] + memory["gradients"] + memory["optimizer_states"] - formula["total"]) <= 16 * world


@pytest.mark.exercise("8.6")
@pytest.mark.points(2)
@pytest.mark.parametrize("strategy", ("zero1", "zero2"))
def test_zero_optimizer_sends_what_the_formula_says(impl, clusters, strategy):
    """Per step a reduce-scatter and an all-gather of the padded flat buffer: 2 (n - 1) / n * 4 Ψ bytes,
    checked against the bytes Chapter 7's ring collectives really sent."""
    world = 4
    out = clusters(world).run(dp_training.memory_and_traffic, strategy, impl.package, course_collectives=True)[0]
    padded, _ = _padded(out["unit_numels"], world)
    assert sorted(op for op, _ in out["calls"]) == ["all_gather", "reduce_scatter"]
    assert out["bytes_sent"] == pytest.approx(2 * (world - 1) / world * 4 * padded)
    assert out["p2p_bytes"] == pytest.approx(out["bytes_sent"])


# ----------------------------------------------------------------------------------------------
# 8.7 ShardedModule (stage 3)
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("8.7")
@pytest.mark.points(4)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_stage3_matches_single_process(impl, clusters, world):
    _assert_matches_single(clusters(world).run(dp_training.train_steps, "zero3", impl.package))


@pytest.mark.exercise("8.7")
@pytest.mark.points(2)
def test_stage3_matches_fsdp2(impl, clusters):
    ours = clusters(2).run(dp_training.train_steps, "zero3", impl.package, oracle=False)
    theirs = clusters(2).run(dp_training.train_steps, "fsdp2", impl.package, oracle=False)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a["params"], b["params"], **TOL)


@pytest.mark.exercise("8.7")
@pytest.mark.points(3)
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_stage3_memory_and_traffic(impl, clusters, world):
    """After backward a rank holds only shards: 16 Ψ / n with padding per unit. Per step each layer
    is gathered twice and its gradient reduce-scattered (3 passes); the root, gathered once for
    forward and backward, 2 passes."""
    out = clusters(world).run(dp_training.memory_and_traffic, "zero3", impl.package, course_collectives=True)[0]
    *layers, root = out["unit_numels"]
    padded_layers, _ = _padded(layers, world)
    padded_root, _ = _padded([root], world)
    _, shard = _padded(out["unit_numels"], world)
    memory = out["memory"]
    assert (memory["parameters"], memory["gradients"], memory["optimizer_states"]) == (4 * shard, 4 * shard, 8 * shard)
    # between forward and backward only the root is gathered: every layer was freed after its forward
    assert out["after_forward"]["parameters"] == 4 * shard + 4 * padded_root
    expected = (world - 1) / world * 4 * (3 * padded_layers + 2 * padded_root)
    assert out["bytes_sent"] == pytest.approx(expected)
    assert out["p2p_bytes"] == pytest.approx(expected)
    ops = [op for op, _ in out["calls"]]
    assert ops.count("all_gather") == 2 * len(layers) + 1 and ops.count("reduce_scatter") == len(layers) + 1


# ----------------------------------------------------------------------------------------------
# 8.8 memory accounting
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("8.8")
@pytest.mark.points(2)
@pytest.mark.parametrize("strategy", ("ddp", "zero1", "zero3"))
def test_memory_per_rank_counts_what_each_rank_holds(impl, clusters, strategy):
    world = 2
    ours = clusters(world).run(dp_training.memory_and_traffic, strategy, "reference", memory_package=impl.package)[0]
    psi = ours["psi"]
    padded, shard = _padded(ours["unit_numels"], world)
    expected = {
        "ddp": (4 * psi, 4 * psi, 8 * psi),
        "zero1": (4 * padded, 4 * psi, 8 * shard),
        "zero3": (4 * shard, 4 * shard, 8 * shard),
    }[strategy]
    memory = ours["memory"]
    assert (memory["parameters"], memory["gradients"], memory["optimizer_states"]) == expected


def _tied_memory(package: str) -> dict:
    import importlib

    from reference.training.numerics import AdamW

    zero = importlib.import_module(f"{package}.distributed.zero")
    torch.manual_seed(0)
    emb = torch.nn.Embedding(7, 3)
    head = torch.nn.Linear(3, 7, bias=False)
    head.weight = emb.weight
    model = torch.nn.Sequential(emb, head)
    opt = AdamW(model.parameters(), lr=0.1)
    model(torch.tensor([[1, 2]])).sum().backward()
    opt.step()
    report = zero.memory_per_rank(model, opt)
    return {"p": report.parameters, "g": report.gradients, "o": report.optimizer_states, "total": report.total}


@pytest.mark.exercise("8.8")
@pytest.mark.points(1)
def test_memory_per_rank_counts_a_tied_weight_once(impl, clusters):
    out = clusters(2).run(_tied_memory, impl.package)[0]
    assert (out["p"], out["g"], out["o"], out["total"]) == (84, 84, 168, 336)
