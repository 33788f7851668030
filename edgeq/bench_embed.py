"""Embedding-model benchmark: sentences per second at batch 1 and 32, load time, peak memory.

    edgeq bench minilm.eqm                    # the table
    python -m edgeq.bench_embed MODEL [--threads 1 2] [--rounds 3] [--sentences 64]

Sentences: the first `sentences` sentences of edgeq.eval.default_corpus() (cut after . ! or ?
followed by white space) that the model's tokenizer turns into 4 to 41 tokens, the range of
real short sentences. Every measurement runs in a fresh Python subprocess with its thread
counts fixed before start (edgeq.bench_process). Timed, wall clock: model.embed(sentences,
batch_size) over all of them, tokenizing included; one unmeasured warm-up pass, then the
median of `repeats` passes; `rounds` child processes per thread count, alternated, and the
figures are medians over rounds. Peer engines (ONNX Runtime) on the same model are in
tests/perf/bench_bert_vs_onnxruntime.py.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import edgeq
from edgeq.bench_process import child_env, peak_rss_mib, run_child
from edgeq.eval import default_corpus
from edgeq.kernels import backends

BATCH_SIZES = (1, 32)
#: the token lengths of the sentences timed
MIN_TOKENS, MAX_TOKENS = 4, 41
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class EmbedSpeed:
    """One thread count: medians over rounds."""

    threads: int
    sentences_per_s: dict[int, float]  # batch size -> sentences/s
    load_s: float
    peak_rss_mib: float


def bench_sentences(tokenizer, n: int) -> list[str]:
    """The first n corpus sentences of MIN_TOKENS to MAX_TOKENS tokens (module docstring)."""
    chosen = []
    for text in SENTENCE_END.split(default_corpus()):
        sentence = " ".join(text.split())
        if MIN_TOKENS <= len(tokenizer.encode(sentence)) <= MAX_TOKENS:
            chosen.append(sentence)
            if len(chosen) == n:
                return chosen
    raise ValueError(f"the corpus has only {len(chosen)} sentences of {MIN_TOKENS}-{MAX_TOKENS} tokens")


def measure(path: str, sentences: int, repeats: int) -> dict:
    """Load and embedding figures of this process (run in a child)."""
    start = time.perf_counter()
    model = edgeq.load(path)
    load_s = time.perf_counter() - start
    texts = bench_sentences(model.tokenizer, sentences)
    speeds = {}
    for batch in BATCH_SIZES:
        model.embed(texts, batch_size=batch)  # warm-up: JIT, lazy pages, BLAS pools
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.embed(texts, batch_size=batch)
            times.append(time.perf_counter() - start)
        speeds[str(batch)] = len(texts) / statistics.median(times)
    return {"load_s": load_s, "sentences_per_s": speeds, "peak_rss_mib": peak_rss_mib(),
            "backend": backends.resolve()}


def run(path, threads=(1, 2), *, sentences: int = 64, rounds: int = 3, repeats: int = 3):
    """[EmbedSpeed per thread count], the backend used."""
    job = ["-m", "edgeq.bench_embed", "--child", json.dumps([str(path), sentences, repeats])]
    samples: dict[int, list[dict]] = {t: [] for t in threads}
    for _ in range(rounds):
        for t in threads:
            samples[t].append(run_child(job, child_env(t)))

    def med(values):
        return statistics.median(values)
    speeds = [EmbedSpeed(t, {b: med(s["sentences_per_s"][str(b)] for s in samples[t]) for b in BATCH_SIZES},
                         med(s["load_s"] for s in samples[t]), med(s["peak_rss_mib"] for s in samples[t]))
              for t in threads]
    return speeds, samples[threads[0]][0]["backend"]


def format_table(path, speeds: list[EmbedSpeed], backend: str, sentences: int) -> str:
    size_mib = Path(path).stat().st_size / 2**20
    lines = [f"edgeq on {Path(path).name} ({size_mib:.1f} MiB, backend {backend}): {sentences} sentences "
             f"of {MIN_TOKENS}-{MAX_TOKENS} tokens, tokenizing included; medians",
             f"{'threads':>7} " + " ".join(f"{f'batch {b} sent/s':>16}" for b in BATCH_SIZES)
             + f" {'load s':>8} {'peak RSS MiB':>13}"]
    for s in speeds:
        lines.append(f"{s.threads:7d} " + " ".join(f"{s.sentences_per_s[b]:16.1f}" for b in BATCH_SIZES)
                     + f" {s.load_s:8.3f} {s.peak_rss_mib:13.1f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="one round, 16 sentences")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.stdout.write(json.dumps(measure(*json.loads(args.child))) + "\n")
        return
    if args.model is None:
        parser.error("a model path is needed")
    rounds, sentences = (1, 16) if args.quick else (args.rounds, args.sentences)
    speeds, backend = run(args.model, tuple(args.threads), sentences=sentences, rounds=rounds)
    print(format_table(args.model, speeds, backend, sentences))


if __name__ == "__main__":
    main()
