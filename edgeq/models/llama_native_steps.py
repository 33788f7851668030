"""C steps of the llama decoder's fast path: native/steps.c through the extension edgeq._native.

The same steps, with the same signatures and results (bit for bit: see native/steps.c
for why) as the Numba steps of edgeq.models.llama_steps, which document the formulas:

    norm_quantize(x, delta, weight, eps, block, xq, xs) -> bool
    unrotate(x, delta, unrotation) -> None
    attend_quantize(q, k, v, start, cos, sin, rope_dim, neox, scale, keys, values, block,
                    xq, xs) -> bool
    swiglu_quantize(gate, up, block, xq, xs, signs=None, mix=None) -> bool
                                                  (False: a value was not finite)

They are methods of NativeSteps, one per model, which owns the scratch memory the C code
works in (nothing is allocated per call once it has grown to the largest call) and shares
attention's key/value heads among the native backend's threads. Every array is checked here
(dtype, shape, C-contiguity or unit stride along rows, writability, positions within the
cache) before C touches it, so bad arguments raise ValueError, never a stray write.

Per-call cost: each array becomes a cffi pointer (about 0.4 us); arrays the caller passes
again and again (weights, cache layers, activation buffers) can be pinned once with pin(),
which keeps their pointers for as long as the arrays live (an array object keeps its data
pointer and byte size, so a pinned array is only checked for dtype and shape; do not pin an
array you will resize in place with ndarray.resize(refcheck=False)).

Importing this module raises ImportError when the extension is missing or predates the steps.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from edgeq._native import ffi, lib
from edgeq.kernels import native_backend
from edgeq.models.native_memory import Scratch

if not hasattr(lib, "eq_step_attend_quantize"):
    raise ImportError("edgeq._native was built without the llama steps (native/steps.c); "
                      "rebuild it")

_F32, _I8, _U16 = np.dtype(np.float32), np.dtype(np.int8), np.dtype(np.uint16)
_ARRAYS = {_F32: "float[]", _I8: "int8_t[]", _U16: "uint16_t[]"}
_POINTERS = {_F32: "float *", _I8: "int8_t *", _U16: "uint16_t *"}


def _check(a, dtype, shape: tuple, what: str, writable: bool, rows: bool) -> None:
    """a is a numpy array of dtype and shape, C-contiguous (rows: or 2-D with contiguous
    rows at least a row apart), writable if asked."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype or a.shape != shape:
        raise ValueError(f"{what} is {a.dtype}{a.shape}, expected {dtype}{shape}")
    if writable and not a.flags.writeable:
        raise ValueError(f"{what} must be writable")
    if a.flags.c_contiguous:
        return
    if not (rows and a.strides[1] == a.itemsize and a.strides[0] % a.itemsize == 0
            and a.strides[0] >= a.shape[1] * a.itemsize):
        raise ValueError(f"{what} must be C-contiguous"
                         + (" or have contiguous rows" if rows else ""))


