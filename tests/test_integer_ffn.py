"""Static mode's integer FFN (edgeq.models.bert_integer_ffn): the NumPy reference against
fixedpoint's scalar specification, the Numba kernel bit for bit against the reference, and the
path on a slice of the real all-MiniLM-L6-v2 (taken, close to the float FFN, refused where it
does not apply, bad output scales rejected)."""

import logging

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import edgeq
from edgeq import fixedpoint
from edgeq.calibrate import static
from edgeq.calibrate.recipe import ActivationConfig, Recipe
from edgeq.calibrate.similarity import describe
from edgeq.cli import main as cli_main
from edgeq.errors import FormatError
from edgeq.format import open_packed, save
from edgeq.linear import static_activations
from edgeq.models import bert_integer_ffn as iffn
from edgeq.kernels import backends
from edgeq.models.bert import gelu
from edgeq.qtypes import QTensor
from edgeq.qtypes.base import QuantSpec

from model_slices import minilm_layers

BACKENDS = sorted(name for name, status in backends.available().items() if status == "ok")


# --- arithmetic ---------------------------------------------------------------------------------
def random_case(seed: int, m: int, n: int, k: int, codes: str, exponents: tuple[int, int, int]):
    """int8 codes (x, w), per-channel requantization parameters and a GELU table, from a seed:
    codes "random", "max" (all 127) or "min" (x -127, w 127 and -128); scales 10**exponent."""
    rng = np.random.default_rng(seed)
    if codes == "random":
        xq = rng.integers(-127, 128, (m, k)).astype(np.int8)
        wq = rng.integers(-128, 128, (n, k)).astype(np.int8)
    else:
        xq = np.full((m, k), 127 if codes == "max" else -127, np.int8)
        wq = np.where(rng.random((n, k)) < 0.5, 127, -128 if codes == "min" else 127).astype(np.int8)
    e_x, e_w, e_y = exponents
    s_x = float(10.0 ** e_x)
    s_w = (10.0 ** (e_w + rng.uniform(-1, 1, n))).astype(np.float32)
    s_w[rng.random(n) < 0.1] = 0  # all-zero weight rows
    s_y = float(10.0 ** e_y)
    bias = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)
    bias_q, multiplier, shift = iffn.channel_multipliers(s_x, s_w, s_y, bias)
    table = iffn.activation_table(gelu, s_y, float(10.0 ** rng.uniform(-3, 1)))
    return xq, wq, bias_q, multiplier, shift, table


case_args = dict(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 9), n=st.integers(1, 11),
                 k=st.integers(1, 70), codes=st.sampled_from(["random", "max", "min"]),
                 exponents=st.tuples(st.integers(-30, 3), st.integers(-30, 3), st.integers(-30, 3)))


@settings(max_examples=40, deadline=None)
@given(**case_args)
def test_reference_follows_the_fixedpoint_scalar_spec(seed, m, n, k, codes, exponents):
    xq, wq, bias_q, multiplier, shift, table = random_case(seed, m, n, k, codes, exponents)
    y = iffn.requantize_int16(iffn.accumulate_reference(xq, wq), bias_q, multiplier, shift)
    g = iffn.ffn_up_codes_reference(xq, wq, bias_q, multiplier, shift, table)
    for i in range(m):
        for c in range(n):
            acc = sum(int(a) * int(b) for a, b in zip(xq[i], wq[c]))
            v = min(max(acc + int(bias_q[c]), fixedpoint.INT32_MIN), fixedpoint.INT32_MAX)
            want = fixedpoint.multiply_by_quantized_multiplier(v, int(multiplier[c]), int(shift[c]))
            want = min(max(want, -32767), 32767)
            assert y[i, c] == want
            assert g[i, c] == table[want + 32768]


@settings(max_examples=60, deadline=None)
@given(**case_args, accumulators=st.sampled_from(["products", "int32 extremes"]))
def test_numba_kernel_equals_the_reference_bit_for_bit(seed, m, n, k, codes, exponents, accumulators):
    kernel = pytest.importorskip("edgeq.models.bert_integer_ffn_numba").requantize_codes
    xq, wq, bias_q, multiplier, shift, table = random_case(seed, m, n, k, codes, exponents)
    if accumulators == "products":
        acc = iffn.accumulate_reference(xq, wq).astype(np.int32)
        forms = (acc, acc.astype(np.float32))  # float32: the unit-scale GEMM's exact sums
    else:
        rng = np.random.default_rng(seed)
        acc = rng.integers(-2**31, 2**31, (m, n), dtype=np.int64).astype(np.int32)
        acc[0, 0], acc[-1, -1] = -2**31, 2**31 - 1
        forms = (acc,)
    want = iffn.codes_reference(acc, bias_q, multiplier, shift, table)
    for a in forms:
        out = np.empty((m, n), np.int8)
        assert kernel(a, bias_q, multiplier, shift, table, out) is out
        assert np.array_equal(out, want)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 9), n=st.integers(1, 40),
       k=st.sampled_from([1, 31, 32, 384, iffn.MAX_K_FLOAT32, iffn.MAX_K_FLOAT32 + 1, 1536]),
       codes=st.sampled_from(["random", "max", "min"]))
