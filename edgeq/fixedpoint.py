"""Fixed-point requantization and integer approximations (gemmlowp / TFLite convention).

Formats. ``Qm.n`` is a signed int32 holding ``value * 2**n`` with ``m + n = 31``; Q0.31 covers
[-1, 1). A real multiplier ``M > 0`` is stored as ``(multiplier, shift)``:

    M = multiplier * 2**(shift - 31)
    multiplier in [2**30, 2**31)   a Q0.31 mantissa in [0.5, 1)
    shift in [-31, 30]             so the representable M are [2**-32, 2**30)

Rounding rules, each defined once below and named after what it mirrors:

quantize_multiplier
    round(m * 2**31) half away from zero (std::round in TFLite's QuantizeMultiplier);
    relative representation error <= 2**-31.
saturating_rounding_doubling_high_mul
    ARM SQRDMULH / VQRDMULH, gemmlowp's SaturatingRoundingDoublingHighMul:
    (a*b + nudge) / 2**31 truncated toward zero, nudge = 2**30 if a*b >= 0 else 1 - 2**30.
    That equals floor(a*b / 2**31 + 1/2): ties round UP (toward +inf) for both signs.
    The only overflow, a == b == INT32_MIN, saturates to INT32_MAX.
rounding_divide_by_pot
    gemmlowp's RoundingDivideByPOT: x / 2**exponent, ties AWAY from zero
    (remainder/threshold rule).
multiply_by_quantized_multiplier
    TFLite's MultiplyByQuantizedMultiplier, the classic double-rounding variant: left shift by
    l = max(shift, 0) (saturating here; TFLite leaves overflow undefined), SQRDMULH, then
    rounding_divide_by_pot by r = max(-shift, 0). With t = (x << l) * multiplier / 2**31,
    |result - x*M| <= 1/2 + 2**-(r+1) < 1. The result is the correctly rounded (ties away)
    x*M except (a) r = 0 and t a negative tie: one more (toward +inf); (b) r >= 1 and t within
    1/2 of an odd multiple B of 2**(r-1) on the side of zero (B - 1/2 <= t < B for t > 0,
    B < t < B + 1/2 for t < 0): one unit further from zero. tests/test_fixedpoint.py derives
    and checks this against exact rationals.

Every primitive has a scalar version on Python ints (the specification, written to read like
the C it mirrors) and an ``*_array`` version on NumPy arrays (int64 intermediates, int32
results) that agrees with it exactly, element for element, with broadcasting.

Integer approximations (array versions only, built from the primitives above):

exp_on_negative_values(x, integer_bits)
    exp(x) for x <= 0 in Q(integer_bits).(31 - integer_bits), result Q0.31; absolute error
    <= 2.6e-7 (4th order Taylor series on [-1/4, 0), the same decomposition as gemmlowp's).
one_over_one_plus_x(x)
    1 / (1 + x) for x in [0, 1) Q0.31, result Q0.31; absolute error <= 2**-28
    (Newton-Raphson).

Neither approximation is claimed bit-identical to gemmlowp; their error bounds are tested
against math.exp and exact division.
"""

from decimal import Decimal, localcontext
from fractions import Fraction
import math
import numbers

import numpy as np

from edgeq.errors import FormatError

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
MIN_SHIFT = -31
MAX_SHIFT = 30


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

