"""Language-model benchmark: prompt and decode speed, load time, peak memory, time to first token.

    results = run("SmolLM2-135M-Instruct.Q4_1.gguf", threads=(1, 2))
    print(format_table(results))
    python -m edgeq.bench_llm MODEL [--threads 1 2] [--rounds 3]

Every measurement runs in a fresh Python subprocess (`python -m edgeq.bench_llm --child JOB`),
so load time and peak memory are those of a new process, and the thread count is set before
any library starts its pools (EDGEQ_THREADS for the kernels; OPENBLAS/OMP/MKL_NUM_THREADS for
numpy's BLAS, which runs attention; NUMBA_NUM_THREADS).

A GGUF model is first converted into the conversion cache (edgeq.cache.converted, timed as
`convert_s`: the conversion on a cache miss, milliseconds on a hit); the children load the
cached .eqm, so load time excludes conversion and the cache lookup.

The prompt is the first `prompt_tokens` tokens of edgeq.eval.default_corpus() (the model's
own tokenizer, plain text). Definitions (wall clock, time.perf_counter):

    load_s      edgeq.load(path) in the child (memory-map the file, build the tokenizer and
                model); imports excluded
    prompt      tok/s = prompt_tokens / time of model.prefill(prompt, empty cache); one
                unmeasured warm-up first, then the median of `repeats` runs
    decode      tok/s = decode_tokens / time of decode_tokens single-token forward passes
                after the prompt, each fed the argmax of the previous logits (greedy); median
                of `repeats` runs, each after a fresh prefill
    peak_rss    the child's VmHWM (/proc/self/status) at the end, else ru_maxrss: the whole
                process (Python, numpy, the touched pages of the mapped model, the KV cache)
    ttft        from just before starting a new process to the first generated token (argmax
                after the prompt), as the parent's wall clock sees it: interpreter start,
                imports, load, JIT compilation or JIT-cache loading, prefill.
                cold: NUMBA_CACHE_DIR is a new empty folder (Numba compiles what it uses);
                warm: the same folder again, filled by the cold run. The native (C) backend has
                no JIT, so there the two differ only by noise; run() then also measures the
                numba backend (EDGEQ_BACKEND=numba), whose first run compiles.

Rounds: `rounds` speed children per thread count, alternated between thread counts; the figures
reported are medians over rounds. On a shared machine single runs vary by +-30%: compare
ratios measured in the same run (tests/perf/bench_llm_vs_llamacpp.py runs llama.cpp alongside).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import edgeq
from edgeq import cache
from edgeq.bench_process import child_env, peak_rss_mib, run_child
from edgeq.eval import default_corpus
from edgeq.kernels import backends

log = logging.getLogger(__name__)


@dataclass
class Speed:
    """One thread count: medians over rounds, and every round's raw figures."""

    threads: int
    prompt_tps: float
    decode_tps: float
    load_s: float
    peak_rss_mib: float
    samples: list[dict] = field(default_factory=list)


@dataclass
class LLMBench:
    model: str
    backend: str
    prompt_tokens: int
    decode_tokens: int
    convert_s: float
    speeds: list[Speed]
    ttft_threads: int
    #: backend -> (cold, warm) seconds to the first token
    ttft_s: dict[str, tuple[float, float]]


# --- measuring (inside a child process) ----------------------------------------------------
def _greedy_decode(model, prompt: list[int], n: int) -> float:
    """Prefill `prompt`, then time n greedy single-token steps; returns seconds."""
    cache = model.new_cache(len(prompt) + n + 1)
    token = int(np.argmax(model.prefill(prompt, cache)))
    start = time.perf_counter()
    for _ in range(n):
        token = int(np.argmax(model.forward([token], cache)))
    return time.perf_counter() - start


def measure_speed(path: str, prompt: list[int], decode_tokens: int, repeats: int) -> dict:
    """Load, prompt and decode figures of this process (see the module docstring)."""
    start = time.perf_counter()
    model = edgeq.load(path)
    load_s = time.perf_counter() - start
    model.prefill(prompt, model.new_cache(len(prompt)))  # warm-up: JIT, lazy pages, BLAS pools
    prompt_times = []
    for _ in range(repeats):
        cache = model.new_cache(len(prompt))
        start = time.perf_counter()
        model.prefill(prompt, cache)
        prompt_times.append(time.perf_counter() - start)
    decode_times = [_greedy_decode(model, prompt, decode_tokens) for _ in range(repeats)]
    return {"load_s": load_s, "prompt_tps": len(prompt) / statistics.median(prompt_times),
            "decode_tps": decode_tokens / statistics.median(decode_times),
            "peak_rss_mib": peak_rss_mib(), "backend": backends.resolve()}


def first_token(path: str, prompt: list[int]) -> dict:
    """Load and prefill once; the wall-clock time (time.time) when the first token is known."""
    model = edgeq.load(path)
    token = int(np.argmax(model.prefill(prompt, model.new_cache(len(prompt) + 1))))
    return {"done_at": time.time(), "token": token}


JOBS = {"speed": measure_speed, "first_token": first_token}