def test_table_accumulators_are_exact_on_every_backend(seed, m, n, k, codes):
    """The unit-scale GEMM (k <= MAX_K_FLOAT32) and block_sums (beyond) give the exact sums."""
    xq, wq, *_ = random_case(seed, m, n, k, codes, (0, 0, 0))
    w = QTensor(QuantSpec("int8"), (n, k), {"codes": wq, "scales": np.full((n, 1), 0.1, np.float32)})
    want = iffn.accumulate_reference(xq, wq)
    for backend in BACKENDS:
        got = iffn.IntegerFFN._table_accumulator(w, backend)(xq)
        assert np.array_equal(got, want), backend


def test_int16_and_int8_saturate():
    acc = np.array([[0, 1, -1, 2**31 - 1, -2**31, 40_000, -40_000]], np.int64)
    n = acc.shape[1]
    one = np.full(n, 1 << 30, np.int32), np.full(n, 1, np.int32)  # M = 1 exactly
    y = iffn.requantize_int16(acc, np.zeros(n, np.int32), *one)
    assert y.tolist() == [[0, 1, -1, 32767, -32767, 32767, -32767]]
    # the int32 sum saturates before the multiplier: huge bias plus a huge accumulator
    big = np.array([[2**31 - 1]], np.int64)
    assert iffn.requantize_int16(big, np.array([2**31 - 1], np.int32), *(a[:1] for a in one))[0, 0] == 32767
    table = iffn.activation_table(gelu, 1e-3, 1e-4)  # gelu(32.767) / 1e-4 >> 127
    assert table[32767 + 32768] == 127 and table[32768] == 0 and table[-32767 + 32768] == 0
    assert table.dtype == np.int8 and table.shape == (65536,)
    codes = np.arange(-32768, 32768)
    expected = np.clip(np.rint(gelu(codes * 1e-3) / 1e-4), -127, 127)
    assert np.array_equal(table, expected)


def test_channel_multipliers_at_the_edges_of_the_range():
    s_w = np.array([1.0, 1e-20, 1e20, 0.0, 2.0], np.float32)
    bias = np.array([3.0, 0.0, 0.0, 0.5, -2.0])
    bias_q, multiplier, shift = iffn.channel_multipliers(0.25, s_w, 0.5, bias)
    acc = np.array([[10, 10**6, 1, 0, 7]], np.int64)
    y = iffn.requantize_int16(acc, bias_q, multiplier, shift)
    # channel 0: (10 + 12) * 0.5 = 11; 1: M ~ 5e-21 rounds to 0; 2: M ~ 5e19 saturates;
    # 3: s_w = 0 keeps its bias: rint(0.5 / 0.5) = 1; 4: (7 - 4) * 1 = 3
    assert y.tolist() == [[11, 0, 32767, 1, 3]]
    m_real = multiplier * 2.0 ** (shift.astype(np.float64) - 31)
    assert m_real[0] == 0.5 and multiplier[1] == 0


# --- the real MiniLM ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def w8a8_tensor(tmp_path_factory):
    """all-MiniLM-L6-v2 cut to two layers, quantized W8A8 by `edgeq quantize --integer-ffn`:
    static input scales (percentile; per block for attention, per tensor for the FFN) and
    ffn_up output scales: (path of the .eqm, tmp folder)."""
    tmp = tmp_path_factory.mktemp("integer_ffn")
    folder = minilm_layers(tmp / "minilm-2layers", 2)
    out = tmp / "w8a8-tensor.eqm"
    assert cli_main(["quantize", str(folder), "-o", str(out), "--qtype", "int8", "--group-size", "0",
                     "--integer-ffn", "--samples", "8", "--seq-len", "32", "--no-progress"]) == 0
    return out, tmp


TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "Python caches imported modules in sys.modules.",
         "A tuple is an immutable sequence; a list can change.",
         "Integer requantization keeps activations in int8 between layers."]


def cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def copy_with(src, dst, **changes):
    """A copy of .eqm src with tensors replaced (array) or removed (None)."""
    packed = open_packed(src)
    tensors = {n: packed[n] for n in packed}
    for name, value in changes.items():
        name = name.replace("__", ".")
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    return save(dst, tensors, config=packed.config, tokenizer=packed.tokenizer, metadata=packed.metadata)


def test_the_integer_ffn_runs_and_stays_close_to_the_float_ffn(w8a8_tensor):
    path, _ = w8a8_tensor
    packed = open_packed(path)
    s_y = packed["blk.0.ffn_up.output_scale"]
    assert s_y.shape == (1,) and s_y.dtype == np.float32 and 0 < s_y[0] < 1e-2  # T / 32767, T ~ 10
    model = edgeq.load(path)
    assert all(isinstance(layer.integer_ffn, iffn.IntegerFFN) for layer in model.layers)
    integer = model.embed(TEXTS)
    for layer in model.layers:
        layer.integer_ffn = None
    float_ffn = model.embed(TEXTS)
    assert cosines(integer, float_ffn).min() >= 0.99
    assert not np.array_equal(integer, float_ffn)  # it did run something else


