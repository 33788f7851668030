"""Kernels: one op table (table.py), three backends (numpy reference, numba, native C)."""

from edgeq.kernels.backends import available, resolve, threads
from edgeq.kernels.table import KERNELS, lookup, register, weight_kind

__all__ = ["KERNELS", "available", "lookup", "register", "resolve", "threads", "weight_kind"]
