"""Chapter 6: checkpoints — `save_checkpoint` and `load_checkpoint`.

The central check is bit-exact resumption: train N steps straight; train k steps, save, build a
fresh model and optimiser, load, train N - k more; the losses and weights must be identical
(`torch.equal`), with dropout (PyTorch's global generator) and batches drawn from a
`torch.Generator` whose state the checkpoint carries. The training loop here uses PyTorch's own
`AdamW` and `cross_entropy`, so only the checkpoint code is under test. Also: paths and file
objects, a safe loader (`weights_only`: a pickled object's code never runs), and atomic saving
(a failed save leaves the previous checkpoint intact and no temporary file behind).

The 6.13 tests write their checkpoints with the reference `save_checkpoint` (harness), so that a
6.12 bug costs 6.12's points only; 6.12 is checked on the file it writes.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 6`):
- 6.12 written in place (not atomic); the generator's state not saved; a fresh RNG state saved
  instead of the global one; the optimiser's moments not saved.
- 6.13 unpickling arbitrary objects (weights_only=False); optimiser, generator or global RNG not
  restored; the iteration off by one.
"""

from __future__ import annotations

import io
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from reference.training.checkpoint import save_checkpoint as harness_save

VOCAB, SEQ = 32, 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one thread is several times faster than two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _TinyLM(nn.Module):
    """Embedding, dropout, a bias-free layer norm and a linear head: enough to have state and randomness."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.drop = nn.Dropout(0.2)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.drop(self.embed(ids))))


def _fresh(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = _TinyLM()
    return model, torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.1)


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, n: int) -> list[torch.Tensor]:
    corpus = torch.arange(400) * 7 % VOCAB
    losses = []
    for _ in range(n):
        starts = torch.randint(0, len(corpus) - SEQ - 1, (4,), generator=generator)
        windows = torch.stack([corpus[s : s + SEQ + 1] for s in starts.tolist()])
        logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), windows[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


# ----------------------------------------------------------------------------------------------
# 6.12 save
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("6.12")
@pytest.mark.points(2)
def test_save_writes_a_file_that_loads_safely(impl, tmp_path):
    model, opt = _fresh(0)
    _steps(model, opt, torch.Generator().manual_seed(0), 3)
    path = tmp_path / "ckpt.pt"
    impl.training.checkpoint.save_checkpoint(model, opt, 3, path)
    state = torch.load(path, weights_only=True)  # plain tensors and containers: no arbitrary pickles
    assert state["iteration"] == 3
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    assert state["optimizer"]["state"], "the optimiser's moments are saved"
    impl.training.checkpoint.save_checkpoint(model, opt, 4, str(path), config={"lr": 3e-2, "name": "tiny"})
    assert torch.load(path, weights_only=True)["config"] == {"lr": 3e-2, "name": "tiny"}
    torch.manual_seed(31)
    generator = torch.Generator().manual_seed(32)
    torch.randn(3, generator=generator)
    impl.training.checkpoint.save_checkpoint(model, opt, 5, path, generator=generator)
    rng = torch.load(path, weights_only=True)["rng"]
    assert torch.equal(rng["torch"], torch.get_rng_state()), "PyTorch's global RNG state is saved (dropout draws from it)"
    assert torch.equal(rng["generator"], generator.get_state()), "the batch generator's state is saved"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"], "no temporary files left behind"


@pytest.mark.exercise("6.12")
@pytest.mark.points(1)
def test_save_to_a_file_object(impl):
    model, opt = _fresh(1)
    buffer = io.BytesIO()
    impl.training.checkpoint.save_checkpoint(model, opt, 7, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["iteration"] == 7


class _Unsaveable(_TinyLM):
    """Its extra state cannot be serialised, so saving fails halfway."""

    def get_extra_state(self) -> object:
        return lambda: None

    def set_extra_state(self, state: object) -> None:
        pass


@pytest.mark.exercise("6.12")
@pytest.mark.points(2)
def test_save_is_atomic(impl, tmp_path):
    model, opt = _fresh(2)
    path = tmp_path / "ckpt.pt"
    impl.training.checkpoint.save_checkpoint(model, opt, 5, path)
    before = path.read_bytes()
    bad = _Unsaveable()
    bad_opt = torch.optim.AdamW(bad.parameters())
    with pytest.raises(Exception):
        impl.training.checkpoint.save_checkpoint(bad, bad_opt, 6, path)
    assert path.read_bytes() == before, "a failed save must leave the previous checkpoint intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"], "and no temporary file behind"


@pytest.mark.exercise("6.12")
@pytest.mark.points(1)
def test_save_rejects_a_bad_iteration(impl, tmp_path):
    model, opt = _fresh(3)
    with pytest.raises(ValueError, match="iteration"):
        impl.training.checkpoint.save_checkpoint(model, opt, -1, tmp_path / "c.pt")


# ----------------------------------------------------------------------------------------------
# 6.13 load
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("6.13")
@pytest.mark.points(3)
@pytest.mark.parametrize("as_file_object", [False, True])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(impl, tmp_path, as_file_object):
    total, cut = 12, 5
    model, opt = _fresh(10)
    straight = _steps(model, opt, torch.Generator().manual_seed(123), total)
    final_weights = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt = _fresh(10)
    generator = torch.Generator().manual_seed(123)
    first = _steps(model, opt, generator, cut)
    target = io.BytesIO() if as_file_object else tmp_path / "ckpt.pt"
    harness_save(model, opt, cut, target, generator=generator)
    _steps(model, opt, generator, 3)  # wander off: the load must undo this
    torch.manual_seed(999)

    model2, opt2 = _fresh(77)  # different initial weights, empty optimiser state
    generator2 = torch.Generator().manual_seed(5)
    if as_file_object:
        target.seek(0)
    assert impl.training.checkpoint.load_checkpoint(target, model2, opt2, generator=generator2) == cut
    rest = _steps(model2, opt2, generator2, total - cut)
    for i, (a, b) in enumerate(zip(straight, first + rest)):
        assert torch.equal(a, b), f"step {i}: loss {b.item()!r} after resuming, {a.item()!r} straight"
    for name, value in model2.state_dict().items():
        assert torch.equal(value, final_weights[name]), f"{name} differs after resuming"


@pytest.mark.exercise("6.13")
@pytest.mark.points(2)
def test_load_restores_weights_optimizer_and_iteration(impl, tmp_path):
    model, opt = _fresh(4)
    _steps(model, opt, torch.Generator().manual_seed(4), 4)
    path = tmp_path / "ckpt.pt"
    harness_save(model, opt, 4, path)
    model2, opt2 = _fresh(5)
    assert impl.training.checkpoint.load_checkpoint(path, model2, opt2) == 4
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    state, state2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert state.keys() == state2.keys()
    for key in state:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(state[key][name]), torch.as_tensor(state2[key][name]))
    model3, _ = _fresh(6)
    assert impl.training.checkpoint.load_checkpoint(str(path), model3, None) == 4, "weights only, for inference"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model3.state_dict().values()))


class _Payload:
    """Unpickling this runs code (it makes a folder): what `weights_only=True` must refuse."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.exercise("6.13")
@pytest.mark.points(2)
def test_load_never_unpickles_arbitrary_objects(impl, tmp_path):
    model, opt = _fresh(7)
    harness_save(model, opt, 2, tmp_path / "good.pt")
    assert impl.training.checkpoint.load_checkpoint(tmp_path / "good.pt", model, opt) == 2
    path, marker = tmp_path / "evil.pt", tmp_path / "the-pickle-ran-code"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": _Payload(str(marker)), "rng": {}}, path)
    with pytest.raises(Exception):
        impl.training.checkpoint.load_checkpoint(path, model, opt)
    assert not marker.exists(), "loading a checkpoint executed code from the file"
    torch.load(path, weights_only=False)  # the file does carry code: a plain unpickler runs it
    assert marker.is_dir()
