"""C steps of BERT's int8 forward: native/bert_steps.c through the extension edgeq._native.

The same three steps, with the same signatures, as the Numba steps of
edgeq.models.bert_numba_steps, which document the formulas:

    layer_norm_q8(x, x_bias, residual, weight, bias, eps, block, q, s) -> bool
    gelu_q8(h, bias, block, q, s) -> bool
    attention_q8(qkv, bias, starts, lengths, heads, ctx, block, q, s) -> bool
                                                    (False: a value was not finite)

Results: the same formulas, constants and loop orders as written there; Numba, compiled with
fastmath, reorders sums and fuses multiply-adds, so the two differ in the last float bit now
and then (and an int8 code by one where that moves a value across a rounding boundary); see
native/bert_steps.c. Here the bits are the same on every CPU and in any batch.

They are methods of BertNativeSteps, one per model: edgeq.models.llama_native_steps'
NativeSteps (scratch memory grown once, pinned pointers, every array checked for dtype,
shape, C-contiguity and writability before C touches it, so bad arguments raise ValueError).
Importing this module never imports Numba; it raises ImportError when the extension is
missing or predates these steps.
"""

from __future__ import annotations

import numpy as np

from edgeq._native import ffi, lib
from edgeq.models.llama_native_steps import NativeSteps

if not hasattr(lib, "eq_bert_attention_q8"):
    raise ImportError("edgeq._native was built without BERT's steps (native/bert_steps.c); rebuild it")

_F32, _I8, _I64 = np.dtype(np.float32), np.dtype(np.int8), np.dtype(np.int64)


def _matrix(a, what: str) -> tuple:
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D numpy array")
    return a.shape


def _lengths(starts, lengths, total: int):
    """starts, lengths: int64 (batch,) sequences within [0, total) (checked here, as C
    also does)."""
    for a, what in ((starts, "starts"), (lengths, "lengths")):
        if not isinstance(a, np.ndarray) or a.dtype != _I64 or a.ndim != 1 \
                or not a.flags.c_contiguous:
            raise ValueError(f"{what} must be a C-contiguous int64 numpy vector")
    if starts.shape != lengths.shape:
        raise ValueError(f"starts {starts.shape} and lengths {lengths.shape} differ in shape")
    if starts.size and (lengths.min() < 0 or starts.min() < 0
                        or (starts + lengths).max() > total):
        raise ValueError(f"sequences must lie within the {total} packed rows")
    return ffi.from_buffer("int64_t[]", starts), ffi.from_buffer("int64_t[]", lengths)


class BertNativeSteps(NativeSteps):
    """The C steps for one BERT model (see the module docstring)."""

    def layer_norm_q8(self, x, x_bias, residual, weight, bias, eps, block, q, s) -> bool:
        """x = LayerNorm(x + x_bias + residual) in place (x_bias, residual may be None), then
        quantized into q, s (skipped when block is 0)."""
        rows, n = shape = _matrix(x, "x")
        block = 0 if type(block) is int and block == 0 else self.block(block, n)  # 0: no q8
        args = (self._arg(x, _F32, shape, "x", True),
                ffi.NULL if x_bias is None else self._arg(x_bias, _F32, (n,), "x_bias"),
                ffi.NULL if residual is None else self._arg(residual, _F32, shape, "residual"),
                rows, n, self._arg(weight, _F32, (n,), "weight"),
                self._arg(bias, _F32, (n,), "bias"), float(np.float32(eps)), block,
                self._arg(q, _I8, shape, "q", True) if block else ffi.NULL,
                self._arg(s, _F32, (rows, n // block), "s", True) if block else ffi.NULL)
        return self.finite(lib.eq_bert_layer_norm_q8(*args))

    def gelu_q8(self, h, bias, block, q, s) -> bool:
        """h = GELU(h + bias) in place, then quantized into q, s."""
        rows, n = shape = _matrix(h, "h")
        block = self.block(block, n)
        args = (self._arg(h, _F32, shape, "h", True), self._arg(bias, _F32, (n,), "bias"),
                rows, n, block, self._arg(q, _I8, shape, "q", True),
                self._arg(s, _F32, (rows, n // block), "s", True))
        return self.finite(lib.eq_bert_gelu_q8(*args))

    def attention_q8(self, qkv, bias, starts, lengths, heads, ctx, block, q, s) -> bool:
        """Multi-head attention of packed qkv (+ bias, may be None) per sequence -> ctx, then
        quantized into q, s."""
        total, width3 = _matrix(qkv, "qkv")
        heads = int(heads)
        dim = width3 // 3
        if width3 % 3 or heads <= 0 or dim % heads:
            raise ValueError(f"qkv's width {width3} must be 3 * dim, dim whole heads of {heads}")
        block = self.block(block, dim)
        starts_p, lengths_p = _lengths(starts, lengths, total)
        shape = (total, dim)
        args = (self._arg(qkv, _F32, (total, width3), "qkv"),
                ffi.NULL if bias is None else self._arg(bias, _F32, (width3,), "bias"),
                starts_p, lengths_p, len(starts), total, heads, dim,
                self._arg(ctx, _F32, shape, "ctx", True), block,
                self._arg(q, _I8, shape, "q", True),
                self._arg(s, _F32, (total, dim // block), "s", True))
        need = lib.eq_bert_attention_work(int(lengths.max(initial=0)), heads, dim)
        with self._lock:
            status = lib.eq_bert_attention_q8(*args, *self._attn.get(need))
        return self.finite(status)
