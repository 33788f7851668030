"""Memory the C passes work in: scratch grown on demand, and the arrays C points into.

Scratch      a buffer of one dtype, grown (at least doubling) and never shrunk, in an
             anonymous map so pages are committed as they are used, not for the capacity.
             get(n) -> (pointer, size): the pointer keeps the buffer alive, so a Scratch made
             for one call may be dropped while C still runs on its pointer.
Kept         what a C description of a model points into (float vectors, the kernels'
             matrix structs, cffi structs), kept alive as long as the description.

Used by the llama and BERT steps (edgeq.models.llama_native_steps) and whole passes
(llama_native_forward, bert_native_forward). Importing it needs the extension edgeq._native.
"""

from __future__ import annotations

import numpy as np

from edgeq._native import ffi
from edgeq.kernels import native_backend
from edgeq.models.kv_cache import lazy_zeros

_C_ARRAYS = {np.dtype(np.uint8): "uint8_t[]", np.dtype(np.float32): "float[]"}


class Scratch:
    """Scratch of one dtype (uint8 or float32) for C (see the module docstring)."""

    def __init__(self, dtype):
        self._dtype = np.dtype(dtype)
        self._c_array = _C_ARRAYS[self._dtype]
        self._buffer = np.empty(0, self._dtype)
        self._pointer = None

    @property
    def size(self) -> int:
        """Elements held now (0 before the first get)."""
        return self._buffer.size

    def get(self, n: int):
        """(pointer, size in elements) of at least n elements."""
        if self._buffer.size < n:
            self._buffer = lazy_zeros((max(n, 2 * self._buffer.size),), self._dtype)
            self._pointer = ffi.from_buffer(self._c_array, self._buffer)
        return self._pointer, self._buffer.size


class Kept:
    """The arrays and structs a C description points into (see the module docstring)."""

    def __init__(self):
        self._items = []

    def keep(self, item):
        """item, kept alive with this object."""
        self._items.append(item)
        return item

    def floats(self, a: np.ndarray):
        """A float * to a as C-contiguous float32 (a copy where a is not already)."""
        a = self.keep(np.ascontiguousarray(a, dtype=np.float32))
        return ffi.cast("float *", ffi.from_buffer(a))

    def matrix(self, qt):
        """The kernels' eq_qmatrix * for the QTensor qt (native_backend.validated)."""
        return self.keep(native_backend.validated(qt)).ptr
