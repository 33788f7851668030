"""Fixed-point primitives against exact rational arithmetic (fractions.Fraction).

Exactness of multiply_by_quantized_multiplier, derived here and asserted below. Let
q = multiplier, l = max(shift, 0), r = max(-shift, 0), x' = x * 2**l (no saturation) and
t = x' * q / 2**31 exactly, so the exact product is x * M = t / 2**r. The implementation
computes y = floor(t + 1/2) (SQRDMULH: ties toward +inf), then rounds y / 2**r half away
from zero. Let R = round_half_away(t / 2**r), the correctly rounded result.

* r == 0: result = y, which is R except for negative ties (t = -k - 1/2), where it is R + 1.
* r >= 1: the rounding boundaries of y / 2**r are the odd multiples B of 2**(r-1), which are
  integers. As y = round(t), t and y are on the same (closed) side of every B, so the two
  roundings agree unless y == B and t != B. That happens exactly when t lies within 1/2 of B
  on the side of zero: B - 1/2 <= t < B for t > 0 (t = B - 1/2 rounds up to B), and
  B < t < B + 1/2 for t < 0 (t = B + 1/2 rounds up, away from B). There y / 2**r is a tie that
  is rounded away from zero while t / 2**r is not a tie, so the result is R + sign(t).
* Always |result - x * M| <= 1/2 + 2**-(r+1) < 1.
"""

from fractions import Fraction
import math

from hypothesis import example, given, settings, strategies as st
import numpy as np
import pytest

from edgeq import fixedpoint as fp
from edgeq.errors import FormatError

INT32_MIN, INT32_MAX = fp.INT32_MIN, fp.INT32_MAX
EXTREMES = [INT32_MIN, INT32_MIN + 1, -2, -1, 0, 1, 2, INT32_MAX - 1, INT32_MAX,
            1 << 30, -(1 << 30)]

int32s = st.one_of(st.sampled_from(EXTREMES), st.integers(INT32_MIN, INT32_MAX),
                   st.integers(-4096, 4096))


