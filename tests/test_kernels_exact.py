"""Every fast kernel against the numpy reference, generated from the op table.

For each (operation, weight kind) in edgeq.kernels.table.KERNELS and each available backend
other than numpy that registered an entry, hypothesis draws odd shapes, group sizes, one or
many activation rows, extreme codes (built directly from components), all-zero rows and
activations, at 1 and 2 threads. quantize_act, block_sums and xnor must be exactly equal;
matmul must lie within TOLERANCE (the only float tolerance in this file).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeq.kernels import backends, numpy_backend
from edgeq.kernels import reference as ref
from edgeq.kernels.table import KERNELS, OPERATIONS, WEIGHT_KINDS, lookup, weight_kind
from edgeq.qtypes import QuantSpec, from_components, get_layout

backends.available()  # import every backend, so that its kernels are in the table

#: matmul: |y - y_ref| <= TOLERANCE * sum over sub-blocks of |term| (the terms' magnitude; the
#: result itself may cancel to ~0). The products are the reference's, only the float32 sum
#: order differs, and a sum of n terms in float32 is off by at most n * 2**-24 of the magnitude:
#: with the <= 160 sub-blocks drawn here, 9.5e-6. Observed: <= 2e-7 (numba and native).
TOLERANCE = {"matmul": 1e-5}
EXACT_OPS = ("quantize_act", "block_sums", "xnor")
THREADS = (1, 2)
FAST_BACKENDS = sorted(name for name, status in backends.available().items()
                       if status == "ok" and name != "numpy")
CASES = [(op, kind, backend) for (op, kind), impls in sorted(KERNELS.items())
         for backend in sorted(impls) if backend in FAST_BACKENDS]


def cases(*ops):
    return [pytest.param(op, kind, backend, id=f"{op}-{kind}-{backend}")
            for op, kind, backend in CASES if op in ops]


# ---- weights built from components, codes at the extremes ---------------------------------

def kind_spec(kind: str, granularity: str, group: int) -> QuantSpec:
    """The QuantSpec of a weight kind ("ternary_2bit", "int4_asym", ...; table.weight_kind's inverse)."""
    qtype, _, rest = kind.partition("_")
    packing = rest if qtype == "ternary" else ""
    spec = QuantSpec(qtype, granularity, group, rest != "asym", packing)
    assert weight_kind(spec) == kind
    return spec


#: byte patterns of the packed codes: every field 0, every field at its maximum, a mix of the
#: two per byte, or uniform random bytes (int8 codes: -128 is 0x80, 127 is 0x7F)
PATTERNS = ("low", "high", "extremes", "random")


def _code_bytes(kind: str, shape, pattern: str, rng) -> np.ndarray:
    low, high = (0x80, 0x7F) if kind == "int8" else (0x00, 0xFF)
    if pattern == "low":
        return np.full(shape, low, dtype=np.uint8)
    if pattern == "high":
        return np.full(shape, high, dtype=np.uint8)
    if pattern == "extremes":
        return np.where(rng.random(shape) < 0.5, low, high).astype(np.uint8)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@st.composite
def weights(draw, kind: str, max_k: int = 160):
    layout = get_layout(kind.partition("_")[0])
    granularity = draw(st.sampled_from(layout.granularities))
    multiple = layout.packing_multiple(kind_spec(kind, "row", 0).packing)
    if granularity == "group":
        group = draw(st.sampled_from([g for g in (5, 8, 12, 16, 24, 32, 64, 128) if g % multiple == 0]))
        k = group * draw(st.integers(1, max(1, max_k // group)))
    else:
        group = 0
        k = multiple * draw(st.integers(1, max_k // multiple))  # odd lengths where allowed: 37, ...
    n = draw(st.integers(1, 24))
    spec = kind_spec(kind, granularity, group)
    qtype = spec.qtype
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pattern = draw(st.sampled_from(PATTERNS))
    data = {}
    for name, (dtype, shape) in get_layout(qtype).components(spec, (n, k)).items():
        if name == "codes":
            data[name] = _code_bytes(kind, shape, pattern, rng).view(dtype)
        elif name == "zeros":
            data[name] = _code_bytes(kind, shape, draw(st.sampled_from(PATTERNS)), rng)
        else:  # scales, mins: include zero and negative mins
            values = rng.random(shape, dtype=np.float32) * 2
            if name == "mins":
                values -= 1
            values[rng.random(shape) < 0.1] = 0
            data[name] = values.astype(dtype)
    return from_components(spec, (n, k), data)


@st.composite
def int8_activations(draw, k: int):
    m = draw(st.sampled_from([1, 1, 2, 5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pattern = draw(st.sampled_from(["random", "extremes", "zero"]))
    if pattern == "zero":
        return np.zeros((m, k), dtype=np.int8)
    if pattern == "extremes":  # -128 is outside quantize_act's range but inside the bound
        return rng.choice(np.array([-128, 127, -127], dtype=np.int8), size=(m, k))
    xq = rng.integers(-128, 128, (m, k), dtype=np.int8)
    xq[rng.random(m) < 0.3] = 0  # all-zero rows among non-zero ones
    return xq


@st.composite
def float_activations(draw, k: int):
    m = draw(st.sampled_from([1, 1, 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal((m, k)) * draw(st.sampled_from([1e-3, 1.0, 1e3]))).astype(np.float32)
    x[rng.random(m) < 0.3] = 0
    return x


def _sub_block(qt, act_block: int) -> int:
    return ref.sub_block_size(qt.scale_block, act_block)


def _act_blocks(k: int):
    return st.sampled_from(sorted({b for b in (8, 16, 32, 64, k) if k % b == 0}))


def _magnitude(qt, xq, xs, act_block: int) -> np.ndarray:
    """sum over sub-blocks of |term|, the scale of matmul's rounding error (float64)."""
    n, k = qt.shape
    sub = _sub_block(qt, act_block)
    nsub = k // sub
    isum = numpy_backend.block_sums(qt, xq, sub).astype(np.float64)
    w_scales = ref.expand(qt.scales(), n, qt.scale_block, nsub).astype(np.float64)
    x_scales = ref.expand(xs, xq.shape[0], act_block, nsub).astype(np.float64)
    mag = np.abs(isum * x_scales[:, None, :] * w_scales[None]).sum(axis=2)
    mins = qt.mins()
    if mins is not None:
        qsum = ref.act_sums(xq, sub).astype(np.float64)
        w_mins = ref.expand(mins, n, qt.scale_block, nsub).astype(np.float64)
        mag += np.abs(qsum[:, None, :] * x_scales[:, None, :] * w_mins[None]).sum(axis=2)
    return mag


# ---- the generated tests -------------------------------------------------------------------

def test_table_is_complete_for_every_fast_backend():
    """A fast backend may leave gaps (they fall back to numpy), but numba must cover the table."""
    assert "numba" in FAST_BACKENDS or backends.available()["numba"] != "ok"
    if "numba" in FAST_BACKENDS:
        for kind in WEIGHT_KINDS:
            for op in ("block_sums", "matmul"):
                assert lookup(op, kind, "numba") is not None, (op, kind)
        assert lookup("quantize_act", "*", "numba") is not None
        assert lookup("xnor", "binary", "numba") is not None
    assert set(TOLERANCE) | set(EXACT_OPS) == set(OPERATIONS)
    if "native" in FAST_BACKENDS:  # every layout has C kernels (int3 / int2 included)
        for kind in WEIGHT_KINDS:
            assert lookup("matmul", kind, "native") is not None, kind


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("op,kind,backend", cases("block_sums"))
@settings(max_examples=25)
@given(data=st.data())
def test_block_sums_exact(op, kind, backend, threads, data):
    qt = data.draw(weights(kind))
    k = qt.shape[1]
    sub = _sub_block(qt, data.draw(_act_blocks(k)))
    xq = data.draw(int8_activations(k))
    expected = numpy_backend.block_sums(qt, xq, sub)
    with backends.thread_count(threads):
        got = KERNELS[(op, kind)][backend](qt, xq, sub)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("op,kind,backend", cases("matmul"))
@settings(max_examples=25)
@given(data=st.data())
def test_matmul_within_tolerance(op, kind, backend, threads, data):
    qt = data.draw(weights(kind))
    k = qt.shape[1]
    act_block = data.draw(_act_blocks(k))
    xq, xs = ref.quantize_activations(data.draw(float_activations(k)), act_block)
    expected = numpy_backend.matmul(qt, xq, xs, act_block)
    with backends.thread_count(threads):
        got = KERNELS[(op, kind)][backend](qt, xq, xs, act_block)
    assert got.dtype == np.float32 and got.shape == expected.shape
    bound = TOLERANCE["matmul"] * _magnitude(qt, xq, xs, act_block)
    excess = np.abs(got.astype(np.float64) - expected) - bound
    assert (excess <= 0).all(), f"worst excess {excess.max():.3g} at {np.unravel_index(excess.argmax(), excess.shape)}"


@st.composite
def float_rows(draw):
    """Blocks with ties (x = j + 0.5 where the scale is exactly 1), subnormals, huge values, zeros."""
    block = draw(st.sampled_from([1, 7, 16, 32, 37]))
    nblocks = draw(st.integers(1, 4))
    m = draw(st.sampled_from([1, 2, 4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "ties", "tiny", "huge", "zero", "mixed"]))
    shape = (m, block * nblocks)
    if kind == "ties":  # absmax 127 gives s = 1 exactly, so j + 0.5 is a rounding tie
        x = (rng.integers(-127, 127, shape) + 0.5).astype(np.float32)
        x[:, ::block] = 127
    elif kind == "tiny":
        x = (rng.standard_normal(shape) * 1e-40).astype(np.float32)  # subnormal float32
    elif kind == "huge":
        x = (rng.standard_normal(shape) * 1e37).astype(np.float32)
    elif kind == "zero":
        x = np.zeros(shape, dtype=np.float32)
    elif kind == "mixed":
        x = (rng.standard_normal(shape) * rng.choice([0.0, 1e-30, 1.0, 1e30], shape)).astype(np.float32)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    return x, block


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("op,kind,backend", cases("quantize_act"))
@settings(max_examples=60)
@given(case=float_rows())
def test_quantize_act_exact(op, kind, backend, threads, case):
    x, block = case
    q_ref, s_ref = ref.quantize_activations(x, block)
    with backends.thread_count(threads):
        q, s = KERNELS[(op, kind)][backend](x, block)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(s.view(np.int32), s_ref.view(np.int32))  # bit for bit


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("op,kind,backend", cases("xnor"))
@settings(max_examples=40)
@given(k=st.integers(1, 300), n=st.integers(1, 20), m=st.sampled_from([1, 3, 9]),
       pattern=st.sampled_from(PATTERNS), seed=st.integers(0, 2**32 - 1))
def test_xnor_exact(op, kind, backend, threads, k, n, m, pattern, seed):
    rng = np.random.default_rng(seed)
    kb = -(-k // 8)
    w_bits = _code_bytes("binary", (n, kb), pattern, rng)
    x_bits = _code_bytes("binary", (m, kb), "random", rng)
    expected = ref.xnor_dot(w_bits, x_bits, k)
    with backends.thread_count(threads):
        got = KERNELS[(op, kind)][backend](w_bits, x_bits, k)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


# ---- the int32 accumulator bound, at its edge --------------------------------------------------

@pytest.mark.parametrize("backend", [b for b in FAST_BACKENDS if lookup("block_sums", "int8", b)])
@pytest.mark.parametrize("k,acc", [(1 << 16, np.int32), (1 << 17, np.int64)])
def test_block_sums_at_the_int32_bound(backend, k, acc):
    """k * 128 * 128 is 2**30 (int32) or 2**31 (int64 by the bound); both must match exactly."""
    spec = QuantSpec("int8", "row")
    codes = np.full((2, k), -128, dtype=np.int8)
    codes[1, ::3] = 127
    qt = from_components(spec, (2, k), {"codes": codes, "scales": np.ones((2, 1), np.float32)})
    xq = np.full((1, k), -128, dtype=np.int8)
    expected = numpy_backend.block_sums(qt, xq, k)
    assert expected.dtype == acc and expected[0, 0, 0] == k * 128 * 128
    got = KERNELS[("block_sums", "int8")][backend](qt, xq, k)
    assert got.dtype == acc
    np.testing.assert_array_equal(got, expected)
