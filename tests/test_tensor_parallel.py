"""Chapter 9: Megatron-style tensor parallelism on real gloo processes.

Oracles: the dense layers and the dense `TransformerLM` (outputs and gradients to 1e-5 on 2 and 4
ranks, grouped-query attention included), PyTorch's `torch.distributed.tensor.parallel`
ColwiseParallel / RowwiseParallel on a CPU device mesh, `F.cross_entropy` on the gathered logits,
and `reference.inference.generate` decoding the dense model. Communication is counted with
`reference.distributed.p2p.count_traffic` against 8 b s h (t - 1) / t elements per layer.

The worker functions run on every rank and take the implementation's package name (see
tests/test_collectives.py); the launcher, the byte counter, the dense model and the generator are
the harness, from `reference`. One cluster per world size, shared with tests/test_pipeline.py
for the session (tests/model_parallel_clusters.py).

Plausible bugs these tests catch (planted by `python -m tests.run_mutants --chapter 9`):
- 9.1 f that all-reduces in the forward too; a backward that does not reduce.
- 9.2 g without the reduce; g that also reduces the gradient (t times too large).
- 9.3 column shard along the wrong dim; `f` left out (input gradient of one rank's columns only);
  gather in the wrong order.
- 9.4 row shard along the wrong dim; the bias added before the reduce (t times); no reduce.
- 9.5 ids outside the shard not masked; wrong offset.
- 9.6 a rank-local max; the target logit not reduced; softmax gradient without the one-hot.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.distributed as dist
from torch.nn import functional as F

from tests.model_parallel_clusters import shared_clusters

ATOL = 1e-5


def _tp(package: str):
    return importlib.import_module(f"{package}.distributed.tensor_parallel")


def _dense(seed: int, world: int, tie: bool = False):
    from reference.models.llama import TransformerLM

    torch.manual_seed(seed)
    heads, kv = (8, 4) if world == 4 else (4, 2)  # grouped-query attention at both sizes
    return TransformerLM(vocab_size=64, context_length=32, d_model=64, num_layers=2, num_heads=heads, d_ff=96,
                         num_kv_heads=kv, tie_embeddings=tie).double()


def _data(seed: int, batch: int = 2, seq: int = 10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (batch, seq + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


# ----------------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------------


def _run_f_g(package: str) -> dict:
    tp = _tp(package)
    rank = dist.get_rank()
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(rank)).requires_grad_()
    w = torch.full((3, 5), float(rank + 1), dtype=torch.float64)
    y = tp.CopyToParallel.apply(x, None, "torch")
    (y * w).sum().backward()
    fx, fgrad = y.detach(), x.grad.clone()
    x.grad = None
    z = tp.ReduceFromParallel.apply(x, None, "torch")
    (z * w).sum().backward()
    return dict(x=x.detach(), f_out=fx, f_grad=fgrad, g_out=z.detach(), g_grad=x.grad.clone())


def _run_linear(package: str) -> dict:
    """Column then row (the Megatron MLP without the activation), ours against dense, f64."""
    tp = _tp(package)
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 8).double(), torch.nn.Linear(8, 5).double()
    x = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
    col = tp.ColumnParallelLinear.from_dense(a)
    row = tp.RowParallelLinear.from_dense(b)
    out = row(torch.tanh(col(x)))
    out.pow(2).sum().backward()
    ours = dict(out=out.detach(), x_grad=x.grad.clone(), col_w=col.weight.grad, col_b=col.bias.grad,
                row_w=row.weight.grad, row_b=row.bias.grad, col_shape=tuple(col.weight.shape), row_shape=tuple(row.weight.shape))
    x.grad = None
    dense = b(torch.tanh(a(x)))
    dense.pow(2).sum().backward()
    theirs = dict(out=dense.detach(), x_grad=x.grad.clone(), a_w=a.weight.grad.clone(), a_b=a.bias.grad.clone(),
                  b_w=b.weight.grad.clone(), b_b=b.bias.grad.clone())
    # gathered column output, scattered row input
    x.grad = None
    colg = tp.ColumnParallelLinear.from_dense(a, gather_output=True)
    rows = tp.RowParallelLinear.from_dense(b, input_is_parallel=False)
    out2 = rows(colg(x))
    out2.sum().backward()
    x2 = x.grad.clone()
    x.grad = None
    b(a(x)).sum().backward()
    return dict(ours=ours, theirs=theirs, out2=out2.detach(), dense2=b(a(x)).detach(), x2=x2, dense_x2=x.grad.clone())


def _run_torch_tp(package: str) -> dict:
    """Our column/row pair against ColwiseParallel / RowwiseParallel on a CPU device mesh."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = _tp(package)
    world = dist.get_world_size()
    torch.manual_seed(1)
    dense = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6))
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    col, row = tp.ColumnParallelLinear.from_dense(dense[0]), tp.RowParallelLinear.from_dense(dense[2])
    ours = row(F.relu(col(x)))
    ours.sum().backward()
    mesh = init_device_mesh("cpu", (world,))
    theirs_model = parallelize_module(dense, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    theirs = theirs_model(x)
    theirs.sum().backward()
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
    return dict(ours=ours.detach(), theirs=local(theirs).detach(),
                grads=[(col.weight.grad, local(dense[0].weight.grad)), (col.bias.grad, local(dense[0].bias.grad)),
                       (row.weight.grad, local(dense[2].weight.grad)), (row.bias.grad, local(dense[2].bias.grad))])


def _run_embedding_and_loss(package: str) -> dict:
    tp = _tp(package)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(3)
    emb = torch.nn.Embedding(16, 4).double()
    ids = torch.tensor([[0, 3, 4, 15, 8], [7, 7, 12, 1, 9]])
    ours = tp.VocabParallelEmbedding.from_dense(emb)
    out = ours(ids)
    (out * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    dense = emb(ids)
    (dense * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    width = 16 // world
    emb_grad = emb.weight.grad[rank * width : (rank + 1) * width]
    # vocabulary-parallel cross-entropy against F.cross_entropy on the full logits
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(3, 5, 16, generator=g, dtype=torch.float64) * 4).requires_grad_()
    targets = torch.randint(0, 16, (3, 5), generator=g)
    local = logits.detach()[..., rank * width : (rank + 1) * width].clone().requires_grad_()
    loss = tp.vocab_parallel_cross_entropy(local, targets)
    (loss * torch.linspace(0.5, 2, 5, dtype=torch.float64)).sum().backward()
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(3, 5)
    (ref * torch.linspace(0.5, 2, 5, dtype=torch.float64)).sum().backward()
    return dict(emb=(out.detach(), dense.detach()), emb_grad=(ours.weight.grad, emb_grad),
                loss=(loss.detach(), ref.detach()), loss_grad=(local.grad, logits.grad[..., rank * width : (rank + 1) * width]))


def _run_lm(package: str, tie: bool) -> dict:
    tp = _tp(package)
    world = dist.get_world_size()
    dense = _dense(5, world, tie)
    ids, targets = _data(6)
    sharded = tp.TensorParallelLM.from_dense(dense)
    logits = sharded(ids)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    grads_gathered = tp.gather_parameters(sharded, grads=True)
    sharded.zero_grad()
    loss = sharded.loss(ids, targets)
    loss.backward()
    grads_parallel_loss = tp.gather_parameters(sharded, grads=True)
    params = tp.gather_parameters(sharded)
    dense_logits = dense(ids)
    dense_loss = F.cross_entropy(dense_logits.flatten(0, 1), targets.flatten())
    dense_loss.backward()
    dense_grads = {n: p.grad.clone() for n, p in dense.named_parameters(remove_duplicate=False)}
    return dict(logits=(logits.detach(), dense_logits.detach()), loss=(loss.detach().double(), dense_loss.detach()),
                grads=grads_gathered, grads_parallel_loss=grads_parallel_loss, dense_grads=dense_grads,
                params=params, dense_params={k: v.detach() for k, v in dense.state_dict().items()},
                config=sharded.config, dense_config=sharded.dense_config)


def _run_generate(package: str) -> dict:
    from reference.inference.generate import KVCache, generate

    tp = _tp(package)
    world = dist.get_world_size()
    dense = _dense(7, world).float()
    sharded = tp.TensorParallelLM.from_dense(dense)
    cache = KVCache.for_model(sharded, 2)
    prompts = [[1, 2, 3, 4], [5, 6]]
    ours = generate(sharded, prompts, 6).sequences
    theirs = generate(dense, prompts, 6).sequences
    return dict(ours=ours, theirs=theirs, cache_heads=cache.keys.shape[2])


def _run_traffic(package: str, batch: int, seq: int) -> dict:
    """Bytes this rank sends in one layer's forward + backward with the course's ring collectives."""
    from reference.distributed.p2p import count_traffic

    tp = _tp(package)
    world = dist.get_world_size()
    dense = _dense(8, world).float()
    sharded = tp.TensorParallelLM.from_dense(dense, comm="ring")
    layer = sharded.layers[0]
    x = torch.randn(batch, seq, 64, requires_grad=True)
    from reference.attention import causal_mask

    with count_traffic() as traffic:
        layer(x, mask=causal_mask(seq)).sum().backward()
    return dict(bytes=traffic.bytes_sent, messages=traffic.messages_sent)


def _bad_world(package: str) -> str:
    tp = _tp(package)
    dense = _dense(9, 2)  # 4 heads, 2 kv heads
    try:
        tp.TensorParallelLM.from_dense(dense)
    except ValueError as error:
        return str(error)
    return "no error"


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clusters(request):
    return shared_clusters(request)


def close(a, b, where: str, atol: float = ATOL) -> None:
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=atol, msg=lambda m: f"{where}: {m}")


# ----------------------------------------------------------------------------------------------
# 9.1 f, 9.2 g
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("9.1")
@pytest.mark.points(2)
def test_f_is_identity_forward_all_reduce_backward(impl, clusters):
    results = clusters(2).run(_run_f_g, impl.package)
    for rank, r in enumerate(results):
        close(r["f_out"], r["x"], f"rank {rank}: f forward must be the identity")
        close(r["f_grad"], torch.full((3, 5), 3.0, dtype=torch.float64), f"rank {rank}: f backward sums the gradients 1 + 2")


@pytest.mark.exercise("9.2")
@pytest.mark.points(2)
def test_g_is_all_reduce_forward_identity_backward(impl, clusters):
    results = clusters(2).run(_run_f_g, impl.package)
    total = results[0]["x"] + results[1]["x"]
    for rank, r in enumerate(results):
        close(r["g_out"], total, f"rank {rank}: g forward sums over ranks")
        close(r["g_grad"], torch.full((3, 5), float(rank + 1), dtype=torch.float64), f"rank {rank}: g backward is the identity")


# ----------------------------------------------------------------------------------------------
# 9.3 column-parallel, 9.4 row-parallel linear
# ----------------------------------------------------------------------------------------------


def _check_linear(results, world):
    for rank, r in enumerate(results):
        o, t = r["ours"], r["theirs"]
        close(o["out"], t["out"], f"rank {rank}: output")
        close(o["x_grad"], t["x_grad"], f"rank {rank}: input gradient")
        close(o["col_w"], t["a_w"].chunk(world, 0)[rank], f"rank {rank}: column weight gradient")
        close(o["col_b"], t["a_b"].chunk(world, 0)[rank], f"rank {rank}: column bias gradient")
        close(o["row_w"], t["b_w"].chunk(world, 1)[rank], f"rank {rank}: row weight gradient")
        close(o["row_b"], t["b_b"], f"rank {rank}: row bias gradient")
        assert o["col_shape"] == (8 // world, 6) and o["row_shape"] == (5, 8 // world)
        close(r["out2"], r["dense2"], f"rank {rank}: gathered column output into a scattering row layer")
        close(r["x2"], r["dense_x2"], f"rank {rank}: gather/scatter gradients")


@pytest.mark.exercise("9.3")
@pytest.mark.points(3)
@pytest.mark.parametrize("world", (2, 4))
def test_column_parallel_linear_matches_dense(impl, clusters, world):
    _check_linear(clusters(world).run(_run_linear, impl.package), world)


@pytest.mark.exercise("9.4")
@pytest.mark.points(3)
@pytest.mark.parametrize("world", (2, 4))
def test_row_parallel_linear_matches_dense(impl, clusters, world):
    _check_linear(clusters(world).run(_run_linear, impl.package), world)


@pytest.mark.exercise("9.3")
@pytest.mark.points(2)
def test_column_and_row_match_torch_colwise_rowwise_parallel(impl, clusters):
    for rank, r in enumerate(clusters(2).run(_run_torch_tp, impl.package)):
        close(r["ours"], r["theirs"], f"rank {rank}: output against parallelize_module", atol=1e-6)
        for i, (ours, theirs) in enumerate(r["grads"]):
            close(ours, theirs, f"rank {rank}: gradient {i} against torch's shards", atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 9.5 vocabulary-parallel embedding, 9.6 vocabulary-parallel cross-entropy
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("9.5")
@pytest.mark.points(3)
@pytest.mark.parametrize("world", (2, 4))
def test_vocab_parallel_embedding_matches_dense(impl, clusters, world):
    for rank, r in enumerate(clusters(world).run(_run_embedding_and_loss, impl.package)):
        close(*r["emb"], f"rank {rank}: embedding output")
        close(*r["emb_grad"], f"rank {rank}: embedding gradient of its own rows")


@pytest.mark.exercise("9.6")
@pytest.mark.points(4)
@pytest.mark.parametrize("world", (2, 4))
def test_vocab_parallel_cross_entropy_matches_f_cross_entropy(impl, clusters, world):
    for rank, r in enumerate(clusters(world).run(_run_embedding_and_loss, impl.package)):
        close(*r["loss"], f"rank {rank}: per-token losses", atol=1e-5)
        close(*r["loss_grad"], f"rank {rank}: gradient on its logit slice", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The sharded TransformerLM
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("9.3")
@pytest.mark.points(3)
@pytest.mark.parametrize("world,tie", [(2, False), (4, False), (2, True)])
def test_sharded_transformer_lm_matches_dense(impl, clusters, world, tie):
    results = clusters(world).run(_run_lm, impl.package, tie)
    for rank, r in enumerate(results):
        close(*r["logits"], f"rank {rank}: logits")
        close(*r["loss"], f"rank {rank}: vocabulary-parallel loss")
        assert set(r["grads"]) == set(r["dense_grads"])
        for name, grad in r["dense_grads"].items():
            close(r["grads"][name], grad, f"rank {rank}: gradient of {name} (gathered logits)")
            close(r["grads_parallel_loss"][name], grad, f"rank {rank}: gradient of {name} (vocabulary-parallel loss)")
        for name, value in r["dense_params"].items():
            assert torch.equal(r["params"][name], value), f"{name} gathered back"
        assert r["config"]["num_heads"] * world == r["dense_config"]["num_heads"]
        assert r["config"]["num_kv_heads"] * world == r["dense_config"]["num_kv_heads"]


@pytest.mark.exercise("9.3")
@pytest.mark.points(2)
def test_sharded_lm_decodes_like_the_dense_model(impl, clusters):
    results = clusters(2).run(_run_generate, impl.package)
    for rank, r in enumerate(results):
        assert torch.equal(r["ours"], r["theirs"]), f"rank {rank}: greedy tokens differ"
        assert r["cache_heads"] == 1, "a per-rank cache holds this rank's key/value heads (2 / 2)"


@pytest.mark.exercise("9.4")
@pytest.mark.points(2)
@pytest.mark.parametrize("world", (2, 4))
def test_communication_per_layer_is_8bsh_t_minus_1_over_t(impl, clusters, world):
    batch, seq, h = 2, 8, 64
    for rank, r in enumerate(clusters(world).run(_run_traffic, impl.package, batch, seq)):
        assert r["bytes"] == 8 * batch * seq * h * (world - 1) // world * 4, f"rank {rank}: {r}"
        assert r["messages"] == 4 * 2 * (world - 1), "four ring all-reduces of 2 (t - 1) steps"


@pytest.mark.exercise("9.3")
@pytest.mark.points(1)
def test_refuses_a_group_that_does_not_divide_the_heads(impl, clusters):
    messages = clusters(4).run(_bad_world, impl.package)
    assert all("divisible" in m and "num_kv_heads" in m for m in messages), messages
