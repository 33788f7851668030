"""Import a llama-family GGUF file into an .eqm, tensor by tensor.

    import_gguf("model.gguf", "model.eqm", qtype="keep")

Steps:
 1. GGUFFile parses the container (header, key/values, tensor infos) against the file size, so
    a truncated or hostile file is a FormatError (and never an endless loop over a lying array
    length); unknown tensor types and big-endian files are UnsupportedError. It reads tensor
    data with file reads, one tensor at a time (gguf-py's GGUFReader would build numpy views of
    every metadata string up front: about 150 MiB for a 49k-token vocabulary).
 2. llama_config maps the metadata to the config dict of edgeq.models.llama (keys documented
    there) and checks every tensor name and shape against it.
 3. Each tensor is converted and handed to a PackedWriter, then dropped, so peak memory is one
    tensor (plus the metadata; measured by tests/perf/convert_memory.py):
      - Q8_0, Q4_0, Q4_1, TQ1_0, TQ2_0: exact repacking (converters.gguf_quants);
      - F32, F16, BF16: float arrays (1-D tensors always float32; BF16 widens exactly);
      - other types: dequantized by gguf.quants and quantized again (gguf_quants.fallback_qtype).
    With qtype other than "keep", every 2-D weight except token_embd.weight (unless
    quantize_embeddings) is dequantized and quantized to that type; a tensor whose exact import
    already has the requested spec (e.g. Q4_1 asked as int4 asymmetric group 32) stays exact.

The tensors keep their GGUF names (token_embd.weight, blk.N.attn_q.weight, ...) and numpy
shapes (out_features, in_features): GGUF lists dimensions innermost first (ne order), so a
tensor with ne = [576, 1536] is a (1536, 576) matrix.

Header written: config (edgeq.models.llama), tokenizer (BPETokenizer.to_header(): tokens,
merges, token types, special ids, pre-tokenizer name, add_bos/add_eos, chat template), metadata:
    {"source": {"format": "gguf", "file": name, "version": 2|3, "general": {general.* keys}},
     "import": {"qtype", "group_size", "symmetric", "quantize_embeddings",
                "tensors": {name: {"source_type": "Q4_1", "stored": "int4 asym g32", "exact": bool,
                                   "max_abs_error": float, "rel_rms_error": float   (not exact)}},
                "requantized": [names of tensors whose numbers changed]}}
rel_rms_error is sqrt(sum (w' - w)^2 / sum w^2) against the GGUF's own (dequantized) values.
"""

from __future__ import annotations

import functools
import logging
import math
import mmap
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from edgeq.converters import gguf_quants as gq
from edgeq.converters.chunked import chunk_rows, join_row_chunks, progress_bar, quantize_in_chunks
from edgeq.errors import FormatError, UnsupportedError
from edgeq.format import PackedWriter
from edgeq.qtypes import QTensor, QuantSpec, describe, get_layout
from edgeq.tokenizer.bpe import BPETokenizer

log = logging.getLogger(__name__)

QTYPES = ("keep", "int8", "int4", "ternary", "binary", "pow2")
#: GGUF architecture -> RoPE pairing llama.cpp uses for it ("norm": adjacent pairs, because
#: the HF->GGUF converter permutes q/k rows for llama; "neox": pairs (i, i + rope_dim/2))
ROPE_TYPES = {"llama": "norm", "qwen2": "neox"}
EMBEDDING = "token_embd.weight"


@dataclass(frozen=True)
class ImportOptions:
    """qtype "keep" imports exactly where edgeq can; another qtype re-quantizes 2-D weights.
    group_size None means 32 for int8/int4 and the layout's default (per row) otherwise."""

    qtype: str = "keep"
    group_size: int | None = None
    symmetric: bool = True
    quantize_embeddings: bool = False

    def __post_init__(self):
        if self.qtype not in QTYPES:
            raise UnsupportedError(f"qtype {self.qtype!r}: choose from {', '.join(QTYPES)}")
        if self.group_size is not None and (not isinstance(self.group_size, int)
                                            or isinstance(self.group_size, bool) or self.group_size <= 0):
            raise ValueError(f"group_size must be a positive integer or None, got {self.group_size!r}")


