"""The native C backend: golden replay in C (host, ASan+UBSan, aarch64 under qemu), SIMD
variants agreeing bit for bit, and the Python-side validation that guards every C call."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeq.errors import FormatError
from edgeq.kernels import numpy_backend
from edgeq.kernels import reference as ref
from edgeq.qtypes import QTensor, QuantSpec, quantize

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "native"
GOLDEN = ROOT / "tests" / "golden" / "native_kernels.bin"
sys.path.insert(0, str(ROOT / "tests" / "golden"))
import make_native_golden  # noqa: E402

try:
    from edgeq.kernels import native_backend as nb
except ImportError:  # the extension was not built here
    nb = None
needs_native = pytest.mark.skipif(nb is None, reason="edgeq._native is not built "
                                  "(pip install -e . with a C compiler)")


def _make(target: str, build: Path, **env) -> subprocess.CompletedProcess:
    # two compilers at a time: the two SIMD files take most of the build
    jobs = f"-j{min(2, os.cpu_count() or 1)}"
    return subprocess.run(["make", "-s", jobs, "-C", str(NATIVE), f"BUILD={build}", target],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def _assert_driver_passed(proc: subprocess.CompletedProcess, variants: int) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert " 0 failed" in out.splitlines()[-1], out
    assert out.count("cases passed, 0 failed") >= variants, out


# ---- C driver against the NumPy golden file ---------------------------------------------------

def test_golden_file_is_current():
    """The golden file is what the reference produces today (regenerate it if this fails)."""
    assert GOLDEN.exists(), "run python tests/golden/make_native_golden.py"
    assert GOLDEN.read_bytes() == make_native_golden.golden_bytes(), \
        "stale: run python tests/golden/make_native_golden.py"


needs_make_gcc = pytest.mark.skipif(shutil.which("make") is None or shutil.which("gcc") is None,
                                    reason="needs make and gcc")


@pytest.fixture(scope="module")
def host_build(tmp_path_factory):
    return tmp_path_factory.mktemp("native-host")


@needs_make_gcc
def test_driver_host_every_variant(host_build):
    proc = _make("check", host_build)
    variants = proc.stdout.splitlines()[0].split(":")[1].split() if proc.stdout else []
    _assert_driver_passed(proc, len(variants))


@needs_make_gcc
def test_driver_detects_a_wrong_golden_value(host_build, tmp_path):
    bad = tmp_path / "bad.bin"
    data = bytearray(GOLDEN.read_bytes())
    data[-1] ^= 0x01  # last byte of the last expected xnor result
    bad.write_bytes(bytes(data))
    proc = _make("check", host_build, GOLDEN=str(bad))
    assert proc.returncode != 0
    assert "FAIL" in proc.stdout


def _sanitizers_work(tmp_path: Path) -> bool:
    src = tmp_path / "probe.c"
    src.write_text("int main(void) { return 0; }\n")
    return subprocess.run(["gcc", "-fsanitize=address,undefined", str(src), "-o",
                           str(tmp_path / "probe")], capture_output=True).returncode == 0


@needs_make_gcc
def test_driver_under_asan_and_ubsan(tmp_path):
    if not _sanitizers_work(tmp_path):
        pytest.skip("gcc here has no libasan/libubsan")
    proc = _make("check-asan", tmp_path, CC="gcc")
    _assert_driver_passed(proc, 1)
    assert "runtime error" not in proc.stderr and "AddressSanitizer" not in proc.stderr


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")
                         and shutil.which("make")),
                    reason="needs gcc-aarch64-linux-gnu and qemu-user "
                           "(apt-get install -y gcc-aarch64-linux-gnu qemu-user)")
def test_driver_aarch64_under_qemu(tmp_path):
    proc = _make("check-arm", tmp_path)
    # neon + neon_dotprod, then detection on -cpu max (3 variants), then cortex-a57 (no SDOT)
    _assert_driver_passed(proc, 6)
    assert "cpu supports: scalar neon neon_dotprod" in proc.stdout
    assert "cpu supports: scalar neon\n" in proc.stdout


# ---- variants and dispatch ------------------------------------------------------------------------

@needs_native
def test_variant_api():
    assert nb.variants()[0] == "scalar"
    assert nb.simd_variant() in nb.variants()
    with pytest.raises(ValueError, match="unknown SIMD variant"):
        nb.use_variant("mmx")


@needs_native
def test_edgeq_simd_forces_a_variant():
    code = ("from edgeq.kernels import backends; import sys; print(backends.available()['native']);"
            "from edgeq.kernels import native_backend as nb; print(nb.simd_variant())")
    run = lambda value: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       env={**os.environ, "EDGEQ_SIMD": value}, timeout=60).stdout
    assert run("scalar").split() == ["ok", "scalar"]
    assert "EDGEQ_SIMD=bogus" in run("bogus")


KIND_SPECS = [
    ("int8", "row", 0, True, ""), ("int8", "group", 32, True, ""), ("int8", "tensor", 0, True, ""),
    ("int8", "group", 32, False, ""), ("int8", "row", 0, False, ""),
    ("int4", "group", 32, True, ""), ("int4", "group", 64, False, ""), ("int4", "group", 16, True, ""),
    ("ternary", "row", 0, True, "2bit"), ("ternary", "group", 64, True, "2bit"),
    ("ternary", "row", 0, True, "base3"), ("ternary", "group", 64, True, "base3"),
    ("binary", "row", 0, True, ""), ("pow2", "row", 0, True, ""), ("pow2", "group", 32, True, ""),
    ("int3", "group", 32, True, ""), ("int3", "group", 64, False, ""), ("int3", "group", 8, True, ""),
    ("int2", "group", 64, True, ""), ("int2", "group", 32, False, ""), ("int2", "group", 96, True, ""),
    # planes of 8 + 4, 16 + 8 and 32 + 16 bytes: every partial-vector step of the x86 decoders
    ("int3", "group", 96, False, ""), ("int3", "group", 192, True, ""), ("int2", "group", 192, False, ""),
]


def random_qtensor(rng, spec_tuple, rows, k) -> QTensor:
    return make_native_golden.random_qtensor(rng, *spec_tuple, rows, k)


@needs_native
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(KIND_SPECS), rows=st.sampled_from([1, 5, 9, 16, 35]),
       groups=st.integers(1, 6), m=st.sampled_from([1, 2, 3, 8, 13]),
       act=st.sampled_from([32, None]), seed=st.integers(0, 2**32 - 1))
def test_every_variant_matches_reference_on_raw_bytes(spec, rows, groups, m, act, seed):
    """Random component bytes (all code values) and int8 activations including -128; m >= 8
    reaches the packed-panel GEMM (16 weight rows), 35 rows a partial last panel."""
    rng = np.random.default_rng(seed)
    k = groups * 192  # a multiple of every group size above
    qt = random_qtensor(rng, spec, rows, k)
    xq = rng.integers(-128, 128, (m, k), dtype=np.int16).astype(np.int8)
    act_block = act or k
    xs = rng.random((m, k // act_block), dtype=np.float32)
    sub = ref.sub_block_size(qt.scale_block, act_block)
    want_sums = numpy_backend.block_sums(qt, xq, sub)
    want_y = numpy_backend.matmul(qt, xq, xs, act_block)
    first = None
    try:
        for variant in nb.variants():
            nb.use_variant(variant)
            np.testing.assert_array_equal(nb.block_sums(qt, xq, sub), want_sums, err_msg=variant)
            y = nb.matmul(qt, xq, xs, act_block)
            np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5 * np.abs(want_y).max())
            if first is None:
                first = y
            assert y.tobytes() == first.tobytes(), f"{variant} differs in bits from scalar"
    finally:
        nb.use_variant(nb.variants()[-1])


@needs_native
def test_quantize_act_bit_exact_on_every_variant():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 200)) * 10.0 ** rng.integers(-30, 30, (4, 1))).astype(np.float32)
    x[0, :40] = np.arange(-20, 20) * 0.5  # ties
    x[1, :40] = 0.0
    want_q, want_s = ref.quantize_activations(x, 40)
    try:
        for variant in nb.variants():
            nb.use_variant(variant)
            q, s = nb.quantize_act(x, 40)
            np.testing.assert_array_equal(q, want_q, err_msg=variant)
            assert s.tobytes() == want_s.tobytes(), variant
    finally:
        nb.use_variant(nb.variants()[-1])


@needs_native
def test_threads_split_rows_without_changing_results():
    rng = np.random.default_rng(5)
    qt = quantize(rng.standard_normal((300, 4096)).astype(np.float32), "int4")
    for m in (2, 20):  # m = 20: packed panels split over threads in whole panels
        xq, xs = ref.quantize_activations(rng.standard_normal((m, 4096)).astype(np.float32), 32)
        nb.set_threads(1)
        try:
            one = nb.matmul(qt, xq, xs, 32)
            nb.set_threads(2)
            assert nb.matmul(qt, xq, xs, 32).tobytes() == one.tobytes()
        finally:
            nb.set_threads(None)


@needs_native
@pytest.mark.parametrize("qtype, symmetric", [("int3", True), ("int3", False), ("int2", True),
                                              ("int2", False)])
def test_low_bit_kinds_match_the_reference_at_1_and_2_threads(qtype, symmetric):
    """int3 / int2 (decoded into scratch; int2 also through the ternary crumb kernels) from
    the quantizer, on rows split over threads: the reference's bits at either thread count."""
    rng = np.random.default_rng(11)
    qt = quantize(rng.standard_normal((200, 1024)).astype(np.float32), qtype, group_size=64,
                  symmetric=symmetric)
    for m in (1, 9):  # GEMV, and the packed panels where the CPU has them
        xq, xs = ref.quantize_activations(rng.standard_normal((m, 1024)).astype(np.float32), 32)
        want = numpy_backend.matmul(qt, xq, xs, 32)
        try:
            nb.set_threads(1)
            one = nb.matmul(qt, xq, xs, 32)
            nb.set_threads(2)
            assert nb.matmul(qt, xq, xs, 32).tobytes() == one.tobytes()
        finally:
            nb.set_threads(None)
        np.testing.assert_allclose(one, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        np.testing.assert_array_equal(nb.block_sums(qt, xq, 32), numpy_backend.block_sums(qt, xq, 32))


@needs_native
def test_idle_workers_sleep():
    """After a burst of threaded calls the pool's workers block instead of spinning: the
    process uses (almost) no CPU while the caller sleeps."""
    rng = np.random.default_rng(9)
    qt = quantize(rng.standard_normal((576, 576)).astype(np.float32), "int4")
    xq, xs = ref.quantize_activations(rng.standard_normal((1, 576)).astype(np.float32), 32)
    nb.set_threads(2)
    try:
        for _ in range(200):
            nb.matmul(qt, xq, xs, 32)
        assert nb.pool_workers() >= 1
        before = os.times()
        time.sleep(0.5)
        after = os.times()
    finally:
        nb.set_threads(None)
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.1, f"{used:.2f} s of CPU during a 0.5 s sleep: idle workers spin"


@needs_native
def test_int32_bound_falls_back_to_numpy():
    k = 1 << 17  # 2**17 * 128 * 128 > 2**31 - 1: the reference needs int64
    rng = np.random.default_rng(6)
    qt = quantize(rng.standard_normal((2, k)).astype(np.float32), "int8")
    xq = np.full((1, k), -128, dtype=np.int8)
    sums = nb.block_sums(qt, xq, k)
    assert sums.dtype == np.int64
    np.testing.assert_array_equal(sums, numpy_backend.block_sums(qt, xq, k))


@needs_native
def test_xnor_matches_reference():
    rng = np.random.default_rng(7)
    for k in (1, 9, 64, 1000, 4100):
        kb = -(-k // 8)
        for n, m in ((6, 3), (9, 7)):  # 4 x 4 register tiles and the rows left over
            w = rng.integers(0, 256, (n, kb), dtype=np.uint8)
            x = rng.integers(0, 256, (m, kb), dtype=np.uint8)
            np.testing.assert_array_equal(nb.xnor(w, x, k), ref.xnor_dot(w, x, k))


# ---- validation before any C call -------------------------------------------------------------

@pytest.fixture
def int4_case():
    rng = np.random.default_rng(8)
    qt = quantize(rng.standard_normal((4, 64)).astype(np.float32), "int4", symmetric=False)
    xq, xs = ref.quantize_activations(rng.standard_normal((2, 64)).astype(np.float32), 32)
    return qt, xq, xs


def _replace(qt: QTensor, **arrays) -> QTensor:
    data = dict(qt.data)
    for name, a in arrays.items():
        if a is None:
            data.pop(name)
        else:
            data[name] = a
    return QTensor(qt.spec, qt.shape, data)


@needs_native
@pytest.mark.parametrize("change, message", [
    (lambda qt: {"codes": qt.data["codes"][:, :-1].copy()}, "codes"),              # truncated row
    (lambda qt: {"codes": qt.data["codes"][:-1].copy()}, "codes"),                 # missing row
    (lambda qt: {"codes": qt.data["codes"].view(np.int8)}, "codes"),               # wrong dtype
    (lambda qt: {"codes": np.asfortranarray(qt.data["codes"])}, "C-contiguous"),
    (lambda qt: {"codes": list(qt.data["codes"])}, "numpy array"),
    (lambda qt: {"scales": qt.data["scales"].astype(np.float32)}, "scales"),
    (lambda qt: {"scales": qt.data["scales"][:, :1].copy()}, "scales"),
    (lambda qt: {"mins": None}, "components"),
    (lambda qt: {"zeros": qt.data["scales"].view(np.uint8)}, "components"),
])
def test_bad_weight_components_raise_format_error(int4_case, change, message):
    qt, xq, xs = int4_case
    bad = _replace(qt, **change(qt))
    with pytest.raises(FormatError, match=message):
        nb.matmul(bad, xq, xs, 32)
    with pytest.raises(FormatError, match=message):
        nb.block_sums(bad, xq, 32)


@needs_native
def test_bad_spec_raises_format_error(int4_case):
    qt, xq, xs = int4_case
    lying = QTensor(QuantSpec("int4", "group", 48, False), qt.shape, qt.data)  # 48 does not divide 64
    with pytest.raises(FormatError):
        nb.matmul(lying, xq, xs, 32)
    wrong_shape = QTensor(qt.spec, (4, 128), qt.data)
    with pytest.raises(FormatError):
        nb.matmul(wrong_shape, xq, xs, 32)


BAD_CALLS = {
    "xq dtype": lambda qt, xq, xs: nb.matmul(qt, xq.astype(np.int16), xs, 32),
    "xq length": lambda qt, xq, xs: nb.matmul(qt, xq[:, :32], xs, 32),
    "xq order": lambda qt, xq, xs: nb.matmul(qt, np.asfortranarray(xq), xs, 32),
    "xs shape": lambda qt, xq, xs: nb.matmul(qt, xq, xs[:, :1].copy(), 32),
    "xs dtype": lambda qt, xq, xs: nb.matmul(qt, xq, xs.astype(np.float64), 32),
    "act_block not dividing": lambda qt, xq, xs: nb.matmul(qt, xq, xs, 24),
    "act_block 0": lambda qt, xq, xs: nb.matmul(qt, xq, xs, 0),
    "act_block bool": lambda qt, xq, xs: nb.matmul(qt, xq, xs, True),
    "sub 0": lambda qt, xq, xs: nb.block_sums(qt, xq, 0),
    "sub not dividing": lambda qt, xq, xs: nb.block_sums(qt, xq, 48),
    "xq 1-D": lambda qt, xq, xs: nb.block_sums(qt, xq[0], 32),
    "x float64": lambda qt, xq, xs: nb.quantize_act(np.zeros((2, 64)), 32),
    "block not dividing": lambda qt, xq, xs: nb.quantize_act(np.zeros((2, 64), np.float32), 48),
    "x nan": lambda qt, xq, xs: nb.quantize_act(np.full((1, 32), np.nan, np.float32), 32),
    "x 1-D": lambda qt, xq, xs: nb.quantize_act(np.zeros(64, np.float32), 32),
    "xnor kb": lambda qt, xq, xs: nb.xnor(np.zeros((2, 8), np.uint8), np.zeros((1, 7), np.uint8), 64),
    "xnor k": lambda qt, xq, xs: nb.xnor(np.zeros((2, 8), np.uint8), np.zeros((1, 8), np.uint8), 0),
    "xnor dtype": lambda qt, xq, xs: nb.xnor(np.zeros((2, 8), np.int8), np.zeros((1, 8), np.uint8), 64),
    "not a qtensor": lambda qt, xq, xs: nb.matmul(qt.data, xq, xs, 32),
}


@needs_native
@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_arguments_raise_value_error(int4_case, name):
    with pytest.raises(ValueError):
        BAD_CALLS[name](*int4_case)


@needs_native
def test_empty_batch_and_read_only_weights(int4_case):
    qt, xq, xs = int4_case
    for a in qt.data.values():
        a.flags.writeable = False  # memory-mapped weights are read-only
    assert nb.matmul(qt, xq[:0], xs[:0], 32).shape == (0, 4)
    np.testing.assert_allclose(nb.matmul(qt, xq, xs, 32), numpy_backend.matmul(qt, xq, xs, 32),
                               rtol=1e-5, atol=1e-6)


# ---- install without a compiler -----------------------------------------------------------------

@pytest.mark.slow
def test_wheel_builds_without_a_compiler(tmp_path):
    """CC pointing nowhere: the wheel still builds (without edgeq._native)."""
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the work tree
    skip = shutil.ignore_patterns("build", "*.egg-info", "*.so", "__pycache__", ".*")
    for name in ("edgeq", "converters", "native"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {**os.environ, "CC": "/nonexistent/cc", "LDSHARED": "/nonexistent/cc -shared"}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels = list(tmp_path.glob("edgeq-*.whl"))
    assert wheels
    import zipfile
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "edgeq/kernels/native_backend.py" in names
    assert not any("_native" in n and n.endswith((".so", ".pyd")) for n in names)


# ---- prepared matrices: the panels packed once ----------------------------------------------

PREPARED_SPECS = [("int8", "row", 0, True, ""), ("int8", "group", 32, True, ""),
                  ("int8", "row", 0, False, ""), ("int8", "group", 64, False, ""),
                  ("int4", "group", 32, True, ""), ("int4", "group", 64, False, "")]


def _prepared_or_skip(qt, act_block):
    prepared = nb.prepare(qt, act_block)
    if prepared is None:
        pytest.skip(f"no panel path on the {nb.simd_variant()} variant")
    return prepared


@needs_native
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(PREPARED_SPECS), rows=st.sampled_from([1, 5, 17, 35]),
       k=st.sampled_from([64, 192, 320]), m=st.sampled_from([1, 2, 3, 7, 8, 13]),
       act=st.sampled_from([32, 64]), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**32 - 1))
def test_prepared_matmul_matches_reference(spec, rows, k, m, act, threads, seed):
    """Random component bytes and int8 activations including -128: the prepared panels give
    matmul()'s bits at every m (m < 8 reaches the panel kernel only this way), on 1 and 2
    threads, and the NumPy reference within float rounding."""
    rng = np.random.default_rng(seed)
    qt = random_qtensor(rng, spec, rows, k)
    xq = rng.integers(-128, 128, (m, k), dtype=np.int16).astype(np.int8)
    xs = rng.random((m, k // act), dtype=np.float32)
    want = numpy_backend.matmul(qt, xq, xs, act)
    prepared = _prepared_or_skip(qt, act)
    assert prepared.nbytes >= -(-rows // 16) * 16 * k
    nb.set_threads(threads)
    try:
        got = prepared.matmul(xq, xs)
        assert got.tobytes() == nb.matmul(qt, xq, xs, act).tobytes()
    finally:
        nb.set_threads(None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_native
@pytest.mark.parametrize("spec", [("int8", "row", 0, True, ""), ("int4", "group", 32, True, "")])
def test_prepared_panel_pairs_match_scalar_bits(spec):
    """The AVX-512 kernel runs panels in pairs (32 weight rows, tiles of 4 activation rows)
    and a last odd panel alone (tiles of 8): every tile height of both, a partial second
    panel, 12 sub-blocks (uneven partials) and the offset folded in (int8) or applied after
    (int4) give the scalar variant's bits, on 1 and 2 threads."""
    rng = np.random.default_rng(17)
    for rows in (32, 40, 63, 80):  # 40, 63: a partial second panel; 80: a last panel alone
        qt = random_qtensor(rng, spec, rows, 384)
        prepared = _prepared_or_skip(qt, 32)
        for m in (1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 20):
            xq = rng.integers(-128, 128, (m, 384), dtype=np.int16).astype(np.int8)
            xs = rng.random((m, 12), dtype=np.float32)
            try:
                nb.use_variant("scalar")
                want = nb.matmul(qt, xq, xs, 32)
            finally:
                nb.use_variant(nb.variants()[-1])
            for threads in (1, 2):
                nb.set_threads(threads)
                try:
                    got = prepared.matmul(xq, xs)
                finally:
                    nb.set_threads(None)
                assert got.tobytes() == want.tobytes(), (rows, m, threads)


@needs_native
def test_prepared_bound_buffers_and_other_variants():
    rng = np.random.default_rng(11)
    qt = quantize(rng.standard_normal((40, 96)).astype(np.float32), "int8")
    xq, xs = ref.quantize_activations(rng.standard_normal((6, 96)).astype(np.float32), 32)
    prepared = _prepared_or_skip(qt, 32)
    want = nb.matmul(qt, xq, xs, 32)
    out = np.zeros((6, 40), dtype=np.float32)
    run = prepared.bind(xq, xs, out)
    run(4)  # the first rows only
    assert out[:4].tobytes() == want[:4].tobytes() and not out[4:].any()
    for bad in (0, 7):
        with pytest.raises(ValueError, match="outside the bound buffers"):
            run(bad)
    with pytest.raises(ValueError, match="out"):
        prepared.bind(xq, xs, np.zeros((6, 41), dtype=np.float32))
    with pytest.raises(ValueError, match="activation scales"):
        prepared.matmul(xq, xs[:, :2])
    try:  # packed for one variant, run on another: that variant's own path, same bits
        for variant in nb.variants():
            nb.use_variant(variant)
            assert prepared.matmul(xq, xs).tobytes() == want.tobytes(), variant
    finally:
        nb.use_variant(nb.variants()[-1])
    assert nb.prepare(quantize(rng.standard_normal((4, 48)).astype(np.float32), "int8"), 48) is None
