"""The llama decoder's whole forward pass in one C call: native/llama_forward.c.

The per-step fast path (LlamaModel._forward_steps) returns to Python about eight times per
block; on SmolLM2-135M that is ~250 calls per decoded token and about a quarter of its time.
NativeForward runs the same C steps and matrix products in the same order inside one call, so
its logits are bit for bit those of the per-step path (tests/test_llama.py checks this).

It is built once per model, when every matrix is one the native kernels take (with the
activation block its input is quantized in, within the int32 accumulator bound): the C
description of the weights points at the matrices' validated structs (edgeq.kernels.
native_backend) and the norms and biases, all kept alive here. Per call, Python checks the
cache and positions, grows the scratch when a longer pass needs it, and makes one call.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from edgeq._native import ffi, lib
from edgeq.kernels import native_backend
from edgeq.kernels.table import weight_kind
from edgeq.models.kv_cache import KVCache
from edgeq.models.native_memory import Kept, Scratch
from edgeq.qtypes import QTensor

if not hasattr(lib, "eq_llama_forward"):
    raise ImportError("edgeq._native was built without the llama forward pass "
                      "(native/llama_forward.c); rebuild it")

#: what a positive status 1 + 4 * layer + step names
_STEP_NAMES = ("input", "attention", "residual", "MLP")


class NativeForward:
    """The C description of one LlamaModel, and the scratch its passes use. Calls from
    several Python threads are safe; they take turns."""

    @classmethod
    def of(cls, model, blocks: tuple[int, int, int]) -> tuple["NativeForward | None", str | None]:
        """(NativeForward, None) for model, or (None, why it cannot run). blocks: activation
        quantization blocks of inputs of width dim, n_heads*head_dim and ffn_dim."""
        c = model.config
        bd, bq, bf = blocks
        inputs = [(model.output, bd)]
        for b in model.blocks:
            inputs += [(w, bd) for w in (*b.qkv, *b.gate_up)] + [(b.wo, bq), (b.w_down, bf)]
        for w, block in inputs:
            if not isinstance(w, QTensor) or weight_kind(w.spec) not in native_backend.KIND_IDS:
                return None, "a matrix is not of a kind the native kernels take"
            if not native_backend.fits_int32(w, block):
                return None, f"a {weight_kind(w.spec)} matrix exceeds the int32 accumulator bound"
        if c.n_layers == 0:
            return None, "the model has no blocks"
        return cls(model, blocks), None

    def __init__(self, model, blocks: tuple[int, int, int]):
        c = model.config
        self._keep = keep = Kept()           # everything the C structs point into
        self._lock = threading.Lock()
        self._scratch = Scratch(np.uint8)
        self._caches = weakref.WeakKeyDictionary()   # KVCache -> its eq_llama_cache
        self.dim, self.vocab, self.rope_half = c.dim, c.vocab_size, c.rope_dim // 2
        self.shape = (c.n_layers, c.n_kv_heads, c.head_dim)
        structs = keep.keep(ffi.new("eq_llama_block[]", c.n_layers))
        for s, b in zip(structs, model.blocks):
            for i, w in enumerate(b.qkv):
                s.qkv[i] = keep.matrix(w)
            for i, w in enumerate(b.gate_up):
                s.gate_up[i] = keep.matrix(w)
            s.wo, s.down = keep.matrix(b.wo), keep.matrix(b.w_down)
            s.attn_norm, s.ffn_norm = keep.floats(b.attn_norm), keep.floats(b.ffn_norm)
            s.qkv_bias = ffi.NULL if b.qkv_bias is None else keep.floats(b.qkv_bias)
        m = self._model = ffi.new("eq_llama_model *")
        m.n_layers, m.dim, m.n_heads, m.n_kv = c.n_layers, c.dim, c.n_heads, c.n_kv_heads
        m.head_dim, m.ffn_dim, m.rope_dim = c.head_dim, c.ffn_dim, c.rope_dim
        m.neox, m.attn_scale, m.eps = c.rope_type == "neox", float(model._scale), float(c.rms_eps)
        m.block_dim, m.block_q, m.block_ffn = blocks
        m.blocks, m.output_norm = structs, keep.floats(model.output_norm)
        m.output = keep.matrix(model.output)
        m.unrotation = ffi.NULL if model._unrotation is None else keep.floats(model._unrotation)
        m.ffn_signs, m.ffn_mix, m.ffn_mix_n = ffi.NULL, ffi.NULL, 0
        if model.ffn_rotation is not None:
            signs, mix = model.ffn_rotation
            m.ffn_signs, m.ffn_mix, m.ffn_mix_n = keep.floats(signs), keep.floats(mix), mix.shape[0]

    def _cache(self, cache: KVCache):
        """The eq_llama_cache of a float16 cache shaped for this model, made once per cache."""
        known = self._caches.get(cache)
        if known is not None:
            return known
        keys, values = cache.half_bits()
        n_layers, n_kv, n_blocks, hd, key_block = keys.shape
        if (n_layers, n_kv, hd) != self.shape or values.shape != (n_layers, n_kv, cache.capacity, hd):
            raise ValueError(f"the cache holds {keys.shape[:3]} layers, heads and head size; "
                             f"this model needs {self.shape}")
        struct = ffi.new("eq_llama_cache *")
        struct.keys, struct.values = ffi.from_buffer("uint16_t[]", keys), ffi.from_buffer("uint16_t[]", values)
        struct.n_blocks, struct.key_block, struct.capacity = n_blocks, key_block, cache.capacity
        self._caches[cache] = entry = (struct, keys, values)   # the views keep the maps alive
        return entry

    def _work(self, rows: int, end: int):
        """A pointer to enough scratch for this pass (grown, never shrunk) and its size."""
        need = lib.eq_llama_forward_work(self._model, rows, end)
        if need < 0:
            raise ValueError("the native forward pass rejected the model description")
        return self._scratch.get(need)

    def run(self, x: np.ndarray, cache: KVCache, cos: np.ndarray, sin: np.ndarray,
            out_rows: int) -> np.ndarray:
        """Logits (out_rows, vocab) of the last out_rows of the embedded tokens x (T, dim),
        at positions cache.length.. (written into the cache, which the caller advances);
        cos, sin (T, rope_dim/2). x is overwritten (the residual stream)."""
        t = x.shape[0]
        start = cache.length
        for a, shape, what in ((x, (t, self.dim), "x"), (cos, (t, self.rope_half), "cos"),
                               (sin, (t, self.rope_half), "sin")):
            if a.dtype != np.float32 or a.shape != shape or not a.flags.c_contiguous:
                raise ValueError(f"{what} must be C-contiguous float32 {shape}")
        if not (x.flags.writeable and 0 < out_rows <= t and start + t <= cache.capacity):
            raise ValueError(f"bad forward pass: {t} rows at {start}, {out_rows} outputs")
        struct = self._cache(cache)[0]
        logits = np.empty((out_rows, self.vocab), np.float32)
        with self._lock:
            work, size = self._work(t, start + t)
            status = lib.eq_llama_forward(self._model, struct, ffi.from_buffer("float[]", x), t,
                                          start, ffi.from_buffer("float[]", cos),
                                          ffi.from_buffer("float[]", sin), out_rows,
                                          ffi.from_buffer("float[]", logits), work, size,
                                          native_backend.threads())
        if status > 0:
            layer, step = divmod(status - 1, 4)
            what = ("final hidden state" if layer == self.shape[0]
                    else f"block {layer} {_STEP_NAMES[step]}")
            raise ValueError(f"{what} contains NaN or inf")
        native_backend.check_status(status, "llama forward pass")
        return logits