# --- 1. the container --------------------------------------------------------------------
#: GGUF value type -> struct code of a scalar (8 is a string, 9 an array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_NESTING = 4
GGUF_VERSIONS = (2, 3)


class _Cursor:
    """Bounds-checked little-endian reads over a memory map."""

    def __init__(self, buf, path: Path):
        self.buf, self.path, self.pos = buf, path, 0

    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> int:
        if n > self.left():
            raise FormatError(f"{self.path}: truncated in {what}: needs {n} bytes at offset "
                              f"{self.pos}, {self.left()} left")
        start, self.pos = self.pos, self.pos + n
        return start

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(what)
        start = self.take(n, what)
        try:
            return self.buf[start:start + n].decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: {what} is not UTF-8") from None

    def count(self, n: int, min_size: int, what: str) -> int:
        """A count of items of at least min_size bytes each, checked against the bytes left."""
        if n * min_size > self.left():
            raise FormatError(f"{self.path}: {what} claims {n} items, more than the file holds")
        return n


def _value(cur: _Cursor, vtype: int, what: str, depth: int = 0):
    """One metadata value as plain Python: int, float, bool, str or a (nested) list."""
    if vtype in _SCALARS:
        code = "<" + _SCALARS[vtype]
        return struct.unpack_from(code, cur.buf, cur.take(struct.calcsize(code), what))[0]
    if vtype == _STRING:
        return cur.string(what)
    if vtype != _ARRAY:
        raise FormatError(f"{cur.path}: {what}: unknown value type {vtype}")
    if depth >= _MAX_NESTING:
        raise FormatError(f"{cur.path}: {what} nests arrays deeper than {_MAX_NESTING}")
    etype = cur.u32(what)
    n = cur.u64(what)
    if etype in _SCALARS:
        code = f"<{n}{_SCALARS[etype]}"
        size = cur.count(n, struct.calcsize(code[-1]), what) * struct.calcsize(code[-1])
        return list(struct.unpack_from(code, cur.buf, cur.take(size, what)))
    if etype in (_STRING, _ARRAY):
        return [_value(cur, etype, f"{what}[{i}]", depth + 1)
                for i in range(cur.count(n, 8 if etype == _STRING else 12, what))]
    raise FormatError(f"{cur.path}: {what}: unknown array element type {etype}")


