"""BERT's FFN in static mode with integer requantization: ffn_up -> GELU -> ffn_down with no
float round trip between the two matrix products (the TFLite / gemmlowp scheme).

It applies to a layer when ffn_up's weight is int8 symmetric per row (one scale s_w[n] per
output channel), ffn_up's and ffn_down's static input scales are per tensor (s_x, s_d) and
the file carries ffn_up's calibrated output scale s_y ("blk.N.ffn_up.output_scale",
edgeq.calibrate.static); `IntegerFFN.of` says why not otherwise, and the float path runs.

Arithmetic, per token row i and ffn channel n (rules of edgeq.fixedpoint):

    xq[i, j]  = clip(rint(x[i, j] / s_x), -127, 127)          int8 (edgeq.linear.static_activations)
    acc[i, n] = sum_j xq[i, j] * wq[n, j]                     exact int32: |acc| <= 127*128*k,
                                                              checked < 2**31 (k <= 132103)
    bias_q[n] = clip(rint(b[n] / (s_x s_w[n])), int32)        rint halves to even
    v         = clip(acc + bias_q, INT32_MIN, INT32_MAX)      int64 sum, saturated
    y[i, n]   = clip(MBQM(v, M[n]), -32767, 32767)            int16 codes at s_y,
                                                              M[n] = s_x s_w[n] / s_y
    g[i, n]   = table[y + 32768]                              int8 codes at s_d
    table[c]  = clip(rint(act(c s_y) / s_d), -127, 127)      for c in [-32768, 32767] (64 KiB)
    out       = ffn_down(g at scale s_d) + b_down             float32, the existing matmul kernels

MBQM is fixedpoint.multiply_by_quantized_multiplier (TFLite's MultiplyByQuantizedMultiplier,
(multiplier, shift) from quantize_multiplier). M outside its range [2**-32, 2**30): M < 2**-32
makes every |v M| < 1/2, so multiplier 0 gives the same (0); M >= 2**30 saturates any v != 0,
as the largest representable M does. A channel whose accumulator is always 0 (s_x s_w[n] = 0:
zero codes) has the constant output rint(b[n] / s_y): it is stored as bias_q[n] with M = 1
(multiplier 2**30, shift 1: exact), so the bias is not lost as in b / 0.

The int16 middle keeps GELU's input precise: BERT's pre-activations span about +-10, where an
int8 code would be ~0.08 wide. The table comes from the float path's own activation
function (edgeq.models.bert), evaluated in float64.

Where each step runs:
    acc         the kernel table's int8 "matmul" with every scale 1.0 (unit_scales), for
                k <= MAX_K_FLOAT32: its float32 sums are then exact integers (every partial
                sum is an integer below 127*128*k < 2**24, and a product by 1.0 is exact,
                in any order and with FMA), so the fastest int8 GEMM of the backend (C VNNI:
                ~150 GOPS here, against ~20 for an int32 loop in Numba) gives the exact int32
                accumulators; beyond that bound the "block_sums" op with one block per row
                (int32 on every backend)
    y, g        requantize + table: edgeq.models.bert_integer_ffn_numba.requantize_codes where
                Numba is installed (bit for bit equal to codes_reference, tested), else the
                NumPy reference
`ffn_up_codes_reference` is the whole rule from xq to g in NumPy: the specification.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgeq.fixedpoint import (INT32_MAX, INT32_MIN, MAX_SHIFT, multiply_by_quantized_multiplier_array,
                              quantize_multiplier)
from edgeq.kernels import backends
from edgeq.kernels.table import lookup
from edgeq.linear import activation_block, static_activations
from edgeq.qtypes import QTensor

#: int16 codes of ffn_up's output: symmetric, so scale = T / Y_QMAX
Y_QMAX = 32767
#: int8 codes of ffn_down's input (kernels.reference.ACT_QMAX)
G_QMAX = 127
#: table index of int16 code c is c + TABLE_OFFSET
TABLE_OFFSET = 32768
#: the largest k whose int32 accumulators cannot overflow: 127 * 128 * k < 2**31 (weight codes
#: imported from GGUF may be -128)
MAX_K = (2**31 - 1) // (127 * 128)
#: the largest k whose accumulators float32 holds exactly: 127 * 128 * k <= 2**24
MAX_K_FLOAT32 = 2**24 // (127 * 128)
_M_MIN, _M_MAX = 2.0**-32, 2.0**30
_M_ONE = (1 << 30, 1)  # multiplier, shift of M = 1


def accumulate_reference(xq: np.ndarray, wq: np.ndarray) -> np.ndarray:
    """acc = xq @ wq.T exactly, int64 (m, n), for int8 xq (m, k) and wq (n, k).

    Through float64 BLAS: every partial sum is an integer of magnitude <= 128*128*k < 2**53,
    so each one is exact whatever order BLAS adds in (and fast)."""
    return (xq.astype(np.float64) @ wq.astype(np.float64).T).astype(np.int64)


def requantize_int16(acc: np.ndarray, bias_q: np.ndarray, multiplier: np.ndarray,
                     shift: np.ndarray) -> np.ndarray:
    """int16 codes y = clip(MBQM(sat32(acc + bias_q), multiplier, shift), -32767, 32767),
    per output channel (the last axis); the reference rule of the module docstring."""
    v = np.clip(np.asarray(acc, np.int64) + bias_q, INT32_MIN, INT32_MAX)
    y = multiply_by_quantized_multiplier_array(v, multiplier, shift)
    return np.clip(y, -Y_QMAX, Y_QMAX).astype(np.int16)


def codes_reference(acc: np.ndarray, bias_q: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
                    table: np.ndarray) -> np.ndarray:
    """int8 codes g (m, n) of ffn_down's input from integer-valued accumulators acc (m, n)."""
    y = requantize_int16(np.asarray(acc).astype(np.int64), bias_q, multiplier, shift)
    return table[y.astype(np.int64) + TABLE_OFFSET]


