"""The integer grid a weight algorithm aims at: per-group affine codes of int4, int3 or int2.

A Grid is (qtype, group size, symmetric). Every algorithm in this package picks, per group of
G weights along k, a float16 scale d (and, asymmetric, a float16 min m) and integer codes q,
then calls Grid.qtensor, which packs them into the type's layout:

    symmetric    w ~= d * q,       q in [-(2**(b-1) - 1), 2**(b-1) - 1]
    asymmetric   w ~= d * q + m,   q in [0, 2**b - 1]

Fitting a grid to a range and choosing the nearest code are the layouts' own rules
(qtypes.lowbit.fit_scales / nearest_codes, which int4 shares), so Grid.rtn(w) is
edgeq.quantize(w, ...) byte for byte, and every algorithm's output is a QTensor any backend
runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeq.errors import UnsupportedError
from edgeq.qtypes import QTensor, QuantSpec, from_components, get_layout, quantize
from edgeq.qtypes.base import as_matrix
from edgeq.qtypes.lowbit import code_limits, fit_scales, nearest_codes
from edgeq.qtypes.packing import pack_planes

#: bits per code of the types the algorithms target
BITS = {"int4": 4, "int3": 3, "int2": 2}


@dataclass(frozen=True)
class Grid:
    """Target type of a weight algorithm: int4 / int3 / int2, group size G, symmetric or not."""

    qtype: str = "int4"
    group_size: int = 32
    symmetric: bool = True

    def __post_init__(self):
        if self.qtype not in BITS:
            raise UnsupportedError(f"weight algorithms target {', '.join(BITS)}, not {self.qtype!r}")
        multiple = get_layout(self.qtype).group_multiple
        if (isinstance(self.group_size, bool) or not isinstance(self.group_size, (int, np.integer))
                or self.group_size <= 0 or self.group_size % multiple):
            raise ValueError(f"{self.qtype}: group size must be a positive multiple of {multiple}, "
                             f"got {self.group_size!r}")

    @property
    def bits(self) -> int:
        return BITS[self.qtype]

    @property
    def limits(self) -> tuple[int, int]:
        """(lowest, highest) code."""
        return code_limits(self.bits, self.symmetric)

    @property
    def bits_per_weight(self) -> float:
        """Codes plus float16 scales (and mins) per weight."""
        return self.bits + (16 if self.symmetric else 32) / self.group_size

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.qtype, "group", self.group_size, self.symmetric)

    def groups(self, w) -> np.ndarray:
        """Validated float32 weights (rows, k) viewed as (rows, k/G, G)."""
        w = as_matrix(w)
        rows, k = w.shape
        if k % self.group_size:
            raise ValueError(f"group size {self.group_size} does not divide the row length {k}")
        return w.reshape(rows, k // self.group_size, self.group_size)

    def fit(self, lo, hi) -> tuple[np.ndarray, np.ndarray | None]:
        """float16 scales (and mins, asymmetric) of grids covering [lo, hi], elementwise."""
        return fit_scales(lo, hi, self.bits, self.symmetric)

    def fit_minmax(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The round-to-nearest fit: each group's own min and max (last axis)."""
        return self.fit(g.min(axis=-1), g.max(axis=-1))

    def codes(self, g, scales, mins) -> np.ndarray:
        """Nearest codes int16 of weights g (..., G) on the grids (scales, mins) of shape (...)."""
        return nearest_codes(np.asarray(g, dtype=np.float32), scales, mins, self.bits, self.symmetric)

    def values(self, q, scales, mins) -> np.ndarray:
        """Dequantized float32 weights d * q (+ m), as Layout.dequantize computes them."""
        w = np.asarray(q).astype(np.float32) * scales.astype(np.float32)[..., None]
        return w if mins is None else w + mins.astype(np.float32)[..., None]

    def qtensor(self, q, scales, mins) -> QTensor:
        """Pack codes q (rows, k) and per-group scales / mins (rows, k/G) into a QTensor."""
        q = np.asarray(q)
        if q.ndim == 3:
            q = q.reshape(q.shape[0], -1)
        lo, hi = self.limits
        if q.size and (q.min() < lo or q.max() > hi):
            raise ValueError(f"codes outside [{lo}, {hi}] for {self.qtype}")
        spec = self.spec
        scales = np.asarray(scales, dtype=np.float16)
        mins = None if self.symmetric else np.asarray(mins, dtype=np.float16)
        if self.qtype == "int4":
            # int4.py builds its components only from floats; this is its nibble order
            # (pack_planes, 4 bits), which test_calibrate checks against edgeq.quantize.
            data = {"codes": pack_planes((q + (8 if self.symmetric else 0)).astype(np.uint8),
                                         self.group_size, 4), "scales": scales}
            if mins is not None:
                data["mins"] = mins
        else:
            data = get_layout(self.qtype).from_codes(spec, q, scales, mins)
        return from_components(spec, q.shape, data, where=f"{self.qtype} grid")

    def rtn(self, w) -> QTensor:
        """Round to nearest: edgeq.quantize with this grid's settings."""
        return quantize(w, self.qtype, group_size=self.group_size, symmetric=self.symmetric)
