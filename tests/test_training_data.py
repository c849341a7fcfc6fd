"""Chapter 6: data feeding — `get_batch`, random windows of a token array (in memory or a
`numpy.memmap` on disk) as inputs and next-token targets.

A dataset of consecutive integers makes every window self-describing: its first token is its start.
Checks: shapes and dtype, the one-token shift, every start in [0, n - context_length - 1] drawn
and none outside (about uniformly: a chi-square test), memmaps of uint16 (ids above 32,767
included) and int32, repeatability with a generator, and errors that name the bad argument.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 6`):
the last window never drawn; targets not shifted; uint16 ids cast to int16; the generator ignored.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one thread is several times faster than two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.exercise("6.11")
@pytest.mark.points(2)
def test_get_batch_windows_and_shift(impl):
    data = np.arange(1000, dtype=np.int64)
    inputs, targets = impl.training.data.get_batch(data, 8, 16, "cpu", _gen())
    assert inputs.shape == targets.shape == (8, 16)
    assert inputs.dtype == targets.dtype == torch.long and inputs.device.type == "cpu"
    for row_in, row_tg in zip(inputs, targets):
        start = int(row_in[0])
        assert row_in.tolist() == list(range(start, start + 16)), "a window is a contiguous slice"
        assert row_tg.tolist() == list(range(start + 1, start + 17)), "targets are the inputs shifted by one"


@pytest.mark.exercise("6.11")
@pytest.mark.points(2)
def test_get_batch_draws_every_start_uniformly(impl):
    n, context = 60, 10  # starts 0 .. 49
    data = np.arange(n, dtype=np.int32)
    g = _gen(1)
    starts = Counter()
    for _ in range(100):
        inputs, _ = impl.training.data.get_batch(data, 50, context, "cpu", g)
        starts.update(inputs[:, 0].tolist())
    assert set(starts) == set(range(n - context)), "every start in [0, n - context_length - 1], and no other"
    expected = 5000 / (n - context)
    chi2 = sum((c - expected) ** 2 / expected for c in starts.values())
    assert chi2 < 100, f"chi-square {chi2:.0f} with 49 degrees of freedom: starts are not uniform"  # p < 1e-4


@pytest.mark.exercise("6.11")
@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_get_batch_reads_a_memmap(impl, tmp_path, dtype):
    values = (np.arange(5000) * 13 + 40000) % (2**16)  # ids above 32,767: uint16 must not turn negative
    path = tmp_path / "tokens.bin"
    values.astype(dtype).tofile(path)
    data = np.memmap(path, dtype=dtype, mode="r")
    inputs, targets = impl.training.data.get_batch(data, 4, 32, "cpu", _gen(2))
    assert inputs.dtype == torch.long and (inputs >= 0).all()
    for row_in, row_tg in zip(inputs.tolist(), targets.tolist()):
        start = int(np.flatnonzero(values == row_in[0])[0])
        assert row_in == values[start : start + 32].tolist() and row_tg == values[start + 1 : start + 33].tolist()


@pytest.mark.exercise("6.11")
@pytest.mark.points(1)
def test_get_batch_is_repeatable_with_a_generator_and_allows_the_longest_context(impl):
    data = np.arange(300, dtype=np.uint16)
    first = impl.training.data.get_batch(data, 5, 20, "cpu", _gen(3))
    again = impl.training.data.get_batch(data, 5, 20, torch.device("cpu"), _gen(3))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    inputs, targets = impl.training.data.get_batch(data, 3, 299, "cpu", _gen(4))  # one possible window
    assert inputs.tolist() == [list(range(299))] * 3 and targets.tolist() == [list(range(1, 300))] * 3


@pytest.mark.exercise("6.11")
@pytest.mark.points(1)
@pytest.mark.parametrize(
    ("args", "named"),
    [
        ((np.arange(100), 4, 100, "cpu"), "context_length"),
        ((np.arange(100), 0, 10, "cpu"), "batch_size"),
        ((np.arange(100).reshape(10, 10), 2, 4, "cpu"), "dataset"),
        ((np.arange(100.0), 2, 4, "cpu"), "dataset"),
        ((np.arange(100), 2, 4, "not-a-device"), "device"),
    ],
)
def test_get_batch_rejects_bad_arguments(impl, args, named):
    with pytest.raises(ValueError, match=named):
        impl.training.data.get_batch(*args)
