"""Kernel benchmark: memory bandwidth, then GEMV, GEMM and XNOR speed per shape, kind and backend.

What is measured (every figure the median of several timed runs, wall clock):
    bandwidth   numpy copies of arrays much larger than the last-level cache (LLC), one per
                thread in parallel; GB/s counts bytes read plus bytes written
    gemv        the "matmul" op with one activation row; GB/s of weight bytes read (codes,
                scales, zero points), cycling through enough distinct weight matrices that
                the working set exceeds ~4x the LLC, so the weights stream from memory;
                also as a fraction of the bandwidth measured with the same thread count
    gemm        the "matmul" op with 128 activation rows; GOPS = 2*m*n*k / time
    xnor        binary x binary "xnor" op, m = 128; GOPS as above, and its speed relative to
                the int8 GEMM of the same shape and backend

Timings cover the kernel call only (activations are quantized beforehand). The numpy
reference is single-threaded and slow: it is measured with one thread, on fewer repeats,
and its GEMM is skipped above `numpy_gemm_limit` multiply-adds.

    rows = run(quick=True)
    print(format_table(rows))
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq.kernels import backends as kernel_backends
from edgeq.kernels import reference as ref
from edgeq.kernels.table import WEIGHT_KINDS, lookup
from edgeq.qtypes import QTensor, QuantSpec, from_components, get_layout

log = logging.getLogger(__name__)

SHAPES = ((576, 576), (1536, 576), (576, 1536), (4096, 4096), (11008, 4096))
QUICK_SHAPES = ((576, 576), (4096, 4096))
QUICK_KINDS = ("int8", "int4", "ternary_2bit")
GEMM_ROWS = 128
ACT_BLOCK = 32
#: the spec each weight kind is benchmarked with (the layouts' defaults)
KIND_SPECS = {
    "int8": QuantSpec("int8", "row"),
    "int8_asym": QuantSpec("int8", "row", symmetric=False),
    "int4": QuantSpec("int4", "group", 32),
    "int4_asym": QuantSpec("int4", "group", 32, symmetric=False),
    "int3": QuantSpec("int3", "group", 32),
    "int3_asym": QuantSpec("int3", "group", 32, symmetric=False),
    "int2": QuantSpec("int2", "group", 32),
    "int2_asym": QuantSpec("int2", "group", 32, symmetric=False),
    "ternary_2bit": QuantSpec("ternary", "row", packing="2bit"),
    "ternary_base3": QuantSpec("ternary", "row", packing="base3"),
    "binary": QuantSpec("binary", "row"),
    "pow2": QuantSpec("pow2", "row"),
}
_FALLBACK_LLC = 32 << 20


@dataclass(frozen=True)
class Row:
    """One measurement. value is in `unit`; fraction is of the measured bandwidth (gemv only)."""

    test: str            # "bandwidth", "gemv", "gemm" or "xnor"
    shape: tuple[int, int] | None
    kind: str
    backend: str
    threads: int
    value: float
    unit: str
    fraction: float | None = None
    note: str = ""


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs), else 32 MiB."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=_FALLBACK_LLC)


def _median_time(fn, repeats: int, budget_s: float) -> float:
    """Median wall time of fn() over `repeats` runs (fewer if the budget runs out; at least 1)."""
    times = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return statistics.median(times)


def memory_bandwidth(threads: int, nbytes: int, repeats: int) -> float:
    """GB/s (read + write) of `threads` parallel numpy copies of `nbytes` each."""
    sources = [np.ones(nbytes // 8) for _ in range(threads)]
    targets = [np.empty_like(s) for s in sources]

    def copy_all():
        if threads == 1:
            np.copyto(targets[0], sources[0])
            return
        workers = [threading.Thread(target=np.copyto, args=(t, s)) for t, s in zip(targets, sources)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    copy_all()
    seconds = _median_time(copy_all, repeats, budget_s=30.0)
    return 2 * threads * sources[0].nbytes / seconds / 1e9


def random_weight(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> QTensor:
    """A QTensor of `kind` with random codes and small positive scales (built from components)."""
    spec = KIND_SPECS[kind]
    layout = get_layout(spec.qtype)
    data = {}
    for name, (dtype, cshape) in layout.components(spec, shape).items():
        if name in ("scales", "mins"):
            data[name] = (rng.random(cshape, dtype=np.float32) * 0.01).astype(dtype)
        else:
            data[name] = rng.integers(0, 256, cshape, dtype=np.uint8).view(dtype)
    return from_components(spec, shape, data)


def _activations(k: int, m: int, rng: np.random.Generator):
    """int8 activations (m, k), their scales and the activation block used."""
    block = ACT_BLOCK if k % ACT_BLOCK == 0 else k
    xq, xs = ref.quantize_activations(rng.standard_normal((m, k), dtype=np.float32), block)
    return xq, xs, block


def bench_gemv(kind: str, shape, backend: str, threads: int, working_set: int,
               repeats: int, rng: np.random.Generator) -> float:
    """GB/s of weight bytes read by one-row matmuls cycling over distinct matrices."""
    first = random_weight(kind, shape, rng)
    count = max(1, -(-working_set // first.nbytes))
    weights = [first] + [random_weight(kind, shape, rng) for _ in range(count - 1)]
    xq, xs, block = _activations(shape[1], 1, rng)
    kernel = lookup("matmul", kind, backend)
    with kernel_backends.thread_count(threads):
        kernel(weights[0], xq, xs, block)  # compile / warm up

        def cycle():
            for qt in weights:
                kernel(qt, xq, xs, block)

        seconds = _median_time(cycle, repeats, budget_s=20.0) / len(weights)
    return first.nbytes / seconds / 1e9


def bench_gemm(kind: str, shape, backend: str, threads: int, repeats: int,
               rng: np.random.Generator) -> float:
    """GOPS (2*m*n*k per second) of a 128-row matmul."""
    qt = random_weight(kind, shape, rng)
    xq, xs, block = _activations(shape[1], GEMM_ROWS, rng)
    kernel = lookup("matmul", kind, backend)
    with kernel_backends.thread_count(threads):
        kernel(qt, xq, xs, block)
        seconds = _median_time(lambda: kernel(qt, xq, xs, block), repeats, budget_s=20.0)
    return 2 * GEMM_ROWS * shape[0] * shape[1] / seconds / 1e9


def bench_xnor(shape, backend: str, threads: int, repeats: int, rng: np.random.Generator) -> float:
    """GOPS of a 128-row binary x binary XNOR-popcount GEMM."""
    n, k = shape
    w_bits = rng.integers(0, 256, (n, -(-k // 8)), dtype=np.uint8)
    x_bits = rng.integers(0, 256, (GEMM_ROWS, -(-k // 8)), dtype=np.uint8)
    kernel = lookup("xnor", "binary", backend)
    with kernel_backends.thread_count(threads):
        kernel(w_bits, x_bits, k)
        seconds = _median_time(lambda: kernel(w_bits, x_bits, k), repeats, budget_s=20.0)
    return 2 * GEMM_ROWS * n * k / seconds / 1e9


def run(shapes=SHAPES, kinds=WEIGHT_KINDS, backends=None, threads=(1, 2), *, quick: bool = False,
        repeats: int | None = None, numpy_gemm_limit: int = 1 << 31, seed: int = 0) -> list[Row]:
    """Measure everything; returns the rows (see the module docstring for the definitions).

    backends: names to measure (default: every available one). quick: the two QUICK_SHAPES and
    QUICK_KINDS (unless given), fewer repeats and a working set of 2x instead of 4x the LLC.
    """
    if quick:
        shapes = QUICK_SHAPES if shapes is SHAPES else shapes
        kinds = QUICK_KINDS if kinds is WEIGHT_KINDS else kinds
    repeats = repeats or (3 if quick else 7)
    if backends is None:
        backends = [name for name, status in kernel_backends.available().items() if status == "ok"]
    else:
        for name in backends:
            kernel_backends.resolve(name)  # raises UnsupportedError when missing
    llc = last_level_cache_bytes()
    working_set = (2 if quick else 4) * llc
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    bandwidth = {}
    for t in threads:
        bandwidth[t] = memory_bandwidth(t, max(working_set, 64 << 20), repeats)
        rows.append(Row("bandwidth", None, "", "numpy copy", t, bandwidth[t], "GB/s",
                        note=f"{max(working_set, 64 << 20) >> 20} MiB per thread, read+write"))
        log.info("bandwidth %d thread(s): %.1f GB/s", t, bandwidth[t])
    for shape in shapes:
        for backend in backends:
            # the numpy reference ignores the thread count: measure it once
            thread_list = (1,) if backend == "numpy" else threads
            tries = 1 if backend == "numpy" else repeats
            for t in thread_list:
                for kind in kinds:
                    if lookup("matmul", kind, backend) is None:
                        continue
                    gbs = bench_gemv(kind, shape, backend, t, working_set, tries, rng)
                    rows.append(Row("gemv", shape, kind, backend, t, gbs, "GB/s",
                                    fraction=gbs / bandwidth.get(t, bandwidth[min(bandwidth)])))
                    log.info("gemv %s %s %s %dT: %.2f GB/s", shape, kind, backend, t, gbs)
                    if backend == "numpy" and GEMM_ROWS * shape[0] * shape[1] > numpy_gemm_limit:
                        rows.append(Row("gemm", shape, kind, backend, t, float("nan"), "GOPS",
                                        note="skipped (numpy reference too slow)"))
                        continue
                    gops = bench_gemm(kind, shape, backend, t, tries, rng)
                    rows.append(Row("gemm", shape, kind, backend, t, gops, "GOPS", note=f"m={GEMM_ROWS}"))
                    log.info("gemm %s %s %s %dT: %.2f GOPS", shape, kind, backend, t, gops)
                if lookup("xnor", "binary", backend) is not None:
                    gops = bench_xnor(shape, backend, t, tries, rng)
                    int8 = [r.value for r in rows if r.test == "gemm" and r.kind == "int8"
                            and r.shape == shape and r.backend == backend and r.threads == t
                            and not math.isnan(r.value)]
                    ratio = f", {gops / int8[0]:.1f}x the int8 GEMM" if int8 else ""
                    rows.append(Row("xnor", shape, "binary", backend, t, gops, "GOPS",
                                    note=f"m={GEMM_ROWS}{ratio}"))
                    log.info("xnor %s %s %dT: %.2f GOPS", shape, backend, t, gops)
    return rows


def format_table(rows: list[Row]) -> str:
    """A fixed-width text table of the rows."""
    header = f"{'test':9s} {'shape':>11s} {'kind':13s} {'backend':10s} {'thr':>3s} {'value':>9s} {'unit':4s} {'of BW':>6s}  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        shape = f"{r.shape[0]}x{r.shape[1]}" if r.shape else ""
        fraction = f"{100 * r.fraction:5.1f}%" if r.fraction is not None else ""
        lines.append(f"{r.test:9s} {shape:>11s} {r.kind:13s} {r.backend:10s} {r.threads:3d} "
                     f"{r.value:9.2f} {r.unit:4s} {fraction:>6s}  {r.note}")
    return "\n".join(lines)
