"""Memory-mapped reader for safetensors files and sharded safetensors checkpoints.

File layout (all integers little-endian)::

    offset 0       u64  N                  length of the JSON header in bytes
    offset 8       N bytes of UTF-8 JSON   {name: {"dtype": str, "shape": [int, ...],
                                                   "data_offsets": [begin, end]},
                                            "__metadata__": {str: str}}   (optional)
                                           (may be padded with trailing spaces)
    offset 8 + N   byte buffer             tensor bytes, row-major, little-endian;
                                           data_offsets are relative to the buffer start

Rules checked when a file is opened (FormatError naming the file, tensor and field if
broken): the file holds at least the 8 length bytes; N fits in the file and is at most
100 MB; the header is UTF-8 JSON, an object, without duplicate keys; ``__metadata__`` maps
strings to strings; every tensor has a dtype string, a shape of non-negative ints and
data_offsets of two ints with 0 <= begin <= end <= buffer length; end - begin equals
prod(shape) * itemsize; tensors neither overlap nor leave holes and together cover the
buffer exactly (as the format requires). A dtype the format defines but numpy cannot hold
(F8_*, F6_*, F4) raises UnsupportedError. Sizes are checked with Python integers against the
real file size before anything is mapped, so a lying header never causes a large allocation.

Tensors are returned as read-only numpy views into the memory map (no copy). BF16 has no
numpy dtype: :meth:`SafetensorsFile.raw` gives its uint16 bit patterns as a view, and
:meth:`SafetensorsFile.tensor` / :meth:`SafetensorsFile.read` convert it exactly to float32,
one tensor at a time.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import reprlib
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from edgeq.errors import FormatError, UnsupportedError

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 100 * 1024 * 1024
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# safetensors dtype name -> numpy dtype of the stored bytes (explicitly little-endian).
# BF16 is kept as its raw 16-bit patterns; tensor()/read() widen it to float32.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
    "C64": np.dtype("<c8"),
}
# Defined by the format but without a numpy dtype to view them as.
UNSUPPORTED_DTYPES = frozenset({"F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4"})


class TensorInfo(NamedTuple):
    """What the header says about one tensor."""

    dtype: str  # safetensors name, e.g. "F32", "BF16"
    shape: tuple[int, ...]


class _Entry(NamedTuple):
    info: TensorInfo
    begin: int  # absolute file offset of the first byte
    count: int  # number of elements


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Exact bfloat16 -> float32: the 16 bits become the high half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _load_json(data: bytes, where: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, bounded nesting; FormatError otherwise."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise FormatError(f"{where}: duplicate key {_brief(dup)}")
        return obj

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates)
    except FormatError:
        raise
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: not valid UTF-8 ({exc})") from exc
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{where}: not valid JSON ({exc})") from exc


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxlist, _REPR.maxother = 160, 8, 40


def _brief(value: Any) -> str:
    """repr() bounded in length: header values come from the file and may be huge."""
    return _REPR.repr(value)


def _element_count(shape: list[int], limit: int) -> int | None:
    """prod(shape), or None once it passes ``limit`` (a hostile shape never builds a huge int)."""
    if 0 in shape:
        return 0
    count = 1
    for dim in shape:
        count *= dim
        if count > limit:
            return None
    return count


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SafetensorsFile(Mapping):
    """One memory-mapped safetensors file; a read-only mapping name -> numpy array.

    Use as a context manager or call :meth:`close`; arrays already handed out stay valid
    (the map is released when the last of them is garbage-collected).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 8:
                    raise FormatError(f"{self.path}: file is {size} bytes, shorter than the 8-byte header length")
                header_len = int.from_bytes(f.read(8), "little")
                if header_len > MAX_HEADER_BYTES:
                    raise FormatError(
                        f"{self.path}: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
                    )
                if header_len > size - 8:
                    raise FormatError(
                        f"{self.path}: header length {header_len} is larger than the {size - 8} bytes after it"
                    )
                header = _load_json(f.read(header_len), f"{self.path}: header")
                if not isinstance(header, dict):
                    raise FormatError(f"{self.path}: header: expected a JSON object, got {type(header).__name__}")
                self.metadata: dict[str, str] = self._parse_metadata(header.pop("__metadata__", None))
                self._data_start = 8 + header_len
                self._entries = self._parse_entries(header, size - self._data_start)
                # Mapped only once the header is known good.
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                self._closed = False
        except OSError as exc:
            raise FormatError(f"{self.path}: cannot read safetensors file: {exc}") from exc

    def _parse_metadata(self, metadata: Any) -> dict[str, str]:
        if metadata is None:
            return {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise FormatError(f"{self.path}: __metadata__: expected an object of string -> string")
        return metadata

    def _parse_entries(self, header: dict, buffer_len: int) -> dict[str, _Entry]:
        spans = []
        entries = {}
        for name, desc in header.items():
            where = f"{self.path}: tensor {_brief(name)}"
            if not isinstance(desc, dict):
                raise FormatError(f"{where}: expected an object with dtype, shape, data_offsets")
            dtype = desc.get("dtype")
            if not isinstance(dtype, str):
                raise FormatError(f"{where}: dtype: expected a string, got {_brief(dtype)}")
            if dtype in UNSUPPORTED_DTYPES:
                raise UnsupportedError(f"{where}: dtype {dtype} is not supported (no numpy equivalent)")
            if dtype not in DTYPES:
                raise FormatError(f"{where}: dtype {_brief(dtype)} is not a safetensors dtype")
            shape = desc.get("shape")
            if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
                raise FormatError(f"{where}: shape: expected a list of non-negative ints, got {_brief(shape)}")
            offsets = desc.get("data_offsets")
            if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
                raise FormatError(f"{where}: data_offsets: expected [begin, end] ints, got {_brief(offsets)}")
            begin, end = offsets
            if not 0 <= begin <= end <= buffer_len:
                raise FormatError(
                    f"{where}: data_offsets [{begin}, {end}] outside the {buffer_len}-byte buffer or begin > end"
                )
            itemsize = DTYPES[dtype].itemsize
            count = _element_count(shape, (end - begin) // itemsize)
            if count is None or count * itemsize != end - begin:
                needs = f"more than {end - begin}" if count is None else count * itemsize
                raise FormatError(
                    f"{where}: data_offsets span {end - begin} bytes but {dtype} shape {_brief(shape)} needs {needs}"
                )
            entries[name] = _Entry(TensorInfo(dtype, tuple(shape)), self._data_start + begin, count)
            spans.append((begin, end, name))

        # The buffer must be owned exactly: no overlaps, no holes, nothing left over.
        spans.sort()
        position = 0
        for begin, end, name in spans:
            if begin < position:
                raise FormatError(
                    f"{self.path}: tensor {_brief(name)}: data_offsets [{begin}, {end}] overlap another tensor"
                )
            if begin > position:
                raise FormatError(f"{self.path}: bytes [{position}, {begin}) of the buffer belong to no tensor")
            position = end
        if position != buffer_len:
            raise FormatError(f"{self.path}: bytes [{position}, {buffer_len}) of the buffer belong to no tensor")
        # Buffer order, so iterating reads the file front to back.
        return {name: entries[name] for _, _, name in spans}

    # ----------------------------------------------------------------- access

    def names(self) -> list[str]:
        """Tensor names in the order their bytes appear in the file."""
        return list(self._entries)

    def info(self, name: str) -> TensorInfo:
        return self._entry(name).info

    def raw(self, name: str) -> np.ndarray:
        """Read-only zero-copy view of the stored values (BF16 as uint16 bit patterns)."""
        entry = self._entry(name)
        if self._closed:
            raise ValueError(f"{self.path}: read after close()")
        dtype = DTYPES[entry.info.dtype]
        return np.frombuffer(self._map, dtype=dtype, count=entry.count, offset=entry.begin).reshape(entry.info.shape)

    def tensor(self, name: str) -> np.ndarray:
        """Zero-copy view for every dtype numpy has; BF16 comes back as a float32 copy."""
        array = self.raw(name)
        return bf16_to_float32(array) if self._entry(name).info.dtype == "BF16" else array

    def read(self, name: str, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """A new array holding one tensor converted to ``dtype`` (BF16 widened exactly first)."""
        return self.tensor(name).astype(dtype, copy=True)

    def release(self, name: str) -> None:
        """Drop the mapped pages of a tensor's bytes from this process's resident set (they stay
        in the page cache and are read again if touched). Converters call it after each tensor so
        that resident memory tracks one tensor, not the file."""
        entry = self._entry(name)
        if self._closed or not hasattr(mmap, "MADV_DONTNEED"):
            return
        nbytes = entry.count * DTYPES[entry.info.dtype].itemsize
        # whole pages only: a neighbour's pages dropped too are simply read again when touched
        start = entry.begin - entry.begin % mmap.PAGESIZE
        if nbytes:
            self._map.madvise(mmap.MADV_DONTNEED, start, entry.begin + nbytes - start)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def close(self) -> None:
        """Refuse further reads; release the map now unless arrays from it are still alive
        (then it is released when they are garbage-collected)."""
        self._closed = True
        try:
            self._map.close()
        except BufferError:
            logger.debug("%s: arrays still reference the map; it closes when they are freed", self.path)

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Checkpoint(Mapping):
    """All tensors of a Hugging Face checkpoint folder, across shards, as one read-only mapping.

    Every shard is opened (header validated, file mapped) up front; tensor bytes are only
    touched when a tensor is read, so converting tensor by tensor keeps memory low.
    """

    def __init__(self, files: dict[str, SafetensorsFile], owner: dict[str, str], metadata: dict) -> None:
        self.files = files  # shard file name -> open file
        self._owner = owner  # tensor name -> shard file name
        self.metadata = metadata

    def names(self) -> list[str]:
        return list(self._owner)

    def file_of(self, name: str) -> SafetensorsFile:
        try:
            return self.files[self._owner[name]]
        except KeyError:
            raise KeyError(f"checkpoint has no tensor named {name!r}") from None

    def info(self, name: str) -> TensorInfo:
        return self.file_of(name).info(name)

    def raw(self, name: str) -> np.ndarray:
        return self.file_of(name).raw(name)

    def tensor(self, name: str) -> np.ndarray:
        return self.file_of(name).tensor(name)

    def read(self, name: str, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        return self.file_of(name).read(name, dtype)

    def release(self, name: str) -> None:
        """See SafetensorsFile.release."""
        self.file_of(name).release(name)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, name: object) -> bool:
        return name in self._owner

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """Open ``model.safetensors.index.json`` (sharded) or else ``model.safetensors`` in ``folder``.

    The index is ``{"metadata": {...}, "weight_map": {tensor name: shard file name}}``; shard
    names must be plain file names inside ``folder``, every shard must exist and hold the
    tensors the index assigns to it.
    """
    folder = os.fspath(folder)
    index_path = os.path.join(folder, INDEX_FILE)
    if not os.path.exists(index_path):
        single = os.path.join(folder, SINGLE_FILE)
        if not os.path.exists(single):
            raise FormatError(f"{folder}: neither {INDEX_FILE} nor {SINGLE_FILE} found")
        f = SafetensorsFile(single)
        return Checkpoint({SINGLE_FILE: f}, {name: SINGLE_FILE for name in f.names()}, dict(f.metadata))

    try:
        with open(index_path, "rb") as fh:
            index = _load_json(fh.read(), index_path)
    except OSError as exc:
        raise FormatError(f"{index_path}: cannot read: {exc}") from exc
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise FormatError(f"{index_path}: expected an object with a 'weight_map' object")
    metadata = index.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise FormatError(f"{index_path}: metadata: expected an object")
    owner: dict[str, str] = index["weight_map"]
    files: dict[str, SafetensorsFile] = {}
    for name, shard in owner.items():
        if not isinstance(shard, str) or shard in ("", ".", "..") or os.path.basename(shard) != shard:
            raise FormatError(
                f"{index_path}: weight_map[{_brief(name)}]: expected a file name in the folder, got {_brief(shard)}"
            )
        if shard not in files:
            shard_path = os.path.join(folder, shard)
            if not os.path.isfile(shard_path):
                raise FormatError(f"{index_path}: shard {_brief(shard)} (holding {_brief(name)}) is missing")
            files[shard] = SafetensorsFile(shard_path)
        if name not in files[shard]:
            raise FormatError(f"{index_path}: weight_map[{_brief(name)}]: tensor is not in shard {_brief(shard)}")
    return Checkpoint(files, dict(owner), metadata)
