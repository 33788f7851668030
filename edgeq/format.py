"""The packed model file (.eqm): one file, memory-mapped, tensors are views into it.

Layout (all integers little-endian):

    offset  size  field
    0       8     magic b"EDGEQ\\x00PK"
    8       2     major version (readers reject other majors)
    10      2     minor version (additions only)
    12      4     reserved, 0 (readers reject anything else)
    16      8     header length H in bytes
    24      H     header: UTF-8 JSON object
    D       ...   data; D = 24 + H rounded up to 64. Every blob starts at a multiple of 64
                  from D, so every view is aligned for SIMD loads.

Header:
    {"config": {...} | null, "tokenizer": {...} | null, "metadata": {...},
     "tensors": {name: {"shape": [...], "spec": {QuantSpec fields} | null, "dtype": str | null,
                        "components": {part: {"dtype": str, "shape": [...],
                                              "offset": int (from D), "nbytes": int}}}}}
A plain array has "spec": null, its dtype and one component "data"; a QTensor has its spec
and the components its layout names (codes, scales, zeros, mins).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgeq.errors import FormatError, UnsupportedError
from edgeq.qtypes import QTensor, QuantSpec, from_components

MAGIC = b"EDGEQ\x00PK"
MAJOR, MINOR = 1, 0
PREAMBLE = struct.Struct("<8sHHIQ")
ALIGN = 64
MAX_HEADER_BYTES = 1 << 30
#: dtypes a component may have; anything else in a file is rejected
DTYPES = {name: np.dtype(name) for name in
          ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float16", "float32", "float64")}


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class PackedWriter:
    """Writes an .eqm atomically: blobs spill to a temporary file tensor by tensor (peak memory
    is one tensor), then header and blobs are written to a temporary file in the destination
    folder, which is renamed over the destination. On any error nothing is left behind."""

    def __init__(self, path, *, config=None, tokenizer=None, metadata=None):
        self.path = Path(path)
        for field, value in (("config", config), ("tokenizer", tokenizer)):
            if value is not None and not isinstance(value, dict):  # the reader accepts only these
                raise TypeError(f"{field} must be a dict or None, not {type(value).__name__}")
        self.config, self.tokenizer, self.metadata = config, tokenizer, dict(metadata or {})
        self.entries: dict[str, dict] = {}
        self._spill = tempfile.TemporaryFile(dir=self.path.parent or ".", prefix=".edgeq-blobs-")
        self._size = 0

    def _blob(self, array: np.ndarray) -> dict:
        shape = list(np.shape(array))  # ascontiguousarray turns a 0-d array into shape (1,)
        array = np.ascontiguousarray(array)
        pad = _align(self._size) - self._size
        self._spill.write(b"\0" * pad)
        offset = self._size + pad
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)  # a view on little-endian hosts
        self._spill.write(memoryview(little.reshape(-1).view(np.uint8)))  # no bytes copy of the blob
        self._size = offset + array.nbytes
        return {"dtype": array.dtype.name, "shape": shape, "offset": offset,
                "nbytes": int(array.nbytes)}

    def add(self, name: str, tensor) -> None:
        if name in self.entries:
            raise ValueError(f"duplicate tensor name {name!r}")
        if isinstance(tensor, QTensor):
            entry = {"shape": list(tensor.shape), "spec": tensor.spec.to_json(), "dtype": None,
                     "components": {part: self._blob(a) for part, a in tensor.data.items()}}
        else:
            array = np.asarray(tensor)
            if array.dtype.name not in DTYPES:
                raise UnsupportedError(f"tensor {name!r}: dtype {array.dtype} cannot be stored")
            entry = {"shape": list(array.shape), "spec": None, "dtype": array.dtype.name,
                     "components": {"data": self._blob(array)}}
        self.entries[name] = entry

    def close(self) -> None:
        try:
            header = json.dumps({"config": self.config, "tokenizer": self.tokenizer,
                                 "metadata": self.metadata, "tensors": self.entries},
                                separators=(",", ":")).encode()
            fd, tmp = tempfile.mkstemp(dir=self.path.parent or ".", prefix=f".{self.path.name}.")
            try:
                os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
                with os.fdopen(fd, "wb") as out:
                    out.write(PREAMBLE.pack(MAGIC, MAJOR, MINOR, 0, len(header)))
                    out.write(header)
                    out.write(b"\0" * (_align(PREAMBLE.size + len(header)) - PREAMBLE.size - len(header)))
                    self._spill.seek(0)
                    shutil.copyfileobj(self._spill, out, 1 << 22)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        finally:
            self._spill.close()

    def abort(self) -> None:
        self._spill.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save(path, tensors: Mapping, *, config=None, tokenizer=None, metadata=None) -> Path:
    """Write tensors (name -> QTensor or numpy array) and the header dicts to `path`, atomically."""
    with PackedWriter(path, config=config, tokenizer=tokenizer, metadata=metadata) as writer:
        for name, tensor in tensors.items():
            writer.add(name, tensor)
    return Path(path)


class PackedFile(Mapping):
    """A read-only mapping name -> QTensor or numpy array, backed by a memory map of the file."""

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < PREAMBLE.size:
                self._fail("preamble", f"at least {PREAMBLE.size} bytes, the file has {size}")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        magic, major, minor, reserved, header_len = PREAMBLE.unpack_from(self._map, 0)
        if magic != MAGIC:
            self._fail("magic", f"{MAGIC!r}, found {magic!r}")
        if major != MAJOR:
            raise UnsupportedError(f"{self.path}: format version {major}.{minor}; this edgeq reads {MAJOR}.x")
        if reserved != 0:
            self._fail("reserved field", f"0, found {reserved}")
        if header_len > min(size - PREAMBLE.size, MAX_HEADER_BYTES):
            self._fail("header length", f"at most {size - PREAMBLE.size} bytes, found {header_len}")
        self.version = (major, minor)
        header = self._parse_header(self._map[PREAMBLE.size:PREAMBLE.size + header_len])
        self._data_start = _align(PREAMBLE.size + header_len)
        if size < self._data_start:  # the writer always pads the header to the data start
            self._fail("size", f"at least {self._data_start} bytes (header padding), the file has {size}")
        self._data_len = size - self._data_start
        self.config = header.get("config")
        self.tokenizer = header.get("tokenizer")
        self.metadata = header.get("metadata") or {}
        for field in ("config", "tokenizer"):
            if header.get(field) is not None and not isinstance(header[field], dict):
                self._fail(field, "an object or null")
        if not isinstance(self.metadata, dict):
            self._fail("metadata", "an object")
        tensors = header.get("tensors")
        if not isinstance(tensors, dict):
            self._fail("tensors", "an object of tensor entries")
        self._entries = tensors
        self._cache: dict[str, object] = {}
        self._check_extents()

    def _fail(self, field: str, expected: str):
        raise FormatError(f"{self.path}: bad {field}: expected {expected}")

    def _parse_header(self, raw: bytes) -> dict:
        try:
            header = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, ints of over 4300 digits
            self._fail("header", f"UTF-8 JSON ({type(e).__name__}: {str(e)[:80]})")
        if not isinstance(header, dict):
            self._fail("header", "a JSON object")
        return header

    # --- validation ------------------------------------------------------------------
    def _component(self, name: str, part: str, c) -> tuple[np.dtype, tuple[int, ...], int, int]:
        where = f"tensor {name!r} component {part!r}"
        if not isinstance(c, dict):
            self._fail(where, "an object")
        dtype = DTYPES.get(c.get("dtype")) if isinstance(c.get("dtype"), str) else None
        if dtype is None:
            self._fail(f"{where} dtype", f"one of {', '.join(DTYPES)}, found {c.get('dtype')!r}")
        shape = _int_list(c.get("shape"))
        offset, nbytes = c.get("offset"), c.get("nbytes")
        if shape is None:
            self._fail(f"{where} shape", f"a list of non-negative integers, found {c.get('shape')!r}")
        if not _is_uint(offset) or not _is_uint(nbytes):
            self._fail(f"{where} offset/nbytes", "non-negative integers")
        if nbytes != math.prod(shape) * dtype.itemsize:
            self._fail(f"{where} nbytes", f"{math.prod(shape) * dtype.itemsize} for {dtype}{tuple(shape)}, found {nbytes}")
        if offset % ALIGN:
            self._fail(f"{where} offset", f"a multiple of {ALIGN}, found {offset}")
        if offset + nbytes > self._data_len:
            self._fail(f"{where} extent", f"within the {self._data_len} data bytes, found {offset}+{nbytes}")
        return dtype, tuple(shape), offset, nbytes

    def _check_extents(self) -> None:
        spans = []
        for name, entry in self._entries.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("components"), dict):
                self._fail(f"tensor {name!r}", "an object with components")
            for part, c in entry["components"].items():
                _, _, offset, nbytes = self._component(name, part, c)
                if nbytes:
                    spans.append((offset, offset + nbytes, f"{name}.{part}"))
        spans.sort()
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                self._fail("tensor extents", f"no overlap, but {a} and {b} overlap")

    def _build(self, name: str):
        entry = self._entries[name]
        arrays = {}
        for part, c in entry["components"].items():
            dtype, shape, offset, nbytes = self._component(name, part, c)
            flat = np.frombuffer(self._map, dtype=dtype.newbyteorder("<"), count=math.prod(shape),
                                 offset=self._data_start + offset)
            try:
                arrays[part] = flat.reshape(shape)
            except ValueError as e:  # empty but with more dimensions, or larger ones, than numpy has
                self._fail(f"tensor {name!r} component {part!r} shape", f"a numpy shape ({e})")
        shape = _int_list(entry.get("shape"))
        if shape is None:
            self._fail(f"tensor {name!r} shape", "a list of non-negative integers")
        spec = entry.get("spec")
        if spec is None:
            if set(arrays) != {"data"} or entry.get("dtype") != arrays["data"].dtype.name \
                    or tuple(shape) != arrays["data"].shape:
                self._fail(f"tensor {name!r}", "one 'data' component matching its dtype and shape")
            return arrays["data"]
        return from_components(self._spec(name, spec, shape), tuple(shape), arrays,
                               where=f"{self.path}: tensor {name!r}")

    def _spec(self, name: str, spec, shape) -> QuantSpec:
        if not isinstance(spec, dict) or len(shape) != 2:
            self._fail(f"tensor {name!r} spec", "a quantization spec on a 2-D shape")
        try:
            s = QuantSpec(qtype=spec["qtype"], granularity=spec["granularity"],
                          group_size=spec["group_size"], symmetric=spec["symmetric"],
                          packing=spec.get("packing", ""))
        except (KeyError, TypeError):
            self._fail(f"tensor {name!r} spec", "qtype, granularity, group_size, symmetric")
        if not (isinstance(s.qtype, str) and isinstance(s.granularity, str) and _is_uint(s.group_size)
                and isinstance(s.symmetric, bool) and isinstance(s.packing, str)):
            self._fail(f"tensor {name!r} spec", "string qtype/granularity/packing, integer group size, "
                                                "boolean symmetric")
        return s

    # --- mapping ------------------------------------------------------------------------
    def __getitem__(self, name: str):
        if name not in self._cache:
            if name not in self._entries:
                raise KeyError(name)
            self._cache[name] = self._build(name)
        return self._cache[name]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def validate(self) -> None:
        """Build every tensor once, so that any inconsistency raises now."""
        for name in self:
            self[name]

    def __repr__(self) -> str:
        return f"PackedFile({str(self.path)!r}, {len(self)} tensors)"


def _is_uint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _int_list(v):
    if isinstance(v, list) and all(_is_uint(d) for d in v):
        return v
    return None


def open_packed(path) -> PackedFile:
    """Open an .eqm file: validates the whole header and every tensor, returns views."""
    packed = PackedFile(path)
    packed.validate()
    return packed
