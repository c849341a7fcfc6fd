"""Chapter 10: floating-point formats, rounding, loss scaling and the mixed-precision step.

Oracles from PyTorch: `torch.finfo` (incl. float8_e4m3fn and float8_e5m2), the bit patterns of
every 8- and 16-bit code viewed as that dtype, `tensor.to(dtype)` for rounding, and
`torch.amp.GradScaler("cpu")` for the loss scaler's scale sequence and skipped steps.

The plausible bugs these tests catch (planted by `python -m tests.run_mutants --chapter 10`):
- 10.1 bias 2^(e-1) instead of 2^(e-1) - 1; E4M3 treated as IEEE (max 240); no mantissa in the
  smallest subnormal; eps 2^-(m+1).
- 10.2 subnormals given the implicit 1; subnormal exponent 0 - bias; E4M3's top exponent read as inf;
  the sign ignored.
- 10.3 truncation instead of rounding; ties away from zero; no subnormals (flush or extra precision);
  overflow saturating in IEEE formats; E4M3 overflowing to inf.
- 10.4 growth one step late; the count of good steps not restarted by an overflow or by growth;
  the step taken despite an overflow; gradients multiplied by the scale.
- 10.5 gradients unscaled in half precision (underflow again); master weights not copied back;
  the update applied to the half weights; a skipped step still copies.
- 10.6 master copy forgotten; moments counted in half precision.
"""

from __future__ import annotations

import math

import pytest
import torch

from reference.training.numerics import AdamW

FORMAT_NAMES = ("fp32", "fp16", "bf16", "fp8_e5m2", "fp8_e4m3")
INT_VIEW = {8: torch.uint8, 16: torch.int16, 32: torch.int32}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _all_codes(fmt) -> torch.Tensor:
    return torch.arange(2**fmt.bits, dtype=torch.int32).to(INT_VIEW[fmt.bits]).view(fmt.dtype).double()


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


# ----------------------------------------------------------------------------------------------
# 10.1 format limits
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("10.1")
@pytest.mark.points(3)
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_format_limits_match_finfo(impl, name):
    fmt = impl.precision.FORMATS[name]
    limits, info = impl.precision.format_limits(fmt), torch.finfo(fmt.dtype)
    assert limits.max == info.max and limits.smallest_normal == info.smallest_normal == info.tiny
    assert limits.eps == info.eps
    assert limits.bias == 2 ** (fmt.exponent_bits - 1) - 1


@pytest.mark.exercise("10.1")
@pytest.mark.points(2)
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_smallest_subnormal_is_the_first_code(impl, name):
    """The smallest subnormal is the pattern 0...01; half of it rounds to zero, the next pattern is twice it."""
    fmt = impl.precision.FORMATS[name]
    limits = impl.precision.format_limits(fmt)
    first = torch.tensor([1, 2], dtype=torch.int32).to(INT_VIEW[fmt.bits]).view(fmt.dtype).double()
    assert limits.smallest_subnormal == float(first[0]) and float(first[1]) == 2 * limits.smallest_subnormal
    assert limits.min_exponent == 1 - limits.bias and 2.0**limits.max_exponent <= limits.max < 2.0 ** (limits.max_exponent + 1)


@pytest.mark.exercise("10.1")
@pytest.mark.points(1)
def test_format_limits_of_a_custom_format(impl):
    """A format torch does not have (e3m2, IEEE): bias 3, max 1.75 * 2^3, subnormal 2^-4."""
    fmt = impl.precision.FloatFormat("e3m2", 3, 2, torch.float32)
    limits = impl.precision.format_limits(fmt)
    assert (limits.bias, limits.max, limits.smallest_normal, limits.smallest_subnormal, limits.eps) == (3, 14.0, 0.25, 0.0625, 0.25)
    with pytest.raises(ValueError, match="fmt"):
        impl.precision.format_limits("fp64")


