"""Error and size of every quantized type on a Gaussian matrix (run by hand, not by CI).

    python tests/perf/qtype_error_table.py [--rows 4096] [--k 4096] [--seed 0]

Prints, per type: bits per weight (8 * bytes / weights) and the mean relative error
mean|dequantize(w) - w| / mean|w| (mean absolute error over mean absolute weight).
"""

import argparse
import time

import numpy as np

import edgeq

TYPES = [  # label, quantize keyword arguments
    ("int8 per tensor", dict(qtype="int8", granularity="tensor")),
    ("int8 per row", dict(qtype="int8")),
    ("int8 per row asym", dict(qtype="int8", symmetric=False)),
    ("int8 group 32", dict(qtype="int8", group_size=32)),
    ("int4 group 32", dict(qtype="int4", group_size=32)),
    ("int4 group 32 asym", dict(qtype="int4", group_size=32, symmetric=False)),
    ("int4 group 128", dict(qtype="int4", group_size=128)),
    ("int3 group 32", dict(qtype="int3", group_size=32)),
    ("int3 group 32 asym", dict(qtype="int3", group_size=32, symmetric=False)),
    ("int2 group 32", dict(qtype="int2", group_size=32)),
    ("int2 group 32 asym", dict(qtype="int2", group_size=32, symmetric=False)),
    ("pow2 per row", dict(qtype="pow2")),
    ("pow2 group 32", dict(qtype="pow2", group_size=32)),
    ("ternary per row 2bit", dict(qtype="ternary")),
    ("ternary group 64 2bit", dict(qtype="ternary", group_size=64)),
    ("ternary per row base3", dict(qtype="ternary", packing="base3")),
    ("ternary group 64 base3", dict(qtype="ternary", group_size=64, packing="base3")),
    ("binary per row", dict(qtype="binary")),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    w = np.random.default_rng(args.seed).standard_normal((args.rows, args.k), dtype=np.float32)
    mean_abs = float(np.abs(w).mean(dtype=np.float64))
    print(f"Gaussian {args.rows}x{args.k}, seed {args.seed}, mean|w| = {mean_abs:.4f}")
    print(f"{'type':<24} {'bits/weight':>11} {'mean rel error':>14} {'max abs error':>13} {'seconds':>8}")
    for label, kw in TYPES:
        kw = dict(kw)
        start = time.perf_counter()
        qt = edgeq.quantize(w, kw.pop("qtype"), **kw)
        err = np.abs(qt.dequantize() - w)
        seconds = time.perf_counter() - start
        rel = float(err.mean(dtype=np.float64)) / mean_abs
        print(f"{label:<24} {qt.bits_per_weight:>11.4f} {rel:>14.5f} {float(err.max()):>13.5f} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
