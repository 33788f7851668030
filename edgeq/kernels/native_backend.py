"""The native backend: C kernels from the cffi extension ``edgeq._native`` (native/*.c).

Importing this module registers the C kernels into the op table; an ImportError (extension not
built) means "native backend not available". The C side reads every layout in place and
picks a SIMD variant at run time (scalar, avx2, avx512, neon, neon_dotprod); the environment
variable EDGEQ_SIMD=<variant> forces one.

Everything the C code will touch is validated here first: component dtypes, shapes against the
QTensor spec, C-contiguity, block sizes, so a kernel never reads or writes outside its
buffers. Bad input raises FormatError (a weight component) or ValueError (an argument).
When the reference's int32 accumulator bound fails, the call goes to the numpy reference.

Per-call cost is kept low for decode loops (thousands of small GEMVs per second): a weight is
validated once and its C struct kept with the QTensor (``_matrix``); the cffi views of the
last activation, scale and output arrays are reused when the caller passes the same arrays
again; ``matmul(..., out=)`` writes into the caller's array. Float16 scales are not copied to
float32 (the kernels convert them in registers), so a weight costs no memory beyond its file.
Threads: ``set_threads(n)``, else EDGEQ_THREADS as read at import, else every core
(edgeq.kernels.backends); the C side keeps a pool of worker threads between calls.
"""

import math
import os
import weakref

import numpy as np

from edgeq._native import ffi, lib
from edgeq.errors import FormatError, UnsupportedError
from edgeq.kernels import backends
from edgeq.kernels import numpy_backend
from edgeq.kernels import reference as ref
from edgeq.kernels.table import WEIGHT_KINDS, register, weight_kind
from edgeq.qtypes import QTensor

NAME = "native"
#: weight kind -> enum eq_kind in native/edgeq_native.h
KIND_IDS = {"int8": 0, "int8_asym": 1, "int4": 2, "int4_asym": 3, "ternary_2bit": 4,
            "ternary_base3": 5, "binary": 6, "pow2": 7, "int3": 8, "int3_asym": 9, "int2": 10,
            "int2_asym": 11}
_STATUS = {-1: (ValueError, "rejected its arguments"), -2: (MemoryError, "ran out of memory"),
           -3: (ValueError, "got activations containing NaN or inf")}
_INT8, _FLOAT32 = np.dtype(np.int8), np.dtype(np.float32)

if lib.eq_qmatrix_size() != ffi.sizeof("eq_qmatrix"):
    raise ImportError("edgeq._native was built from a different edgeq_native.h; rebuild it")


def variants() -> list[str]:
    """SIMD variants this CPU supports, worst first ("scalar" is always there)."""
    return ffi.string(lib.eq_variants()).decode().split()


def simd_variant() -> str:
    """The SIMD variant the kernels use now."""
    return ffi.string(lib.eq_variant()).decode()


def use_variant(name: str) -> None:
    """Switch every kernel to SIMD variant `name` (for tests and benchmarks)."""
    status = lib.eq_select_variant(name.encode())
    if status == -1:
        raise UnsupportedError(f"unknown SIMD variant {name!r}; this CPU has {', '.join(variants())}")
    if status == -2:
        raise UnsupportedError(f"SIMD variant {name!r} is not supported by this CPU "
                               f"(it has {', '.join(variants())})")


_forced = os.environ.get("EDGEQ_SIMD")
if _forced:
    try:
        use_variant(_forced)
    except UnsupportedError as e:
        raise ImportError(f"EDGEQ_SIMD={_forced}: {e}") from None


# ---- threads ---------------------------------------------------------------------------------

def set_threads(n: int | None) -> None:
    """Threads for every native kernel call; None: EDGEQ_THREADS, else every core.

    The setting is read here and at import, not on every call (an unset variable costs a
    microsecond to look up, as much as a small GEMV)."""
    global _thread_count
    _thread_count = backends.threads() if n is None else _positive_int(n, "thread count")


def threads() -> int:
    """Threads the native kernels use."""
    return _thread_count


def pool_workers() -> int:
    """Worker threads the C pool has started so far (they are kept between calls)."""
    return lib.eq_pool_workers()


# ---- checks --------------------------------------------------------------------------------

def check_status(status: int, what: str) -> None:
    """Raise the error a native call's status stands for (0: none)."""
    if status != 0:
        error, text = _STATUS.get(status, (RuntimeError, f"failed with status {status}"))
        raise error(f"native {what} {text}")


