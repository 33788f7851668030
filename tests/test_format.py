"""The packed file (.eqm, edgeq.format): round trips, atomic writes, and hostile files.

A hostile or damaged file must raise FormatError or UnsupportedError (both ValueError) and
nothing else: no IndexError, no numpy error, no hang, no allocation the size of a lie. Blob
bytes carry no checksum, so a flipped byte inside tensor data is legitimately undetectable;
the preamble and the header are what the reader must police.
"""

import itertools
import json
import mmap
import os
import struct
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import edgeq
from edgeq import format as fmt
from edgeq.errors import FormatError, UnsupportedError
from edgeq.qtypes import QTensor

from test_qtypes import CASE_IDS, CASES, quantize_case

PREAMBLE = struct.Struct("<8sHHIQ")
#: open() on a corrupt file of a few kilobytes must not allocate more than this
MAX_OPEN_ALLOCATION = 8 << 20
MAX_OPEN_SECONDS = 5.0


def align(n: int) -> int:
    return -(-n // 64) * 64


def mapped_base(array: np.ndarray):
    """Follow .base down to the object that owns the memory."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def assert_view_of_map(array: np.ndarray):
    assert isinstance(mapped_base(array), mmap.mmap), "tensor is a copy, not a view of the map"
    assert not array.flags.writeable
    if array.nbytes:
        assert array.ctypes.data % 64 == 0, "every blob starts 64-byte aligned"


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.dtype.newbyteorder("<") == b.dtype.newbyteorder("<") and a.shape == b.shape
            and np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
            == np.ascontiguousarray(b).astype(b.dtype.newbyteorder("<")).tobytes())


def sample_tensors() -> dict:
    """One QTensor of every case plus plain arrays of several kinds."""
    rng = np.random.default_rng(0)
    tensors = {}
    for case, name in zip(CASES, CASE_IDS):
        w = rng.standard_normal((3, 64)).astype(np.float32)
        tensors[name] = quantize_case(w, case, 32 if case[1] == "group" else None)
    tensors["embed"] = rng.standard_normal((5, 7)).astype(np.float32)
    tensors["ids"] = np.arange(-3, 9, dtype=np.int64)
    tensors["scalar"] = np.float16(1.5)
    tensors["empty"] = np.zeros((0, 4), np.int8)
    return tensors


# --- round trips -----------------------------------------------------------------------------------
def test_round_trip_every_type(tmp_path):
    tensors = sample_tensors()
    path = edgeq.save(tmp_path / "m.eqm", tensors, config={"architecture": None, "dim": 64},
                      metadata={"made_by": "test"})
    f = edgeq.open(path)
    assert f.version == (fmt.MAJOR, fmt.MINOR) and list(f) == list(tensors) and len(f) == len(tensors)
    for name, t in tensors.items():
        got = f[name]
        assert f[name] is got  # built once
        if isinstance(t, QTensor):
            assert isinstance(got, QTensor) and got.spec == t.spec and got.shape == t.shape
            assert set(got.data) == set(t.data)
            for part in t.data:
                assert same_bits(got.data[part], t.data[part]), (name, part)
                assert_view_of_map(got.data[part])
            np.testing.assert_array_equal(got.dequantize(), t.dequantize())
        else:
            assert same_bits(got, np.asarray(t)), name
            assert_view_of_map(got)
    with pytest.raises(KeyError):
        f["missing"]


@given(data=st.data())
def test_round_trip_plain_arrays(tmp_path_factory, data):
    """Any dtype the format lists, any byte order, 0 to 3 dimensions (empty ones too), any
    bits (NaN payloads included): read back bit for bit, as little-endian views."""
    folder = tmp_path_factory.mktemp("plain")
    names = data.draw(st.lists(st.sampled_from(sorted(fmt.DTYPES)), min_size=1, max_size=4))
    arrays = {}
    for i, name in enumerate(names):
        dtype = fmt.DTYPES[name].newbyteorder(data.draw(st.sampled_from("<>")))
        shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
        arrays[f"t{i}"] = data.draw(hnp.arrays(dtype, shape))
    f = edgeq.open(edgeq.save(folder / "a.eqm", arrays))
    for name, a in arrays.items():
        got = f[name]
        assert got.dtype == np.dtype(a.dtype.name).newbyteorder("<") and same_bits(got, a)
        assert_view_of_map(got)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@given(config=st.none() | json_objects, tokenizer=st.none() | json_objects, metadata=json_objects)
def test_header_dicts_round_trip(tmp_path_factory, config, tokenizer, metadata):
    path = edgeq.save(tmp_path_factory.mktemp("hdr") / "h.eqm", {"x": np.ones(3, np.float32)},
                      config=config, tokenizer=tokenizer, metadata=metadata)
    f = edgeq.open(path)
    assert (f.config, f.tokenizer, f.metadata) == (config, tokenizer, metadata)


def test_writer_streams_tensor_by_tensor(tmp_path):
    with fmt.PackedWriter(tmp_path / "s.eqm", metadata={"n": 2}) as w:
        w.add("a", np.arange(10, dtype=np.int32))
        w.add("b", edgeq.quantize(np.ones((2, 32), np.float32), "int4"))
        with pytest.raises(ValueError, match="duplicate"):
            w.add("a", np.zeros(1, np.int8))
    f = edgeq.open(tmp_path / "s.eqm")
    assert list(f) == ["a", "b"] and f.metadata == {"n": 2}
    assert sorted(os.listdir(tmp_path)) == ["s.eqm"]


def test_writer_neither_copies_nor_keeps_blobs(tmp_path):
    """Each blob goes to disk as it is added, without a bytes copy, and nothing of it stays."""
    big = np.arange(4 << 20, dtype=np.float32)  # 16 MiB
    tracemalloc.start()
    try:
        with fmt.PackedWriter(tmp_path / "big.eqm") as w:
            tracemalloc.reset_peak()
            for i in range(4):
                w.add(f"t{i}", big)
            during_adds = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert during_adds < 1 << 20  # 64 MiB written, under 1 MiB allocated
    f = edgeq.open(tmp_path / "big.eqm")
    np.testing.assert_array_equal(f["t3"], big)


# --- atomic writes --------------------------------------------------------------------------------------
@pytest.fixture
def folder_with_existing(tmp_path):
    dest = tmp_path / "model.eqm"
    edgeq.save(dest, {"old": np.arange(4, dtype=np.int16)})
    return dest, dest.read_bytes()


def assert_untouched(dest, before):
    assert sorted(os.listdir(dest.parent)) == [dest.name], "no temporary file may be left behind"
    assert dest.read_bytes() == before
    assert same_bits(edgeq.open(dest)["old"], np.arange(4, dtype=np.int16))


def test_unsupported_dtype_after_others_leaves_nothing(folder_with_existing):
    dest, before = folder_with_existing
    tensors = dict(sample_tensors(), flags=np.array([True, False]))
    with pytest.raises(UnsupportedError, match="flags"):
        edgeq.save(dest, tensors)
    assert_untouched(dest, before)
    with pytest.raises(UnsupportedError):
        edgeq.save(dest, {"a": np.ones(3), "o": np.array([object()])})
    assert_untouched(dest, before)


def test_exception_inside_the_writer_leaves_nothing(folder_with_existing):
    dest, before = folder_with_existing
    with pytest.raises(RuntimeError, match="boom"):
        with fmt.PackedWriter(dest) as w:
            w.add("a", np.ones((64, 64), np.float32))
            raise RuntimeError("boom")
    assert_untouched(dest, before)


def test_failure_while_closing_leaves_nothing(folder_with_existing):
    dest, before = folder_with_existing
    with pytest.raises(TypeError):  # not JSON: fails after every blob is written
        edgeq.save(dest, {"a": np.ones(3)}, metadata={"bad": object()})
    assert_untouched(dest, before)
    with pytest.raises(TypeError, match="config"):
        edgeq.save(dest, {"a": np.ones(3)}, config=["not", "a", "dict"])
    assert_untouched(dest, before)


def test_failed_rename_leaves_nothing(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(OSError):
        edgeq.save(tmp_path / "adir", {"a": np.ones(3)})
    assert sorted(os.listdir(tmp_path)) == ["adir"] and os.listdir(tmp_path / "adir") == []


# --- hostile files ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.eqm"
    edgeq.save(path, sample_tensors(), config={"architecture": None}, tokenizer={"kind": "none"})
    raw = path.read_bytes()
    header_len = PREAMBLE.unpack_from(raw)[4]
    return raw, json.loads(raw[24:24 + header_len]), align(24 + header_len)


_counter = itertools.count()


def open_bytes(folder, raw: bytes):
    """Open `raw` as a file: the PackedFile, or the FormatError/UnsupportedError it raised.
    Anything else fails the test, and so does a slow open or a large allocation. A file that
    opens must be fully usable."""
    path = folder / f"c{next(_counter)}.eqm"
    path.write_bytes(raw)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = edgeq.open(path)
    except (FormatError, UnsupportedError) as e:
        assert str(path) in str(e), "errors name the file"
        result = e
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        path.unlink()
    assert elapsed < MAX_OPEN_SECONDS and peak < MAX_OPEN_ALLOCATION, (elapsed, peak)
    if not isinstance(result, Exception):
        for t in result.values():
            if isinstance(t, QTensor):
                t.dequantize()
    return result


def assemble(header, data: bytes, *, magic=b"EDGEQ\x00PK", major=1, minor=0, reserved=0,
             raw_header: bytes | None = None, header_len: int | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    pre = PREAMBLE.pack(magic, major, minor, reserved, len(h) if header_len is None else header_len)
    return pre + h + b"\0" * (align(24 + len(h)) - 24 - len(h)) + data


def components(header):
    """(tensor, part) of every component with bytes."""
    return [(n, p) for n, e in header["tensors"].items() for p, c in e["components"].items() if c["nbytes"]]


def test_reference_file_opens(tmp_path, reference_file):
    raw, header, start = reference_file
    assert not isinstance(open_bytes(tmp_path, raw), Exception)
    assert not isinstance(open_bytes(tmp_path, assemble(header, raw[start:])), Exception)


@given(cut=st.integers(0, 10**9))
def test_truncation_anywhere(tmp_path_factory, reference_file, cut):
    raw, _, _ = reference_file
    result = open_bytes(tmp_path_factory.getbasetemp(), raw[:cut % len(raw)])
    assert isinstance(result, FormatError)


@given(pos=st.integers(0, 23), mask=st.integers(1, 255))
def test_flipped_preamble_byte(tmp_path_factory, reference_file, pos, mask):
    raw, _, _ = reference_file
    bad = bytearray(raw)
    bad[pos] ^= mask
    result = open_bytes(tmp_path_factory.getbasetemp(), bytes(bad))
    if 10 <= pos < 12:  # the minor version: a newer minor only adds, so it still opens
        assert not isinstance(result, Exception)
    elif 8 <= pos < 10:
        assert isinstance(result, UnsupportedError) and "version" in str(result)
    else:  # magic, reserved, header length
        assert isinstance(result, FormatError)


@given(data=st.data())
def test_flipped_header_byte(tmp_path_factory, reference_file, data):
    """A flip in the header either raises a format error or yields another self-consistent
    file (a renamed tensor, a changed config value): never another exception."""
    raw, _, start = reference_file
    pos = data.draw(st.integers(24, start - 1))
    bad = bytearray(raw)
    bad[pos] ^= data.draw(st.integers(1, 255))
    open_bytes(tmp_path_factory.getbasetemp(), bytes(bad))


@given(data=st.data())
def test_structural_header_bytes_are_checked(tmp_path_factory, reference_file, data):
    """Flips in the structural parts of the header (brackets, quotes, colons, numbers of the
    offsets and sizes, dtype names) are always caught."""
    raw, header, start = reference_file
    text = raw[24:24 + PREAMBLE.unpack_from(raw)[4]]
    structural = [i for i, ch in enumerate(text) if chr(ch) in '{}[]:,"']
    pos = data.draw(st.sampled_from(structural))
    bad = bytearray(raw)
    bad[24 + pos] ^= data.draw(st.sampled_from([0x01, 0x20, 0x40, 0x80, 0xFF]))
    result = open_bytes(tmp_path_factory.getbasetemp(), bytes(bad))
    assert isinstance(result, (FormatError, UnsupportedError))


@given(data=st.binary(max_size=300))
def test_random_bytes(tmp_path_factory, data):
    result = open_bytes(tmp_path_factory.getbasetemp(), data)
    assert isinstance(result, FormatError)
    result = open_bytes(tmp_path_factory.getbasetemp(), assemble(None, b"", raw_header=data))
    assert isinstance(result, FormatError)


@given(data=st.data())
def test_lying_offsets(tmp_path_factory, reference_file, data):
    raw, header, start = reference_file
    name, part = data.draw(st.sampled_from(components(header)))
    c = header["tensors"][name]["components"][part]
    offset = data.draw(st.integers(0, len(raw)) | st.sampled_from([2**62, 2**64 + 64, -64]))
    if offset == c["offset"]:
        return
    lie = json.loads(json.dumps(header))
    lie["tensors"][name]["components"][part]["offset"] = offset
    assert isinstance(open_bytes(tmp_path_factory.getbasetemp(), assemble(lie, raw[start:])), FormatError)


@given(data=st.data())
def test_lying_sizes_and_shapes(tmp_path_factory, reference_file, data):
    raw, header, start = reference_file
    name, part = data.draw(st.sampled_from(components(header)))
    lie = json.loads(json.dumps(header))
    c = lie["tensors"][name]["components"][part]
    field = data.draw(st.sampled_from(["nbytes", "shape", "entry shape", "dtype"]))
    if field == "nbytes":
        c["nbytes"] = data.draw(st.integers(0, 2**70).filter(lambda v: v != c["nbytes"]))
    elif field == "shape":
        c["shape"] = data.draw(st.lists(st.integers(0, 2**40), max_size=3).filter(lambda v: v != c["shape"]))
    elif field == "dtype":
        c["dtype"] = data.draw(st.sampled_from(sorted(fmt.DTYPES) + ["bool", "float128", "<f4", ""])
                               .filter(lambda v: v != c["dtype"]))
    else:
        if name in ("ternary-row-sym-base3", "binary-row-sym"):  # k = 57..64 share their bytes
            return
        entry = lie["tensors"][name]
        entry["shape"] = data.draw(st.lists(st.integers(0, 2**40), max_size=3).filter(lambda v: v != entry["shape"]))
    result = open_bytes(tmp_path_factory.getbasetemp(), assemble(lie, raw[start:]))
    assert isinstance(result, FormatError)


def edit(header, fn):
    h = json.loads(json.dumps(header))
    fn(h)
    return h


def first_qtensor(h):
    return h["tensors"][CASE_IDS[0]]


@pytest.mark.parametrize("change, error, match", [
    (lambda h: first_qtensor(h)["components"]["scales"].update(offset=first_qtensor(h)["components"]["codes"]["offset"]),
     FormatError, "overlap"),
    (lambda h: first_qtensor(h)["components"]["codes"].update(offset=first_qtensor(h)["components"]["codes"]["offset"] + 8),
     FormatError, "multiple of 64"),
    (lambda h: h["tensors"]["embed"].update(shape=[2**40, 2**40]), FormatError, "embed"),
    (lambda h: h["tensors"]["embed"]["components"]["data"].update(shape=[2**40, 2**40], nbytes=2**82),
     FormatError, "extent"),
    (lambda h: h["tensors"]["empty"]["components"]["data"].update(shape=[0, 2**70]), FormatError, "shape"),
    (lambda h: h["tensors"]["empty"]["components"]["data"].update(shape=[0] * 70), FormatError, "shape"),
    (lambda h: h["tensors"]["empty"]["components"]["data"].update(offset=2**20), FormatError, "extent"),
    (lambda h: first_qtensor(h).update(shape=[2**40, 2**40]), FormatError, "int8"),
    (lambda h: first_qtensor(h)["spec"].update(qtype="int5"), UnsupportedError, "int5"),
    (lambda h: first_qtensor(h)["spec"].update(symmetric=1), FormatError, "spec"),
    (lambda h: first_qtensor(h)["spec"].update(group_size=-1), FormatError, "spec"),
    (lambda h: first_qtensor(h)["spec"].pop("granularity"), FormatError, "spec"),
    (lambda h: first_qtensor(h).update(spec=[1]), FormatError, "spec"),
    (lambda h: first_qtensor(h)["spec"].update(granularity="channel"), FormatError, "channel"),
    (lambda h: h["tensors"]["ternary-row-sym-2bit"]["spec"].update(symmetric=False), FormatError, "asymmetric"),
    (lambda h: h["tensors"]["ternary-row-sym-2bit"]["spec"].update(packing="base4"), FormatError, "base4"),
    (lambda h: h["tensors"]["int4-group-sym"]["spec"].update(group_size=48), FormatError, "group size"),
    (lambda h: h["tensors"]["int4-group-sym"]["components"].pop("scales"), FormatError, "components"),
    (lambda h: h["tensors"]["embed"].update(dtype="int32"), FormatError, "embed"),
    (lambda h: h["tensors"]["embed"].update(components=[]), FormatError, "embed"),
    (lambda h: h["tensors"].update(x=5), FormatError, "'x'"),
    (lambda h: h.update(tensors=[]), FormatError, "tensors"),
    (lambda h: h.update(config=[1]), FormatError, "config"),
    (lambda h: h.update(tokenizer="t"), FormatError, "tokenizer"),
    (lambda h: h.update(metadata=7), FormatError, "metadata"),
])
def test_specific_lies(tmp_path, reference_file, change, error, match):
    raw, header, start = reference_file
    result = open_bytes(tmp_path, assemble(edit(header, change), raw[start:]))
    assert isinstance(result, error), result
    assert match in str(result)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(magic=b"GGUF\x03\x00\x00\x00"), FormatError, "magic"),
    (dict(major=2), UnsupportedError, "version 2.0"),
    (dict(major=0), UnsupportedError, "version"),
    (dict(minor=7), None, None),
    (dict(reserved=1), FormatError, "reserved"),
    (dict(header_len=2**63), FormatError, "header length"),
    (dict(raw_header=b"{not json"), FormatError, "JSON"),
    (dict(raw_header=b"[]"), FormatError, "JSON object"),
    (dict(raw_header=b'{"tensors": {}}\xff'), FormatError, "UTF-8"),
    (dict(raw_header=b'{"tensors": {}, "metadata": {"n": ' + b"9" * 5000 + b"}}"), FormatError, "header"),
    (dict(raw_header=b"[" * 100_000 + b"]" * 100_000), FormatError, "header"),
    (dict(raw_header=b'{"tensors": {}, "config": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}"),
     FormatError, "header"),
])
def test_preamble_and_json_errors(tmp_path, reference_file, kwargs, error, match):
    raw, header, start = reference_file
    data = b"" if "raw_header" in kwargs else raw[start:]
    result = open_bytes(tmp_path, assemble(header, data, **kwargs))
    if error is None:
        assert not isinstance(result, Exception)
    else:
        assert isinstance(result, error), result
        assert match in str(result)


def test_empty_and_short_files(tmp_path):
    for raw in (b"", b"EDGEQ", b"EDGEQ\x00PK" + b"\0" * 15):
        assert isinstance(open_bytes(tmp_path, raw), FormatError)
    # a header that stops before its padding: the data start lies beyond the end
    empty = assemble({"config": None, "tokenizer": None, "metadata": {}, "tensors": {}}, b"")
    assert not isinstance(open_bytes(tmp_path, empty), Exception)
    cut = assemble({"tensors": {}}, b"")[:24 + len(b'{"tensors": {}}')]
    assert isinstance(open_bytes(tmp_path, cut), FormatError)


def test_flipped_blob_byte_is_not_an_error(tmp_path, reference_file):
    """No checksum: damage inside tensor data reads as other numbers (documented, not a bug)."""
    raw, _, start = reference_file
    bad = bytearray(raw)
    bad[-1] ^= 0xFF
    assert not isinstance(open_bytes(tmp_path, bytes(bad)), Exception)


def test_errors_are_value_errors():
    assert issubclass(FormatError, ValueError) and issubclass(UnsupportedError, ValueError)
