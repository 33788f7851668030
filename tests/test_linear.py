"""The integer linear layer (edgeq.linear) and the reference integer kernels under it.

Integer results (block sums, XNOR dot products) are compared exactly; float outputs against
x @ dequantize(W).T within tolerances.linear_bound, which is derived from the activation
quantization rule in edgeq.kernels.reference.
"""

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import edgeq
from edgeq.errors import UnsupportedError
from edgeq.kernels import numpy_backend, reference as ref
from edgeq.qtypes import QuantSpec, from_components

from test_qtypes import CASE_IDS, CASES, PER_CASE, matrices, per_element, quantize_case
from tolerances import linear_bound, xnor_tolerance

ACT_BLOCKS = [None, 1, 4, 8, 16, 32, 7]  # 7 rarely tiles a row: falls back to the whole row


def linear(x, qt, **kw):
    return edgeq.linear(x, qt, backend="numpy", **kw)


def activations(draw, m, k):
    return draw(hnp.arrays(np.float32, (m, k), elements=st.floats(-100, 100, width=32)))


def weight_magnitude(qt, deq):
    mag = np.abs(deq.astype(np.float64))
    mins = qt.mins()
    if mins is not None:
        mag += 2 * np.abs(per_element(qt, mins))
    return mag


# --- linear against the dequantized matrix ---------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@PER_CASE
@given(data=st.data())
def test_linear_matches_dequantized_matmul(case, data):
    w, group = data.draw(matrices(case))
    qt = quantize_case(w, case, group)
    n, k = qt.shape
    x = activations(data.draw, data.draw(st.integers(1, 4)), k)
    act_block = data.draw(st.sampled_from(ACT_BLOCKS))
    y = linear(x, qt, act_block=act_block)
    assert y.dtype == np.float32 and y.shape == (x.shape[0], n)

    block = k if act_block is None or k % act_block else act_block
    _, xs = ref.quantize_activations(x, block)
    deq = qt.dequantize()
    expected = x.astype(np.float64) @ deq.astype(np.float64).T
    bound = linear_bound(x, deq, weight_magnitude(qt, deq), xs, block, math.gcd(qt.scale_block, block),
                         qt.layout.max_abs_code(qt.spec))
    err = np.abs(y - expected)
    assert (err <= bound).all(), f"worst excess {np.max(err - bound):.3g} (bound {bound.max():.3g})"


