"""Quantized layouts (edgeq.qtypes): every type x granularity x symmetry x packing.

Each layout's docstring states its byte layout, its code range, its bits per weight and its
dequantization error bound; these tests hold the code to those sentences.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import edgeq
from edgeq.errors import FormatError, UnsupportedError
from edgeq.qtypes import QuantSpec, from_components, get_layout, layouts
from edgeq.qtypes.pow2 import CODE_VALUES

from tolerances import dequant_slack, DEQUANT_ATOL, constant_row_rel

# (qtype, granularity, symmetric, packing): every combination the layouts accept
CASES = [
    ("int8", "tensor", True, ""), ("int8", "tensor", False, ""),
    ("int8", "row", True, ""), ("int8", "row", False, ""),
    ("int8", "group", True, ""), ("int8", "group", False, ""),
    ("int4", "group", True, ""), ("int4", "group", False, ""),
    ("int3", "group", True, ""), ("int3", "group", False, ""),
    ("int2", "group", True, ""), ("int2", "group", False, ""),
    ("ternary", "row", True, "2bit"), ("ternary", "row", True, "base3"),
    ("ternary", "group", True, "2bit"), ("ternary", "group", True, "base3"),
    ("binary", "row", True, ""),
    ("pow2", "row", True, ""), ("pow2", "group", True, ""),
]
CASE_IDS = ["-".join([q, g, "sym" if s else "asym"] + ([p] if p else [])) for q, g, s, p in CASES]
GROUPED = [c for c in CASES if c[1] == "group"]
UNGROUPED = [c for c in CASES if c[1] != "group"]

#: properties run once per case: a quarter of the profile's examples each (at least 10)
PER_CASE = settings(max_examples=max(10, settings().max_examples // 4))

#: codes per byte along k that a row (or group) length must be a multiple of
MULTIPLE = {("int8", ""): 1, ("int4", ""): 8, ("int3", ""): 8, ("int2", ""): 4, ("ternary", "2bit"): 4, ("ternary", "base3"): 1,
            ("binary", ""): 1, ("pow2", ""): 2}


def test_cases_cover_every_registered_layout():
    assert {c[0] for c in CASES} == set(layouts())
    for name, layout in layouts().items():
        combos = {(g, s, p) for q, g, s, p in CASES if q == name}
        expected = {(g, s, p or "") for g in layout.granularities
                    for s in ((True, False) if layout.supports_asymmetric else (True,))
                    for p in layout.packings}
        assert combos == expected, name


def quantize_case(w, case, group_size):
    qtype, granularity, symmetric, packing = case
    return edgeq.quantize(w, qtype, granularity=granularity, symmetric=symmetric, packing=packing,
                          group_size=group_size if granularity == "group" else None)


@st.composite
def shapes(draw, case, max_rows=5):
    """(rows, k, group_size or None) valid for the case; base-3 groups take every residue mod 5."""
    qtype, granularity, _, packing = case
    multiple = MULTIPLE[(qtype, packing)]
    rows = draw(st.integers(1, max_rows))
    if granularity == "group":
        group = multiple * draw(st.integers(1, 24 if multiple == 1 else 8))
        return rows, group * draw(st.integers(1, 4)), group
    return rows, multiple * draw(st.integers(1, 16 if multiple > 1 else 48)), None


@st.composite
def matrices(draw, case):
    """(w float32 (rows, k), group_size). Float16 group scales keep |w| <= 1e4 (float16 tops out
    at 65504); float32 scales see magnitudes from 1e-30 to 1e30."""
    rows, k, group = draw(shapes(case))
    base = draw(hnp.arrays(np.float32, (rows, k), elements=st.floats(-1, 1, width=32)))
    exponent = draw(st.integers(-8, 4) if case[1] == "group" else st.integers(-30, 30))
    return (base.astype(np.float64) * 10.0 ** exponent).astype(np.float32), group


def per_element(qt, values):
    """(scale_rows, groups) per-scale values -> (rows, k) per-weight values, float64."""
    rows, k = qt.shape
    v = np.broadcast_to(values, (rows, k // qt.scale_block))
    return np.repeat(v.astype(np.float64), qt.scale_block, axis=1)


def documented_bound(qt, w):
    """Each layout docstring's bound on |w - dequantize(w)|, per element (float64)."""
    s = per_element(qt, qt.scales())
    a = np.abs(w.astype(np.float64))
    if qt.qtype == "int8":
        return s / 2 if qt.spec.symmetric else s
    if qt.qtype in ("int4", "int3", "int2"):
        return s / 2
    if qt.qtype == "ternary":
        return np.maximum(s / 2, a - s)
    if qt.qtype == "binary":
        return np.abs(a - s)
    if qt.qtype == "pow2":
        return np.maximum(s / 2, a / 3)
    raise AssertionError(qt.qtype)


