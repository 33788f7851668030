"""`edgeq info`: what this installation can run and why anything is missing."""

import platform

import edgeq
from edgeq.kernels import backends


def report() -> str:
    lines = [f"edgeq {edgeq.__version__} on Python {platform.python_version()} ({platform.machine()})"]
    found = backends.available()
    for name, status in found.items():
        lines.append(f"  backend {name:7s} {'available' if status == 'ok' else 'missing: ' + status}")
    native = backends.load("native")
    if native is not None:
        lines.append(f"  SIMD variant in use: {native.simd_variant()} (this CPU supports: "
                     f"{', '.join(native.variants())})")
    lines.append(f"  default backend: {backends.resolve()}")
    lines.append(f"  threads: {backends.threads()} (EDGEQ_THREADS to change)")
    return "\n".join(lines)
