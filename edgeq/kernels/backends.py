"""Which backends exist here, which one to use, and how many threads.

Order of preference: native (C via cffi), then numba, then numpy (always present).
EDGEQ_BACKEND=numpy|numba|native and backend= force one; EDGEQ_THREADS / threads= set the
thread count (default: all cores).
"""

import importlib
import logging
import os
from contextlib import contextmanager

from edgeq.errors import UnsupportedError

log = logging.getLogger(__name__)

PREFERENCE = ("native", "numba", "numpy")
_MODULES = {"numpy": "edgeq.kernels.numpy_backend",
            "numba": "edgeq.kernels.numba_backend",
            "native": "edgeq.kernels.native_backend"}
_loaded: dict[str, object] = {}
_missing: dict[str, str] = {}


def load(name: str):
    """Import a backend module (registering its kernels); None with the reason kept if it fails."""
    if name in _loaded:
        return _loaded[name]
    if name in _missing:
        return None
    try:
        module = importlib.import_module(_MODULES[name])
    except (ImportError, OSError) as e:
        _missing[name] = f"{type(e).__name__}: {e}"
        return None
    _loaded[name] = module
    return module


def available() -> dict[str, str]:
    """Backend name -> "ok" or the reason it is missing."""
    return {name: "ok" if load(name) is not None else _missing[name] for name in PREFERENCE}


_notified = False


def resolve(backend: str | None = None) -> str:
    """The backend to use: the argument, else EDGEQ_BACKEND, else the fastest present."""
    global _notified
    wanted = backend or os.environ.get("EDGEQ_BACKEND") or None
    if wanted is not None:
        if wanted not in _MODULES:
            raise UnsupportedError(f"unknown backend {wanted!r}; choose from {', '.join(PREFERENCE)}")
        if load(wanted) is None:
            raise UnsupportedError(f"backend {wanted!r} is not available: {_missing[wanted]}")
        return wanted
    for name in PREFERENCE:
        if load(name) is not None:
            if name != PREFERENCE[0] and not _notified:
                _notified = True
                log.info("edgeq: using the %s backend (%s)", name,
                         "; ".join(f"{n}: {_missing[n]}" for n in PREFERENCE if n in _missing))
            return name
    raise AssertionError("the numpy backend always loads")


def threads(requested: int | None = None) -> int:
    """Thread count: the argument, else EDGEQ_THREADS, else every core available to us."""
    value = requested if requested is not None else os.environ.get("EDGEQ_THREADS")
    if value is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = int(value)
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    return n


@contextmanager
def thread_count(n: int):
    """Run the kernels called inside the block on n threads (sets EDGEQ_THREADS, then restores it)."""
    old = os.environ.get("EDGEQ_THREADS")
    os.environ["EDGEQ_THREADS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("EDGEQ_THREADS", None)
        else:
            os.environ["EDGEQ_THREADS"] = old