def check_bound(qt, w):
    deq = qt.dequantize()
    assert deq.dtype == np.float32 and deq.shape == w.shape
    err = np.abs(deq.astype(np.float64) - w.astype(np.float64))
    mins = qt.mins()
    magnitude = np.abs(w.astype(np.float64)) + np.abs(deq.astype(np.float64))
    if mins is not None:
        magnitude += 2 * np.abs(per_element(qt, mins))
    slack = dequant_slack(magnitude) + DEQUANT_ATOL
    bound = documented_bound(qt, w)
    excess = err - (bound + slack)
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess.max() <= 0, (f"{qt}: |w - deq| = {err[worst]:.6g} at {worst} (w = {w[worst]!r}, "
                               f"deq = {deq[worst]!r}) exceeds the bound {bound[worst]:.6g}")
    if qt.qtype == "binary":  # the bound is an equality: deq = sign(w) * a
        assert (excess >= -2 * slack).all()
        assert ((deq >= 0) == (w >= 0)).all() or (qt.scales() == 0).any()
    return deq


# --- round trip and error bound -------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@PER_CASE
@given(data=st.data())
def test_dequantize_within_documented_bound(case, data):
    w, group = data.draw(matrices(case))
    qt = quantize_case(w, case, group)
    assert qt.spec == QuantSpec(case[0], case[1], group or 0, case[2], case[3] or
                                ("2bit" if case[0] == "ternary" else ""))
    check_bound(qt, w)


def expected_nbytes(spec, rows, k):
    """Byte count written out from each layout docstring's table."""
    g = spec.group_size if spec.granularity == "group" else k
    n_scales = (1 if spec.granularity == "tensor" else rows) * (k // g if spec.granularity == "group" else 1)
    scale_bytes = n_scales * (2 if spec.granularity == "group" else 4)
    if spec.qtype == "int8":
        return rows * k + scale_bytes + (0 if spec.symmetric else n_scales)
    if spec.qtype in ("int4", "int3", "int2"):
        bits = int(spec.qtype[3])
        return rows * k * bits // 8 + scale_bytes * (1 if spec.symmetric else 2)
    if spec.qtype == "ternary":
        codes = rows * k // 4 if spec.packing == "2bit" else rows * (k // g) * math.ceil(g / 5)
        return codes + scale_bytes
    if spec.qtype == "binary":
        return rows * math.ceil(k / 8) + scale_bytes
    if spec.qtype == "pow2":
        return rows * k // 2 + scale_bytes
    raise AssertionError(spec.qtype)


def documented_bits_per_weight(spec, rows, k):
    """The docstrings' formulas (base-3 and binary with their ceil() made exact)."""
    g = spec.group_size
    per_scale = {"tensor": 32 / (rows * k), "row": 32 / k, "group": 16 / g if g else 0}[spec.granularity]
    if spec.qtype == "int8":
        zero_point = 0 if spec.symmetric else per_scale / (2 if spec.granularity == "group" else 4)
        return 8 + per_scale + zero_point
    if spec.qtype in ("int4", "int3", "int2"):
        return int(spec.qtype[3]) + per_scale * (1 if spec.symmetric else 2)
    if spec.qtype == "ternary":
        if spec.packing == "2bit":
            return 2 + per_scale
        p = g if spec.granularity == "group" else k
        return 8 * math.ceil(p / 5) / p + per_scale  # 1.6 + ... when 5 divides the group
    if spec.qtype == "binary":
        return 8 * math.ceil(k / 8) / k + per_scale  # 1 + 32/k when 8 divides k
    if spec.qtype == "pow2":
        return 4 + per_scale
    raise AssertionError(spec.qtype)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@PER_CASE
@given(data=st.data())
def test_codes_in_range_and_size_exact(case, data):
    w, group = data.draw(matrices(case))
    qt = quantize_case(w, case, group)
    rows, k = qt.shape
    codes = qt.int_codes()
    assert codes.shape == (rows, k) and codes.dtype == np.int16
    assert np.abs(codes).max() <= qt.layout.max_abs_code(qt.spec)
    qtype, sym = qt.qtype, qt.spec.symmetric
    allowed = {("int8", True): range(-127, 128), ("int8", False): range(-255, 256),
               ("int4", True): range(-7, 8), ("int4", False): range(0, 16),
               ("int3", True): range(-3, 4), ("int3", False): range(0, 8),
               ("int2", True): range(-1, 2), ("int2", False): range(0, 4),
               ("ternary", True): (-1, 0, 1), ("binary", True): (-1, 1),
               ("pow2", True): set(CODE_VALUES.tolist())}[(qtype, sym)]
    assert set(np.unique(codes).tolist()) <= set(allowed)
    if qtype == "int8" and not sym:  # stored codes and zero points are full uint8
        assert qt.data["codes"].dtype == np.uint8 and qt.data["zeros"].dtype == np.uint8
    # the components are exactly what the layout declares for files
    declared = qt.layout.components(qt.spec, qt.shape)
    assert {n: (a.dtype, a.shape) for n, a in qt.data.items()} == \
        {n: (np.dtype(d), tuple(s)) for n, (d, s) in declared.items()}
    assert qt.nbytes == expected_nbytes(qt.spec, rows, k)
    assert qt.bits_per_weight == 8 * qt.nbytes / (rows * k)
    assert math.isclose(qt.bits_per_weight, documented_bits_per_weight(qt.spec, rows, k), rel_tol=1e-12)
    # rebuilding from the components (as a file does) gives the same numbers
    again = from_components(qt.spec, qt.shape, qt.data)
    np.testing.assert_array_equal(again.dequantize(), qt.dequantize())


def test_documented_bits_per_weight_examples():
    w = np.zeros((4, 320), np.float32)
    expect = {("int8", 32): 8.5, ("int4", 32): 4.5, ("pow2", 32): 4.5,
              ("ternary", 64): 2.25, ("ternary-base3", 40): 1.6 + 16 / 40}
    for (name, g), bpw in expect.items():
        qtype, _, packing = name.partition("-")
        qt = edgeq.quantize(w, qtype, group_size=g, packing=packing)
        assert math.isclose(qt.bits_per_weight, bpw, rel_tol=1e-12), name
    assert edgeq.quantize(w, "binary").bits_per_weight == 1 + 32 / 320
    assert edgeq.quantize(w, "int4", group_size=32, symmetric=False).bits_per_weight == 5.0


# --- special values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@PER_CASE
@given(data=st.data())
def test_zero_and_constant_rows(case, data):
    rows, k, group = data.draw(shapes(case, max_rows=4))
    values = data.draw(hnp.arrays(np.float32, rows, elements=st.floats(-1e3, 1e3, width=32)))
    w = np.repeat(values[:, None], k, axis=1)
    w[0] = 0.0
    if rows > 1:
        w[1] = -0.0
    qt = quantize_case(w, case, group)
    deq = check_bound(qt, w)
    assert (deq[0] == 0).all()
    assert (deq == deq[:, :1]).all(), "a constant row must stay constant"
    if case[1] != "group" and not (case[1] == "tensor" and rows > 1):
        # one float32 scale per row: the constant comes back up to scale rounding
        rel = constant_row_rel(k)
        np.testing.assert_allclose(deq, w, rtol=rel, atol=DEQUANT_ATOL)  # subnormal c


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_huge_magnitudes(case):
    """1e30: float16 group scales cannot hold it -> a clear ValueError; float32 scales work."""
    rows, k = 3, 64
    w = np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32) * np.float32(1e30)
    if case[1] == "group":
        with pytest.raises(ValueError, match="float16"):
            quantize_case(w, case, 32)
    else:
        check_bound(quantize_case(w, case, None), w)


