"""The numba backend: registers JIT kernels (edgeq/kernels/numba_kernels) for every weight kind.

Importing this module registers the kernels; an ImportError (Numba missing, e.g. on 32-bit
ARM) means "numba backend not available". The kernels read the packed layouts in place
(numba_kernels/decode.py) and agree with the numpy reference:
    quantize_act, block_sums, xnor   bit for bit
    matmul                           the same float32 products; their sum is taken in float64
                                     (the reference sums in float32), so results differ by
                                     the reference's own rounding of that sum
The numpy entry answers instead where the reference needs an int64 accumulator
(reference.accumulator_dtype), where a sub-block would straddle two int8 zero points, and
for weight kinds numba_kernels.decode cannot read.

Threads: every call applies edgeq.kernels.backends.threads() (EDGEQ_THREADS) with
numba.set_num_threads, capped at Numba's pool size.
Compiled specializations: inputs are passed as read-only views, so writable and memory-mapped
(read-only) weights share one compiled kernel per scale dtype (float32, float16).
"""

import math

import numba
import numpy as np

from edgeq.errors import FormatError
from edgeq.kernels import backends, numpy_backend
from edgeq.kernels import reference as ref
from edgeq.kernels.numba_kernels import activations, gemm, xnor as xnor_kernels
from edgeq.kernels.numba_kernels.decode import CHUNK, QTYPES, decode
from edgeq.kernels.table import WEIGHT_KINDS, register
from edgeq.qtypes import QTensor

NAME = "numba"


def _use_threads() -> None:
    wanted = min(backends.threads(), numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only, C-contiguous view (a copy only when `a` is not contiguous)."""
    view = np.ascontiguousarray(a).view()
    view.flags.writeable = False
    return view


def _check_weight(qt: QTensor) -> None:
    for name, (dtype, shape) in qt.layout.components(qt.spec, qt.shape).items():
        a = qt.data.get(name)
        if not isinstance(a, np.ndarray) or a.dtype != dtype or tuple(a.shape) != tuple(shape):
            got = "missing" if a is None else f"{getattr(a, 'dtype', type(a).__name__)}{getattr(a, 'shape', '')}"
            raise FormatError(f"{qt!r}: component {name!r} is {got}, "
                              f"expected {np.dtype(dtype)}{tuple(shape)}")


def _activations(xq, k: int) -> tuple[np.ndarray, int]:
    xq = np.asarray(xq)
    if xq.dtype != np.int8 or xq.ndim != 2 or xq.shape[1] != k:
        raise ValueError(f"activations must be int8 (m, {k}), got {xq.dtype}{xq.shape}")
    return _frozen(xq).reshape(-1), xq.shape[0]


def _scale_bits(a: np.ndarray) -> np.ndarray:
    """float16 scales as their uint16 bits (the kernels convert), float32 as is."""
    a = _frozen(a)
    return a.view(np.uint16) if a.dtype == np.float16 else a


def _needs_reference(qt: QTensor, sub: int) -> bool:
    acc = ref.accumulator_dtype(sub, qt.layout.max_abs_code(qt.spec))
    straddles_zero = "zeros" in qt.data and qt.scale_block % sub != 0
    return acc != np.int32 or straddles_zero or qt.qtype not in QTYPES


def _weight_args(qt: QTensor, sub: int, m: int) -> tuple:
    """The kernels' leading arguments: codes, row bytes, params, chunk table, zero points."""
    d = decode(qt)
    fast = sub % CHUNK == 0
    in_place = d.reads_in_place(fast, m)
    table = d.table(qt.shape[1], in_place, fast)
    return (_frozen(d.codes), d.row_bytes, _frozen(d.params(in_place, table)), _frozen(table),
            _frozen(d.zeros), d.has_zeros, d.offset)


def quantize_act(x, block):
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"activations must be 2-D (m, k), got shape {x.shape}")
    m, k = x.shape
    if block <= 0 or k % block:
        raise ValueError(f"activation block {block} does not divide the row length {k}")
    q = np.empty((m, k), dtype=np.int8)
    scales = np.empty((m, k // block), dtype=np.float32)
    _use_threads()
    activations.quantize_rows(_frozen(x), block, q, scales)
    return q, scales


def block_sums(qt: QTensor, xq, sub_block):
    _check_weight(qt)
    n, k = qt.shape
    if sub_block <= 0 or k % sub_block:
        raise ValueError(f"sub-block {sub_block} does not divide the row length {k}")
    if _needs_reference(qt, sub_block):
        return numpy_backend.block_sums(qt, xq, sub_block)
    flat, m = _activations(xq, k)
    out = np.empty((m, n, k // sub_block), dtype=np.int32)
    _use_threads()
    gemm.block_sums(*_weight_args(qt, sub_block, m), n, k, flat, m, sub_block, out)
    return out


def matmul(qt: QTensor, xq, xs, act_block):
    _check_weight(qt)
    n, k = qt.shape
    if act_block <= 0 or k % act_block:
        raise ValueError(f"activation block {act_block} does not divide the row length {k}")
    sub = ref.sub_block_size(qt.scale_block, act_block)
    if _needs_reference(qt, sub):
        return numpy_backend.matmul(qt, xq, xs, act_block)
    flat, m = _activations(xq, k)
    xs = np.asarray(xs, dtype=np.float32)
    if xs.shape != (m, k // act_block):
        raise ValueError(f"activation scales must be ({m}, {k // act_block}), got {xs.shape}")
    ws = _scale_bits(qt.data["scales"])
    has_mins = "mins" in qt.data
    mins = _scale_bits(qt.data["mins"]) if has_mins else ws
    out = np.empty((m, n), dtype=np.float32)
    _use_threads()
    gemm.matmul(*_weight_args(qt, sub, m), n, k, ws, mins, has_mins, flat, _frozen(xs), m, sub, out)
    return out


def xnor(w_bits, x_bits, k):
    w_bits, x_bits = np.asarray(w_bits), np.asarray(x_bits)
    kb = math.ceil(k / 8)
    for name, a in (("weight bits", w_bits), ("activation bits", x_bits)):
        if a.dtype != np.uint8 or a.ndim != 2 or a.shape[1] != kb:
            raise ValueError(f"xnor {name} must be uint8 (rows, {kb}) for k={k}, got {a.dtype}{a.shape}")
    n, m = w_bits.shape[0], x_bits.shape[0]
    out = np.empty((m, n), dtype=np.int32)
    _use_threads()
    xnor_kernels.xnor_gemm(_frozen(w_bits).reshape(-1), _frozen(x_bits).reshape(-1), n, m, kb, k, out)
    return out


register("quantize_act", "*", NAME)(quantize_act)
register("xnor", "binary", NAME)(xnor)
for _kind in WEIGHT_KINDS:
    if _kind.split("_")[0] in QTYPES:
        register("block_sums", _kind, NAME)(block_sums)
        register("matmul", _kind, NAME)(matmul)