def round_half_away(value: Fraction) -> int:
    """Exact rounding to the nearest integer, ties away from zero."""
    magnitude = math.floor(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


def represented(multiplier: int, shift: int) -> Fraction:
    return Fraction(multiplier) * Fraction(2) ** (shift - 31)


# Real multipliers: log-uniform over the whole range, plus the regions the brief names.
reals = st.one_of(
    st.floats(-32.0, 29.999).map(lambda e: 2.0 ** e),
    st.floats(3e-10, 1e-8),                                   # tiny (~1e-9)
    st.floats(1.0 - 1e-6, 1.0 + 1e-6),                        # near 1
    st.floats(1.0, 2.0 ** 20),                                # > 1 up to 2**20
    st.sampled_from([1.0, 0.5, 1.0 - 2.0 ** -40, 2.0 ** -32, 2.0 ** 30 * (1 - 2.0 ** -30)]),
)


# ---------------------------------------------------------------------------------------------
# quantize_multiplier
# ---------------------------------------------------------------------------------------------

@given(reals)
@settings(max_examples=500)
def test_quantize_multiplier_representation(real):
    multiplier, shift = fp.quantize_multiplier(real)
    assert (1 << 30) <= multiplier < (1 << 31)
    assert fp.MIN_SHIFT <= shift <= fp.MAX_SHIFT
    exact = Fraction(real)
    assert abs(represented(multiplier, shift) - exact) <= exact * Fraction(1, 1 << 31)
    # the Q0.31 mantissa is the half-away-from-zero rounding of m = real / 2**shift
    m = exact / Fraction(2) ** shift
    if round_half_away(m * (1 << 31)) != 1 << 31:
        assert multiplier == round_half_away(m * (1 << 31))


def test_quantize_multiplier_known_values_and_carry():
    assert fp.quantize_multiplier(1.0) == (1 << 30, 1)
    assert fp.quantize_multiplier(0.5) == (1 << 30, 0)
    assert fp.quantize_multiplier(0.75) == (3 << 29, 0)
    assert fp.quantize_multiplier(2.0 ** -32) == (1 << 30, -31)
    # m * 2**31 = 2**31 - 2**-9 rounds up to 2**31: halve it and bump the shift
    assert fp.quantize_multiplier(1.0 - 2.0 ** -40) == (1 << 30, 1)
    # exact tie m * 2**31 = k + 1/2 rounds away from zero
    assert fp.quantize_multiplier(0.5 + 2.0 ** -32) == ((1 << 30) + 1, 0)


@pytest.mark.parametrize("bad", [0.0, -0.0, -1.0, float("nan"), float("inf"), -float("inf"),
                                 2.0 ** 30, 1e12, 2.0 ** -33, 1e-300, "0.5", True, None])
def test_quantize_multiplier_rejects(bad):
    with pytest.raises(ValueError):
        fp.quantize_multiplier(bad)


# ---------------------------------------------------------------------------------------------
# SQRDMULH
# ---------------------------------------------------------------------------------------------

@given(int32s, int32s)
@example(INT32_MIN, INT32_MIN)
@example(-1, 1 << 30)           # -1/2: tie toward +inf -> 0
@example(-3, 1 << 30)           # -3/2 -> -1
@example(INT32_MIN, INT32_MAX)
@settings(max_examples=500)
def test_srdhm_is_floor_of_half_up(a, b):
    result = fp.saturating_rounding_doubling_high_mul(a, b)
    if a == b == INT32_MIN:
        assert result == INT32_MAX
    else:
        assert result == math.floor(Fraction(a * b, 1 << 31) + Fraction(1, 2))
    assert INT32_MIN <= result <= INT32_MAX


def test_srdhm_known_values():
    srdhm = fp.saturating_rounding_doubling_high_mul
    assert srdhm(INT32_MIN, INT32_MIN) == INT32_MAX      # the single overflow
    assert srdhm(1 << 30, 1 << 30) == 1 << 29             # 0.5 * 0.5 = 0.25 in Q0.31
    assert srdhm(1, 1 << 30) == 1                         # +1/2 -> 1
    assert srdhm(-1, 1 << 30) == 0                        # -1/2 -> 0 (nudge 1 - 2**30)
    assert srdhm(INT32_MIN, INT32_MAX) == -INT32_MAX
    assert srdhm(INT32_MIN, 1) == -1


@pytest.mark.parametrize("a,b", [(INT32_MAX + 1, 0), (0, INT32_MIN - 1), (1.0, 2), (True, 1)])
def test_srdhm_rejects_non_int32(a, b):
    with pytest.raises(ValueError):
        fp.saturating_rounding_doubling_high_mul(a, b)


# ---------------------------------------------------------------------------------------------
# RoundingDivideByPOT
# ---------------------------------------------------------------------------------------------

@given(int32s, st.integers(0, 31))
@example(-3, 1)
@example(3, 1)
@example(INT32_MIN, 31)
@example(INT32_MAX, 31)
@example(-(1 << 30), 31)
@settings(max_examples=500)
def test_rounding_divide_by_pot_is_round_half_away(x, exponent):
    assert fp.rounding_divide_by_pot(x, exponent) == round_half_away(Fraction(x, 1 << exponent))


def test_rounding_divide_by_pot_all_small_inputs():
    for exponent in range(0, 6):
        for x in range(-200, 201):
            assert fp.rounding_divide_by_pot(x, exponent) == round_half_away(
                Fraction(x, 1 << exponent))


@pytest.mark.parametrize("exponent", [-1, 32, 1.0])
def test_rounding_divide_by_pot_rejects_exponent(exponent):
    with pytest.raises(ValueError):
        fp.rounding_divide_by_pot(5, exponent)


# ---------------------------------------------------------------------------------------------
# MultiplyByQuantizedMultiplier
# ---------------------------------------------------------------------------------------------

def expected_mbqm(x: int, multiplier: int, shift: int) -> tuple[int, Fraction]:
    """The result the derivation in the module docstring predicts, and the exact product."""
    left, right = max(shift, 0), max(-shift, 0)
    t = Fraction(x * (1 << left) * multiplier, 1 << 31)
    exact = t / (1 << right)
    correct = round_half_away(exact)
    if right == 0:
        negative_tie = t < 0 and t.denominator == 2
        return correct + (1 if negative_tie else 0), exact
    half_step = 1 << (right - 1)
    boundary = (math.floor(abs(t) / half_step) + 1) * half_step  # first multiple above |t|
    gap = boundary - abs(t)
    on_zero_side_of_tie = (boundary // half_step) % 2 == 1 and (
        gap <= Fraction(1, 2) if t > 0 else gap < Fraction(1, 2))
    if on_zero_side_of_tie:
        return correct + (1 if t > 0 else -1), exact
    return correct, exact


@given(st.data(), reals)
@settings(max_examples=800)
def test_mbqm_against_exact_rationals(data, real):
    multiplier, shift = fp.quantize_multiplier(real)
    left = max(shift, 0)
    # keep x << left inside int32 (saturation is tested separately)
    lo, hi = INT32_MIN >> left, INT32_MAX >> left
    x = data.draw(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, -1, 0, 1]),
                            st.integers(max(lo, -1000), min(hi, 1000))), label="x")
    result = fp.multiply_by_quantized_multiplier(x, multiplier, shift)
    predicted, exact = expected_mbqm(x, multiplier, shift)
    assert result == predicted
    assert abs(result - exact) < 1
    # relative to the real (not represented) multiplier as well: within one unit plus the
    # representation error 2**-31 * |x * real|
    assert abs(result - x * Fraction(real)) < 1 + abs(x * Fraction(real)) / (1 << 31)