# ----------------------------------------------------------------------------------------------
# 10.2 decoding a bit pattern
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("10.2")
@pytest.mark.points(4)
@pytest.mark.parametrize("name", ("fp16", "bf16", "fp8_e5m2", "fp8_e4m3"))
def test_decode_every_code_like_torch(impl, name):
    fmt = impl.precision.FORMATS[name]
    expected = _all_codes(fmt).tolist()
    codes = range(2**fmt.bits) if fmt.bits == 8 else list(range(0, 2**16, 7)) + list(range(0, 2**10)) + list(range(0xFC00, 2**16))
    for code in codes:
        got = impl.precision.decode(code, fmt)
        assert _same(got.value, expected[code]), (name, hex(code), got, expected[code])
        assert got.kind == ("nan" if math.isnan(expected[code]) else "inf" if math.isinf(expected[code]) else
                            "zero" if expected[code] == 0 else "subnormal" if abs(expected[code]) < torch.finfo(fmt.dtype).tiny
                            else "normal")


@pytest.mark.exercise("10.2")
@pytest.mark.points(2)
def test_decode_fields_of_known_values(impl):
    p = impl.precision
    one = p.decode(0x3C00, "fp16")
    assert (one.sign, one.exponent_field, one.mantissa_field, one.kind, one.value) == (0, 15, 0, "normal", 1.0)
    assert p.decode(0xC000, "fp16").value == -2.0
    assert p.decode(0x0001, "fp16").value == 2.0**-24 and p.decode(0x03FF, "fp16").value == 1023 * 2.0**-24
    assert p.decode(0x7E, "fp8_e4m3").value == 448.0 and p.decode(0x7F, "fp8_e4m3").kind == "nan"
    assert p.decode(0x7C, "fp8_e5m2").kind == "inf" and p.decode(0x7B, "fp8_e5m2").value == 57344.0
    for code in torch.randint(0, 2**31, (2000,), generator=torch.Generator().manual_seed(0)).tolist() + [1, 0x7F800000, 0x00800000]:
        expected = float(torch.tensor([code], dtype=torch.int32).view(torch.float32))
        assert _same(p.decode(code, "fp32").value, expected)
        assert _same(p.decode(code + 2**31, "fp32").value, -expected)
    with pytest.raises(ValueError, match="bits"):
        p.decode(256, "fp8_e4m3")


# ----------------------------------------------------------------------------------------------
# 10.3 rounding into a format
# ----------------------------------------------------------------------------------------------


def _values(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spread = torch.randn(40000, generator=g) * 10.0 ** torch.randint(-46, 39, (40000,), generator=g).float()
    specials = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1.0, -1.0, 65504.0, 65519.0, 65520.0, 1e6, 448.0,
                             464.0, 480.0, 500.0, -1e9, 57344.0, 61439.0, 61440.0, 3.4e38, 2.0**-24, 2.0**-25, 2.0**-26])
    return torch.cat([spread, specials])


def _midpoints(fmt) -> torch.Tensor:
    """Exact halfway points between neighbouring values (and a hair either side): ties decide these."""
    values = _all_codes(fmt)
    values = torch.unique(values[values.isfinite()]).float()
    mid = ((values[1:].double() + values[:-1].double()) / 2).float()
    return torch.cat([mid, torch.nextafter(mid, torch.tensor(math.inf)), torch.nextafter(mid, torch.tensor(-math.inf))])


@pytest.mark.exercise("10.3")
@pytest.mark.points(4)
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_round_equals_torch_conversion(impl, name):
    fmt = impl.precision.FORMATS[name]
    x = _values() if fmt.bits == 32 else torch.cat([_values(), _midpoints(fmt)])
    got, expected = impl.precision.round_to_format(x, fmt), x.to(fmt.dtype).float()
    assert got.dtype == torch.float32 and got.shape == x.shape
    same = (got == expected) | (got.isnan() & expected.isnan())
    assert same.all(), f"{name}: {x[~same][:5].tolist()} -> {got[~same][:5].tolist()}, torch {expected[~same][:5].tolist()}"
    assert (torch.signbit(got) == torch.signbit(expected))[~expected.isnan()].all(), "the sign of zero is kept"


