"""Chapter 10: activation checkpointing — the recompute wrapper, sqrt(n) segments, the saved-tensor meter.

Oracles: the plain backward pass and `torch.utils.checkpoint.checkpoint(use_reentrant=False)`
(gradients equal to 1e-6), hand-counted saved bytes of single operations, and Chen et al.'s
memory model (k - 1) * boundary + longest segment * layer.

The plausible bugs these tests catch (planted by `python -m tests.run_mutants --chapter 10`):
- 10.7 the forward run with a graph (nothing saved); inputs not detached in the recompute (the
  graph grows back into earlier layers); the random state not restored (dropout differs);
  gradients of the inputs not returned.
- 10.8 floor(sqrt(n)) segments; the remainder put in the last segment; a layer lost at the end.
- 10.9 every saved tensor counted (views of one storage twice); parameters counted; frees not
  subtracted (peak = total); the peak not kept.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from reference.models.llama import TransformerLM


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(num_layers: int = 9, seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(vocab_size=97, context_length=32, d_model=32, num_layers=num_layers, num_heads=4, num_kv_heads=2, d_ff=64)


def _grads(model, ids, boundaries, checkpoint_fn, forward) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    forward(model, ids, boundaries, checkpoint_fn).pow(2).mean().backward()
    return [p.grad.clone() for p in model.parameters()]


# ----------------------------------------------------------------------------------------------
# 10.7 checkpoint
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("10.7")
@pytest.mark.points(5)
@pytest.mark.parametrize("segments", [1, 3, 9])
def test_checkpointed_gradients_equal_plain_and_torch(impl, segments):
    from reference.checkpointing import checkpointed_forward, segment_boundaries

    model, ids = _model(), torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(1))
    bounds = segment_boundaries(9, segments)
    plain = _grads(model, ids, None, None, checkpointed_forward)
    ours = _grads(model, ids, bounds, impl.checkpointing.checkpoint, checkpointed_forward)
    theirs = _grads(model, ids, bounds, functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False), checkpointed_forward)
    for a, b, c in zip(ours, plain, theirs):
        assert torch.allclose(a, b, atol=1e-6, rtol=0) and torch.allclose(a, c, atol=1e-6, rtol=0)


@pytest.mark.exercise("10.7")
@pytest.mark.points(3)
def test_checkpoint_input_gradients_dropout_and_arguments(impl):
    """Input gradients (gradcheck in float64), a non-tensor argument, and dropout recomputed with the same mask."""
    w = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)

    def f(x, y, power):
        return torch.tanh(x @ w + y) ** power

    x, y = torch.randn(4, 5, dtype=torch.float64, requires_grad=True), torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: impl.checkpointing.checkpoint(f, a, b, 2), (x, y))
    w.grad = None  # gradcheck's backward passes accumulated into it
    out = impl.checkpointing.checkpoint(f, x, y, 3)
    assert out.requires_grad and torch.equal(out.detach(), f(x, y, 3).detach())
    out.sum().backward()
    assert w.grad is not None and torch.allclose(w.grad, torch.autograd.grad(f(x, y, 3).sum(), w)[0])

    dropout = torch.nn.Dropout(0.5)
    z = torch.randn(200, requires_grad=True)
    torch.manual_seed(3)
    impl.checkpointing.checkpoint(lambda t: dropout(t * 2.0), z).sum().backward()
    torch.manual_seed(3)
    expected = torch.autograd.grad(dropout(z * 2.0).sum(), z)[0]
    assert torch.equal(z.grad, expected), "the recompute must draw the dropout mask of the forward pass"


@pytest.mark.exercise("10.7")
@pytest.mark.points(3)
def test_checkpoint_keeps_only_its_inputs(impl):
    """Inside the wrapper nothing but the input is saved: a chain of 20 exp's saves 20 tensors plainly, 1 checkpointed."""
    x = torch.randn(1000, requires_grad=True)

    def chain(t):
        for _ in range(20):
            t = torch.exp(t * 0.01)
        return t

    from reference.checkpointing import SavedTensorMeter

    with SavedTensorMeter() as plain:
        y = chain(x)
    with SavedTensorMeter() as ours:
        z = impl.checkpointing.checkpoint(chain, x)
    assert plain.saved >= 20 * 4000 and ours.saved == 4000
    z.sum().backward()
    assert torch.allclose(x.grad, torch.autograd.grad(y.sum(), x)[0], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 10.8 segments
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("10.8")
@pytest.mark.points(2)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9, 10, 16, 17, 50])
def test_sqrt_segments(impl, n):
    bounds = impl.checkpointing.segment_boundaries(n)
    assert len(bounds) == math.ceil(math.sqrt(n))
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    for k in range(1, n + 1):
        sizes = [b - a for a, b in impl.checkpointing.segment_boundaries(n, k)]
        assert len(sizes) == k and sum(sizes) == n and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.exercise("10.8")
@pytest.mark.points(1)
def test_segments_refuse_bad_counts(impl):
    assert impl.checkpointing.segment_boundaries(7, 2) == [(0, 4), (4, 7)]
    for args in [(0,), (4, 5), (4, 0)]:
        with pytest.raises(ValueError):
            impl.checkpointing.segment_boundaries(*args)


# ----------------------------------------------------------------------------------------------
# 10.9 the saved-tensor meter
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("10.9")
@pytest.mark.points(3)
def test_meter_counts_known_operations(impl):
    x = torch.randn(256, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(256, 256))
    with impl.checkpointing.SavedTensorMeter(exclude=[w]) as meter:
        y = torch.exp(x)  # saves its output: 1 KiB
        z = y @ w  # saves y (already counted) and w (excluded)
        v = x.view(16, 16).sin() + x.view(16, 16).cos()  # saves two views of x: one storage, 1 KiB
    assert meter.saved == 2048 and meter.peak == 2048 and meter.live == 2048
    (z.sum() + v.sum()).backward()
    assert meter.live == 0 and meter.peak == 2048, "the backward pass frees what it used"


@pytest.mark.exercise("10.9")
@pytest.mark.points(3)
def test_peak_follows_the_memory_model(impl):
    """0, sqrt(n) and n checkpoints of a 9-layer model: the measured peak of saved bytes equals
    (k - 1) * boundary + longest * layer (Chen et al., 2016; see memory_theory), with layer and
    other measured once on 1- and 2-layer models."""
    from reference.checkpointing import checkpoint, checkpointed_forward, memory_theory, segment_boundaries

    def peak(num_layers, bounds):
        model = _model(num_layers)
        ids = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(0))
        with impl.checkpointing.SavedTensorMeter(exclude=list(model.parameters())) as meter:
            checkpointed_forward(model, ids, bounds, checkpoint).sum().backward()
        assert meter.live == 0
        return meter.peak

    layer = peak(2, None) - peak(1, None)
    other = peak(1, None) - layer
    boundary = 2 * 32 * 32 * 4  # (batch, seq, d_model) float32
    for bounds in (None, segment_boundaries(9), segment_boundaries(9, 9)):
        measured = peak(9, bounds)
        predicted = memory_theory(9, bounds, layer, boundary, other)
        assert abs(measured - predicted) <= 0.05 * predicted, (bounds, measured, predicted)
    assert peak(9, segment_boundaries(9)) < 0.6 * peak(9, None)