def test_mbqm_double_rounding_cases():
    # 1 * 0.5 * 2**-1 = 0.25, but SQRDMULH gives 1 (1/2 up) and the shift rounds 1/2 away: 1
    assert fp.multiply_by_quantized_multiplier(1, 1 << 30, -1) == 1
    assert expected_mbqm(1, 1 << 30, -1)[0] == 1
    # -1 * 0.5 / 2 = -0.25: SQRDMULH rounds -1/2 up to 0, so no error on this side ...
    assert fp.multiply_by_quantized_multiplier(-1, 1 << 30, -1) == 0
    # ... but -1 * 0.75 / 2 = -0.375: SQRDMULH gives -1, the shift rounds -1/2 away: -1
    assert fp.multiply_by_quantized_multiplier(-1, 3 << 29, -1) == -1
    assert expected_mbqm(-1, 3 << 29, -1)[0] == -1
    # negative tie without a right shift rounds toward +inf: -1 * 0.5 = -0.5 -> 0
    assert fp.multiply_by_quantized_multiplier(-1, 1 << 30, 0) == 0
    # exact ties with a right shift round away from zero: 6 * 0.5 / 4 = 0.75 ... 12 * 0.5 / 4
    assert fp.multiply_by_quantized_multiplier(12, 1 << 30, -2) == 2    # 1.5 -> 2
    assert fp.multiply_by_quantized_multiplier(-12, 1 << 30, -2) == -2  # -1.5 -> -2


def test_mbqm_discrepancy_cases_are_exercised():
    """The off-by-one-from-exact branch of the derivation is hit, and matches."""
    hits = 0
    for x in range(-300, 301):
        for shift in (-1, -2, -5):
            for multiplier in (1 << 30, (1 << 30) + 12345, INT32_MAX):
                predicted, exact = expected_mbqm(x, multiplier, shift)
                hits += predicted != round_half_away(exact)
                assert fp.multiply_by_quantized_multiplier(x, multiplier, shift) == predicted
    assert hits > 50


def test_mbqm_saturating_left_shift():
    multiplier, shift = fp.quantize_multiplier(2.0 ** 20)
    assert shift == 21
    big = INT32_MAX >> 10
    assert fp.multiply_by_quantized_multiplier(big, multiplier, shift) == \
        fp.saturating_rounding_doubling_high_mul(INT32_MAX, multiplier)
    assert fp.multiply_by_quantized_multiplier(-big, multiplier, shift) == \
        fp.saturating_rounding_doubling_high_mul(INT32_MIN, multiplier)


@pytest.mark.parametrize("args", [(1, -1, 0), (1, INT32_MAX + 1, 0), (1, 1 << 30, 31),
                                  (1, 1 << 30, -32), (INT32_MAX + 1, 1 << 30, 0)])
def test_mbqm_rejects(args):
    with pytest.raises(ValueError):
        fp.multiply_by_quantized_multiplier(*args)


# ---------------------------------------------------------------------------------------------
# Array versions == scalar versions
# ---------------------------------------------------------------------------------------------