@pytest.mark.exercise("10.3")
@pytest.mark.points(2)
def test_round_known_cases(impl):
    """Ties to even, subnormals, overflow to inf (fp16) and saturation (E4M3)."""
    p = impl.precision
    r = lambda values, name: p.round_to_format(torch.tensor(values, dtype=torch.float64), name).tolist()  # noqa: E731
    assert r([2049.0, 2051.0, 2050.0, 2048.0 + 1.5], "fp16") == [2048.0, 2052.0, 2050.0, 2050.0]
    assert r([2.0**-25, 1.5 * 2.0**-24, 3 * 2.0**-26], "fp16") == [0.0, 2.0**-23, 2.0**-24]
    assert r([65519.0, 65520.0, -1e5], "fp16") == [65504.0, math.inf, -math.inf]
    assert r([470.0, 1e9, math.inf, -math.inf], "fp8_e4m3") == [448.0, 448.0, 448.0, -448.0]
    assert r([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8], "bf16") == [1.0, 1.0 + 2.0**-6]
    with pytest.raises(TypeError, match="float32 or float64"):
        p.round_to_format(torch.ones(3, dtype=torch.float16), "fp8_e4m3")


# ----------------------------------------------------------------------------------------------
# 10.4 loss scaler
# ----------------------------------------------------------------------------------------------


def _overflow_pattern(steps: int, seed: int) -> list[bool]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, generator=g) < [0.05, 0.2, 0.5][seed % 3]).tolist()


def _drive(step_fn, pattern):
    """Feed one parameter a finite or an infinite gradient per step; record the scale and whether it moved."""
    p = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([p], lr=1.0)
    scales, stepped = [], []
    for overflow in pattern:
        with torch.no_grad():
            p.zero_()  # a tiny unscaled update must show
        before = p.detach().clone()
        p.grad = torch.tensor([math.inf if overflow else 1.0, 2.0, math.nan if overflow and len(scales) % 2 else 3.0])
        scale = step_fn(optimizer)
        scales.append(scale)
        stepped.append(not torch.equal(before, p.detach()))
    return scales, stepped


@pytest.mark.exercise("10.4")
@pytest.mark.points(5)
@pytest.mark.parametrize("seed", range(6))
def test_dynamic_scaler_matches_gradscaler(impl, seed):
    settings = [dict(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=3),
                dict(init_scale=1024.0, growth_factor=3.0, backoff_factor=0.25, growth_interval=1),
                dict(init_scale=7.0, growth_factor=1.5, backoff_factor=0.3, growth_interval=5)][seed % 3]
    pattern = _overflow_pattern(60, seed)
    torch_scaler = torch.amp.GradScaler("cpu", **settings)
    ours = impl.precision.LossScaler(settings["init_scale"], growth_factor=settings["growth_factor"],
                                     backoff_factor=settings["backoff_factor"], growth_interval=settings["growth_interval"])

    def torch_step(opt):
        torch_scaler.scale(torch.tensor(1.0))  # GradScaler creates its scale on the first call
        torch_scaler.step(opt)
        torch_scaler.update()
        return torch_scaler.get_scale()

    def our_step(opt):
        ours.scale(torch.tensor(1.0))
        ours.step(opt)
        ours.update()
        return ours.get_scale()

    want_scales, want_stepped = _drive(torch_step, pattern)
    got_scales, got_stepped = _drive(our_step, pattern)
    assert got_stepped == want_stepped == [not o for o in pattern]
    assert got_scales == pytest.approx(want_scales, rel=1e-6)


