"""The one table of float tolerances and error bounds used by the tests.

Integer results are compared exactly everywhere; only float results get a tolerance, and each
one is derived here. EPS is float32 machine epsilon (2**-23, twice the unit roundoff u).
"""

import numpy as np

EPS = float(np.finfo(np.float32).eps)

# --- quantize / dequantize ----------------------------------------------------------------
#: float32 rounding slack on top of each layout's documented bound, in EPS per unit of
#: magnitude |w| + |dequantized| + 2|min|. Derivation: the quantizer picks the code nearest
#: to fl(w / s) (relative error u), so |w - s*c| <= bound + u|w|; dequantization rounds
#: s*c (and + min) once more (u|deq|, u|s*c| <= u(|deq| + |min|)); scale-min layouts first
#: round w - min (u(|w| + |min|)). Sum <= 2 EPS * magnitude; 4 leaves a factor of two.
DEQUANT_SLACK_EPS = 4.0

#: Absolute slack for float32 underflow: with subnormal weights, absmax / qmax (qmax <= 255)
#: can round to zero or lose bits, so codes can be off by up to qmax subnormal steps.
DEQUANT_ATOL = 256 * float(np.finfo(np.float32).smallest_subnormal)


def constant_row_rel(k: int) -> float:
    """Relative error allowed when a row of k equal weights c, with one float32 scale, comes
    back: the scale is absmax / qmax (two roundings with the product) or mean|w| summed in
    float32 (numpy's pairwise sum: at most k/8 + log2(k) roundings), so
    (k/8 + log2(k) + 4) EPS."""
    return (k / 8 + np.log2(k) + 4) * EPS


def dequant_slack(magnitude: np.ndarray) -> np.ndarray:
    """Absolute float32 slack per element for a dequantization bound (see DEQUANT_SLACK_EPS)."""
    return DEQUANT_SLACK_EPS * EPS * magnitude


# --- integer linear -------------------------------------------------------------------------
#: Activations are quantized per block b to q = rint(x / xs), xs = absmax_b / 127. The computed
#: quotient carries a relative error u, |x / xs| <= 127, so |x - xs*q| <= xs * (1/2 + 127u):
ACT_ROUNDING_STEPS = 0.5 + 127 * EPS / 2


def linear_bound(x: np.ndarray, w_deq: np.ndarray, w_mag: np.ndarray, act_scales: np.ndarray,
                 act_block: int, sub_block: int, max_abs_code: int) -> np.ndarray:
    """Bound on |linear(x, W) - x @ dequantize(W).T| per output, (m, n) float64.

    x (m, k); w_deq (n, k) dequantized weights; w_mag (n, k) the magnitude of the two terms a
    weight contributes (|d*c| + |min|, i.e. |w_deq| + 2|min|; |w_deq| without mins);
    act_scales (m, k/act_block) as the kernel computes them.

    1. Activation rounding: sum_j |w_deq[n, j]| * xs(j) * ACT_ROUNDING_STEPS.
    2. Float32 evaluation: each sub-block term float32(isum) * (xs * ws) is three roundings
       (3u) and the sum over 2*k/sub_block such terms (codes and, for scale-min layouts, mins)
       adds at most (2*k/sub_block)u of the sum of their magnitudes, which is at most
       sum_j (|x_j| + xs(j)) * w_mag[n, j]. Together <= (k/sub_block + 2) EPS * that, doubled
       for a margin of two; the dequantize rounding of the float64 oracle (u|w_deq|) is
       included in w_mag.
    3. Float32 underflow: when xs * ws is subnormal its relative error is unbounded, but its
       absolute error is at most one subnormal step (2**-149); times |isum| <= 128 * k * max|c|,
       once for codes and once for mins. And a block of subnormal activations may get
       xs = absmax / 127 = 0 (or a few bits), losing up to 128 subnormal steps per value:
       128 * 2**-149 * sum_j |w_deq[n, j]|.
    """
    m, k = x.shape
    xs = np.repeat(act_scales.astype(np.float64), act_block, axis=1)  # (m, k)
    act_error = (xs * ACT_ROUNDING_STEPS) @ np.abs(w_deq.astype(np.float64)).T
    magnitude = (np.abs(x.astype(np.float64)) + xs) @ w_mag.astype(np.float64).T
    float_error = 2 * (k // sub_block + 2) * EPS * magnitude
    subnormal = float(np.finfo(np.float32).smallest_subnormal)
    underflow = 2 * 128 * k * max_abs_code * subnormal
    underflow = underflow + 128 * subnormal * np.abs(w_deq.astype(np.float64)).sum(axis=1)[None, :]
    return act_error + float_error + underflow


def xnor_tolerance(k: int, term_sizes: np.ndarray) -> np.ndarray:
    """XNOR path against the float64 oracle (sign(x) * mean|x|) @ dequantize(W).T.

    The kernel computes float32(int dot) * float32(xs * ws) with xs = mean|x| summed in float32
    (constant_row_rel(k)) and two products (2u each); the oracle's own float64 sum of +-terms
    is not exact either, so the tolerance is relative to the sum of the term sizes
    sum_j |x-term| * |w-term|. When xs * ws is subnormal it is off by up to one subnormal step,
    times |dot| <= k, plus the final rounding.
    """
    subnormal = float(np.finfo(np.float32).smallest_subnormal)
    return (constant_row_rel(k) + 4 * EPS) * term_sizes + (k + 1) * subnormal