def _child(job_json: str) -> None:
    job = json.loads(job_json)
    result = JOBS[job.pop("job")](**job)
    sys.stdout.write(json.dumps(result) + "\n")


# --- orchestrating (in the parent) ---------------------------------------------------------
def edgeq_job(job: dict, threads: int, extra_env: dict | None = None) -> dict:
    return run_child(["-m", "edgeq.bench_llm", "--child", json.dumps(job)], child_env(threads, extra_env))


def timed_first_token(args: list[str], env: dict) -> float:
    """Seconds from just before starting `python args...` to the first token it reports."""
    started = time.time()
    return run_child(args, env)["done_at"] - started


def prepare_model(model_path) -> tuple[str, float]:
    """(.eqm path to load, seconds of edgeq.cache.converted: a conversion on a cache miss,
    milliseconds on a hit)."""
    path = Path(model_path)
    if not cache.is_gguf(path):
        return str(path), 0.0
    start = time.perf_counter()
    eqm_path = cache.converted(path)
    return str(eqm_path), time.perf_counter() - start


def prompt_ids(eqm_path: str, prompt_tokens: int) -> list[int]:
    """The first prompt_tokens tokens of the default corpus, by the model's tokenizer."""
    tokenizer = edgeq.load(eqm_path).tokenizer
    ids = tokenizer.encode(default_corpus(), add_special=False, parse_special=False)
    if len(ids) < prompt_tokens:
        raise ValueError(f"the corpus has only {len(ids)} tokens, fewer than {prompt_tokens}")
    return ids[:prompt_tokens]


def summarize(threads: int, samples: list[dict]) -> Speed:
    def med(key):
        return statistics.median(s[key] for s in samples)
    return Speed(threads, med("prompt_tps"), med("decode_tps"), med("load_s"), med("peak_rss_mib"),
                 samples)


def measure_ttft(eqm_path: str, prompt: list[int], threads: int,
                 backend: str | None = None) -> tuple[float, float]:
    """(cold, warm) time to first token with an empty, then a filled, Numba cache folder;
    backend: EDGEQ_BACKEND for the child (None: the default choice)."""
    job = json.dumps({"job": "first_token", "path": eqm_path, "prompt": prompt})
    args = ["-m", "edgeq.bench_llm", "--child", job]
    with tempfile.TemporaryDirectory(prefix="edgeq-jit-") as jit_dir:
        extra = {"NUMBA_CACHE_DIR": jit_dir, **({"EDGEQ_BACKEND": backend} if backend else {})}
        env = child_env(threads, extra)
        cold = timed_first_token(args, env)
        warm = timed_first_token(args, env)
    return cold, warm


def run(model_path, threads=(1, 2), prompt_tokens: int = 128, decode_tokens: int = 64, *,
        rounds: int = 3, repeats: int = 3) -> LLMBench:
    """Measure edgeq on `model_path` (.gguf or .eqm); see the module docstring."""
    eqm_path, convert_s = prepare_model(model_path)
    prompt = prompt_ids(eqm_path, prompt_tokens)
    job = {"job": "speed", "path": eqm_path, "prompt": prompt, "decode_tokens": decode_tokens,
           "repeats": repeats}
    samples: dict[int, list[dict]] = {t: [] for t in threads}
    for r in range(rounds):
        for t in threads:
            samples[t].append(edgeq_job(job, t))
            log.info("round %d, %d thread(s): %s", r + 1, t, samples[t][-1])
    backend = samples[threads[0]][0]["backend"]
    ttft = {backend: measure_ttft(eqm_path, prompt, max(threads))}
    # where the default backend is not Numba, show what its JIT costs when it is the one used
    if backend != "numba" and backends.available()["numba"] == "ok":
        ttft["numba"] = measure_ttft(eqm_path, prompt, max(threads), "numba")
    return LLMBench(str(model_path), backend, prompt_tokens, decode_tokens, convert_s,
                    [summarize(t, samples[t]) for t in threads], max(threads), ttft)


def format_table(bench: LLMBench) -> str:
    lines = [f"edgeq on {Path(bench.model).name} (backend {bench.backend}), prompt "
             f"{bench.prompt_tokens} tokens, decode {bench.decode_tokens} tokens; medians",
             f"{'threads':>7} {'prompt tok/s':>13} {'decode tok/s':>13} {'load s':>8} {'peak RSS MiB':>13}"]
    for s in bench.speeds:
        lines.append(f"{s.threads:7d} {s.prompt_tps:13.1f} {s.decode_tps:13.1f} {s.load_s:8.3f} "
                     f"{s.peak_rss_mib:13.1f}")
    for backend, (cold, warm) in bench.ttft_s.items():
        lines.append(f"time to first token, new process, {bench.ttft_threads} threads, backend "
                     f"{backend}: JIT cache cold {cold:.2f} s, warm {warm:.2f} s")
    lines.append(f"conversion cache (GGUF -> .eqm, converts on a miss): {bench.convert_s:.2f} s")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return
    if not args.model:
        parser.error("the model path is required")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bench = run(args.model, tuple(args.threads), args.prompt_tokens, args.decode_tokens,
                rounds=args.rounds)
    print(format_table(bench))


if __name__ == "__main__":
    main()