@pytest.mark.parametrize("case", UNGROUPED, ids=[CASE_IDS[CASES.index(c)] for c in UNGROUPED])
def test_weights_near_the_float32_maximum(case):
    """Finite float32 weights up to 3e38 quantize per row or tensor, int8 with a zero point
    included (its range max - min, up to 6e38, is taken in float64)."""
    w = np.full((2, 64), 3e38, np.float32)
    w[:, ::2] *= -1
    w[1, :7] = 1.0
    check_bound(quantize_case(w, case, None), w)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tiny_magnitudes(case):
    """1e-30 quantizes within the bound everywhere (float16 scales round up to a subnormal)."""
    w = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32) * np.float32(1e-30)
    qt = quantize_case(w, case, 32 if case[1] == "group" else None)
    check_bound(qt, w)
    if case[1] != "group":  # float32 scales keep full relative precision
        assert np.abs(qt.int_codes()).max() > 0


@pytest.mark.parametrize("case", UNGROUPED, ids=[CASE_IDS[CASES.index(c)] for c in UNGROUPED])
@PER_CASE
@given(seed=st.integers(0, 2**32 - 1), power=st.sampled_from([-100, -60, 60, 100]))
def test_float32_scales_are_scale_invariant(case, seed, power):
    """Multiplying w by 2**p (exact in float32) leaves the codes unchanged and scales the
    dequantized matrix exactly: tiny and huge weights lose nothing with float32 scales."""
    w = np.random.default_rng(seed).standard_normal((3, 40)).astype(np.float32)
    w[np.abs(w) < 1e-3] = 0  # keep w * 2**-100 out of the float32 subnormal range
    factor = np.float32(2.0 ** power)
    a, b = quantize_case(w, case, None), quantize_case(w * factor, case, None)
    np.testing.assert_array_equal(a.int_codes(), b.int_codes())
    np.testing.assert_array_equal(a.dequantize() * factor, b.dequantize())


