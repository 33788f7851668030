"""Kernel benchmark from the command line (run by hand, not by CI): see edgeq/bench_kernels.py.

    python tests/perf/bench_kernels.py --quick
    python tests/perf/bench_kernels.py --shapes 4096x4096 --kinds int4,ternary_2bit --threads 1,2
"""

import argparse
import logging

from edgeq import bench_kernels


def _shapes(text: str):
    return tuple(tuple(int(v) for v in item.split("x")) for item in text.split(","))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, three kinds, fewer repeats")
    parser.add_argument("--shapes", type=_shapes, help="comma-separated NxK (rows x columns)")
    parser.add_argument("--kinds", help="comma-separated weight kinds (edgeq.kernels.table.WEIGHT_KINDS)")
    parser.add_argument("--backends", help="comma-separated backends (default: every available one)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, help="timed runs per figure (median)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each figure as it is measured")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    rows = bench_kernels.run(
        shapes=args.shapes or bench_kernels.SHAPES,
        kinds=tuple(args.kinds.split(",")) if args.kinds else bench_kernels.WEIGHT_KINDS,
        backends=args.backends.split(",") if args.backends else None,
        threads=tuple(int(t) for t in args.threads.split(",")),
        quick=args.quick, repeats=args.repeats)
    print(bench_kernels.format_table(rows))


if __name__ == "__main__":
    main()