def test_the_fast_path_equals_the_reference_on_real_activations(w8a8_tensor):
    model = edgeq.load(w8a8_tensor[0])
    ffn = model.layers[0].integer_ffn
    x = np.random.default_rng(5).standard_normal((37, model.dim)).astype(np.float32)
    fast = ffn.codes_of(x)
    xq, _ = static_activations(x, ffn.s_x, model.dim)
    want = iffn.ffn_up_codes_reference(xq, ffn.codes, ffn.bias_q, ffn.multiplier, ffn.shift, ffn.table)
    assert np.array_equal(fast, want)
    assert np.abs(fast.astype(int)).max() > 20  # real codes, not all zero


def test_files_the_integer_ffn_cannot_run_take_the_float_path(w8a8_tensor, caplog):
    path, tmp = w8a8_tensor
    no_scale = copy_with(path, tmp / "no-output-scale.eqm", blk__0__ffn_up__output_scale=None,
                         blk__1__ffn_up__output_scale=None)
    with caplog.at_level(logging.INFO, logger="edgeq.calibrate.static"):
        model = edgeq.load(no_scale)
    assert all(layer.integer_ffn is None for layer in model.layers)
    assert "output_scale' is missing" in caplog.text
    per_block = copy_with(path, tmp / "per-block.eqm",
                          blk__1__ffn_down__input_scale=np.full(1536 // 32, 0.05, np.float32))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="edgeq.calibrate.static"):
        model = edgeq.load(per_block)
    assert model.layers[0].integer_ffn is not None and model.layers[1].integer_ffn is None
    assert "not per tensor" in caplog.text
    assert np.isfinite(model.embed(TEXTS[:1])).all()


@pytest.mark.parametrize("value, message", [
    (np.array([0.001, 0.002], np.float32), "expected \\(1,\\)"),
    (np.array([0.0], np.float32), "finite and > 0"),
    (np.array([-1e-3], np.float32), "finite and > 0"),
    (np.array([np.nan], np.float32), "finite and > 0"),
    (np.array([np.inf], np.float32), "finite and > 0"),
    (np.array([3], np.int32), "expected a float32 array"),
])
def test_bad_output_scales_are_format_errors(w8a8_tensor, value, message):
    path, tmp = w8a8_tensor
    bad = copy_with(path, tmp / "bad.eqm", blk__1__ffn_up__output_scale=value)
    with pytest.raises(FormatError, match=f"blk.1.ffn_up.output_scale'.*{message}"):
        edgeq.load(bad)


def test_integer_ffn_scales_the_ffn_per_tensor_and_attention_per_block(w8a8_tensor):
    packed = open_packed(w8a8_tensor[0])
    assert Recipe.from_json(packed.metadata["recipe"]).activations.integer_ffn is True
    assert describe(w8a8_tensor[0])[0] == "rtn int8 row, static int8 inputs (percentile), integer FFN"
    for i in range(2):
        assert packed[f"blk.{i}.attn_qkv.input_scale"].shape == (384 // 32,)
        assert packed[f"blk.{i}.attn_output.input_scale"].shape == (384 // 32,)
        assert packed[f"blk.{i}.ffn_up.input_scale"].shape == (1,)
        assert packed[f"blk.{i}.ffn_down.input_scale"].shape == (1,)
    with pytest.raises(ValueError, match="static"):
        ActivationConfig("dynamic", integer_ffn=True)


def test_output_scales_are_calibrated_for_per_tensor_scales_only(w8a8_tensor):
    from edgeq.calibrate import driver

    path, _ = w8a8_tensor
    float_model = edgeq.load(path)  # capture runs it in float (the integer FFN steps aside)
    assert float_model.layers[0].integer_ffn is not None
    groups = driver.input_groups(open_packed(path).config)
    ids = np.arange(1000, 1000 + 2 * 16).reshape(2, 16)
    tensor = static.calibrate_scales(float_model, ids, groups, ActivationConfig("static", "minmax", "tensor"))
    block = static.calibrate_scales(float_model, ids, groups, ActivationConfig("static", "minmax", "block"))
    assert not any(n.endswith(".output_scale") for n in block)
    # s_y = max |x W^T + b| / 32767 over ffn_up's inputs: check it against the layer's own output
    up = float_model.layers[0].up
    rows = []
    sinks = {name: (lambda x: None) for g in groups for name in g.layers}  # every layer in float
    sinks["blk.0.ffn_up.weight"] = lambda x: rows.append(x.copy())
    driver.capture(float_model, ids, sinks)
    h = np.concatenate(rows) @ up.weight.dequantize().T + up.bias
    assert tensor["blk.0.ffn_up.output_scale"][0] == pytest.approx(np.abs(h).max() / 32767, rel=1e-5)