class NativeSteps:
    """The C steps for one model: scratch memory, pinned pointers, thread count. Calls from
    several Python threads are safe; they take turns. Subclasses (edgeq.models.
    bert_native_steps) add other steps on the same checks."""

    @staticmethod
    def block(block, width: int) -> int:
        """block as an int, checked to be a positive divisor of width."""
        if type(block) is int and block > 0 and not width % block:   # the usual case, quickly
            return block
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block <= 0 \
                or width % block:
            raise ValueError(f"block must be a positive divisor of {width}, got {block!r}")
        return int(block)

    @staticmethod
    def finite(status: int) -> bool:
        """A step's status as the result: True for 1, False for 0 (a value was not finite);
        raises for an argument error, which the checks before the call make unreachable."""
        if status < 0:
            raise ValueError(f"native step rejected its arguments (status {status})")
        return status == 1

    def __init__(self):
        self._row, self._attn = Scratch(_F32), Scratch(_F32)   # scratch: one row; attention
        self._lock = threading.Lock()                 # one call at a time uses the scratch
        # id(array) -> (weakref, pointer, writable, its dtype object, the one of ours it equals)
        self._pins: dict[int, tuple] = {}

    # --- pointers ------------------------------------------------------------------------
    def pin(self, *arrays: np.ndarray) -> None:
        """Keep the pointers of C-contiguous arrays passed again and again, until they are
        freed (see the module docstring)."""
        for a in arrays:
            key = id(a)
            ours = next((d for d in _POINTERS if a.dtype == d), None)
            if key in self._pins or not a.flags.c_contiguous or ours is None:
                continue
            ref = weakref.ref(a, lambda _, key=key, pins=self._pins: pins.pop(key, None))
            pointer = ffi.cast(_POINTERS[ours], ffi.from_buffer(a))   # borrows, owns nothing
            # file-backed arrays carry equal but distinct dtype objects ('<f4'): kept to
            # compare by identity
            self._pins[key] = (ref, pointer, a.flags.writeable, a.dtype, ours)

    def _arg(self, a, dtype, shape: tuple, what: str, writable: bool = False, rows: bool = False):
        """The pointer C gets for argument a, after checking it (see _check)."""
        entry = self._pins.get(id(a))
        if entry is not None and entry[0]() is a and entry[4] is dtype and a.dtype is entry[3] \
                and a.shape == shape and (entry[2] or not writable):
            return entry[1]
        _check(a, dtype, shape, what, writable, rows)
        if a.flags.c_contiguous:
            return ffi.from_buffer(_ARRAYS[dtype], a)
        return ffi.cast(_POINTERS[dtype], a.ctypes.data)   # rows with a stride, checked

    # --- the steps -----------------------------------------------------------------------
    def norm_quantize(self, x, delta, weight, eps, block, xq, xs) -> bool:
        """x (T, d) += delta ((T, d), or (0, d) for none); rmsnorm(x) * weight -> xq, xs."""
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise ValueError("x must be a 2-D numpy array")
        t, d = shape = x.shape
        block = self.block(block, d)
        none = isinstance(delta, np.ndarray) and delta.shape[:1] == (0,)
        args = (self._arg(x, _F32, shape, "x", True), ffi.NULL if none else
                self._arg(delta, _F32, shape, "delta"), t, d,
                self._arg(weight, _F32, (d,), "weight"), float(eps), block,
                self._arg(xq, _I8, shape, "xq", True),
                self._arg(xs, _F32, (t, d // block), "xs", True))
        with self._lock:
            status = lib.eq_step_norm_quantize(*args, self._row.get(d)[0])
        return self.finite(status)

    def unrotate(self, x, delta, unrotation) -> None:
        """x (T, d) += delta ((T, d), or (0, d) for none); x = x @ unrotation (d, d)."""
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise ValueError("x must be a 2-D numpy array")
        t, d = shape = x.shape
        none = isinstance(delta, np.ndarray) and delta.shape[:1] == (0,)
        args = (self._arg(x, _F32, shape, "x", True), ffi.NULL if none else
                self._arg(delta, _F32, shape, "delta"), t, d,
                self._arg(unrotation, _F32, (d, d), "unrotation"))
        with self._lock:
            self.finite(lib.eq_step_unrotate(*args, self._row.get(d)[0]))

    def attend_quantize(self, q, k, v, start, cos, sin, rope_dim, neox, scale, keys, values,
                        block, xq, xs) -> bool:
        """RoPE, k and v into one layer of the float16 cache (uint16 bits: keys (n_kv,
        n_blocks, hd, key_block), values (n_kv, capacity, hd)), causal attention of q (T,
        n_heads*hd) at positions start.. -> xq, xs."""
        for a, what, ndim in ((keys, "keys", 4), (values, "values", 3), (q, "q", 2)):
            if not isinstance(a, np.ndarray) or a.ndim != ndim:
                raise ValueError(f"{what} must be a {ndim}-D numpy array")
        n_kv, n_blocks, hd, key_block = keys.shape
        capacity = values.shape[1]
        t, width = q.shape
        if width % hd or (width // hd) % n_kv:
            raise ValueError(f"q's width {width} must be whole heads of {hd}, a multiple of "
                             f"{n_kv} key/value heads")
        start, rope_dim = int(start), int(rope_dim)
        if start < 0 or start + t > min(capacity, n_blocks * key_block):
            raise ValueError(f"positions [{start}, {start + t}) do not fit the cache "
                             f"({min(capacity, n_blocks * key_block)} positions)")
        if rope_dim < 0 or rope_dim % 2 or rope_dim > hd:
            raise ValueError(f"rope_dim must be even and at most {hd}, got {rope_dim}")
        block = self.block(block, width)
        kv_shape, half = (t, n_kv * hd), (t, rope_dim // 2)
        args = (
            self._arg(q, _F32, (t, width), "q", rows=True), _row_stride(q),
            self._arg(k, _F32, kv_shape, "k", rows=True), _row_stride(k),
            self._arg(v, _F32, kv_shape, "v", rows=True), _row_stride(v),
            t, width // hd, n_kv, hd, start, self._arg(cos, _F32, half, "cos"),
            self._arg(sin, _F32, half, "sin"), rope_dim, bool(neox), float(scale),
            self._arg(keys, _U16, keys.shape, "keys", True), n_blocks, key_block,
            self._arg(values, _U16, (n_kv, capacity, hd), "values", True), capacity, block,
            self._arg(xq, _I8, (t, width), "xq", True),
            self._arg(xs, _F32, (t, width // block), "xs", True))
        need = lib.eq_step_attend_work(t, width // hd, n_kv, hd, capacity)
        with self._lock:
            status = lib.eq_step_attend_quantize(*args, *self._attn.get(need),
                                                 native_backend.threads())
        return self.finite(status)

    def swiglu_quantize(self, gate, up, block, xq, xs, signs=None, mix=None) -> bool:
        """silu(gate) * up of each row (T, ffn), turned by ffn_down's input rotation when signs
        (ffn,) and mix (m, m) are given (ffn / m a power of two) -> xq, xs."""
        if not isinstance(gate, np.ndarray) or gate.ndim != 2:
            raise ValueError("gate must be a 2-D numpy array")
        t, f = shape = gate.shape
        block = self.block(block, f)
        rotation = (ffi.NULL, ffi.NULL, 0)
        if signs is not None or mix is not None:
            m = mix.shape[0] if isinstance(mix, np.ndarray) and mix.ndim == 2 else 0
            rotation = (self._arg(signs, _F32, (f,), "signs"), self._arg(mix, _F32, (m, m), "mix"), m)
        need = lib.eq_step_swiglu_work(f, *rotation)   # the C side's rule for the sizes
        if need < 0:
            raise ValueError(f"mix must be (m, m) with {f} / m a power of two")
        args = (self._arg(gate, _F32, shape, "gate", rows=True), _row_stride(gate),
                self._arg(up, _F32, shape, "up", rows=True), _row_stride(up), t, f, block,
                *rotation, self._arg(xq, _I8, shape, "xq", True),
                self._arg(xs, _F32, (t, f // block), "xs", True))
        with self._lock:
            status = lib.eq_step_swiglu_quantize(*args, self._row.get(need)[0])
        return self.finite(status)


def _row_stride(a: np.ndarray) -> int:
    """Elements from one row to the next of a checked 2-D float32 array."""
    return a.shape[1] if a.flags.c_contiguous else a.strides[0] // 4