def test_block_activations_beat_per_row_with_an_outlier():
    """One outlier per row ruins a per-row activation scale; blocks of 32 confine it."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    qt = edgeq.quantize(w, "int8")
    x = rng.standard_normal((8, 256)).astype(np.float32)
    x[:, 5] = 500.0
    exact = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    err_row = np.abs(linear(x, qt, act_block=None) - exact).mean()
    err_block = np.abs(linear(x, qt, act_block=32) - exact).mean()
    assert err_block < err_row / 2  # about sqrt(256 / 32) in theory


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_act_block_that_does_not_tile_means_per_row(case):
    qt = quantize_case(np.random.default_rng(4).standard_normal((5, 64)).astype(np.float32), case,
                       32 if case[1] == "group" else None)
    x = np.random.default_rng(5).standard_normal((3, 64)).astype(np.float32)
    per_row = linear(x, qt, act_block=None)
    for act_block in (64, 48, 7, 1000):
        assert linear(x, qt, act_block=act_block).tobytes() == per_row.tobytes()


# --- batch rows are independent ----------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@PER_CASE
@given(data=st.data())
def test_rows_are_independent(case, data):
    """linear(x)[i] is bit-identical to linear(x[i:i+1])[0], whatever else is in the batch."""
    w, group = data.draw(matrices(case))
    qt = quantize_case(w, case, group)
    k = qt.shape[1]
    x = activations(data.draw, data.draw(st.integers(2, 5)), k)
    x[data.draw(st.integers(0, x.shape[0] - 1))] = 0  # a padding row
    act_block = data.draw(st.sampled_from(ACT_BLOCKS))
    binarize = qt.qtype == "binary" and data.draw(st.booleans())
    y = linear(x, qt, act_block=act_block, binarize_activations=binarize)
    for i in range(x.shape[0]):
        alone = linear(x[i:i + 1], qt, act_block=act_block, binarize_activations=binarize)
        assert alone[0].tobytes() == y[i].tobytes(), f"row {i}"
        assert linear(x[i], qt, act_block=act_block, binarize_activations=binarize).tobytes() == y[i].tobytes()


def test_chunked_reference_matmul_equals_unchunked(monkeypatch):
    rng = np.random.default_rng(6)
    qt = edgeq.quantize(rng.standard_normal((24, 64)).astype(np.float32), "int4", symmetric=False)
    x = rng.standard_normal((37, 64)).astype(np.float32)
    whole = linear(x, qt)
    monkeypatch.setattr(numpy_backend, "_CHUNK_ELEMENTS", 24 * 2 * 5)  # 5 rows per chunk
    assert linear(x, qt).tobytes() == whole.tobytes()


# --- the XNOR path -------------------------------------------------------------------------------------
@given(data=st.data())
def test_xnor_equals_binarized_activations_times_binary_weights(data):
    """binarize_activations: y = (sign(x) * mean|x|) @ dequantize(W).T; the integer dot product
    k - 2 popcount(w XOR x) is exact, including the padding bits when 8 does not divide k."""
    n, k, m = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 70)), data.draw(st.integers(1, 4))
    w = data.draw(hnp.arrays(np.float32, (n, k), elements=st.floats(-10, 10, width=32)))
    qt = edgeq.quantize(w, "binary")
    x = activations(data.draw, m, k)
    y = linear(x, qt, binarize_activations=True)
    sign_x = np.where(x >= 0, 1, -1).astype(np.int64)
    dots = sign_x @ qt.int_codes().astype(np.int64).T
    x_bits, _ = ref.binarize_activations(x)
    np.testing.assert_array_equal(ref.xnor_dot(qt.data["codes"], x_bits, k), dots)
    binarized = sign_x * np.abs(x.astype(np.float64)).mean(axis=1, keepdims=True)
    deq = qt.dequantize().astype(np.float64)
    expected = binarized @ deq.T
    assert (np.abs(y - expected) <= xnor_tolerance(k, np.abs(binarized) @ np.abs(deq).T)).all()
    assert (y[dots == 0] == 0).all()


def test_binarized_activations_need_binary_weights():
    qt = edgeq.quantize(np.ones((2, 16), np.float32), "int8")
    with pytest.raises(UnsupportedError, match="binary"):
        linear(np.ones(16, np.float32), qt, binarize_activations=True)


# --- argument checks ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int4_weight():
    return edgeq.quantize(np.random.default_rng(7).standard_normal((6, 64)).astype(np.float32), "int4")


@pytest.mark.parametrize("shape", [(63,), (65,), (2, 63), (2, 3, 64), (64, 2), ()])
def test_shape_mismatch(int4_weight, shape):
    with pytest.raises(ValueError, match="shape"):
        linear(np.ones(shape, np.float32), int4_weight)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(int4_weight, bad):
    x = np.ones((3, 64), np.float32)
    x[2, 9] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        linear(x, int4_weight)


@pytest.mark.parametrize("act_block", [0, -32])
def test_non_positive_act_block(int4_weight, act_block):
    with pytest.raises(ValueError, match="act_block"):
        linear(np.ones(64, np.float32), int4_weight, act_block=act_block)


def test_vector_and_empty_batch(int4_weight):
    x = np.random.default_rng(8).standard_normal(64).astype(np.float32)
    y = linear(x, int4_weight)
    assert y.shape == (6,) and y.dtype == np.float32
    assert y.tobytes() == linear(x[None, :], int4_weight)[0].tobytes()
    assert linear(np.ones((0, 64), np.float32), int4_weight).shape == (0, 6)
    assert linear(x.astype(np.float64).tolist(), int4_weight).tobytes() == y.tobytes()


# --- integer block sums and the int32 bound --------------------------------------------------------------
@st.composite
def codes_and_activations(draw):
    sub = draw(st.sampled_from([1, 2, 3, 8, 32]))
    k = sub * draw(st.integers(1, 5))
    n, m = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    max_code = draw(st.sampled_from([1, 8, 15, 64, 128, 255]))
    codes = draw(hnp.arrays(np.int16, (n, k), elements=st.integers(-max_code, max_code)))
    xq = draw(hnp.arrays(np.int8, (m, k)))  # the whole int8 range, -128 included
    return codes, xq, sub, max_code


@given(codes_and_activations())
def test_block_sums_equal_int64_matmul_per_sub_block(args):
    codes, xq, sub, max_code = args
    acc = ref.accumulator_dtype(sub, max_code)
    sums = ref.block_sums(codes, xq, sub, acc)
    assert sums.dtype == acc == np.int32  # small blocks always fit
    for b in range(codes.shape[1] // sub):
        part = slice(b * sub, (b + 1) * sub)
        expected = xq[:, part].astype(np.int64) @ codes[:, part].astype(np.int64).T
        np.testing.assert_array_equal(sums[:, :, b], expected)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backend_block_sums_use_the_codes_and_the_bound(case):
    rng = np.random.default_rng(9)
    qt = quantize_case(rng.standard_normal((4, 64)).astype(np.float32), case, 32 if case[1] == "group" else None)
    xq = rng.integers(-128, 128, size=(3, 64)).astype(np.int8)
    for sub in (8, 32, 64):
        got = numpy_backend.block_sums(qt, xq, sub)
        assert got.dtype == ref.accumulator_dtype(sub, qt.layout.max_abs_code(qt.spec))
        np.testing.assert_array_equal(got, ref.block_sums(qt.int_codes(), xq, sub, np.dtype(np.int64)))


@pytest.mark.parametrize("max_code", [1, 8, 15, 64, 128, 255])
def test_accumulator_switches_to_int64_exactly_at_the_bound(max_code):
    """int32 while sub_block * max|c| * 128 <= 2**31 - 1 (128 = |-128|, the int8 extreme)."""
    last = (2**31 - 1) // (max_code * 128)
    assert ref.accumulator_dtype(last, max_code) == np.int32
    assert ref.accumulator_dtype(last + 1, max_code) == np.int64
    assert last * max_code * 128 <= 2**31 - 1 < (last + 1) * max_code * 128


@pytest.mark.parametrize("k, acc", [(131071, np.int32), (131072, np.int64)])
def test_extreme_sums_at_the_int32_edge(k, acc):
    """Codes -128 (an imported int8) times activations -128 over a whole block: the largest sum
    there is. At 131071 values it still fits int32; at 131072 it needs (and gets) int64."""
    codes = np.full((1, k), -128, np.int16)
    xq = np.full((1, k), -128, np.int8)
    assert ref.accumulator_dtype(k, 128) == acc
    sums = ref.block_sums(codes, xq, k, ref.accumulator_dtype(k, 128))
    assert sums.dtype == acc and int(sums[0, 0, 0]) == 128 * 128 * k
    if acc == np.int64:  # the bound is tight: int32 would wrap here
        assert int(ref.block_sums(codes, xq, k, np.dtype(np.int32))[0, 0, 0]) != 128 * 128 * k


def test_per_row_int8_with_a_long_row_accumulates_in_int64():
    """A per-row int8 weight holding -128 codes with k = 2**17, per-row activations: one block
    of 131072 products of 128 * 127, more than int32 holds; the result must stay positive."""
    k = 1 << 17
    spec = QuantSpec("int8", "row", 0, True, "")
    qt = from_components(spec, (1, k), {"codes": np.full((1, k), -128, np.int8),
                                        "scales": np.full((1, 1), 0.5, np.float32)})
    assert numpy_backend.block_sums(qt, np.full((1, k), -127, np.int8), k).dtype == np.int64
    y = linear(np.full(k, -1.0, np.float32), qt, act_block=None)
    assert y[0] == np.float32(128 * 127 * k) * np.float32(1 / 127) * np.float32(0.5)
