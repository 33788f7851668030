"""Key/value cache of a decoder: preallocated for the whole context, one slot per position.

    keys    (n_layers, n_kv_heads, n_blocks, head_dim, KEY_BLOCK): position p in block
            p // KEY_BLOCK, column p % KEY_BLOCK (n_blocks = ceil(capacity / KEY_BLOCK));
            transposed so the scores of one query against every position read contiguous
            memory, in blocks so a new position commits one block's pages, not a page per
            dimension of the whole capacity
    values  (n_layers, n_kv_heads, capacity, head_dim)
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
#: positions per transposed key block (see above)
KEY_BLOCK = 256


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
        n_blocks = -(-capacity // KEY_BLOCK)
        self.keys = lazy_zeros((n_layers, n_kv_heads, n_blocks, head_dim, KEY_BLOCK), store)
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
        pos = np.arange(start, end)
        # the two index arrays around a slice put positions first: (T, n_kv_heads, head_dim)
        key_slots = (layer, slice(None), pos // KEY_BLOCK, slice(None), pos % KEY_BLOCK)
        if self.dtype == "int8":
            codes, self.key_scales[layer, :, start:end] = _quantize(k)
            self.keys[key_slots] = codes.transpose(1, 0, 2)
            self.values[layer, :, start:end], self.value_scales[layer, :, start:end] = _quantize(v)
        else:
            self.keys[key_slots] = k.transpose(1, 0, 2)
            self.values[layer, :, start:end] = v

    def half_bits(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values of a "float16" cache as uint16 views of the same memory (IEEE
        binary16 bits), for kernels that cannot take float16 arrays (Numba)."""
        if self.dtype != "float16":
            raise ValueError(f"half_bits needs a float16 cache, this one is {self.dtype}")
        return self.keys.view(np.uint16), self.values.view(np.uint16)

    def read(self, layer: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values of positions [0, end) as float32 (n_kv_heads, end, head_dim):
        copies for the keys (their blocks are reassembled), values are views of the cache
        for "float32", converted copies otherwise."""
        n_kv, n_blocks, hd, block = self.keys.shape[1:]
        used = -(-end // block)
        k = self.keys[layer, :, :used].transpose(0, 1, 3, 2).reshape(n_kv, used * block, hd)[:, :end]
        v = self.values[layer, :, :end]
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


def _quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per vector along the last axis: (codes int8, scales float32)."""
    s = (np.abs(x).max(axis=-1) / np.float32(127)).astype(np.float32)
    safe = np.where(s > 0, s, np.float32(1))[..., None]
    return np.clip(np.rint(x / safe), -127, 127).astype(np.int8), s
