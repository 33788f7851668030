"""int3 and int2 (edgeq.qtypes.lowbit): the layout docstring's bytes, code ranges, bits per
weight and error bound, bit-order probes, and the integer linear layer on them."""

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import edgeq
from edgeq.errors import FormatError
from edgeq.format import open_packed, save
from edgeq.kernels import reference as ref
from edgeq.kernels.table import WEIGHT_KINDS, weight_kind
from edgeq.qtypes import QuantSpec, from_components, get_layout

from tolerances import DEQUANT_ATOL, dequant_slack, linear_bound

BITS = {"int3": 3, "int2": 2}
MULTIPLE = {"int3": 8, "int2": 4}
CASES = [(q, s) for q in BITS for s in (True, False)]
IDS = [f"{q}-{'sym' if s else 'asym'}" for q, s in CASES]


@st.composite
def matrices(draw, qtype, max_rows=4):
    """(w float32 (rows, k), group size); |w| <= 1e4 keeps float16 scales finite."""
    group = MULTIPLE[qtype] * draw(st.integers(1, 8))
    rows, k = draw(st.integers(1, max_rows)), group * draw(st.integers(1, 4))
    base = draw(hnp.arrays(np.float32, (rows, k), elements=st.floats(-1, 1, width=32)))
    return (base.astype(np.float64) * 10.0 ** draw(st.integers(-6, 4))).astype(np.float32), group


def expand(qt, per_group):
    return np.repeat(per_group.astype(np.float64), qt.spec.group_size, axis=1)


# --- round trip and bound ------------------------------------------------------------------------
@pytest.mark.parametrize("qtype,symmetric", CASES, ids=IDS)
@given(data=st.data())
def test_dequantize_within_half_a_step(qtype, symmetric, data):
    w, group = data.draw(matrices(qtype))
    qt = edgeq.quantize(w, qtype, group_size=group, symmetric=symmetric)
    deq = qt.dequantize()
    assert deq.dtype == np.float32 and deq.shape == w.shape
    d = expand(qt, qt.scales())
    mins = qt.mins()
    magnitude = np.abs(w) + np.abs(deq) + (0 if mins is None else 2 * np.abs(expand(qt, mins)))
    err = np.abs(w.astype(np.float64) - deq)
    assert (err <= d / 2 + dequant_slack(magnitude) + DEQUANT_ATOL).all()


