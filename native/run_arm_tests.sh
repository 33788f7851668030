#!/usr/bin/env bash
# Cross-compiles the C kernels and native/test_driver.c for aarch64 (kernels_neon.c with
# -march=armv8-a, its SDOT build with -march=armv8.2-a+dotprod), runs the driver under
# qemu-aarch64 against tests/golden/native_kernels.bin, then runs the same driver natively on
# this machine with every SIMD variant it supports. Exits non-zero on any mismatch.
#
#   native/run_arm_tests.sh            ARM under qemu, then the host
#   native/run_arm_tests.sh --arm-only
# Needs: apt-get install -y gcc-aarch64-linux-gnu qemu-user   (and make, a host C compiler)
set -euo pipefail
cd "$(dirname "$0")"
build="${BUILD:-$(mktemp -d)}"
trap '[ -z "${BUILD:-}" ] && rm -rf "$build"' EXIT

for tool in aarch64-linux-gnu-gcc qemu-aarch64 make; do
    if ! command -v "$tool" > /dev/null; then
        echo "missing $tool: apt-get install -y gcc-aarch64-linux-gnu qemu-user make" >&2
        exit 2
    fi
done

echo "== aarch64 under qemu"
make -s BUILD="$build" check-arm
if [ "${1:-}" != "--arm-only" ]; then
    echo "== host ($(${CC:-cc} -dumpmachine))"
    make -s BUILD="$build" check
fi