# --- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_format_errors(case, bad):
    w = np.ones((2, 64), np.float32)
    w[1, 17] = bad
    with pytest.raises(FormatError, match="row 1, column 17"):
        quantize_case(w, case, 32 if case[1] == "group" else None)


def test_float64_beyond_float32_is_a_format_error():
    with pytest.raises(FormatError):
        edgeq.quantize(np.full((2, 8), 1e300), "int8")


@pytest.mark.parametrize("qtype, k, group_size", [
    ("int8", 64, 0), ("int8", 64, -32), ("int8", 64, 48), ("int8", 64, 32.0), ("int8", 64, "32"),
    ("int4", 64, 4), ("int4", 64, 12), ("int4", 64, 128), ("int4", 24, 16),
    ("ternary", 24, 6), ("ternary", 64, 0), ("pow2", 30, 3), ("pow2", 64, 24),
])
def test_invalid_group_sizes(qtype, k, group_size):
    with pytest.raises(ValueError, match="group"):
        edgeq.quantize(np.ones((2, k), np.float32), qtype, group_size=group_size)


@pytest.mark.parametrize("qtype, k, packing", [("ternary", 6, "2bit"), ("pow2", 5, ""), ("int4", 12, "")])
def test_row_lengths_the_packing_cannot_hold(qtype, k, packing):
    with pytest.raises(ValueError):
        edgeq.quantize(np.ones((2, k), np.float32), qtype, packing=packing)


def test_group_size_with_another_granularity():
    with pytest.raises(ValueError, match="group_size"):
        edgeq.quantize(np.ones((2, 64), np.float32), "int8", granularity="row", group_size=32)


def test_unknown_qtype():
    with pytest.raises(UnsupportedError, match="int5"):
        edgeq.quantize(np.ones((2, 64), np.float32), "int5")
    with pytest.raises(UnsupportedError):
        get_layout("float8")


@pytest.mark.parametrize("qtype", ["ternary", "binary", "pow2"])
def test_asymmetric_where_unsupported(qtype):
    with pytest.raises(UnsupportedError, match="asymmetric"):
        edgeq.quantize(np.ones((2, 64), np.float32), qtype, symmetric=False)


@pytest.mark.parametrize("qtype, granularity, packing", [
    ("int4", "row", ""), ("int4", "tensor", ""), ("binary", "group", ""), ("ternary", "tensor", ""),
    ("int8", "channel", ""), ("ternary", "row", "base4"), ("int8", "row", "2bit")])
def test_unsupported_granularity_or_packing(qtype, granularity, packing):
    with pytest.raises(UnsupportedError):
        edgeq.quantize(np.ones((2, 64), np.float32), qtype, granularity=granularity, packing=packing)


@pytest.mark.parametrize("w", [np.ones(8, np.float32), np.ones((2, 2, 8), np.float32),
                               np.ones((0, 8), np.float32), np.ones((2, 0), np.float32),
                               np.array([["a", "b"]]), np.ones((2, 8), complex)])
def test_not_a_weight_matrix(w):
    with pytest.raises(ValueError):
        edgeq.quantize(w, "int8")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_from_components_rejects_mismatched_arrays(case):
    qt = quantize_case(np.ones((2, 64), np.float32), case, 32 if case[1] == "group" else None)
    name = "codes"
    wrong_dtype = dict(qt.data, **{name: qt.data[name].astype(np.int32)})
    wrong_shape = dict(qt.data, **{name: qt.data[name][:1]})
    missing = {n: a for n, a in qt.data.items() if n != "scales"}
    extra = dict(qt.data, mins=qt.data["scales"]) if "mins" not in qt.data else dict(qt.data, zeros=qt.data["scales"])
    for data in (wrong_dtype, wrong_shape, missing, extra):
        with pytest.raises(FormatError):
            from_components(qt.spec, qt.shape, data)
    for shape in [(2, 0), (0, 64), (3, 64), (2, 128), (2, 66)]:  # other sizes, or nothing
        with pytest.raises(FormatError):
            from_components(qt.spec, shape, qt.data)


def test_a_layout_missing_a_method_fails_when_defined():
    """Layouts register at class creation; an unfinished one is refused there, by name."""
    from edgeq.qtypes import base

    with pytest.raises(TypeError, match="int_codes, max_abs_code, quantize"):
        class Unfinished(base.Layout):  # noqa: F841
            name = "unfinished"
            granularities = ("row",)

            def components(self, spec, shape):
                return {}
    assert "unfinished" not in base._REGISTRY
