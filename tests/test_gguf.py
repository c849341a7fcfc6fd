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