def _array(a, dtype, shape: tuple, what: str, error=ValueError) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise error(f"{what} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype or a.shape != tuple(shape):
        raise error(f"{what} is {a.dtype}{tuple(a.shape)}, expected {np.dtype(dtype)}{tuple(shape)}")
    if not a.flags.c_contiguous:
        raise error(f"{what} must be C-contiguous")
    return a


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class _LastPointer:
    """The cffi view of the array passed last, reused while the same array comes back.

    Holding the view keeps the array's buffer exported, so numpy cannot reallocate it in the
    meantime; the (array, view) pair is replaced as one tuple, which is safe across threads."""

    __slots__ = ("entry", "ctype")

    def __init__(self, ctype: str):
        self.ctype = ctype
        self.entry = (None, None)

    def __call__(self, a: np.ndarray):
        entry = self.entry
        if entry[0] is a:
            return entry[1]
        ptr = ffi.from_buffer(self.ctype, a)
        self.entry = (a, ptr)
        return ptr


_xq_ptr, _xs_ptr, _out_ptr = _LastPointer("int8_t[]"), _LastPointer("float[]"), _LastPointer("float[]")


# ---- weights -------------------------------------------------------------------------------

class _Matrix:
    """A validated QTensor as the C struct, holding the buffers it points into."""

    def __init__(self, qt: QTensor):
        if not isinstance(qt, QTensor):
            raise ValueError(f"expected a QTensor, got {type(qt).__name__}")
        spec, layout = qt.spec, qt.layout
        where = f"{weight_kind(spec)} weight {qt.shape}"  # not repr(qt): it reads the arrays
        try:
            layout.check_shape(spec, qt.shape)
            expected = layout.components(spec, qt.shape)
        except ValueError as e:
            raise FormatError(f"{where}: {e}") from None
        if not spec.symmetric and not layout.supports_asymmetric:
            raise FormatError(f"{where}: {spec.qtype} has no asymmetric form")
        if set(qt.data) != set(expected):
            raise FormatError(f"{where}: components {sorted(qt.data)}, expected {sorted(expected)}")
        self.arrays = {name: _array(qt.data[name], dtype, shape, f"{where} component {name!r}",
                                    FormatError)
                       for name, (dtype, shape) in expected.items()}
        self.data = qt.data
        self.identity = tuple(self.arrays.items())
        self.kind = weight_kind(spec)
        self.rows, self.k = qt.shape
        w = ffi.new("eq_qmatrix *")
        w.kind = KIND_IDS[self.kind]
        w.rows, w.k = self.rows, self.k
        w.pack_group = w.scale_block = qt.scale_block
        w.row_bytes = self.arrays["codes"].shape[1]
        scales = self.arrays["scales"]
        w.scale_rows = scales.shape[0]
        w.scale_f16 = scales.dtype == np.float16
        self._keep = [ffi.from_buffer("uint8_t[]", self.arrays["codes"]),
                      ffi.from_buffer("char[]", scales)]
        w.codes, w.scales = self._keep
        if "mins" in self.arrays:
            self._keep.append(ffi.from_buffer("uint16_t[]", self.arrays["mins"].view(np.uint16)))
            w.mins = self._keep[-1]
        if "zeros" in self.arrays:
            self._keep.append(ffi.from_buffer("uint8_t[]", self.arrays["zeros"]))
            w.zeros = self._keep[-1]
        self.ptr = w
        self.max_abs_code = layout.max_abs_code(spec)
        self.scale_block = qt.scale_block
        self.block_sums_fn = getattr(lib, f"eq_block_sums_{self.kind}_q8")
        self.gemm_fn = getattr(lib, f"eq_gemm_{self.kind}_q8")
        self._subs: dict[int, tuple[int, bool]] = {}

    def sub_block(self, act_block: int) -> tuple[int, bool]:
        """(sub-block, whether the reference's int32 bound holds) for an activation block."""
        known = self._subs.get(act_block)
        if known is None:
            sub = ref.sub_block_size(self.scale_block, act_block)
            known = self._subs[act_block] = (sub, self.fits_int32(sub))
        return known

    def fits_int32(self, sub: int) -> bool:
        return ref.accumulator_dtype(sub, self.max_abs_code) == np.int32

    def still_matches(self, qt: QTensor) -> bool:
        """Nobody swapped an array inside qt.data since validation."""
        data = qt.data
        if data is not self.data or len(data) != len(self.identity):
            return False
        for name, a in self.identity:
            if data.get(name) is not a:
                return False
        return True


#: id(QTensor) -> (weak reference to it, its validated struct): weights are validated once
_matrices: dict[int, tuple[weakref.ref, _Matrix]] = {}


def _forget(key: int, ref_: weakref.ref) -> None:
    entry = _matrices.get(key)
    if entry is not None and entry[0] is ref_:
        del _matrices[key]


def _matrix(qt: QTensor) -> _Matrix:
    entry = _matrices.get(id(qt))
    if entry is not None and entry[0]() is qt and entry[1].still_matches(qt):
        return entry[1]
    matrix = _Matrix(qt)
    key = id(qt)
    try:
        ref_ = weakref.ref(qt, lambda r, key=key: _forget(key, r))
    except TypeError:  # not weak-referenceable: validate every call
        return matrix
    _matrices[key] = (ref_, matrix)
    return matrix


def validated(qt: QTensor) -> _Matrix:
    """qt as the C struct the kernels read (``.ptr``), validated once and kept with qt; the
    caller keeps the returned object alive for as long as C may read the struct."""
    return _matrix(qt)


def fits_int32(qt: QTensor, act_block: int) -> bool:
    """Whether qt's sums against activations quantized in blocks of act_block stay within the
    reference's int32 accumulator bound (the C kernels run only then)."""
    return _matrix(qt).sub_block(act_block)[1]


def _activations(xq, k: int) -> np.ndarray:
    if type(xq) is np.ndarray and xq.ndim == 2 and xq.dtype == _INT8 and xq.shape[1] == k \
            and xq.flags.c_contiguous:
        return xq
    if not isinstance(xq, np.ndarray) or xq.ndim != 2:
        raise ValueError(f"quantized activations must be a 2-D int8 array, got "
                         f"{getattr(xq, 'shape', type(xq).__name__)}")
    return _array(xq, np.int8, (xq.shape[0], k), "quantized activations")


def _scales(xs, m: int, blocks: int) -> np.ndarray:
    """xs checked as the float32 (m, blocks) C-contiguous activation scales."""
    if not (type(xs) is np.ndarray and xs.dtype == _FLOAT32 and xs.shape == (m, blocks)
            and xs.flags.c_contiguous):
        _array(xs, np.float32, (m, blocks), "activation scales")
    return xs


def _output(out, m: int, n: int) -> np.ndarray:
    """out checked as a writable float32 (m, n) C-contiguous array, or a new one for None."""
    if out is None:
        return np.empty((m, n), dtype=np.float32)
    if not (type(out) is np.ndarray and out.dtype == _FLOAT32 and out.shape == (m, n)
            and out.flags.c_contiguous and out.flags.writeable):
        _array(out, np.float32, (m, n), "out")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
    return out


# ---- kernels --------------------------------------------------------------------------------

def quantize_act(x, block):
    """float32 (m, k) -> int8 (m, k), float32 (m, k/block): the reference rule, in C."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError(f"activations must be a 2-D float32 array, got {getattr(x, 'shape', type(x))}")
    m, k = x.shape
    _array(x, np.float32, (m, k), "activations")
    block = _positive_int(block, "block")
    if k % block:
        raise ValueError(f"block {block} does not divide the row length {k}")
    q = np.empty((m, k), dtype=np.int8)
    scales = np.empty((m, k // block), dtype=np.float32)
    if m == 0:
        return q, scales
    check_status(lib.eq_quantize_q8(ffi.from_buffer("float[]", x), m, k, block,
                              ffi.from_buffer("int8_t[]", q), ffi.from_buffer("float[]", scales)),
           "quantize_act")
    return q, scales


def block_sums(qt, xq, sub_block):
    """Integer sums per sub-block: int32 (m, n, k/sub_block)."""
    matrix = _matrix(qt)
    n, k = qt.shape
    xq = _activations(xq, k)
    sub = _positive_int(sub_block, "sub_block")
    if k % sub:
        raise ValueError(f"sub_block {sub} does not divide the row length {k}")
    if not matrix.fits_int32(sub):
        return numpy_backend.block_sums(qt, xq, sub)
    m = xq.shape[0]
    out = np.empty((m, n, k // sub), dtype=np.int32)
    if m == 0:
        return out
    check_status(matrix.block_sums_fn(matrix.ptr, ffi.from_buffer("int8_t[]", xq), m, sub,
              ffi.from_buffer("int32_t[]", out), _thread_count), "block_sums")
    return out


def matmul(qt, xq, xs, act_block, out=None):
    """float32 (m, n): block sums with weight and activation scales applied (GEMV for m = 1).

    out: an optional float32 (m, n) C-contiguous array to write into (returned)."""
    matrix = _matrix(qt)
    n, k = matrix.rows, matrix.k
    xq = _activations(xq, k)
    if type(act_block) is not int:
        act_block = _positive_int(act_block, "act_block")
    if act_block <= 0 or k % act_block:
        raise ValueError(f"act_block {act_block} must be positive and divide the row length {k}")
    m = xq.shape[0]
    _scales(xs, m, k // act_block)
    sub, fits = matrix.sub_block(act_block)
    out = _output(out, m, n)
    if not fits:
        out[...] = numpy_backend.matmul(qt, xq, xs, act_block)
        return out
    if m == 0:
        return out
    check_status(matrix.gemm_fn(matrix.ptr, _xq_ptr(xq), _xs_ptr(xs), m, act_block, _out_ptr(out),
                          _thread_count), "matmul")
    return out


class PreparedMatrix:
    """A weight's panels packed once for activation blocks of `act_block` (C eq_prepare_q8):
    matmul without repacking the weight on every call, bit for bit matmul()'s results.

    Costs `nbytes` of memory (about rows * k bytes, plus the scales expanded per panel) on top
    of the weight, which it reads too (keep the QTensor unchanged). Made by prepare()."""

    def __init__(self, matrix: _Matrix, handle, act_block: int):
        self.matrix, self.act_block = matrix, act_block
        self.shape = (matrix.rows, matrix.k)
        self.handle = handle   # the C eq_prepared (freed with this object)
        self.nbytes = int(lib.eq_prepared_bytes(handle))

    def matmul(self, xq, xs, out=None):
        """Like matmul(qt, xq, xs, self.act_block, out)."""
        (n, k), block = self.shape, self.act_block
        xq = _activations(xq, k)
        m = xq.shape[0]
        _scales(xs, m, k // block)
        out = _output(out, m, n)
        if m:
            check_status(lib.eq_gemm_prepared_q8(self.handle, ffi.from_buffer("int8_t[]", xq),
                                           ffi.from_buffer("float[]", xs), m,
                                           ffi.from_buffer("float[]", out), _thread_count),
                   "prepared matmul")
        return out

    def bind(self, xq: np.ndarray, xs: np.ndarray, out: np.ndarray):
        """A function run(m) -> None computing out[:m] from xq[:m], xs[:m]: the buffers are
        checked and their pointers taken once, for a forward pass that reuses them (m rows
        of up to len(xq) at a time)."""
        (n, k), block = self.shape, self.act_block
        cap = len(xq)
        _array(xq, np.int8, (cap, k), "quantized activations")
        _scales(xs, cap, k // block)
        _output(_array(out, np.float32, (cap, n), "out"), cap, n)   # given, not made
        handle, gemm = self.handle, lib.eq_gemm_prepared_q8
        pointers = (ffi.from_buffer("int8_t[]", xq), ffi.from_buffer("float[]", xs),
                    ffi.from_buffer("float[]", out, require_writable=True))

        def run(m: int) -> None:
            if not 0 < m <= cap:
                raise ValueError(f"rows {m} outside the bound buffers' 1..{cap}")
            check_status(gemm(handle, pointers[0], pointers[1], m, pointers[2], _thread_count),
                   "prepared matmul")
        return run


def prepare(qt, act_block: int) -> PreparedMatrix | None:
    """qt's panels packed once for activation blocks of act_block, or None where the C
    kernels have no panel path for it (no AVX-512 VNNI, k or the sub-block not a multiple of
    32) or the reference's int32 accumulator bound does not hold."""
    matrix = _matrix(qt)
    act_block = _positive_int(act_block, "act_block")
    if matrix.k % act_block:
        raise ValueError(f"act_block {act_block} does not divide the row length {matrix.k}")
    if not matrix.sub_block(act_block)[1]:
        return None
    handle = lib.eq_prepare_q8(matrix.ptr, act_block)
    if handle == ffi.NULL:
        return None
    return PreparedMatrix(matrix, ffi.gc(handle, lib.eq_prepared_free), act_block)


def xnor(w_bits, x_bits, k):
    """Sign-vector dot products k - 2 popcount(w XOR x): int32 (m, n)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    kb = math.ceil(int(k) / 8)
    for what, a in (("weight bits", w_bits), ("activation bits", x_bits)):
        if not isinstance(a, np.ndarray) or a.ndim != 2:
            raise ValueError(f"{what} must be a 2-D uint8 array")
    w_bits = _array(w_bits, np.uint8, (w_bits.shape[0], kb), "weight bits")
    x_bits = _array(x_bits, np.uint8, (x_bits.shape[0], kb), "activation bits")
    n, m = w_bits.shape[0], x_bits.shape[0]
    out = np.empty((m, n), dtype=np.int32)
    if m == 0 or n == 0:
        return out
    check_status(lib.eq_xnor_gemm_binary(ffi.from_buffer("uint8_t[]", w_bits), n,
                                   ffi.from_buffer("uint8_t[]", x_bits), m, kb, int(k),
                                   ffi.from_buffer("int32_t[]", out), _thread_count),
           "xnor")
    return out


_thread_count = backends.threads()

register("quantize_act", "*", NAME)(quantize_act)
register("xnor", "binary", NAME)(xnor)
for _kind in WEIGHT_KINDS:
    if _kind in KIND_IDS:
        register("block_sums", _kind, NAME)(block_sums)
        register("matmul", _kind, NAME)(matmul)