def _check_int32(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{name}={value} is outside int32 [{INT32_MIN}, {INT32_MAX}]")
    return value


def _check_range(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is outside [{lo}, {hi}]")
    return int(value)


def _int32_values(name: str, array, lo: int = INT32_MIN, hi: int = INT32_MAX) -> np.ndarray:
    """Integer array-like with values in [lo, hi] -> int64 array (the intermediate type)."""
    a = np.asarray(array)
    if a.dtype.kind not in "iu":
        raise FormatError(f"{name}: expected an integer array, got dtype {a.dtype}")
    if a.dtype == np.uint64 and a.size and a.max() > hi:  # would wrap in int64
        raise FormatError(f"{name}: values must lie in [{lo}, {hi}], got max {int(a.max())}")
    a = a.astype(np.int64, copy=False)
    if a.size and (a.min() < lo or a.max() > hi):
        raise FormatError(f"{name}: values must lie in [{lo}, {hi}], "
                          f"got [{int(a.min())}, {int(a.max())}]")
    return a


# ---------------------------------------------------------------------------------------------
# Real multiplier -> (Q0.31 multiplier, shift)
# ---------------------------------------------------------------------------------------------

def quantize_multiplier(real: float) -> tuple[int, int]:
    """Represent ``real > 0`` as ``multiplier * 2**(shift - 31)`` (see the module docstring).

    ``real = m * 2**shift`` with m in [0.5, 1) (frexp); multiplier = round(m * 2**31) with halves
    rounded away from zero. When that rounds up to 2**31 (m within 2**-32 of 1) the pair becomes
    (2**30, shift + 1). Relative representation error <= 2**-31.

    Raises ValueError for non-real, non-finite, non-positive values and for reals whose shift
    falls outside [-31, 30], i.e. outside [2**-32, 2**30) after rounding.
    """
    if isinstance(real, bool) or not isinstance(real, numbers.Real):
        raise ValueError(f"real multiplier must be a real number, got {type(real).__name__}")
    real = float(real)
    if not math.isfinite(real) or real <= 0.0:
        raise ValueError(f"real multiplier must be finite and > 0, got {real!r}")
    m, shift = math.frexp(real)
    # m * 2**31 is exact in a double; Fraction keeps the half-away-from-zero rounding exact.
    multiplier = math.floor(Fraction(m) * (1 << 31) + Fraction(1, 2))
    if multiplier == 1 << 31:
        multiplier >>= 1
        shift += 1
    if not MIN_SHIFT <= shift <= MAX_SHIFT:
        raise ValueError(f"real multiplier {real!r} is outside the representable range "
                         f"[2**{MIN_SHIFT - 1}, 2**{MAX_SHIFT}) (shift would be {shift})")
    return multiplier, shift


# ---------------------------------------------------------------------------------------------
# Scalar primitives (the specification)
# ---------------------------------------------------------------------------------------------

def saturating_rounding_doubling_high_mul(a: int, b: int) -> int:
    """SQRDMULH: high 32 bits of 2*a*b, rounded; a, b int32 -> int32.

    gemmlowp's rule: (a*b + nudge) / 2**31 with C division (truncation toward zero), nudge =
    2**30 if a*b >= 0 else 1 - 2**30. Net effect: floor(a*b / 2**31 + 1/2), ties toward +inf.
    a == b == INT32_MIN is the single overflow and returns INT32_MAX.
    """
    a = _check_int32("a", a)
    b = _check_int32("b", b)
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    numerator = ab + nudge
    quotient = abs(numerator) >> 31  # C '/' truncates toward zero
    return quotient if numerator >= 0 else -quotient


def rounding_divide_by_pot(x: int, exponent: int) -> int:
    """x / 2**exponent rounded half away from zero; x int32, exponent in [0, 31].

    gemmlowp's RoundingDivideByPOT: arithmetic shift right, plus one when the remainder
    (x & mask) exceeds the threshold mask/2 (mask/2 + 1 for negative x).
    """
    x = _check_int32("x", x)
    exponent = _check_range("exponent", exponent, 0, 31)
    mask = (1 << exponent) - 1
    remainder = x & mask  # Python's & on negative ints is two's-complement, like int32
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def multiply_by_quantized_multiplier(x: int, multiplier: int, shift: int) -> int:
    """x * multiplier * 2**(shift - 31) in int32 (TFLite's MultiplyByQuantizedMultiplier).

    Saturating left shift of x by max(shift, 0), then SQRDMULH with the multiplier, then
    rounding_divide_by_pot by max(-shift, 0). multiplier in [0, INT32_MAX], shift in [-31, 30].
    """
    x = _check_int32("x", x)
    multiplier = _check_range("multiplier", multiplier, 0, INT32_MAX)
    shift = _check_range("shift", shift, MIN_SHIFT, MAX_SHIFT)
    left_shift = max(shift, 0)
    right_shift = max(-shift, 0)
    shifted = min(max(x << left_shift, INT32_MIN), INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier),
                                  right_shift)


# ---------------------------------------------------------------------------------------------
# Array primitives (same rules on int64 intermediates; results are int32)
# ---------------------------------------------------------------------------------------------

def _srdhm_int64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """saturating_rounding_doubling_high_mul on int64 arrays holding int32 values."""
    ab = a * b  # |a*b| <= 2**62: exact in int64
    numerator = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    quotient = np.abs(numerator) >> 31
    result = np.where(numerator >= 0, quotient, -quotient)
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, result)