int32_arrays = st.lists(int32s, min_size=1, max_size=64)


@given(int32_arrays, st.data())
@settings(max_examples=200)
def test_array_versions_equal_scalar(xs, data):
    n = len(xs)
    ys = data.draw(st.lists(int32s, min_size=n, max_size=n), label="ys")
    exps = data.draw(st.lists(st.integers(0, 31), min_size=n, max_size=n), label="exponents")
    mults = data.draw(st.lists(st.one_of(st.integers(0, INT32_MAX),
                                         st.sampled_from([0, 1, 1 << 30, INT32_MAX])),
                               min_size=n, max_size=n), label="multipliers")
    shifts = data.draw(st.lists(st.integers(fp.MIN_SHIFT, fp.MAX_SHIFT), min_size=n,
                                max_size=n), label="shifts")
    x = np.array(xs, dtype=np.int32)
    y = np.array(ys, dtype=np.int32)

    got = fp.saturating_rounding_doubling_high_mul_array(x, y)
    assert got.dtype == np.int32
    assert got.tolist() == [fp.saturating_rounding_doubling_high_mul(a, b) for a, b in zip(xs, ys)]

    got = fp.rounding_divide_by_pot_array(x, np.array(exps))
    assert got.tolist() == [fp.rounding_divide_by_pot(a, e) for a, e in zip(xs, exps)]

    got = fp.multiply_by_quantized_multiplier_array(x, np.array(mults), np.array(shifts))
    assert got.dtype == np.int32
    assert got.tolist() == [fp.multiply_by_quantized_multiplier(a, m, s)
                            for a, m, s in zip(xs, mults, shifts)]


def test_array_versions_on_all_extreme_pairs():
    grid = np.array(EXTREMES, dtype=np.int32)
    a, b = np.meshgrid(grid, grid)
    got = fp.saturating_rounding_doubling_high_mul_array(a, b)
    want = [[fp.saturating_rounding_doubling_high_mul(int(p), int(q)) for p, q in zip(ra, rb)]
            for ra, rb in zip(a, b)]
    assert got.tolist() == want
    for exponent in range(32):
        assert fp.rounding_divide_by_pot_array(grid, exponent).tolist() == \
            [fp.rounding_divide_by_pot(int(v), exponent) for v in grid]
    for shift in (fp.MIN_SHIFT, -1, 0, 1, fp.MAX_SHIFT):
        for multiplier in (0, 1, 1 << 30, INT32_MAX):
            assert fp.multiply_by_quantized_multiplier_array(grid, multiplier, shift).tolist() == \
                [fp.multiply_by_quantized_multiplier(int(v), multiplier, shift) for v in grid]


def test_array_versions_reject_bad_arrays():
    with pytest.raises(FormatError):
        fp.saturating_rounding_doubling_high_mul_array(np.array([1.5]), np.array([1]))
    with pytest.raises(FormatError):
        fp.rounding_divide_by_pot_array(np.array([1 << 31], dtype=np.int64), 1)
    with pytest.raises(FormatError):
        fp.rounding_divide_by_pot_array(np.array([1]), 32)
    with pytest.raises(FormatError):
        fp.multiply_by_quantized_multiplier_array(np.array([1]), -5, 0)
    with pytest.raises(FormatError):
        fp.multiply_by_quantized_multiplier_array(np.array([1], dtype=np.uint64), 1, 31)


# ---------------------------------------------------------------------------------------------
# requantize
# ---------------------------------------------------------------------------------------------

@given(st.lists(int32s, min_size=1, max_size=40), reals, st.integers(-128, 127),
       st.integers(-128, 127), st.integers(-128, 127))
@settings(max_examples=200)
def test_requantize_int8_matches_scalar_pipeline(accs, real, zero_point, a, b):
    qmin, qmax = min(a, b), max(a, b)
    got = fp.requantize(np.array(accs, dtype=np.int32), real, zero_point, qmin, qmax)
    assert got.dtype == np.int8
    multiplier, shift = fp.quantize_multiplier(real)
    want = [min(max(fp.multiply_by_quantized_multiplier(v, multiplier, shift) + zero_point,
                    qmin), qmax) for v in accs]
    assert got.tolist() == want


