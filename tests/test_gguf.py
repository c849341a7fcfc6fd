"""The course's GGUF reader (`reference.models.gguf`) on small files written by the `gguf` package.

The oracle is llama.cpp's own Python package `gguf`: `GGUFWriter` writes the files,
`GGUFReader` and `gguf.quants.dequantize` read them back, and every tensor must come out bit for
bit the same. Hand-made blocks pin the layouts (nibble order, scale and minimum) independently of it.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference.models import gguf as ours

gguf = pytest.importorskip("gguf", reason="the `gguf` package (dev extra) is the oracle for these tests")
Q = gguf.GGMLQuantizationType

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _write(path, tensors: dict[str, tuple[np.ndarray, str]], metadata=(), alignment: int | None = None):
    writer = gguf.GGUFWriter(path, "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for add, key, value in metadata:
        getattr(writer, add)(key, value)
    for name, (values, qtype) in tensors.items():
        if qtype == "raw":
            writer.add_tensor(name, values[0], raw_dtype=values[1])
        elif qtype in ("F32", "F16"):
            writer.add_tensor(name, values.astype(np.float32 if qtype == "F32" else np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, Q[qtype]), raw_dtype=Q[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 96)).astype(np.float32)
    w[2, 5] = 40.0  # an outlier: its block gets a large scale, the others do not
    w[4, :32] = 0.0  # an all-zero block (scale 0)
    return w


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, weights):
    path = tmp_path_factory.mktemp("gguf") / "all_types.gguf"
    tensors = {f"t.{name}": (weights, name) for name in TYPES}
    tensors["t.vector"] = (np.arange(64, dtype=np.float32), "F32")
    tensors["t.cube"] = (weights.reshape(2, 3, 96), "Q4_1")
    metadata = [
        ("add_uint8", "k.u8", 200), ("add_int8", "k.i8", -100), ("add_uint16", "k.u16", 60000),
        ("add_int16", "k.i16", -30000), ("add_uint32", "k.u32", 4_000_000_000), ("add_int32", "k.i32", -2_000_000_000),
        ("add_uint64", "k.u64", 2**63 + 5), ("add_int64", "k.i64", -(2**62)), ("add_float32", "k.f32", 0.1),
        ("add_float64", "k.f64", 0.1), ("add_bool", "k.bool", True), ("add_string", "k.str", "héllo ✓"),
        ("add_array", "k.ints", [1, -2, 3]), ("add_array", "k.floats", [0.5, 1.5]),
        ("add_array", "k.strs", ["a", "", "ç"]), ("add_array", "k.bools", [True, False]),
        ("add_array", "k.nested", [[1, 2], [3]]),
    ]
    return _write(path, tensors, metadata)


@pytest.mark.parametrize("name", TYPES)
def test_every_type_equals_the_gguf_package_bit_for_bit(synthetic, weights, name):
    file = ours.GGUFFile(synthetic)
    reader = {t.name: t for t in gguf.GGUFReader(synthetic).tensors}
    got = file.dequantize(f"t.{name}")
    expected = gguf.quants.dequantize(reader[f"t.{name}"].data, reader[f"t.{name}"].tensor_type)
    assert got.dtype == np.float32 and got.shape == weights.shape == expected.shape
    np.testing.assert_array_equal(_bits(got), _bits(expected))
    assert file.tensors[f"t.{name}"].type_name == name
    # and close to what was quantized: within half a step of each block's grid
    tolerance = {"F32": 0, "F16": 2e-2, "BF16": 0.2, "Q8_0": 0.2, "Q4_0": 3.0, "Q4_1": 3.0}[name]
    assert np.abs(got - weights).max() <= tolerance


def test_shapes_alignment_and_raw_views(synthetic, weights):
    file = ours.GGUFFile(synthetic)
    reader = gguf.GGUFReader(synthetic)
    assert file.version == 3 and file.alignment == 32 and file.data_offset % 32 == 0
    assert list(file.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = file.tensors[t.name]
        assert info.shape == tuple(reversed(t.shape.tolist())) and info.offset == t.data_offset
        assert info.nbytes == t.n_bytes and info.offset % file.alignment == 0
        np.testing.assert_array_equal(file.raw(t.name), np.asarray(t.data).view(np.uint8).reshape(-1))
    np.testing.assert_array_equal(file.dequantize("t.vector"), np.arange(64, dtype=np.float32))
    assert file.dequantize("t.cube").shape == (2, 3, 96)
    assert not file.raw("t.F32").flags.writeable  # a view into the read-only memory map


def test_metadata_of_every_value_type_equals_the_reader(synthetic):
    file = ours.GGUFFile(synthetic)
    reader = gguf.GGUFReader(synthetic)
    expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    nested = file.metadata.pop("k.nested")  # the reader's `contents()` flattens an array of arrays
    assert [x for inner in nested for x in inner] == expected.pop("k.nested")
    assert file.metadata == expected
    file.metadata["k.nested"] = nested
    assert file.metadata["k.f32"] == float(np.float32(0.1)) and file.metadata["k.f64"] == 0.1
    assert file.metadata["k.u64"] == 2**63 + 5 and file.metadata["k.bool"] is True
    assert file.metadata["k.nested"] == [[1, 2], [3]] and file.metadata["k.strs"] == ["a", "", "ç"]
    V = ours.ValueType
    assert file.value_types["k.u8"] == V.UINT8 and file.value_types["k.f64"] == V.FLOAT64
    assert file.value_types["k.strs"] == (V.ARRAY, V.STRING) and file.value_types["k.nested"] == (V.ARRAY, V.ARRAY)
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            want = int(field.types[0]) if len(field.types) == 1 else (int(field.types[0]), int(field.types[1]))
            assert file.value_types[key] == want


def test_custom_alignment(tmp_path, weights):
    path = _write(tmp_path / "aligned.gguf", {"a": (weights[:1, :32], "Q8_0"), "b": (weights, "F32")}, alignment=256)
    file = ours.GGUFFile(path)
    assert file.alignment == 256 and file.data_offset % 256 == 0
    assert all(info.offset % 256 == 0 for info in file.tensors.values())
    np.testing.assert_array_equal(file.dequantize("b"), weights)


# ----------------------------------------------------------------------------------------------
# The block layouts by hand, independent of the oracle
# ----------------------------------------------------------------------------------------------


def _fp16_bytes(x: float) -> np.ndarray:
    return np.array([x], dtype="<f2").view(np.uint8)


def test_q4_1_block_by_hand():
    # byte j holds weight j in its low nibble and weight j + 16 in its high nibble
    low, high = np.arange(16, dtype=np.uint8), (15 - np.arange(16)).astype(np.uint8)
    block = np.concatenate([_fp16_bytes(0.5), _fp16_bytes(-2.0), low | (high << 4)])[None]
    w = ours.dequantize_q4_1(block)[0]
    np.testing.assert_array_equal(w[:16], 0.5 * np.arange(16) - 2.0)
    np.testing.assert_array_equal(w[16:], 0.5 * (15 - np.arange(16)) - 2.0)


def test_q4_0_and_q8_0_blocks_by_hand():
    packed = (np.arange(16, dtype=np.uint8) & 0x0F) | (np.uint8(3) << 4)
    w = ours.dequantize_q4_0(np.concatenate([_fp16_bytes(0.25), packed])[None])[0]
    np.testing.assert_array_equal(w[:16], 0.25 * (np.arange(16) - 8))
    np.testing.assert_array_equal(w[16:], np.full(16, 0.25 * (3 - 8)))
    q = np.arange(-16, 16, dtype=np.int8)
    w = ours.dequantize_q8_0(np.concatenate([_fp16_bytes(-1.5), q.view(np.uint8)])[None])[0]
    np.testing.assert_array_equal(w, -1.5 * q.astype(np.float32))


def test_bf16_is_the_top_half_of_float32():
    x = np.array([1.0, -2.5, 3.140625, 2.0**-126, -0.0], dtype=np.float32)  # all exact in bfloat16
    top = (x.view(np.uint32) >> 16).astype("<u2").view(np.uint8)
    np.testing.assert_array_equal(ours.dequantize(top, 30, (5,)), x)


# ----------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------


def test_an_unsupported_type_is_named(tmp_path):
    raw = np.zeros((2, 144), dtype=np.uint8)  # two Q4_K super-blocks of 256 weights
    path = _write(tmp_path / "k.gguf", {"k": ((raw, Q.Q4_K), "raw"), "ok": (np.ones(8, np.float32), "F32")})
    file = ours.GGUFFile(path)  # the file opens; only decoding the tensor fails
    assert file.tensors["k"].type_name == "Q4_K"
    with pytest.raises(ValueError, match=r"tensor 'k' has ggml type Q4_K \(12\)"):
        file.dequantize("k")
    with pytest.raises(ValueError, match="Q4_K"):
        file.raw("k")
    with pytest.raises(ValueError, match="Q5_1"):
        ours.dequantize(np.zeros(24, np.uint8), 7, (32,))
    np.testing.assert_array_equal(file.dequantize("ok"), np.ones(8, np.float32))


def test_bad_files_are_refused(tmp_path, synthetic):
    data = synthetic.read_bytes()
    (tmp_path / "magic.gguf").write_bytes(b"GGUX" + data[4:])
    with pytest.raises(ValueError, match="not a GGUF file"):
        ours.GGUFFile(tmp_path / "magic.gguf")
    (tmp_path / "v1.gguf").write_bytes(data[:4] + np.uint32(1).tobytes() + data[8:])
    with pytest.raises(ValueError, match="version 1"):
        ours.GGUFFile(tmp_path / "v1.gguf")
    (tmp_path / "cut.gguf").write_bytes(data[:200])
    with pytest.raises(ValueError, match="ends at byte 200"):
        ours.GGUFFile(tmp_path / "cut.gguf")
    (tmp_path / "short.gguf").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="runs past the end"):
        ours.GGUFFile(tmp_path / "short.gguf")
    with pytest.raises(FileNotFoundError):
        ours.GGUFFile(tmp_path / "absent.gguf")
    with pytest.raises(TypeError, match="path"):
        ours.GGUFFile(3)
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        ours.GGUFFile(synthetic).dequantize("nope")
    with pytest.raises(ValueError, match="whole blocks of 32"):
        ours.dequantize(np.zeros(20, np.uint8), 3, (16,))


# ----------------------------------------------------------------------------------------------
# A tiny llama file: the conversion into TransformerLM, and what it refuses
# ----------------------------------------------------------------------------------------------

import torch  # noqa: E402

from reference.models import TransformerLM  # noqa: E402

TINY = dict(vocab_size=300, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=96,
            rope_theta=5000.0, num_kv_heads=2, eps=1e-6)


def _converter_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to W_q and W_k (the oracle of the forward direction):
    within each head, row i of the first half goes to row 2i, row i of the second half to 2i + 1."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _byte_level_vocab() -> tuple[list[str], list[str]]:
    table = {b: ch for ch, b in ours.unicode_to_byte().items()}
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [table[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "1 2"]  # "1 2" exists, but "smollm" never lets two digits meet
    tokens += ["Ġt", "he", "Ġthe", "12"]
    return tokens + [f"<unused{i}>" for i in range(TINY["vocab_size"] - len(tokens))], merges


def _tiny_llama(path, model: TransformerLM, *, meta=(), extra=None, drop=(), arch="llama", tied=True, qtype="F32",
                tokenizer=()):
    c = model.config
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(c["num_layers"]); writer.add_context_length(c["context_length"])
    writer.add_embedding_length(c["d_model"]); writer.add_feed_forward_length(c["d_ff"])
    writer.add_head_count(c["num_heads"]); writer.add_head_count_kv(c["num_kv_heads"])
    writer.add_rope_freq_base(c["rope_theta"]); writer.add_layer_norm_rms_eps(c["eps"])
    writer.add_rope_dimension_count(c["d_model"] // c["num_heads"])
    tokens, merges = _byte_level_vocab()
    settings = {"model": "gpt2", "pre": "smollm", "types": [3, 3, 3] + [1] * (len(tokens) - 3), **dict(tokenizer)}
    writer.add_tokenizer_model(settings["model"]); writer.add_tokenizer_pre(settings["pre"])
    writer.add_token_list(tokens); writer.add_token_merges(merges); writer.add_token_types(settings["types"])
    writer.add_bos_token_id(1); writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    for add, key, value in meta:
        getattr(writer, add)(key, value) if add.startswith("add_") and key else getattr(writer, add)(value)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    names = {ours_name.format(i=i): g.format(i=i) for g, ours_name in ours.LLAMA_TENSOR_NAMES.items()
             for i in range(c["num_layers"])}
    heads = {"q_proj": c["num_heads"], "k_proj": c["num_kv_heads"]}
    for name, value in sd.items():
        if name == "lm_head.weight" and tied:
            continue
        kind = name.split(".")[-2]
        value = _converter_permute(value, heads[kind]) if kind in heads else value
        if names[name] not in drop:
            q = qtype if value.ndim == 2 else "F32"
            writer.add_tensor(names[name], value if q == "F32" else gguf.quants.quantize(value, Q[q]),
                              raw_dtype=None if q == "F32" else Q[q])
    for name, value in (extra or {}).items():
        writer.add_tensor(name, value)
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_model() -> TransformerLM:
    torch.manual_seed(0)
    model = TransformerLM(**TINY, tie_embeddings=True).eval()
    with torch.no_grad():  # norms away from 1, so that a swapped norm shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_round_trip_gives_the_same_logits(tmp_path, tiny_model, tied):
    model = tiny_model
    if not tied:
        model = TransformerLM(**TINY).eval()
        model.load_state_dict({**tiny_model.state_dict(), "lm_head.weight": torch.randn(300, 64)})
    path = _tiny_llama(tmp_path / "tiny.gguf", model, tied=tied)
    loaded = ours.load_llama(path)
    assert loaded.config == {**TINY, "eps": float(np.float32(1e-6)), "tie_embeddings": tied}
    assert (loaded.lm_head.weight is loaded.token_embeddings.weight) == tied
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name  # the permutation undone exactly
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=1e-5, rtol=1e-5)
    assert loaded.lm_head.weight.dtype == torch.float32 and not loaded.training
    half = ours.load_llama(path, dtype=torch.bfloat16)
    assert half.lm_head.weight.dtype == torch.bfloat16


def test_unpermute_is_chapter_2s_interleaved_to_half():
    from reference.positional import half_to_interleaved

    w = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(16, 3)  # 2 heads of width 8
    permuted = torch.from_numpy(_converter_permute(w.numpy(), 2))
    torch.testing.assert_close(ours.unpermute_rope_rows(permuted, 2), w, atol=0, rtol=0)
    # per head, the converter's order is exactly Chapter 2's half -> interleaved reordering of the rows
    per_head = w.reshape(2, 8, 3).transpose(1, 2)  # (heads, d_in, head_dim)
    torch.testing.assert_close(half_to_interleaved(per_head).transpose(1, 2).reshape(16, 3), permuted, atol=0, rtol=0)


def test_quantized_tiny_llama_equals_its_dequantized_weights(tmp_path, tiny_model):
    path = _tiny_llama(tmp_path / "q.gguf", tiny_model, qtype="Q4_1")
    loaded = ours.load_llama(path)
    reader = {t.name: t for t in gguf.GGUFReader(path).tensors}
    raw = reader["blk.1.attn_v.weight"]
    np.testing.assert_array_equal(loaded.layers[1].attn.v_proj.weight.detach().numpy(), gguf.quants.dequantize(raw.data, raw.tensor_type))


REFUSALS = [
    (dict(arch="gptneox"), "general.architecture is 'gptneox'"),
    (dict(meta=[("add_rope_scaling_type", None, gguf.RopeScalingType.LINEAR)]), "llama.rope.scaling.type"),
    (dict(meta=[("add_uint32", "llama.rope.dimension_count", 4)]), "llama.rope.dimension_count"),
    (dict(meta=[("add_uint32", "llama.expert_count", 4)]), "llama.expert_count"),
    (dict(meta=[("add_sliding_window", None, 16)]), "llama.attention.sliding_window"),
    (dict(meta=[("add_uint32", "llama.attention.key_length", 8)]), "llama.attention.key_length"),
    (dict(extra={"blk.0.attn_q.bias": np.zeros(64, np.float32)}), "blk.0.attn_q.bias"),
    (dict(extra={"rope_freqs.weight": np.ones(4, np.float32)}), "rope_freqs.weight"),
    (dict(drop=("blk.1.ffn_up.weight",)), "lacks tensor 'blk.1.ffn_up.weight'"),
]


@pytest.mark.parametrize("kwargs, message", REFUSALS, ids=[m for _, m in REFUSALS])
def test_conversion_refuses_what_the_model_cannot_represent(tmp_path, tiny_model, kwargs, message):
    path = _tiny_llama(tmp_path / "bad.gguf", tiny_model, **kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ours.load_llama(path)


def test_wrong_shapes_and_head_counts_are_refused(tmp_path, tiny_model):
    path = _tiny_llama(tmp_path / "kv.gguf", tiny_model, meta=[("add_uint32", "llama.attention.head_count_kv", 3)])
    with pytest.raises(ValueError, match=r"tensor 'blk.0.attn_k.weight' has shape \(32, 64\); the config implies \(48, 64\)"):
        ours.load_llama(path)
    path = _tiny_llama(tmp_path / "heads.gguf", tiny_model, meta=[("add_uint32", "llama.attention.head_count", 5)])
    with pytest.raises(ValueError, match="llama.attention.head_count' = 5 does not divide"):
        ours.load_llama(path)


# ----------------------------------------------------------------------------------------------
# The tokenizer of a tiny file
# ----------------------------------------------------------------------------------------------


def test_tiny_tokenizer_reads_vocab_merges_specials_and_template(tmp_path, tiny_model):
    tok = ours.tokenizer_from_gguf(ours.GGUFFile(_tiny_llama(tmp_path / "t.gguf", tiny_model)))
    assert tok.vocab_size == 300 and tok.token_to_id("<|im_start|>") == 1 and tok.eos_token == "<|im_end|>"
    ids = tok.encode("<|im_start|>the 12 the")
    assert ids[0] == 1 and tok.decode(ids) == "<|im_start|>the 12 the"
    pieces = [tok.vocab[i] for i in ids[1:]]
    assert pieces == [b"t", b"he", b" ", b"1", b"2", b" the"]  # digits alone: the "1 2" merge never applies
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True) == tok.encode(text[: -len("<|im_start|>assistant\n")])


def test_unicode_to_byte_is_gpt2s_alphabet():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert ours.unicode_to_byte() == {ch: b for b, ch in bytes_to_unicode().items()}
    assert ours.byte_level_to_bytes("ĠhelloĊ") == b" hello\n" and ours.byte_level_to_bytes("a b") is None


@pytest.mark.parametrize("settings, message", [
    (dict(model="llama"), "tokenizer.ggml.model is 'llama'"),
    (dict(pre="llama-bpe"), "tokenizer.ggml.pre is 'llama-bpe'"),
    (dict(types=[3, 3, 3] + [1] * 290 + [5] * 7), r"tokenizer.ggml.token_type\[293\] = 5"),
])
def test_tokenizer_refusals(tmp_path, tiny_model, settings, message):
    path = _tiny_llama(tmp_path / "t.gguf", tiny_model, tokenizer=settings)
    with pytest.raises(ValueError, match=message):
        ours.tokenizer_from_gguf(ours.GGUFFile(path))


def test_a_file_that_adds_bos_is_refused(tmp_path, tiny_model):
    path = _tiny_llama(tmp_path / "b.gguf", tiny_model, meta=[("add_add_bos_token", None, True)])
    with pytest.raises(ValueError, match="tokenizer.ggml.add_bos_token is true"):
        ours.tokenizer_from_gguf(ours.GGUFFile(path))