@dataclass(frozen=True)
class GGUFTensor:
    """A tensor's entry: numpy shape (outermost first, the reverse of GGUF's ne order), GGML
    type, absolute file offset of its data and its size in bytes."""

    name: str
    ggml_type: T
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class GGUFFile:
    """A GGUF file's metadata and tensor entries, parsed and checked against the file size; tensor
    data is read on demand with plain file reads, one tensor (or row range) at a time, so nothing
    of the file stays mapped or resident after it is converted.

    Layout (GGUF v2/v3, little-endian): magic b"GGUF", u32 version, u64 tensor count, u64
    key/value count; key/values (string key, u32 value type, value); tensor infos (string name,
    u32 n_dims, u64 ne[n_dims], u32 type, u64 offset); data from the header end rounded up to
    general.alignment (default 32), each tensor at its offset from there.

    Truncated or hostile files raise FormatError (every length is checked against the bytes
    left, so a lying array length fails at once); unknown tensor types and big-endian files raise
    UnsupportedError.
    """

    def __init__(self, path):
        self.path = Path(path)
        size = self.path.stat().st_size
        if size < 24:
            raise FormatError(f"{self.path}: {size} bytes is too short for a GGUF header (24 bytes)")
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            self.version, self.metadata, infos, data_start = self._parse(_Cursor(buf, self.path))
        self.tensors: dict[str, GGUFTensor] = {}
        for name, shape, ggml_type, offset, nbytes in infos:
            if data_start + offset + nbytes > size:
                raise FormatError(f"{self.path}: tensor {name!r} data ends at byte "
                                  f"{data_start + offset + nbytes}, past the end of the file "
                                  f"({size} bytes): truncated?")
            self.tensors[name] = GGUFTensor(name, ggml_type, shape, data_start + offset, nbytes)
        self._file = open(self.path, "rb", buffering=0)

    def _parse(self, cur: _Cursor):
        magic = cur.buf[:4]
        if magic != b"GGUF":
            raise FormatError(f"{self.path}: bad magic: expected b'GGUF', found {magic!r}")
        cur.take(4, "magic")
        version = cur.u32("version")
        if version & 0xFFFF == 0 and version:
            raise UnsupportedError(f"{self.path}: big-endian GGUF files are not supported")
        if version not in GGUF_VERSIONS:
            raise UnsupportedError(f"{self.path}: GGUF version {version}; edgeq reads {GGUF_VERSIONS}")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("key/value count")
        metadata = {}
        for _ in range(cur.count(n_kv, 13, "key/value count")):
            key = cur.string("a metadata key")
            metadata[key] = _value(cur, cur.u32(f"type of {key!r}"), f"value of {key!r}")
        alignment = metadata.get("general.alignment", 32)
        if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
            raise FormatError(f"{self.path}: general.alignment must be a power of two, found {alignment!r}")
        infos, names = [], set()
        for _ in range(cur.count(n_tensors, 28, "tensor count")):
            infos.append(_tensor_info(cur, names))
        return version, metadata, infos, -(-cur.pos // alignment) * alignment

    def read(self, t: GGUFTensor, start: int = 0, stop: int | None = None) -> np.ndarray:
        """A tensor, or rows start:stop of its outermost dimension, read from the file into a new
        array: F32 and F16 as float arrays of the tensor's shape, every other type as uint8 of
        shape (..., bytes of a row of blocks), as gguf.quants expects."""
        dtype = {T.F32: np.float32, T.F16: np.float16}.get(t.ggml_type, np.uint8)
        shape = t.shape if dtype is not np.uint8 else (*t.shape[:-1], t.nbytes // math.prod(t.shape[:-1]))
        stop = shape[0] if stop is None else stop
        row_bytes = t.nbytes // shape[0]
        out = np.empty((stop - start, *shape[1:]), dtype=dtype)
        view, got = memoryview(out.reshape(-1).view(np.uint8)), 0
        self._file.seek(t.offset + start * row_bytes)
        while got < len(view):
            n = self._file.readinto(view[got:])
            if not n:
                raise FormatError(f"{self.path}: tensor {t.name!r}: the file ended while reading it "
                                  f"(changed since it was opened?)")
            got += n
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _tensor_info(cur: _Cursor, names: set) -> tuple[str, tuple[int, ...], T, int, int]:
    name = cur.string("a tensor name")
    if name in names:
        raise FormatError(f"{cur.path}: tensor {name!r} appears twice")
    names.add(name)
    n_dims = cur.u32(f"tensor {name!r} dimension count")
    if not 1 <= n_dims <= 4:
        raise FormatError(f"{cur.path}: tensor {name!r}: {n_dims} dimensions, expected 1 to 4")
    dims = [cur.u64(f"tensor {name!r} dimensions") for _ in range(n_dims)]
    type_id = cur.u32(f"tensor {name!r} type")
    offset = cur.u64(f"tensor {name!r} offset")
    try:
        ggml_type = T(type_id)
    except ValueError:
        raise UnsupportedError(f"{cur.path}: tensor {name!r} has unknown GGML type id {type_id}") from None
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    if min(dims) == 0 or dims[0] % block:
        raise FormatError(f"{cur.path}: tensor {name!r}: dimensions {dims} do not fit "
                          f"{ggml_type.name} blocks of {block}")
    return name, tuple(reversed(dims)), ggml_type, offset, math.prod(dims) // block * type_size


# --- 2. config ---------------------------------------------------------------------------
_REQUIRED = object()


def _get(meta: dict, key: str, kind: type, default=_REQUIRED, path: Path | None = None):
    """meta[key] as an int or float; a per-layer list must hold one value."""
    v = meta.get(key, default)
    if v is _REQUIRED:
        raise FormatError(f"{path}: metadata key {key!r} is missing")
    if v is None or v is default:
        return v
    if isinstance(v, list):
        if not v or any(x != v[0] for x in v):
            raise UnsupportedError(f"{path}: {key} differs between layers ({v[:8]}...); "
                                   f"edgeq needs one value")
        v = v[0]
    ok = isinstance(v, (int, float)) if kind is float else isinstance(v, int)
    if not ok or isinstance(v, bool):
        raise FormatError(f"{path}: metadata key {key!r} should be {kind.__name__}, found {v!r}")
    if kind is int and v <= 0:
        raise FormatError(f"{path}: metadata key {key!r} should be positive, found {v}")
    return kind(v)


def _rope_scaling(meta: dict, arch: str, path: Path) -> dict | None:
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = _get(meta, f"{arch}.rope.scaling.factor", float, None, path)
    if kind is None and meta.get(f"{arch}.rope.scale_linear") is not None:
        kind, factor = "linear", _get(meta, f"{arch}.rope.scale_linear", float, None, path)
    if kind in (None, "none") or (kind == "linear" and factor in (None, 1.0)):
        return None
    if kind != "linear":
        raise UnsupportedError(f"{path}: RoPE scaling {kind!r} is not supported (linear is)")
    if factor is None or factor <= 0:
        raise FormatError(f"{path}: linear RoPE scaling needs a positive factor, found {factor}")
    scaling = {"type": "linear", "factor": factor}
    orig = _get(meta, f"{arch}.rope.scaling.original_context_length", int, None, path)
    if orig is not None:
        scaling["original_context_length"] = orig
    return scaling


def llama_config(meta: dict, shapes: dict[str, tuple], path: Path) -> dict:
    """The edgeq.models.llama config of a GGUF, checked against its tensors' names and shapes."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise FormatError(f"{path}: metadata key 'general.architecture' is missing")
    if arch not in ROPE_TYPES:
        raise UnsupportedError(f"{path}: architecture {arch!r} is not supported; "
                               f"edgeq imports {', '.join(ROPE_TYPES)} GGUF files")
    if EMBEDDING not in shapes or len(shapes[EMBEDDING]) != 2:
        raise FormatError(f"{path}: tensor {EMBEDDING!r} (vocab, dim) is missing")
    dim = _get(meta, f"{arch}.embedding_length", int, path=path)
    n_heads = _get(meta, f"{arch}.attention.head_count", int, path=path)
    head_dim = _get(meta, f"{arch}.attention.key_length", int, dim // n_heads, path)
    if _get(meta, f"{arch}.attention.value_length", int, head_dim, path) != head_dim:
        raise UnsupportedError(f"{path}: key and value head sizes differ")
    config = {
        "architecture": arch,
        "n_layers": _get(meta, f"{arch}.block_count", int, path=path),
        "dim": dim,
        "n_heads": n_heads,
        "n_kv_heads": _get(meta, f"{arch}.attention.head_count_kv", int, n_heads, path),
        "head_dim": head_dim,
        "ffn_dim": _get(meta, f"{arch}.feed_forward_length", int, path=path),
        "vocab_size": shapes[EMBEDDING][0],
        "rms_eps": _get(meta, f"{arch}.attention.layer_norm_rms_epsilon", float, path=path),
        "rope_type": ROPE_TYPES[arch],
        "rope_theta": _get(meta, f"{arch}.rope.freq_base", float, 10000.0, path),
        "rope_dim": _get(meta, f"{arch}.rope.dimension_count", int, head_dim, path),
        "rope_scaling": _rope_scaling(meta, arch, path),
        "rope_freq_factors": "rope_freqs.weight" in shapes,
        "context_length": _get(meta, f"{arch}.context_length", int, path=path),
        "tied_embeddings": "output.weight" not in shapes,
        "has_qkv_bias": "blk.0.attn_q.bias" in shapes,
    }
    if config["n_heads"] % config["n_kv_heads"]:
        raise FormatError(f"{path}: {n_heads} attention heads are not a multiple of "
                          f"{config['n_kv_heads']} key/value heads")
    if config["rope_dim"] > head_dim or config["rope_dim"] % 2:
        raise FormatError(f"{path}: rope dimension count {config['rope_dim']} must be even and at "
                          f"most the head size {head_dim}")
    vocab = meta.get(f"{arch}.vocab_size")
    if vocab is not None and vocab != config["vocab_size"]:
        raise FormatError(f"{path}: {arch}.vocab_size is {vocab} but {EMBEDDING} has "
                          f"{config['vocab_size']} rows")
    _check_tensors(config, shapes, path)
    return config


def tensor_shapes(config: dict) -> dict[str, tuple]:
    """GGUF name -> numpy shape of every tensor a llama-family model with this config has."""
    d, hd, f, v = config["dim"], config["head_dim"], config["ffn_dim"], config["vocab_size"]
    q, kv = config["n_heads"] * hd, config["n_kv_heads"] * hd
    shapes = {EMBEDDING: (v, d), "output_norm.weight": (d,)}
    if not config["tied_embeddings"]:
        shapes["output.weight"] = (v, d)
    if config["rope_freq_factors"]:
        shapes["rope_freqs.weight"] = (config["rope_dim"] // 2,)
    for i in range(config["n_layers"]):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (d,), b + "attn_q.weight": (q, d),
                       b + "attn_k.weight": (kv, d), b + "attn_v.weight": (kv, d),
                       b + "attn_output.weight": (d, q), b + "ffn_norm.weight": (d,),
                       b + "ffn_gate.weight": (f, d), b + "ffn_up.weight": (f, d),
                       b + "ffn_down.weight": (d, f)})
        if config["has_qkv_bias"]:
            shapes.update({b + "attn_q.bias": (q,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)})
    return shapes


def _check_tensors(config: dict, shapes: dict[str, tuple], path: Path) -> None:
    per_layer = len(tensor_shapes({**config, "n_layers": 1})) - len(tensor_shapes({**config, "n_layers": 0}))
    if config["n_layers"] * per_layer > len(shapes):  # before listing the names of a lying block count
        raise FormatError(f"{path}: tensors missing: {config['n_layers']} layers need "
                          f"{config['n_layers'] * per_layer} tensors or more, the file has {len(shapes)}")
    expected = tensor_shapes(config)
    missing = [n for n in expected if n not in shapes]
    if missing:
        raise FormatError(f"{path}: {len(missing)} tensors missing for a {config['n_layers']}-layer "
                          f"{config['architecture']} model, e.g. {missing[:3]}")
    extra = [n for n in shapes if n not in expected]
    if extra:
        raise UnsupportedError(f"{path}: tensors edgeq's llama decoder does not use: {extra[:5]}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise FormatError(f"{path}: tensor {name!r} has shape {tuple(shapes[name])}, "
                              f"expected {shape}")


# --- 3. tensors --------------------------------------------------------------------------
def target_spec(options: ImportOptions, name: str, shape: tuple[int, int]) -> QuantSpec | None:
    """The spec a 2-D tensor is re-quantized to, or None to import it as it is."""
    if options.qtype == "keep" or (name == EMBEDDING and not options.quantize_embeddings):
        return None
    group = options.group_size
    if group is None and options.qtype in ("int8", "int4"):
        group = 32
    layout = get_layout(options.qtype)
    try:
        spec = layout.make_spec(shape[1], group, options.symmetric, None, "")
        layout.check_shape(spec, shape)
    except ValueError as e:
        raise UnsupportedError(f"tensor {name!r} {shape}: {e}") from None
    return spec


def requantize(name: str, read_rows, ggml_type: T, shape: tuple[int, int],
               spec: QuantSpec) -> tuple[QTensor, dict]:
    """Dequantize (gguf.quants) and quantize to `spec`, reading and decoding a chunk of rows at
    a time (read_rows(start, stop) -> raw rows); returns the error too."""
    k = shape[1]
    return quantize_in_chunks(name, shape, spec,
                              lambda start, stop: gq.dequantize(read_rows(start, stop), ggml_type, name).reshape(-1, k))


def import_exact(name: str, read_rows, ggml_type: T, shape: tuple[int, int]) -> QTensor:
    """Exact repacking (converters.gguf_quants), a chunk of rows at a time."""
    return join_row_chunks(name, shape, chunk_rows(shape),
                           lambda start, stop: gq.import_exact(read_rows(start, stop), ggml_type,
                                                               stop - start, shape[1]))


def convert_tensor(name: str, read_rows, ggml_type: T, shape: tuple[int, ...],
                   options: ImportOptions):
    """One GGUF tensor -> (QTensor or float array, its report entry).

    read_rows(start=0, stop=None) gives the raw tensor or a range of its rows (GGUFFile.read):
    matrices are read a chunk of rows at a time."""
    record = {"source_type": ggml_type.name, "exact": True}
    if len(shape) == 1:
        return gq.dequantize(read_rows(), ggml_type, name).reshape(shape), record
    if len(shape) != 2:
        raise UnsupportedError(f"tensor {name!r}: {len(shape)}-D tensors are not supported")
    k = shape[1]
    spec = target_spec(options, name, shape)
    if spec is None:
        if ggml_type in gq.EXACT:
            return import_exact(name, read_rows, ggml_type, shape), record
        if ggml_type in (T.F32, T.F16):
            return read_rows(), record
        if ggml_type == T.BF16:
            return gq.dequantize(read_rows(), ggml_type, name), record
        fb = gq.fallback_qtype(ggml_type)
        spec = get_layout(fb["qtype"]).make_spec(k, fb["group_size"], fb["symmetric"], None, "")
    elif gq.EXACT_SPECS.get(ggml_type) == spec:
        return import_exact(name, read_rows, ggml_type, shape), record
    qt, error = requantize(name, read_rows, ggml_type, shape, spec)
    return qt, {**record, "exact": False, **error}


def _check_types(gguf: GGUFFile) -> None:
    """Fail before writing anything if a tensor type can be neither copied nor decoded."""
    for t in gguf.tensors.values():
        if t.ggml_type not in gq.EXACT and not gq.can_dequantize(t.ggml_type):
            raise UnsupportedError(f"{gguf.path}: tensor {t.name!r} has GGML type {t.ggml_type.name}, "
                                   f"which edgeq cannot import")


# --- 4. the import -----------------------------------------------------------------------
def import_gguf(src, dst, *, qtype: str = "keep", group_size: int | None = None,
                symmetric: bool = True, quantize_embeddings: bool = False,
                progress: bool | None = None) -> Path:
    """Convert the GGUF file `src` into the .eqm `dst` (written atomically); returns dst.
    progress: a tqdm bar on stderr (None: only when stderr is a terminal)."""
    options = ImportOptions(qtype, group_size, symmetric, quantize_embeddings)
    src, dst = Path(src), Path(dst)
    with GGUFFile(src) as gguf:
        meta = gguf.metadata
        shapes = {name: t.shape for name, t in gguf.tensors.items()}
        config = llama_config(meta, shapes, src)
        _check_types(gguf)
        tokenizer = BPETokenizer.from_gguf_fields(meta, source=str(src)).to_header()
        tensors, requantized = {}, []  # filled while writing; the header is written at close
        metadata = {"source": {"format": "gguf", "file": src.name, "version": gguf.version,
                               "general": {k: v for k, v in meta.items() if k.startswith("general.")}},
                    "import": {**asdict(options), "tensors": tensors, "requantized": requantized}}
        with progress_bar(len(shapes), progress, f"converting {src.name}") as bar, \
                PackedWriter(dst, config=config, tokenizer=tokenizer, metadata=metadata) as writer:
            for t in gguf.tensors.values():
                stored, record = convert_tensor(t.name, functools.partial(gguf.read, t), t.ggml_type,
                                                t.shape, options)
                writer.add(t.name, stored)  # written to disk now; nothing of it is kept
                record["stored"] = describe(stored)
                del stored
                tensors[t.name] = record
                if not record["exact"]:
                    requantized.append(t.name)
                    log.info("%s: %s -> %s, max abs error %.3g, relative RMS error %.3g", t.name,
                             t.ggml_type.name, record["stored"], record["max_abs_error"], record["rel_rms_error"])
                bar.update()
    log.info("imported %s -> %s: %d tensors, %d re-quantized", src, dst, len(shapes),
             len(requantized))
    return dst
