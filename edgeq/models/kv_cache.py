"""Key/value cache of a decoder: preallocated for the whole context, one slot per position.

    keys, values  (n_layers, n_kv_heads, capacity, head_dim)
        "float16" (default) or "float32": the values as computed, rounded to the dtype;
        "int8": codes q = rint(x / s) in [-127, 127] with one float32 scale per layer, head and
                position, s = absmax(x over head_dim) / 127 (s = 0 for an all-zero vector),
                read back as q * s.                        scales (n_layers, n_kv_heads, capacity)

The arrays live in anonymous memory maps, whose pages the OS commits as positions fill, not
for the whole capacity up front (np.zeros would ask for transparent huge pages, and touching
the first position of each (layer, head) would then commit 2 MiB: the whole cache of a small
model). `length` is the number of positions
filled; a model writes positions [length, length + T) and then calls advance(T).
"""

from __future__ import annotations

import mmap

import numpy as np

KV_DTYPES = ("float16", "float32", "int8")


class ContextFullError(ValueError):
    """More positions were asked for than the cache (the context length) holds."""


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, capacity: int,
                 dtype: str = "float16"):
        if dtype not in KV_DTYPES:
            raise ValueError(f"KV cache dtype must be one of {', '.join(KV_DTYPES)}, not {dtype!r}")
        if capacity <= 0:
            raise ValueError(f"KV cache capacity must be positive, got {capacity}")
        self.dtype, self.capacity, self.length = dtype, capacity, 0
        shape = (n_layers, n_kv_heads, capacity, head_dim)
        store = np.int8 if dtype == "int8" else np.dtype(dtype)
        self.keys = lazy_zeros(shape, store)
        self.values = lazy_zeros(shape, store)
        if dtype == "int8":
            self.key_scales = lazy_zeros(shape[:3], np.float32)
            self.value_scales = lazy_zeros(shape[:3], np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds once every position is filled."""
        extra = 2 * self.key_scales.nbytes if self.dtype == "int8" else 0
        return self.keys.nbytes + self.values.nbytes + extra

    def check_room(self, n: int) -> None:
        if self.length + n > self.capacity:
            raise ContextFullError(f"{self.length} + {n} positions exceed the context length "
                                   f"{self.capacity}; start a new sequence or load the model "
                                   f"with a larger context_length")

    def store(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k, v (n_kv_heads, T, head_dim) float32 at positions [length, length + T)."""
        start, end = self.length, self.length + k.shape[1]
        if self.dtype == "int8":
            _quantize_into(k, self.keys[layer, :, start:end], self.key_scales[layer, :, start:end])
            _quantize_into(v, self.values[layer, :, start:end], self.value_scales[layer, :, start:end])
        else:
            self.keys[layer, :, start:end] = k
            self.values[layer, :, start:end] = v

    def read(self, layer: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values of positions [0, end) as float32 (n_kv_heads, end, head_dim):
        views of the cache for "float32", converted copies otherwise."""
        k, v = self.keys[layer, :, :end], self.values[layer, :, :end]
        if self.dtype == "int8":
            return k * self.key_scales[layer, :, :end, None], v * self.value_scales[layer, :, :end, None]
        return k.astype(np.float32, copy=False), v.astype(np.float32, copy=False)

    def advance(self, n: int) -> None:
        self.check_room(n)
        self.length += n

    def reset(self, length: int = 0) -> None:
        """Forget positions from `length` on (0: the whole sequence)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot reset to {length}: the cache holds {self.length} positions")
        self.length = length


def lazy_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zero-filled writable array backed by an anonymous memory map (pages committed on
    first write, released with the array)."""
    dtype, count = np.dtype(dtype), int(np.prod(shape))
    buffer = mmap.mmap(-1, max(count * dtype.itemsize, 1))
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def _quantize_into(x: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> None:
    """Symmetric int8 per vector along the last axis, written into the cache slices."""
    s = np.abs(x).max(axis=-1) / np.float32(127)
    scales[...] = s
    safe = np.where(s > 0, s, np.float32(1))[..., None]
    codes[...] = np.clip(np.rint(x / safe), -127, 127)