def ffn_up_codes_reference(xq: np.ndarray, wq: np.ndarray, bias_q: np.ndarray, multiplier: np.ndarray,
                           shift: np.ndarray, table: np.ndarray) -> np.ndarray:
    """int8 codes g (m, n) of ffn_down's input from int8 codes xq (m, k) of ffn_up's input."""
    return codes_reference(accumulate_reference(xq, wq), bias_q, multiplier, shift, table)


def unit_scales(w: QTensor) -> QTensor:
    """w's int8 codes (shared, not copied) with every scale 1.0: its "matmul" against
    activation scales 1.0 sums the plain integer products."""
    return QTensor(w.spec, w.shape, {"codes": w.data["codes"], "scales": np.ones((w.shape[0], 1), np.float32)})


def channel_multipliers(s_x: float, s_w: np.ndarray, s_y: float,
                        bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bias_q int32, multiplier int32, shift int32), one per output channel, by the rules of
    the module docstring (M = s_x s_w / s_y; channels with s_x s_w = 0 carry their constant
    output at M = 1)."""
    acc_scale = np.float64(s_x) * np.asarray(s_w, np.float64)
    bias = np.asarray(bias, np.float64)
    n = acc_scale.shape[0]
    bias_q = np.empty(n, np.int64)
    multiplier = np.empty(n, np.int64)
    shift = np.empty(n, np.int64)
    for c in range(n):
        scale = float(acc_scale[c])
        if scale == 0.0:
            bias_q[c] = np.clip(np.rint(bias[c] / s_y), -Y_QMAX, Y_QMAX)
            multiplier[c], shift[c] = _M_ONE
            continue
        bias_q[c] = np.clip(np.rint(bias[c] / scale), INT32_MIN, INT32_MAX)
        m = scale / s_y
        if m < _M_MIN:
            multiplier[c], shift[c] = 0, 0
        elif m >= _M_MAX * (1 - 2.0**-32):  # would round to 2**30 or more: the largest M instead
            multiplier[c], shift[c] = INT32_MAX, MAX_SHIFT
        else:
            multiplier[c], shift[c] = quantize_multiplier(m)
    return bias_q.astype(np.int32), multiplier.astype(np.int32), shift.astype(np.int32)


def activation_table(activation: Callable[[np.ndarray], np.ndarray], s_y: float, s_d: float) -> np.ndarray:
    """table[c + 32768] = clip(rint(activation(c s_y) / s_d), -127, 127), int8 (65536,).
    activation works in place (edgeq.models.bert's functions); evaluated in float64.
    s_d = 0 (ffn_down's input never calibrated above 0) gives zero codes, as static_activations."""
    values = np.arange(-TABLE_OFFSET, TABLE_OFFSET, dtype=np.float64) * np.float64(s_y)
    values = activation(values)
    if s_d == 0:
        return np.zeros(values.shape, np.int8)
    return np.clip(np.rint(values / np.float64(s_d)), -G_QMAX, G_QMAX).astype(np.int8)


def _requantize_kernel():
    """The Numba requantize + table kernel (codes_reference's signature plus `out`), or None."""
    try:
        from edgeq.models.bert_integer_ffn_numba import requantize_codes
    except ImportError:
        return None
    return requantize_codes


def _per_tensor(scale) -> float | None:
    s = None if scale is None else np.asarray(scale, np.float32).reshape(-1)
    return float(s[0]) if s is not None and s.size == 1 else None


class IntegerFFN:
    """A layer's ffn_up -> activation -> ffn_down on integer codes; call it with the float32
    input x (m, dim) of ffn_up: returns ffn_down's float32 output (m, dim), bias added."""

    def __init__(self, up, down, s_y: float, activation: Callable[[np.ndarray], np.ndarray]):
        w: QTensor = up.weight
        self.s_x, self.s_d, self.s_y = _per_tensor(up.act_scale), _per_tensor(down.act_scale), float(s_y)
        self.codes = w.data["codes"]                                   # (ffn, dim) int8, in the file's map
        s_w = np.asarray(w.data["scales"], np.float32).reshape(-1)     # (ffn,)
        bias = np.zeros(up.shape[0]) if up.bias is None else up.bias
        self.bias_q, self.multiplier, self.shift = channel_multipliers(self.s_x, s_w, self.s_y, bias)
        self.table = activation_table(activation, self.s_y, self.s_d)  # (65536,) int8
        self.down = down
        self._in_block = activation_block(up.shape[1], up.act_block)
        self._down_block = activation_block(down.shape[1], down.act_block)
        backend = backends.resolve(up.backend)
        self._accumulate = self._table_accumulator(w, backend)
        self._requantize = None if backend == "numpy" else _requantize_kernel()

    @staticmethod
    def _table_accumulator(w: QTensor, backend: str) -> Callable[[np.ndarray], np.ndarray]:
        """xq (m, k) -> exact accumulators (m, n) through the kernel table (module docstring)."""
        k = w.shape[1]
        if k <= MAX_K_FLOAT32:
            matmul = lookup("matmul", "int8", backend) or lookup("matmul", "int8", "numpy")
            unit = unit_scales(w)
            return lambda xq: matmul(unit, xq, np.ones((xq.shape[0], 1), np.float32), k)
        block_sums = lookup("block_sums", "int8", backend) or lookup("block_sums", "int8", "numpy")
        return lambda xq: block_sums(w, xq, k)[:, :, 0]

    @classmethod
    def of(cls, up, down, s_y: float, activation) -> tuple["IntegerFFN | None", str]:
        """(IntegerFFN, "") where the integer path applies to Dense layers up and down, else
        (None, why not)."""
        w = up.weight
        if not (up.quantized and isinstance(w, QTensor) and w.qtype == "int8" and w.spec.symmetric
                and w.spec.granularity == "row"):
            return None, "ffn_up's weight is not int8 symmetric per row"
        if not down.quantized:
            return None, "ffn_down's weight is not quantized"
        if _per_tensor(up.act_scale) is None or _per_tensor(down.act_scale) is None:
            return None, "ffn_up's and ffn_down's static input scales are not per tensor"
        if up.shape[1] > MAX_K:
            return None, f"ffn_up's {up.shape[1]} inputs could overflow int32 accumulators (max {MAX_K})"
        return cls(up, down, s_y, activation), ""

    def codes_of(self, x: np.ndarray) -> np.ndarray:
        """int8 codes (m, ffn) of ffn_down's input, for float32 x (m, dim)."""
        xq, _ = static_activations(x, self.s_x, self._in_block)
        acc = self._accumulate(xq)
        if self._requantize is None:
            return codes_reference(acc, self.bias_q, self.multiplier, self.shift, self.table)
        out = np.empty(acc.shape, np.int8)
        return self._requantize(acc, self.bias_q, self.multiplier, self.shift, self.table, out)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        g = self.codes_of(x)
        gs = np.full((g.shape[0], g.shape[1] // self._down_block), self.s_d, np.float32)
        y = self.down.matmul_q8(g, gs)
        if self.down.bias is not None:
            y += self.down.bias
        return y
