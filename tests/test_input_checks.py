"""Bad input gets a clear error, good input the right answer, and the forward pass reads no value per layer.

The convention (reference/validation.py): a wrong type raises a TypeError (`ArgumentTypeError`,
which is also a ValueError for older callers), a wrong value a ValueError, and the message names
the argument and its value. These tests check the reference only; the graded behaviour of the
exercises is tested in the chapter files.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from reference import attention, positional
from reference.models import parts
from reference.models.llama import TransformerLM
from reference.validation import ArgumentTypeError, check_float, check_int

# ----------------------------------------------------------------------------------------------
# The helpers
# ----------------------------------------------------------------------------------------------


def test_check_int_accepts_numpy_integers_and_refuses_bools_and_floats():
    assert check_int("n", np.int64(3)) == 3 and type(check_int("n", np.int32(3))) is int
    for bad in (True, np.bool_(True), 2.0, 2.5, "2", None, torch.tensor(2)):
        with pytest.raises(TypeError, match="n must be an int"):
            check_int("n", bad)
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        check_int("n", 0, 1)
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ValueError)


def test_check_float_refuses_nan_inf_and_bools():
    assert check_float("base", np.float32(2.0)) == 2.0
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="base must be finite"):
            check_float("base", bad)
    with pytest.raises(TypeError):
        check_float("base", True)
    with pytest.raises(ValueError, match="base must be > 0"):
        check_float("base", 0.0, positive=True)


# ----------------------------------------------------------------------------------------------
# Chapter 1: attention
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_len, error", [(2.5, TypeError), (True, TypeError), (np.int64(4), None), (1, ValueError)])
def test_padding_mask_max_len(max_len, error):
    lengths = torch.tensor([1, 3])
    if error is None:
        assert attention.padding_mask(lengths, max_len).shape == (2, 1, 1, 4)
    else:
        with pytest.raises(error, match="max_len"):
            attention.padding_mask(lengths, max_len)


def test_repeat_kv_refuses_bools_accepts_numpy_ints():
    x = torch.randn(1, 2, 3, 4)
    with pytest.raises(TypeError, match="num_repeats"):
        attention.repeat_kv(x, True)
    assert attention.repeat_kv(x, np.int64(2)).shape == (1, 4, 3, 4)


@pytest.mark.parametrize("kwargs, name", [
    (dict(d_model=32.0, num_heads=4), "d_model"), (dict(d_model=32, num_heads=4.0), "num_heads"),
    (dict(d_model=32, num_heads=True), "num_heads"), (dict(d_model=32, num_heads=4, num_kv_heads=2.0), "num_kv_heads"),
    (dict(d_model=32, num_heads=4, scale="big"), "scale"), (dict(d_model=32, num_heads=4, kdim=8.5), "kdim"),
])
def test_multi_head_attention_refuses_float_and_bool_sizes(kwargs, name):
    with pytest.raises(TypeError, match=name):
        attention.MultiHeadAttention(**kwargs)


def test_multi_head_attention_refuses_positions_it_would_ignore():
    mha = attention.MultiHeadAttention(16, 2)
    x = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match="positions was given, but this attention has no positional scheme"):
        mha(x, positions=torch.arange(5))


def test_multi_head_attention_dtype_and_positions_shape_errors():
    mha = attention.MultiHeadAttention(16, 2, positional=positional.RotaryEmbedding(8))
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the projections are torch.float32"):
        mha(torch.randn(1, 5, 16, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        mha(torch.ones(1, 5, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="positions must be"):
        mha(torch.randn(1, 5, 16), positions=torch.arange(4))
    with pytest.raises(TypeError, match="positions must hold integers"):
        mha(torch.randn(1, 5, 16), positions=torch.arange(5.0))


def test_attention_weights_dtype_mismatch():
    with pytest.raises(TypeError, match="q and k must share a dtype"):
        attention.attention_weights(torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="k and v must share a dtype"):
        attention.scaled_dot_product_attention(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4).half())


# ----------------------------------------------------------------------------------------------
# Chapter 2: positions
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [0.0, -10000.0, math.nan, math.inf])
def test_frequency_bases_must_be_positive_and_finite(base):
    with pytest.raises(ValueError, match="base"):
        positional.sinusoidal_encoding(4, 8, base=base)
    with pytest.raises(ValueError, match="base"):
        positional.rope_frequencies(8, base)


def test_relative_position_bucket_checks():
    with pytest.raises(TypeError, match="relative_position must hold integers"):
        positional.relative_position_bucket(torch.tensor([0.0, 1.5]))
    with pytest.raises(ValueError, match="num_buckets must be even"):
        positional.relative_position_bucket(torch.tensor([0, 1]), True, 33)
    with pytest.raises(ValueError, match="num_buckets"):
        positional.relative_position_bucket(torch.tensor([0, 1]), True, 2)  # one bucket per direction
    with pytest.raises(ValueError, match="max_distance"):
        positional.relative_position_bucket(torch.tensor([0, 1]), True, 32, 8)  # no room for the log buckets
    with pytest.raises(ValueError, match="num_buckets must be even"):
        positional.RelativePositionBias(4, bidirectional=True, num_buckets=33)
    with pytest.raises(TypeError, match="bidirectional"):
        positional.RelativePositionBias(4, bidirectional="yes")
    assert positional.relative_position_bucket(torch.tensor([-3, 0, 3]), False, 2, 2).tolist() == [1, 0, 0]


@pytest.mark.parametrize("num_buckets", [4, 8, 32])
def test_relative_position_bucket_bidirectional_range_is_as_documented(num_buckets):
    """Exact distances 0 .. n/4 - 1 per direction; keys after the query in n/2 + 1 .. n - 1."""
    rel = torch.arange(-300, 301)
    buckets = positional.relative_position_bucket(rel, True, num_buckets, 128)
    n, exact = num_buckets, num_buckets // 4
    before, after = buckets[rel <= 0], buckets[rel > 0]
    assert before.min() == 0 and before.max() == n // 2 - 1
    assert after.min() == n // 2 + 1 and after.max() == n - 1
    assert buckets[(rel >= 0) & (rel < exact)].tolist() == [n // 2 + d if d else 0 for d in range(exact)]
    assert buckets[(rel <= 0) & (rel > -exact)].tolist() == list(range(exact))[::-1]


def test_apply_rope_width_and_dtype_errors():
    x = torch.randn(2, 5, 8)
    cos, sin = torch.ones(5, 3), torch.zeros(5, 3)
    with pytest.raises(ValueError, match="do not broadcast to x's planes"):
        positional.apply_rope(x, cos, sin)
    with pytest.raises(ValueError, match="same shape"):
        positional.apply_rope(x, torch.ones(5, 4), torch.zeros(5, 1))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        positional.apply_rope(x.long(), torch.ones(5, 4), torch.zeros(5, 4))


def test_rotary_embedding_keeps_float64_angles_after_a_bfloat16_cast():
    """`model.to(torch.bfloat16)` must not round the frequencies: over 256 positions a bfloat16
    inv_freq gives cos errors of several hundredths; the table must stay at float64 accuracy."""
    model = TransformerLM(97, 256, 32, 1, 2, 48)
    model.to(torch.bfloat16)
    rope = model.layers[0].attn.positional
    assert rope.inv_freq.dtype == torch.float64
    positions = torch.arange(256)
    cos, sin = rope.cos_sin(positions)
    exact = positions[:, None].double() * positional.rope_frequencies(16)
    assert (cos - torch.cos(exact)).abs().max() < 1e-12 and (sin - torch.sin(exact)).abs().max() < 1e-12
    model(torch.randint(0, 97, (1, 256)))  # runs in bfloat16
    model.to(torch.float32)
    assert rope.inv_freq.dtype == torch.float64 and rope.cos_cached.dtype == torch.float64


def _hf_like_bias_per_row(scheme, q_positions, k_positions):
    return torch.stack([scheme.bias(q, k) for q, k in zip(q_positions, k_positions)])


@pytest.mark.parametrize("make", [lambda: positional.ALiBi(3, causal=True), lambda: positional.ALiBi(3, causal=False),
                                  lambda: positional.RelativePositionBias(3, bidirectional=True, num_buckets=8,
                                                                          max_distance=4)])
def test_bias_with_batched_positions_equals_the_bias_of_each_row(make):
    """batch = heads = seq = 3: a layout bug cannot hide behind a shape error."""
    torch.manual_seed(0)
    scheme = make()
    q = torch.tensor([[0, 1, 2], [5, 6, 7], [2, 4, 9]])
    k = torch.tensor([[0, 1, 2], [3, 5, 8], [0, 0, 1]])
    batched = scheme.bias(q, k)
    assert batched.shape == (3, 3, 3, 3)
    torch.testing.assert_close(batched, _hf_like_bias_per_row(scheme, q, k))
    assert scheme.bias(q[0], k[0]).shape == (3, 3, 3)


def test_multi_head_attention_with_alibi_and_batched_positions():
    """Each row of a batch with its own positions attends as that row alone would."""
    torch.manual_seed(0)
    mha = attention.MultiHeadAttention(12, 3, positional=positional.ALiBi(3))
    x = torch.randn(3, 3, 12)
    positions = torch.tensor([[0, 1, 2], [4, 5, 6], [0, 2, 7]])
    out = mha(x, mask=attention.causal_mask(3), positions=positions)
    rows = torch.cat([mha(x[i : i + 1], mask=attention.causal_mask(3), positions=positions[i]) for i in range(3)])
    torch.testing.assert_close(out, rows)


# ----------------------------------------------------------------------------------------------
# Chapter 5: parts and models
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [parts.RMSNorm(4), parts.LayerNorm(4)])
def test_norms_refuse_integer_tensors(norm):
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        norm(torch.ones(2, 4, dtype=torch.long))


@pytest.mark.parametrize("make", [lambda: parts.RMSNorm(4.0), lambda: parts.LayerNorm(True), lambda: parts.MLP(8, 16.0),
                                  lambda: parts.SwiGLU(8.5, 16), lambda: parts.RMSNorm(4, eps="tiny")])
def test_parts_refuse_float_and_bool_sizes(make):
    with pytest.raises(TypeError):
        make()


def test_transformer_lm_positions_shape_is_checked():
    model = TransformerLM(50, 16, 16, 1, 2, 24)
    ids = torch.randint(0, 50, (2, 5))
    with pytest.raises(ValueError, match="positions must be"):
        model(ids, positions=torch.arange(4))
    with pytest.raises(TypeError, match="positions must hold integers"):
        model(ids, positions=torch.arange(5.0))
    with pytest.raises(ValueError, match="positions must be >= 0"):
        model(ids, positions=torch.arange(5) - 1)


class _HostReads:
    """Counts the reads of tensor values to the host (each one a synchronisation on a GPU)."""

    NAMES = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")

    def __enter__(self):
        self.count, self.saved = 0, {n: getattr(torch.Tensor, n) for n in self.NAMES}
        for name, original in self.saved.items():
            def counting(t, *args, _original=original, **kwargs):
                self.count += 1
                return _original(t, *args, **kwargs)
            setattr(torch.Tensor, name, counting)
        return self

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, original)


def test_the_forward_pass_reads_values_once_at_the_entry_not_per_layer():
    """An 8-layer LLaMA read 34 values per forward (RoPE's min/max per layer, id checks); now the ids
    are read once (one transfer of (min, max)) and the positions once, whatever the depth."""
    ids = torch.randint(0, 64, (2, 12))
    counts = {}
    for layers in (1, 8):
        model = TransformerLM(64, 32, 16, layers, 2, 24)
        model(ids)  # grow the RoPE table once
        with _HostReads() as reads:
            model(ids)
        counts[layers] = reads.count
    assert counts[8] == counts[1] <= 2, counts


# ----------------------------------------------------------------------------------------------
# Chapter 6: training numerics
# ----------------------------------------------------------------------------------------------


def test_cross_entropy_with_fractional_weights_is_the_weighted_mean():
    from reference.training.numerics import cross_entropy

    torch.manual_seed(0)
    logits, targets = torch.randn(4, 7, 11), torch.randint(0, 11, (4, 7))
    nll = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="none").reshape(4, 7)
    for weights in (torch.full((4, 7), 0.01), torch.rand(4, 7) * 0.03, torch.rand(4, 7) * 5):  # sums < 1 and > 1
        expected = (nll * weights).sum() / weights.sum()
        torch.testing.assert_close(cross_entropy(logits, targets, weights), expected)
    small = torch.full((4, 7), 0.01)  # sum 0.28: clamp(min=1) would give 0.28 times the mean
    assert abs(cross_entropy(logits, targets, small).item() - nll.mean().item()) < 1e-5
    assert cross_entropy(logits, targets, torch.zeros(4, 7)).item() == 0.0
    with pytest.raises(ValueError, match="loss_mask"):
        cross_entropy(logits, targets, -torch.ones(4, 7))


def test_token_files_carry_their_dtype(tmp_path):
    """`open_tokens` reads the dtype `tokenize_to_memmap` stored beside the file, refuses a different one,
    and refuses to guess for a file without the description."""
    from reference.training import data

    class Ids:
        def encode_iterable(self, lines):
            for line in lines:
                yield from (70_000 + b for b in line.encode())

    text = tmp_path / "t.txt"
    text.write_text("abc\n" * 10)
    written = data.tokenize_to_memmap(Ids(), text, tmp_path / "t.bin", vocab_size=70_256)
    assert written.dtype == np.int32
    assert data.open_tokens(tmp_path / "t.bin").tolist() == written.tolist()  # no dtype needed
    with pytest.raises(ValueError, match="holds int32 ids"):
        data.open_tokens(tmp_path / "t.bin", "uint16")  # read as uint16 it would be silently wrong
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(10, dtype=np.uint16).tobytes())
    with pytest.raises(ValueError, match="pass dtype"):
        data.open_tokens(raw)
    assert data.open_tokens(raw, "uint16").tolist() == list(range(10))
    (tmp_path / "t.bin").write_bytes(np.arange(4, dtype=np.int32).tobytes())  # replaced by other code
    with pytest.raises(ValueError, match="says 40"):
        data.open_tokens(tmp_path / "t.bin")


@pytest.mark.parametrize("corrupt, match", [
    (lambda s: s.update(rng={}), "RNG state"),
    (lambda s: s.update(iteration=-7), "iteration=-7"),
    (lambda s: s.update(iteration=True), "iteration=True"),
    (lambda s: s["model"].pop("weight"), "missing"),
    (lambda s: s["model"].update(weight=torch.zeros(2, 2)), "weight"),
    (lambda s: s["rng"].update(torch="not a state"), "CPU RNG"),
])
def test_load_checkpoint_is_all_or_nothing(tmp_path, corrupt, match):
    """A bad checkpoint raises a ValueError naming what is wrong and changes nothing."""
    from reference.training.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(model, optimizer, 5, tmp_path / "ok.pt")
    state = torch.load(tmp_path / "ok.pt", weights_only=True)
    corrupt(state)
    torch.save(state, tmp_path / "bad.pt")
    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters())
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    rng_before = torch.get_rng_state()
    with pytest.raises(ValueError, match=match):
        load_checkpoint(tmp_path / "bad.pt", fresh, fresh_optimizer)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items()), "weights were replaced"
    assert fresh_optimizer.state_dict()["state"] == {} and torch.equal(torch.get_rng_state(), rng_before)
    assert load_checkpoint(tmp_path / "ok.pt", fresh, fresh_optimizer) == 5


def test_masked_language_modeling_refuses_a_fractional_mask_token_id():
    from reference.training.objectives import masked_language_modeling

    ids, generator = torch.randint(0, 10, (2, 8)), torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match="mask_token_id must be an int"):
        masked_language_modeling(ids, generator, 3.7, 10)
    with pytest.raises(TypeError, match="mask_token_id"):
        masked_language_modeling(ids, generator, True, 10)
    inputs, _, _ = masked_language_modeling(ids, generator, np.int64(3), 10)
    assert inputs.shape == ids.shape
    with pytest.raises(ValueError, match="mask_probability"):
        masked_language_modeling(ids, generator, 3, 10, mask_probability=math.nan)


def _tiny_tokenizer():
    from reference.tokenizer import Tokenizer

    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


def test_decode_refuses_bools_and_accepts_numpy_integers():
    tokenizer = _tiny_tokenizer()
    assert tokenizer.decode([np.int64(104), np.int32(105)]) == "hi"
    for bad in (True, np.bool_(False), torch.tensor(True)):
        with pytest.raises(TypeError, match="bool"):
            tokenizer.decode([104, bad])


def test_a_deeply_nested_tokenizer_file_is_a_value_error(tmp_path):
    from reference.tokenizer import Tokenizer

    path = tmp_path / "nested.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="does not hold a tokenizer"):
        Tokenizer.load(path)
    from reference.tokenizer import PretrainedTokenizer  # the real model's tokenizer reads its own format alike

    with pytest.raises(ValueError, match="does not hold a pretrained tokenizer"):
        PretrainedTokenizer.load(path)


def test_train_bpe_vocab_size_takes_numpy_integers_and_refuses_floats(tmp_path):
    from reference.tokenizer import train_bpe

    path = tmp_path / "t.txt"
    path.write_text("low lower lowest " * 20)
    vocab, merges = train_bpe(path, np.int64(260), ["<|endoftext|>"])
    assert len(vocab) == 260 and len(merges) == 3
    with pytest.raises(TypeError, match="vocab_size"):
        train_bpe(path, 260.0, ["<|endoftext|>"])
