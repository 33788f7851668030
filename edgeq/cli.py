"""The `edgeq` command line. Each sub-command is a small function; argparse does the rest."""

from __future__ import annotations

import argparse
import logging
import sys

from edgeq.errors import FormatError, UnsupportedError


def cmd_inspect(args) -> int:
    from edgeq.inspect import describe
    print(describe(args.file))
    return 0


def cmd_info(args) -> int:
    from edgeq.info import report
    print(report())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeq", description="Quantized models on the CPU, from Python.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what edgeq does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("inspect", help="list the tensors of an .eqm file with types, sizes and totals")
    p.add_argument("file")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("info", help="version, kernel backends found, SIMD variant, threads")
    p.set_defaults(run=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except (FormatError, UnsupportedError, FileNotFoundError) as e:
        print(f"edgeq: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