def _rdbpot_int64(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """rounding_divide_by_pot on int64 arrays (x int32 values, exponent in [0, 31])."""
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def _mbqm_int64(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """multiply_by_quantized_multiplier on int64 arrays (arguments already checked)."""
    left_shift = np.maximum(shift, 0)
    right_shift = np.maximum(-shift, 0)
    shifted = np.clip(x << left_shift, INT32_MIN, INT32_MAX)  # |x << 30| < 2**62: no wrap
    return _rdbpot_int64(_srdhm_int64(shifted, multiplier), right_shift)


def saturating_rounding_doubling_high_mul_array(a, b) -> np.ndarray:
    """Element-wise saturating_rounding_doubling_high_mul; int32-valued arrays -> int32."""
    a = _int32_values("a", a)
    b = _int32_values("b", b)
    return _srdhm_int64(a, b).astype(np.int32)


def rounding_divide_by_pot_array(x, exponent) -> np.ndarray:
    """Element-wise rounding_divide_by_pot; exponent is a scalar or broadcastable array."""
    x = _int32_values("x", x)
    exponent = _int32_values("exponent", exponent, 0, 31)
    return _rdbpot_int64(x, exponent).astype(np.int32)


def multiply_by_quantized_multiplier_array(x, multiplier, shift) -> np.ndarray:
    """Element-wise multiply_by_quantized_multiplier; multiplier and shift broadcast against x
    (scalars for per-tensor, arrays along the channel axis for per-channel)."""
    x = _int32_values("x", x)
    multiplier = _int32_values("multiplier", multiplier, 0, INT32_MAX)
    shift = _int32_values("shift", shift, MIN_SHIFT, MAX_SHIFT)
    return _mbqm_int64(x, multiplier, shift).astype(np.int32)


_QUANTIZED_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))


def requantize(acc, real_multiplier, zero_point: int, qmin: int, qmax: int,
               *, dtype=np.int8) -> np.ndarray:
    """int32 accumulators -> int8/uint8 codes: clip(MBQM(acc, M) + zero_point, qmin, qmax).

    real_multiplier is a float (per tensor) or a 1-D sequence broadcast along the last axis of
    acc (per output channel); each is converted once with quantize_multiplier. The zero point is
    added after rounding, in int64, so it cannot overflow. dtype is np.int8 or np.uint8 and
    must hold zero_point, qmin and qmax; qmin <= qmax.
    """
    dtype = np.dtype(dtype)
    if dtype not in _QUANTIZED_DTYPES:
        raise ValueError(f"dtype must be int8 or uint8, got {dtype}")
    info = np.iinfo(dtype)
    zero_point = _check_range("zero_point", zero_point, int(info.min), int(info.max))
    qmin = _check_range("qmin", qmin, int(info.min), int(info.max))
    qmax = _check_range("qmax", qmax, int(info.min), int(info.max))
    if qmin > qmax:
        raise ValueError(f"qmin={qmin} > qmax={qmax}")
    acc = _int32_values("acc", acc)
    if np.ndim(real_multiplier) == 0:
        multiplier, shift = quantize_multiplier(real_multiplier)
    else:
        reals = np.asarray(real_multiplier, dtype=np.float64)
        if reals.ndim != 1 or acc.ndim == 0 or reals.shape[0] != acc.shape[-1]:
            raise FormatError(f"per-channel real_multiplier of shape {reals.shape} does not "
                              f"match the last axis of acc {acc.shape}")
        pairs = [quantize_multiplier(r) for r in reals.tolist()]
        multiplier = np.array([p[0] for p in pairs], dtype=np.int64)
        shift = np.array([p[1] for p in pairs], dtype=np.int64)
    scaled = _mbqm_int64(acc, np.asarray(multiplier, np.int64), np.asarray(shift, np.int64))
    return np.clip(scaled + zero_point, qmin, qmax).astype(dtype)


# ---------------------------------------------------------------------------------------------
# Integer approximations of non-linear functions
# ---------------------------------------------------------------------------------------------

def _q31(value: Decimal) -> int:
    """Round a real in [0, 1) to Q0.31, half away from zero (constants are non-negative)."""
    return int((value * (1 << 31)).to_integral_value(rounding="ROUND_HALF_UP"))


def _exp_constants() -> tuple[int, list[int]]:
    """exp(-1/8) and exp(-2**k) for k = -2 .. 29 in Q0.31, from Decimal (correctly rounded,
    so identical on every platform). exp(-2**k) rounds to 0 for k >= 5."""
    with localcontext() as ctx:
        ctx.prec = 50
        exp_minus_eighth = _q31((Decimal(-1) / 8).exp())
        powers = [_q31((-Decimal(2) ** k).exp()) for k in range(-2, 30)]
    return exp_minus_eighth, powers


_EXP_MINUS_EIGHTH_Q31, _EXP_MINUS_POW2_Q31 = _exp_constants()
_ONE_SIXTH_Q31 = _q31(Decimal(1) / 6)
_ONE_24TH_Q31 = _q31(Decimal(1) / 24)