@pytest.mark.parametrize("qtype,symmetric", CASES, ids=IDS)
@given(data=st.data())
def test_codes_in_range_sizes_and_bits_per_weight(qtype, symmetric, data):
    w, group = data.draw(matrices(qtype))
    qt = edgeq.quantize(w, qtype, group_size=group, symmetric=symmetric)
    rows, k = w.shape
    b = BITS[qtype]
    assert qt.data["codes"].shape == (rows, k * b // 8) and qt.data["codes"].dtype == np.uint8
    assert qt.data["scales"].shape == (rows, k // group) and qt.data["scales"].dtype == np.float16
    assert ("mins" in qt.data) == (not symmetric)
    assert math.isclose(qt.bits_per_weight, b + (16 if symmetric else 32) / group)  # the docstring
    c = qt.int_codes()
    lo, hi = (-(2 ** (b - 1) - 1), 2 ** (b - 1) - 1) if symmetric else (0, 2 ** b - 1)
    assert c.min() >= lo and c.max() <= hi
    # round trip through the components: from_components accepts exactly what quantize made
    again = from_components(qt.spec, qt.shape, qt.data)
    assert np.array_equal(again.int_codes(), c)


def test_documented_bits_per_weight_examples():
    w = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    expected = {("int3", 32, True): 3.5, ("int3", 32, False): 4.0, ("int2", 32, True): 2.5,
                ("int2", 32, False): 3.0, ("int3", 128, True): 3.125, ("int3", 128, False): 3.25,
                ("int2", 128, True): 2.125, ("int2", 128, False): 2.25}
    for (qtype, group, symmetric), bpw in expected.items():
        assert edgeq.quantize(w, qtype, group_size=group, symmetric=symmetric).bits_per_weight == bpw


@pytest.mark.parametrize("qtype,symmetric", CASES, ids=IDS)
def test_every_grid_point_comes_back_exactly(qtype, symmetric):
    """Weights already on the grid (d a power of two, codes at both extremes) are exact."""
    b = BITS[qtype]
    codes = np.arange(-(2 ** (b - 1) - 1), 2 ** (b - 1)) if symmetric else np.arange(2 ** b)
    group = 8 * MULTIPLE[qtype]
    row = np.resize(codes, group).astype(np.float32) * np.float32(0.25)
    w = np.stack([row, -row[::-1] if symmetric else row + 1]).astype(np.float32)
    qt = edgeq.quantize(w, qtype, group_size=group, symmetric=symmetric)
    assert np.array_equal(qt.dequantize(), w)


@pytest.mark.parametrize("qtype,symmetric", CASES, ids=IDS)
def test_zero_and_constant_groups(qtype, symmetric):
    group = 2 * MULTIPLE[qtype]
    w = np.zeros((2, 2 * group), dtype=np.float32)
    w[1, group:] = 0.375  # a constant group: exact in float16
    qt = edgeq.quantize(w, qtype, group_size=group, symmetric=symmetric)
    assert np.array_equal(qt.dequantize(), w)


# --- bit order ------------------------------------------------------------------------------------
def one_hot_bytes(qtype, group, position, u):
    """Packed bytes of one group whose codes are all 0 except u at `position` (asymmetric: the
    stored code is u itself)."""
    q = np.zeros((1, group), dtype=np.int16)
    q[0, position] = u
    spec = QuantSpec(qtype, "group", group, False)
    ones = np.ones((1, 1), dtype=np.float16)
    return get_layout(qtype).from_codes(spec, q, ones, ones)["codes"][0]


@pytest.mark.parametrize("group", [4, 8, 32, 64])
def test_int2_crumb_order_one_hot(group):
    for position in range(group):
        for u in (1, 2, 3):
            packed = one_hot_bytes("int2", group, position, u)
            expected = np.zeros(group // 4, dtype=np.uint8)
            expected[position % (group // 4)] = u << (2 * (position // (group // 4)))
            assert np.array_equal(packed, expected), (position, u)


@pytest.mark.parametrize("group", [8, 16, 32, 128])
def test_int3_low_crumbs_then_high_bit_planes_one_hot(group):
    low_bytes, high_bytes = group // 4, group // 8
    for position in range(group):
        for u in range(1, 8):
            packed = one_hot_bytes("int3", group, position, u)
            assert packed.shape == (low_bytes + high_bytes,)
            expected = np.zeros(low_bytes + high_bytes, dtype=np.uint8)
            expected[position % low_bytes] = (u & 3) << (2 * (position // low_bytes))
            expected[low_bytes + position % high_bytes] |= (u >> 2) << (position // high_bytes)
            assert np.array_equal(packed, expected), (position, u)


@pytest.mark.parametrize("qtype", list(BITS))
def test_groups_are_packed_one_after_another(qtype):
    group = 2 * MULTIPLE[qtype]
    q = np.zeros((1, 3 * group), dtype=np.int16)
    q[0, group:2 * group] = 2 ** BITS[qtype] - 1  # only the middle group is all ones
    spec = QuantSpec(qtype, "group", group, False)
    ones = np.ones((1, 3), dtype=np.float16)
    packed = get_layout(qtype).from_codes(spec, q, ones, ones)["codes"][0]
    per_group = group * BITS[qtype] // 8
    assert not packed[:per_group].any() and not packed[2 * per_group:].any()
    assert (packed[per_group:2 * per_group] == 0xFF).all()


@pytest.mark.parametrize("qtype,symmetric", CASES, ids=IDS)
@given(data=st.data())
def test_any_stored_bytes_read_as_codes_in_the_accumulator_bound(qtype, symmetric, data):
    """Imported bytes need not come from our quantizer: every byte pattern must decode, with
    |code| <= max_abs_code (the kernels' overflow bound) and a pack/unpack round trip."""
    group = MULTIPLE[qtype] * data.draw(st.integers(1, 4))
    rows, k = data.draw(st.integers(1, 3)), group * data.draw(st.integers(1, 3))
    spec = QuantSpec(qtype, "group", group, symmetric)
    layout = get_layout(qtype)
    shapes = layout.components(spec, (rows, k))
    comps = {name: (data.draw(hnp.arrays(np.uint8, shape)) if name == "codes"
                    else np.ones(shape, dtype=dtype)) for name, (dtype, shape) in shapes.items()}
    qt = from_components(spec, (rows, k), comps)
    c = qt.int_codes()
    assert np.abs(c).max(initial=0) <= layout.max_abs_code(spec)
    repacked = layout.from_codes(spec, c, comps["scales"], comps.get("mins"))
    assert np.array_equal(repacked["codes"], comps["codes"])


# --- shapes and errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("qtype,k,group", [("int3", 64, 12), ("int3", 48, 32), ("int2", 64, 6),
                                           ("int2", 40, 16), ("int3", 64, 0)])
def test_invalid_group_sizes(qtype, k, group):
    with pytest.raises(ValueError):
        edgeq.quantize(np.ones((2, k), dtype=np.float32), qtype, group_size=group)


@pytest.mark.parametrize("qtype", list(BITS))
def test_only_grouped_granularity(qtype):
    with pytest.raises(ValueError):
        edgeq.quantize(np.ones((2, 64), dtype=np.float32), qtype, granularity="row")


def test_lying_component_shapes_are_format_errors():
    qt = edgeq.quantize(np.ones((2, 64), dtype=np.float32), "int3", group_size=32)
    bad = dict(qt.data, codes=qt.data["codes"][:, :-1])
    with pytest.raises(FormatError):
        from_components(qt.spec, qt.shape, bad)


# --- kernels and file -----------------------------------------------------------------------------
def test_registered_as_weight_kinds():
    for qtype, symmetric in CASES:
        kind = weight_kind(QuantSpec(qtype, "group", 32, symmetric))
        assert kind in WEIGHT_KINDS


@pytest.mark.parametrize("qtype,symmetric", CASES, ids=IDS)
@pytest.mark.parametrize("act_block", [None, 8, 32])
def test_integer_linear_matches_dequantized_matmul(qtype, symmetric, act_block):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 128)).astype(np.float32)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    qt = edgeq.quantize(w, qtype, group_size=32, symmetric=symmetric)
    y = edgeq.linear(x, qt, backend="numpy", act_block=act_block)
    block = 128 if act_block is None else act_block
    _, xs = ref.quantize_activations(x, block)
    deq = qt.dequantize()
    mag = np.abs(deq.astype(np.float64))
    if qt.mins() is not None:
        mag += 2 * np.abs(expand(qt, qt.mins()))
    bound = linear_bound(x, deq, mag, xs, block, math.gcd(32, block), qt.layout.max_abs_code(qt.spec))
    assert (np.abs(y - x.astype(np.float64) @ deq.astype(np.float64).T) <= bound).all()


@pytest.mark.parametrize("qtype,symmetric", CASES, ids=IDS)
def test_packed_file_round_trip(qtype, symmetric, tmp_path):
    w = np.random.default_rng(4).standard_normal((5, 64)).astype(np.float32)
    qt = edgeq.quantize(w, qtype, group_size=16 if qtype == "int3" else 8, symmetric=symmetric)
    path = save(tmp_path / "m.eqm", {"w": qt})
    loaded = open_packed(path)["w"]
    assert loaded.spec == qt.spec
    for name, a in qt.data.items():
        assert np.array_equal(loaded.data[name], a)