@pytest.mark.exercise("10.4")
@pytest.mark.points(2)
def test_unscale_divides_and_reports(impl):
    scaler = impl.precision.LossScaler(8.0)
    p = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([p], lr=0.5)
    loss = (p * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum()
    scaled = scaler.scale(loss)
    assert float(scaled.detach()) == 8 * float(loss.detach())
    scaled.backward()
    assert scaler.unscale_(optimizer) is False
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert scaler.step(optimizer) is True  # no second unscale
    assert torch.equal(p.detach(), torch.tensor([0.5, 0.0, -0.5, -1.0]))
    scaler.update()
    p.grad = torch.tensor([1.0, math.inf, 0.0, 0.0])
    assert scaler.step(optimizer) is False
    scaler.update()
    assert scaler.get_scale() == 4.0


@pytest.mark.exercise("10.4")
@pytest.mark.points(2)
def test_static_scaler_keeps_its_scale_but_skips_overflows(impl):
    ours = impl.precision.LossScaler(128.0, dynamic=False, growth_interval=1)

    def step(opt):
        ours.step(opt)
        ours.update()
        return ours.get_scale()

    pattern = [False, True, False, False, True]
    scales, stepped = _drive(step, pattern)
    assert scales == [128.0] * 5 and stepped == [not o for o in pattern]
    for bad in (dict(init_scale=0.0), dict(init_scale=1.0, growth_factor=1.0), dict(init_scale=1.0, backoff_factor=1.0)):
        with pytest.raises(ValueError):
            impl.precision.LossScaler(**bad)


# ----------------------------------------------------------------------------------------------
# 10.5 the mixed-precision step
# ----------------------------------------------------------------------------------------------


def _linear_model(weight: float = 2048.0) -> torch.nn.Module:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(weight)
    return model


@pytest.mark.exercise("10.5")
@pytest.mark.points(4)
def test_lost_update_is_kept_by_the_master_copy(impl):
    """w = 2048, each step's update is 1 (SGD, lr 1, gradient -1): fp16 cannot hold 2049; the master can."""
    p = impl.precision
    master = p.MasterWeights(_linear_model(), torch.float16)
    optimizer = torch.optim.SGD(master.params, lr=1.0)
    loss_fn = lambda m: -m(torch.ones(1, 1, dtype=torch.float16)).float().sum()  # noqa: E731  d loss / d w = -1
    for step in range(1, 6):
        result = p.mixed_precision_step(master, optimizer, loss_fn, p.LossScaler(2.0**10))
        assert result.stepped
        assert float(master.params[0]) == 2048.0 + step, "the float32 master accumulates every update"
        assert float(master.model.weight) == float(torch.tensor(2048.0 + step).half()), "the model holds the rounded master"
    assert master.model.weight.dtype == torch.float16 and master.params[0].dtype == torch.float32
    assert master.params[0].grad is None and master.model.weight.grad is None


@pytest.mark.exercise("10.5")
@pytest.mark.points(4)
def test_tiny_gradients_survive_scaling_and_are_unscaled_in_float32(impl):
    """A gradient of 1e-8 (below fp16's 6e-8 subnormal) becomes 2^16 * 1e-8 in fp16, then exactly 1e-8-ish in fp32."""
    p = impl.precision
    model = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.zeros_(model.weight)  # from 0 the update of 1e-8 is not rounded away in float32
    master = p.MasterWeights(model, torch.float16)
    optimizer = torch.optim.SGD(master.params, lr=1.0)
    before = master.params[0].detach().clone()
    x = torch.full((1, 4), 1e-8 * 2**10)
    loss_fn = lambda m: m(x.half()).float().sum() * 2.0**-10  # noqa: E731  d/dw = 1e-8
    result = p.mixed_precision_step(master, optimizer, loss_fn, p.LossScaler(2.0**16))
    change = before - master.params[0].detach()
    assert result.stepped and result.scale == 2.0**16
    assert torch.allclose(change, torch.full_like(change, 1e-8), rtol=2e-3, atol=0.0), change
    unscaled = impl.precision.MasterWeights(torch.nn.Linear(4, 1, bias=False).requires_grad_(True), torch.float16)
    before = unscaled.params[0].detach().clone()
    p.mixed_precision_step(unscaled, torch.optim.SGD(unscaled.params, lr=1.0), loss_fn, None)
    assert torch.equal(before, unscaled.params[0].detach()), "without a scale the gradient flushes to zero"


@pytest.mark.exercise("10.5")
@pytest.mark.points(3)
def test_overflowing_step_is_skipped_and_matches_adamw_otherwise(impl):
    p = impl.precision
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    reference_model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    reference_model.load_state_dict(model.state_dict())
    master = p.MasterWeights(model, torch.bfloat16)
    optimizer = AdamW(master.params, lr=1e-2)
    scaler = p.LossScaler(2.0**40, growth_interval=1)  # bf16 has float32's range: 2^40 * loss is fine
    x = torch.randn(32, 8)
    loss_fn = lambda m: m(x.to(torch.bfloat16)).float().pow(2).mean() * (math.inf if flag[0] else 1.0)  # noqa: E731
    flag = [True]
    state = [t.detach().clone() for t in master.params]
    result = p.mixed_precision_step(master, optimizer, loss_fn, scaler)
    assert not result.stepped and scaler.get_scale() == 2.0**39
    assert all(torch.equal(a, b.detach()) for a, b in zip(state, master.params)) and not optimizer.state
    flag[0] = False
    result = p.mixed_precision_step(master, optimizer, loss_fn, scaler)
    assert result.stepped and scaler.get_scale() == 2.0**40
    # the oracle: AdamW on float32 copies of the same weights with the bf16 model's gradients
    half = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    half.load_state_dict(reference_model.state_dict())
    half.to(torch.bfloat16)
    half(x.to(torch.bfloat16)).float().pow(2).mean().backward()
    oracle = [torch.nn.Parameter(t.detach().float().clone()) for t in reference_model.parameters()]
    for o, h in zip(oracle, half.parameters()):
        o.grad = h.grad.float()
    AdamW(oracle, lr=1e-2).step()
    for got, want, in_model in zip(master.params, oracle, master.model_params):
        assert torch.allclose(got.detach(), want.detach(), atol=1e-6, rtol=1e-5)
        assert torch.equal(in_model.detach(), got.detach().to(torch.bfloat16))


@pytest.mark.exercise("10.5")
@pytest.mark.points(3)
def test_mixed_precision_training_reaches_the_fp32_loss(impl):
    """llama-tiny, 6 steps of AdamW from the shipped weights on the same batches: fp16 with master
    weights and dynamic loss scaling, and bf16 autocast, end within 0.02 nats of float32 (the
    mean of the last 3 steps), while the fp16 model updated in fp16 does not."""
    result = impl.precision.compare_training(steps=6, batch_size=2, seq_len=32,
                                             runs=("fp32", "fp16_master", "bf16_autocast"))
    runs = result["runs"]
    fp32 = sum(runs["fp32"]["losses"][-3:]) / 3
    for name in ("fp16_master", "bf16_autocast"):
        assert abs(sum(runs[name]["losses"][-3:]) / 3 - fp32) < 0.02, (name, runs[name]["losses"], runs["fp32"]["losses"])
    assert runs["fp16_master"]["skipped_steps"] == [] and runs["fp16_master"]["scales"][0] == 2.0**16


# ----------------------------------------------------------------------------------------------
# 10.6 memory of mixed-precision Adam
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("10.6")
@pytest.mark.points(2)
def test_adam_memory_is_16_bytes_per_parameter(impl):
    parts = impl.precision.adam_memory_bytes(1000)
    assert parts == {"weights": 2000, "gradients": 2000, "master_weights": 4000, "adam_m": 4000, "adam_v": 4000, "total": 16000}
    assert impl.precision.adam_memory_bytes(10, half_bytes=1, master_weights=False)["total"] == 10 + 10 + 40 + 40
    model = torch.nn.Linear(30, 20)
    master = impl.precision.MasterWeights(model, torch.float16)
    optimizer = AdamW(master.params)
    for m in master.params:
        m.grad = torch.zeros_like(m)
    optimizer.step()
    measured = sum(t.numel() * t.element_size() for t in [*model.parameters(), *[q.half() for q in model.parameters()],
                                                           *master.params, *[v for s in optimizer.state.values()
                                                                             for v in s.values() if torch.is_tensor(v)]])
    assert impl.precision.adam_memory_bytes(620)["total"] == measured == 16 * 620
    with pytest.raises(ValueError, match="num_parameters"):
        impl.precision.adam_memory_bytes(-1)