def _exp_on_quarter_interval(r: np.ndarray) -> np.ndarray:
    """exp(r) for r in [-1/4, 0) Q0.31 (int64 arrays), result Q0.31.

    With y = r + 1/8 in [-1/8, 1/8): exp(r) = exp(-1/8) * (1 + y + y**2/2 + y**3/6 + y**4/24)
    + E, |E| <= exp(-1/8) * e**(1/8) * (1/8)**5 / 120 = 2.55e-7 (Lagrange remainder).
    """
    y = r + (1 << 28)
    y2 = _srdhm_int64(y, y)
    y3 = _srdhm_int64(y2, y)
    y4 = _srdhm_int64(y2, y2)
    series = (y + _rdbpot_int64(y2, np.int64(1)) + _srdhm_int64(y3, np.int64(_ONE_SIXTH_Q31))
              + _srdhm_int64(y4, np.int64(_ONE_24TH_Q31)))
    result = _EXP_MINUS_EIGHTH_Q31 + _srdhm_int64(np.int64(_EXP_MINUS_EIGHTH_Q31), series)
    return np.minimum(result, INT32_MAX)  # exp(r) -> 1 as r -> 0 may round up to 2**31


def exp_on_negative_values(x, integer_bits: int) -> np.ndarray:
    """exp(x) for x <= 0 given in Q(integer_bits).(31 - integer_bits); result Q0.31 int32.

    integer_bits in [0, 29] (the format must hold 1/4). Same decomposition as gemmlowp's
    exp_on_negative_values: x = r - n/4 with r in [-1/4, 0) and n >= 0 an integer;
    exp(r) by the Taylor series in _exp_on_quarter_interval, then one SQRDMULH by the Q0.31
    constant exp(-2**k) for every set bit k of n/4. x == 0 returns INT32_MAX (1.0 saturated).
    Absolute error <= 2.6e-7 (the series remainder plus a few 2**-31 roundings; tested).
    """
    integer_bits = _check_range("integer_bits", integer_bits, 0, 29)
    x = _int32_values("x", x, INT32_MIN, 0)
    fractional_bits = 31 - integer_bits
    quarter = np.int64(1) << (fractional_bits - 2)
    r_input = (x & (quarter - 1)) - quarter         # in [-1/4, 0), input format
    result = _exp_on_quarter_interval(r_input << integer_bits)
    quarters_removed = r_input - x                  # n/4 in input units; >= 0 for x < 0
    for k, constant in enumerate(_EXP_MINUS_POW2_Q31):
        bit = quarter << k
        if bit > -INT32_MIN:                        # larger than any |x|
            break
        apply = (quarters_removed & bit) != 0
        result = np.where(apply, _srdhm_int64(result, np.int64(constant)), result)
    result = np.where(x == 0, INT32_MAX, result)
    return np.clip(result, 0, INT32_MAX).astype(np.int32)


_48_OVER_17_Q229 = int((Decimal(48) / 17 * (1 << 29)).to_integral_value(rounding="ROUND_HALF_UP"))
_MINUS_32_OVER_17_Q229 = -int((Decimal(32) / 17 * (1 << 29)).to_integral_value(
    rounding="ROUND_HALF_UP"))


def one_over_one_plus_x(x) -> np.ndarray:
    """1 / (1 + x) for x in [0, 1) given in Q0.31 (non-negative int32); result Q0.31 int32.

    With d = (1 + x) / 2 in [1/2, 1): start from the minimax line 48/17 - 32/17 * d (relative
    error <= 1/17), then three Newton-Raphson steps y <- y + y * (1 - d * y) in Q2.29
    (error after three steps (1/17)**8 ~ 1.4e-10, below the rounding). Result y / 2, with
    1.0 (x == 0) saturated to INT32_MAX. Absolute error <= 2**-28 (tested).
    """
    x = _int32_values("x", x, 0, INT32_MAX)
    half_denominator = np.minimum(_rdbpot_int64(x + (1 << 31), np.int64(1)), INT32_MAX)
    y = _48_OVER_17_Q229 + _srdhm_int64(half_denominator, np.int64(_MINUS_32_OVER_17_Q229))
    for _ in range(3):
        error_q229 = (1 << 29) - _srdhm_int64(half_denominator, y)  # 1 - d*y, small
        y = y + _srdhm_int64(y, error_q229 << 2)                     # Q2.29 * Q0.31 -> Q2.29
    return np.clip(y << 1, 0, INT32_MAX).astype(np.int32)
