"""Chapter 6: the numerics of a training step — log-softmax, cross-entropy, AdamW, the cosine
schedule, gradient clipping.

Oracles from PyTorch: `torch.log_softmax`, `torch.nn.functional.cross_entropy` (and its
gradient), `torch.optim.AdamW` (100 steps, equal to 1e-6), `torch.optim.lr_scheduler.CosineAnnealingLR`
and `torch.nn.utils.clip_grad_norm_`, each over many random cases. Tolerance 1e-6 unless stated.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 6`):
- 6.6 max not subtracted; log of the softmax (underflows); max or sum over the last dim, not `dim`.
- 6.7 sum instead of mean; wrong sign; the neighbouring id's probability; loss_mask ignored or
  inverted; half precision not computed in float32.
- 6.8 no bias correction of m or of v, or v's without the square root; L2 penalty instead of
  decoupled decay; decay not scaled by lr; eps inside the square root or before the bias
  correction; beta1 and 1 - beta1 swapped; v from |g|; the step count not kept.
- 6.9 warm-up off by one; the 1/2 missing; decay to 0 instead of the minimum; cosine counted from 0.
- 6.10 eps missing (gradients of norm about 1e-6, where eps decides the scale); sum of the norms
  instead of the joint norm; small gradients scaled up; the norm after clipping returned.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

TOL = {"atol": 1e-6, "rtol": 1e-6}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one thread is several times faster than two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rand(*shape: int, seed: int = 0, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return scale * torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# 6.6 log-softmax, 6.7 cross-entropy
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("6.6")
@pytest.mark.points(2)
def test_log_softmax_matches_torch(impl):
    for seed in range(30):  # random shapes, dims and scales up to 1e4
        g = torch.Generator().manual_seed(seed)
        shape = tuple(int(n) for n in torch.randint(1, 7, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g))
        scale = [1.0, 30.0, 1e4][seed % 3]
        x = _rand(*shape, seed=seed, scale=scale)
        dim = int(torch.randint(-len(shape), len(shape), (1,), generator=g))
        out = impl.training.numerics.log_softmax(x, dim=dim)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.isfinite(out).all(), "large logits must not overflow"
        torch.testing.assert_close(out, torch.log_softmax(x, dim=dim), atol=1e-5 * max(1.0, scale / 1e3), rtol=1e-6)


@pytest.mark.exercise("6.6")
@pytest.mark.points(1)
def test_log_softmax_by_hand_and_shift_invariance(impl):
    x = torch.tensor([[0.0, math.log(3.0)], [1000.0, 1000.0]], dtype=torch.float64)
    expected = torch.tensor([[math.log(1 / 4), math.log(3 / 4)], [math.log(0.5), math.log(0.5)]], dtype=torch.float64)
    torch.testing.assert_close(impl.training.numerics.log_softmax(x, dim=-1), expected, atol=1e-12, rtol=0)
    y = _rand(3, 5, seed=1, dtype=torch.float64)
    torch.testing.assert_close(impl.training.numerics.log_softmax(y + 123.0, 1), impl.training.numerics.log_softmax(y, 1))
    with pytest.raises(TypeError, match="int64"):
        impl.training.numerics.log_softmax(torch.arange(4), dim=0)


@pytest.mark.exercise("6.7")
@pytest.mark.points(2)
def test_cross_entropy_matches_torch(impl):
    for seed in range(12):  # shapes (7,), (3, 5), (2, 3, 4); scales 1, 100, 1e4
        g = torch.Generator().manual_seed(seed)
        vocab = int(torch.randint(2, 50, (1,), generator=g))
        leading = [(7,), (3, 5), (2, 3, 4)][seed % 3]
        scale = [1.0, 100.0, 1e4][seed // 4]
        logits = _rand(*leading, vocab, seed=seed, scale=scale).requires_grad_()
        targets = torch.randint(0, vocab, leading, generator=g)
        ours = impl.training.numerics.cross_entropy(logits, targets)
        theirs = F.cross_entropy(logits.detach().reshape(-1, vocab), targets.reshape(-1))
        assert ours.shape == () and torch.isfinite(ours)
        torch.testing.assert_close(ours, theirs, atol=1e-5 * max(1.0, scale / 1e3), rtol=1e-6)
        ours.backward()
        reference = logits.detach().clone().requires_grad_()
        F.cross_entropy(reference.reshape(-1, vocab), targets.reshape(-1)).backward()
        torch.testing.assert_close(logits.grad, reference.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.exercise("6.7")
@pytest.mark.points(2)
def test_cross_entropy_with_loss_mask_matches_ignore_index(impl):
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        logits = _rand(4, 9, 11, seed=seed, scale=5.0)
        targets = torch.randint(0, 11, (4, 9), generator=g)
        mask = torch.rand(4, 9, generator=g) < 0.4
        mask[0, 0] = True
        ours = impl.training.numerics.cross_entropy(logits, targets, mask)
        theirs = F.cross_entropy(logits.reshape(-1, 11), targets.masked_fill(~mask, -100).reshape(-1), ignore_index=-100)
        torch.testing.assert_close(ours, theirs, **TOL)
        torch.testing.assert_close(impl.training.numerics.cross_entropy(logits, targets, mask.long()), theirs, **TOL)


@pytest.mark.exercise("6.7")
@pytest.mark.points(1)
def test_cross_entropy_by_hand_and_low_precision(impl):
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([1, 0])
    p_first = math.exp(2) / (math.exp(2) + 3)
    expected = (math.log(4) - math.log(p_first)) / 2
    assert impl.training.numerics.cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    big = _rand(6, 300, seed=3, scale=50.0)
    t = torch.randint(0, 300, (6,), generator=torch.Generator().manual_seed(3))
    half = impl.training.numerics.cross_entropy(big.bfloat16(), t)
    assert torch.isfinite(half)
    torch.testing.assert_close(half.float(), F.cross_entropy(big.bfloat16().float(), t), atol=1e-4, rtol=1e-5)


@pytest.mark.exercise("6.7")
@pytest.mark.points(1)
def test_cross_entropy_rejects_bad_targets(impl):
    logits = torch.zeros(2, 3, 5)
    with pytest.raises(ValueError, match="5"):
        impl.training.numerics.cross_entropy(logits, torch.full((2, 3), 5))
    with pytest.raises(ValueError, match="targets"):
        impl.training.numerics.cross_entropy(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="targets"):
        impl.training.numerics.cross_entropy(logits, torch.zeros(2, 3))


# ----------------------------------------------------------------------------------------------
# 6.8 AdamW
# ----------------------------------------------------------------------------------------------


def _params(seed: int) -> list[torch.Tensor]:
    return [_rand(5, 4, seed=seed), _rand(4, seed=seed + 100), _rand(3, 2, 2, seed=seed + 200)]


def _grad_fn(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """A gradient that depends on the parameters (a quadratic bowl) plus a step-dependent kick."""
    return [2 * p + torch.sin(torch.full_like(p, float(step)) + torch.arange(p.numel()).reshape(p.shape)) for p in params]


def _run(optimizer_cls, params: list[torch.Tensor], steps: int, **kwargs) -> list[torch.Tensor]:
    params = [p.clone().requires_grad_() for p in params]
    opt = optimizer_cls(params, **kwargs)
    for step in range(steps):
        for p, g in zip(params, _grad_fn(step, [q.detach() for q in params])):
            p.grad = g
        opt.step()
    return [p.detach() for p in params]


ADAMW_SETTINGS = [
    {},  # torch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2
    {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1},
    {"lr": 3e-3, "betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.0},
    {"lr": 1e-1, "betas": (0.0, 0.99), "eps": 1e-3, "weight_decay": 0.5},
]


@pytest.mark.exercise("6.8")
@pytest.mark.points(4)
def test_adamw_tracks_torch_for_100_steps(impl):
    for kwargs in ADAMW_SETTINGS:
        for seed in range(3):
            start = _params(seed)
            ours = _run(impl.training.numerics.AdamW, start, 100, **kwargs)
            theirs = _run(torch.optim.AdamW, start, 100, **kwargs)
            for a, b in zip(ours, theirs):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=lambda m, kw=kwargs: f"AdamW({kw}): {m}")


@pytest.mark.exercise("6.8")
@pytest.mark.points(1)
def test_adamw_is_an_optimizer_with_param_groups_and_scheduled_lr(impl):
    start = _params(7)
    groups = lambda ps: [{"params": ps[:2], "weight_decay": 0.2}, {"params": ps[2:], "lr": 5e-2}]
    runs = []
    for cls in (impl.training.numerics.AdamW, torch.optim.AdamW):
        params = [p.clone().requires_grad_() for p in start]
        opt = cls(groups(params), lr=1e-2, weight_decay=0.0)
        assert isinstance(opt, torch.optim.Optimizer)
        for step in range(30):
            for group in opt.param_groups:
                group["lr"] *= 0.95  # what a schedule does
            for p, g in zip(params, _grad_fn(step, [q.detach() for q in params])):
                p.grad = g
            params[1].grad = None if step % 3 == 0 else params[1].grad  # parameters without a gradient are skipped
            opt.step()
        runs.append(params)
    for a, b in zip(*runs):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=0)


@pytest.mark.exercise("6.8")
@pytest.mark.points(1)
def test_adamw_step_with_a_closure_minimises(impl):
    x = _rand(64, 3, seed=5)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    runs = []
    for cls in (impl.training.numerics.AdamW, torch.optim.AdamW):
        w = torch.zeros(3, requires_grad=True)
        opt = cls([w], lr=0.1, weight_decay=0.0)

        def closure():
            opt.zero_grad()
            loss = ((x @ w - y) ** 2).mean()
            loss.backward()
            return loss.detach()

        losses = [opt.step(closure).item() for _ in range(60)]
        assert not w.grad_fn, "the update is not recorded by autograd"
        runs.append((losses, w.detach()))
    assert runs[0][0][-1] < 0.1 * runs[0][0][0]
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5, abs=1e-7)
    torch.testing.assert_close(runs[0][1], runs[1][1], atol=1e-6, rtol=0)


@pytest.mark.exercise("6.8")
@pytest.mark.points(2)
def test_adamw_state_dict_round_trip_resumes_exactly(impl):
    AdamW = impl.training.numerics.AdamW
    start = _params(11)
    straight = _run(AdamW, start, 40, lr=1e-2, weight_decay=0.1)

    params = [p.clone().requires_grad_() for p in start]
    opt = AdamW(params, lr=1e-2, weight_decay=0.1)
    for step in range(25):
        for p, g in zip(params, _grad_fn(step, [q.detach() for q in params])):
            p.grad = g
        opt.step()
    saved = opt.state_dict()
    fresh = [p.detach().clone().requires_grad_() for p in params]
    opt2 = AdamW(fresh, lr=1.0, weight_decay=0.0)  # the state dict brings back the hyper-parameters too
    opt2.load_state_dict(saved)
    for step in range(25, 40):
        for p, g in zip(fresh, _grad_fn(step, [q.detach() for q in fresh])):
            p.grad = g
        opt2.step()
    for a, b in zip(fresh, straight):
        assert torch.equal(a.detach(), b), "resuming from the state dict must give the same numbers"


@pytest.mark.exercise("6.8")
@pytest.mark.points(1)
def test_adamw_rejects_bad_hyperparameters(impl):
    for kwargs, named in [
        ({"lr": -1.0}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ]:
        with pytest.raises(ValueError, match=named):
            impl.training.numerics.AdamW([torch.zeros(2, requires_grad=True)], **kwargs)


# ----------------------------------------------------------------------------------------------
# 6.9 cosine schedule
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("6.9")
@pytest.mark.points(2)
def test_cosine_schedule_known_values(impl):
    # max 1, min 0.1, warm-up 7, cycle 21: warm-up i/7, then 0.1 + 0.45 (1 + cos(pi (i - 7) / 14)), then 0.1
    expected = [i / 7 for i in range(7)] + [0.1 + 0.45 * (1 + math.cos(math.pi * (i - 7) / 14)) for i in range(7, 22)] + [0.1] * 3
    got = [impl.training.numerics.cosine_schedule(i, 1.0, 0.1, 7, 21) for i in range(25)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[0] == 0.0 and got[7] == pytest.approx(1.0) and got[14] == pytest.approx(0.55) and got[21] == pytest.approx(0.1)


@pytest.mark.exercise("6.9")
@pytest.mark.points(2)
def test_cosine_schedule_matches_torch_schedulers(impl):
    for max_lr, min_lr, warmup, cycle in [(1e-3, 1e-4, 10, 100), (6e-4, 0.0, 0, 50), (0.5, 0.5, 3, 9), (2.0, 0.3, 25, 26)]:
        param = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([param], lr=max_lr)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cycle - warmup, eta_min=min_lr)
        for it in range(warmup, cycle + 1):  # torch's closed form for the decay phase
            assert impl.training.numerics.cosine_schedule(it, max_lr, min_lr, warmup, cycle) == pytest.approx(
                cosine._get_closed_form_lr()[0], rel=1e-9, abs=1e-12
            )
            opt.step()
            cosine.step()
        for it in range(warmup):
            assert impl.training.numerics.cosine_schedule(it, max_lr, min_lr, warmup, cycle) == pytest.approx(
                max_lr * it / warmup
            )
        for it in (cycle + 1, cycle + 10, 10 * cycle):
            assert impl.training.numerics.cosine_schedule(it, max_lr, min_lr, warmup, cycle) == min_lr


@pytest.mark.exercise("6.9")
@pytest.mark.points(1)
def test_cosine_schedule_rejects_bad_arguments(impl):
    for args, named in [
        ((-1, 1.0, 0.1, 5, 10), "it"),
        ((0, 1.0, 0.1, 10, 10), "cosine_cycle_iters"),
        ((0, 1.0, 2.0, 5, 10), "min_learning_rate"),
        ((0, 1.0, 0.1, -2, 10), "warmup_iters"),
    ]:
        with pytest.raises(ValueError, match=named):
            impl.training.numerics.cosine_schedule(*args)


# ----------------------------------------------------------------------------------------------
# 6.10 gradient clipping
# ----------------------------------------------------------------------------------------------


def _with_grads(seed: int, scale: float) -> list[torch.nn.Parameter]:
    shapes = [(6, 5), (5,), (2, 3, 4), (1,)]
    params = [torch.nn.Parameter(_rand(*s, seed=seed + i)) for i, s in enumerate(shapes)]
    for i, p in enumerate(params):
        p.grad = _rand(*p.shape, seed=seed + 50 + i, scale=scale)
    params.append(torch.nn.Parameter(torch.ones(3)))  # no gradient: skipped
    return params


@pytest.mark.exercise("6.10")
@pytest.mark.points(3)
def test_clip_grad_norm_matches_torch(impl):
    for seed in range(10):
        scale = [1e-3, 0.1, 1.0, 10.0, 1e3][seed % 5]
        max_norm = [0.01, 0.5, 1.0, 5.0, 100.0][seed // 2]
        ours, theirs = _with_grads(seed, scale), _with_grads(seed, scale)
        total = impl.training.numerics.clip_grad_norm_(ours, max_norm)
        expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        torch.testing.assert_close(torch.as_tensor(total, dtype=torch.float32), expected, atol=0, rtol=1e-6)
        for a, b in zip(ours, theirs):
            assert (a.grad is None) == (b.grad is None)
            if a.grad is not None:
                torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-6)
        after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours if p.grad is not None]))
        assert after <= max_norm * (1 + 1e-6)


@pytest.mark.exercise("6.10")
@pytest.mark.points(1)
def test_clip_grad_norm_leaves_small_gradients_alone_and_takes_one_tensor(impl):
    params = _with_grads(0, 1e-3)
    before = [p.grad.clone() for p in params if p.grad is not None]
    total = impl.training.numerics.clip_grad_norm_(params, 10.0)
    assert float(total) < 10.0
    assert all(torch.equal(a, p.grad) for a, p in zip(before, [p for p in params if p.grad is not None]))
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    assert float(impl.training.numerics.clip_grad_norm_(w, 1.0)) == pytest.approx(5.0)
    torch.testing.assert_close(w.grad, torch.tensor([0.6, 0.8]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="max_l2_norm"):
        impl.training.numerics.clip_grad_norm_(w, 0.0)


@pytest.mark.exercise("6.7")
@pytest.mark.points(1)
def test_cross_entropy_with_float_weights_divides_by_their_sum(impl):
    """Weights of 0.02 everywhere give the plain mean, not the mean times their sum 0.3 (a `clamp(min=1)`
    on the weight sum); other float weights give sum(w * nll) / sum(w)."""
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    nll = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), reduction="none").reshape(3, 5)
    for weights in (torch.full((3, 5), 0.02), torch.rand(3, 5) * 0.05, torch.rand(3, 5) * 4):  # sums 0.3, < 1, > 1
        expected = (nll * weights).sum() / weights.sum()
        torch.testing.assert_close(impl.training.numerics.cross_entropy(logits, targets, weights), expected)


@pytest.mark.exercise("6.10")
@pytest.mark.points(1)
def test_clip_grad_norm_divides_by_the_norm_plus_eps(impl):
    """The task's scale is max_l2_norm / (||g|| + 1e-6): for a norm near 1e-6 the eps halves the step."""
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3e-6, 4e-6])  # norm 5e-6
    total = impl.training.numerics.clip_grad_norm_(w, 1e-6)
    assert float(total) == pytest.approx(5e-6, rel=1e-6)
    torch.testing.assert_close(w.grad, torch.tensor([3e-6, 4e-6]) * (1e-6 / 6e-6), atol=0, rtol=1e-5)
    ours, theirs = _with_grads(3, 1e-7), _with_grads(3, 1e-7)
    impl.training.numerics.clip_grad_norm_(ours, 1e-7)
    torch.nn.utils.clip_grad_norm_(theirs, 1e-7)
    for a, b in zip(ours, theirs):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=0, rtol=1e-5)