def test_requantize_uint8_per_channel():
    acc = np.array([[1000, -1000, 7], [INT32_MAX, INT32_MIN, 0]], dtype=np.int32)
    reals = [0.01, 0.5, 3.0]
    got = fp.requantize(acc, reals, 128, 0, 255, dtype=np.uint8)
    assert got.dtype == np.uint8
    assert got.tolist() == [[138, 0, 149], [255, 0, 128]]


def test_requantize_is_close_to_real_arithmetic():
    rng = np.random.default_rng(1)
    acc = rng.integers(-(1 << 20), 1 << 20, size=1000).astype(np.int32)
    real = 0.0123456
    assert fp.quantize_multiplier(real)[1] == -6
    got = fp.requantize(acc, real, -3, -128, 127).astype(np.int64)
    ideal = np.clip(acc * real - 3, -128, 127)
    # rounding 1/2 + double rounding 2**-(6+1) + representation error (< 1e-6 here)
    assert np.max(np.abs(got - ideal)) <= 0.5 + 2.0 ** -7 + 1e-6


@pytest.mark.parametrize("kwargs", [dict(zero_point=200), dict(qmin=5, qmax=4),
                                    dict(qmin=-200), dict(dtype=np.int16),
                                    dict(real_multiplier=-1.0),
                                    dict(real_multiplier=[0.5, 0.5])])
def test_requantize_rejects(kwargs):
    args = dict(acc=np.zeros((2, 3), np.int32), real_multiplier=0.5, zero_point=0,
                qmin=-128, qmax=127)
    args.update(kwargs)
    with pytest.raises(ValueError):
        fp.requantize(**args)


# ---------------------------------------------------------------------------------------------
# Integer approximations
# ---------------------------------------------------------------------------------------------

EXP_ERROR_BOUND = 2.6e-7          # documented in fp.exp_on_negative_values
RECIPROCAL_ERROR_BOUND = 2.0 ** -28


@pytest.mark.parametrize("integer_bits", [0, 1, 4, 5, 12, 29])
def test_exp_on_negative_values_error_bound(integer_bits):
    fractional_bits = 31 - integer_bits
    rng = np.random.default_rng(integer_bits)
    x = np.concatenate([
        rng.integers(INT32_MIN, 1, size=50_000),
        -rng.integers(0, 1 << min(fractional_bits + 3, 31), size=50_000),  # |x| < 8
        [0, -1, -2, INT32_MIN, INT32_MIN + 1, -(1 << (fractional_bits - 2))]])
    got = fp.exp_on_negative_values(x, integer_bits)
    assert got.dtype == np.int32
    assert np.all(got >= 0)
    error = np.abs(got / 2.0 ** 31 - np.exp(x / 2.0 ** fractional_bits))
    assert error.max() <= EXP_ERROR_BOUND
    assert fp.exp_on_negative_values(np.array([0]), integer_bits)[0] == INT32_MAX


def test_exp_constants_are_correctly_rounded():
    for k, constant in zip(range(-2, 30), fp._EXP_MINUS_POW2_Q31):
        assert abs(constant - math.exp(-(2.0 ** k)) * 2 ** 31) <= 0.5 + 1e-6
    assert abs(fp._EXP_MINUS_EIGHTH_Q31 - math.exp(-0.125) * 2 ** 31) <= 0.5 + 1e-6


def test_exp_rejects_bad_input():
    with pytest.raises(FormatError):
        fp.exp_on_negative_values(np.array([1]), 5)
    with pytest.raises(ValueError):
        fp.exp_on_negative_values(np.array([-1]), 30)


def test_one_over_one_plus_x_error_bound():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.integers(0, INT32_MAX, size=100_000, endpoint=True),
                        np.arange(0, 1000), INT32_MAX - np.arange(0, 1000), [1 << 30]])
    got = fp.one_over_one_plus_x(x)
    exact = 1.0 / (1.0 + x / 2.0 ** 31)
    assert np.abs(got / 2.0 ** 31 - exact).max() <= RECIPROCAL_ERROR_BOUND
    assert fp.one_over_one_plus_x(np.array([0]))[0] == INT32_MAX
    with pytest.raises(FormatError):
        fp.one_over_one_plus_x(np.array([-1]))
