"""Benchmark plumbing shared by the model benchmarks: each measurement runs in a fresh Python
process, with every library's thread count fixed before it starts, and reports one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

#: environment variables that set a thread count, for each library that reads one
THREAD_VARIABLES = ("EDGEQ_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")
CHILD_TIMEOUT_S = 1800


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (VmHWM, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def child_env(threads: int, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    env.update(extra or {})
    return env


def run_child(args: list[str], env: dict) -> dict:
    """Run `python args...` and parse the last stdout line as JSON (RuntimeError on failure)."""
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {args[:3]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
