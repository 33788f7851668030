"""HQQ: data-free half-quadratic optimization of each group's grid (Badri & Shaji 2023,
"Half-Quadratic Quantization of Large Machine Learning Models").

Per group, with codes q = clip(rint(w / d + z)) and dequantized r = d (q - z), HQQ minimizes
the sparsity-promoting error sum |w - r|**p (p < 1: a few large errors cost less than many
small ones, so outliers stop dictating the grid) by splitting off the error e ~= w - r:

    repeat iters times:
        q = clip(rint(w / d + z), qmin, qmax)
        e = shrink_p(w - d (q - z), beta)              e = sign(x) max(|x| - |x|**(p-1) / beta, 0)
        z = mean(q - (w - e) / d)                      the zero point's closed-form update
        [optimize_scale: d, z by least squares of w - e ~= d q - d z]
        beta *= kappa

The shrinkage works on errors measured in quantization steps (x / d), so beta does not depend
on the weights' magnitude. Symmetric grids have no zero point (z = 0); for them the scale is
the free parameter (optimize_scale defaults to True). The start is round to nearest's grid
(min-max); every group keeps the iterate with its least lp error, so HQQ never does worse than
that start on its own objective. The result is stored as float16 d and m = -d z, and every
weight then takes its nearest code on the stored grid.
"""

from __future__ import annotations

import numpy as np

from edgeq.calibrate.grid import Grid
from edgeq.qtypes import QTensor
from edgeq.qtypes.scales import storable_scale


def hqq(w, grid: Grid = Grid(), *, iters: int = 20, p: float = 0.7, beta: float = 10.0,
        kappa: float = 1.01, optimize_scale: bool | None = None) -> QTensor:
    """Quantize w (rows, k) to `grid`, optimizing each group's zero point (and scale)."""
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 0:
        raise ValueError(f"iters must be a non-negative integer, got {iters!r}")
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p!r}")
    if not (beta > 0 and kappa >= 1):
        raise ValueError(f"need beta > 0 and kappa >= 1, got beta={beta!r}, kappa={kappa!r}")
    if optimize_scale is None:
        optimize_scale = grid.symmetric
    g = grid.groups(w).astype(np.float64)
    qmin, qmax = grid.limits

    scales, mins = grid.fit_minmax(g.astype(np.float32))  # the start: round to nearest's grid
    d = scales.astype(np.float64)
    z = np.zeros_like(d) if mins is None else -mins.astype(np.float64) / np.where(d > 0, d, 1.0)
    live = d > 0  # all-constant groups keep round to nearest's exact grid
    step = np.where(live, d, 1.0)[..., None]

    def dequantized(d, z):
        q = np.clip(np.rint(g / np.where(d > 0, d, 1.0)[..., None] + z[..., None]), qmin, qmax)
        return q, d[..., None] * (q - z[..., None])

    best_d, best_z = d.copy(), z.copy()
    best_err = np.full(d.shape, np.inf)
    for _ in range(iters + 1):
        q, r = dequantized(d, z)
        err = (np.abs(g - r) ** p).sum(axis=2)
        better = live & (err < best_err)
        best_err = np.where(better, err, best_err)
        best_d = np.where(better, d, best_d)
        best_z = np.where(better, z, best_z)
        x = (g - r) / step
        with np.errstate(divide="ignore"):  # |0|**(p-1) = inf shrinks an exact weight to 0
            e = np.sign(x) * np.maximum(np.abs(x) - np.abs(x) ** (p - 1) / beta, 0) * step
        target = g - e
        if optimize_scale:
            d, z = _least_squares(q, target, d, z, grid.symmetric)
        elif not grid.symmetric:
            z = np.mean(q - target / step, axis=2)
        beta *= kappa

    scales = np.where(live, storable_scale(best_d.astype(np.float32), np.float16), scales)
    if mins is not None:
        mins = np.where(live, _to_f16(-best_d * best_z), mins)
    return grid.qtensor(grid.codes(g.astype(np.float32), scales, mins), scales, mins)


def _least_squares(q, target, d, z, symmetric):
    """Scale (and zero) minimizing ||target - d (q - z)||^2 per group, codes fixed; groups whose
    codes are all equal (or all zero) keep their d, z."""
    if symmetric:
        qq = (q * q).sum(axis=2)
        fitted = (q * target).sum(axis=2) / np.where(qq > 0, qq, 1.0)
        ok = (qq > 0) & (fitted > 0)
        return np.where(ok, fitted, d), z
    qc = q - q.mean(axis=2, keepdims=True)
    var = (qc * qc).sum(axis=2)
    slope = (qc * target).sum(axis=2) / np.where(var > 0, var, 1.0)
    ok = (var > 0) & (slope > 0)
    new_d = np.where(ok, slope, d)
    m = target.mean(axis=2) - new_d * q.mean(axis=2)  # target ~= d q + m, m = -d z
    return new_d, np.where(ok, -m / np.where(ok, new_d, 1.0), z)


def _to_f16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        stored = x.astype(np.float16)
    if not np.isfinite(stored).all():
        raise ValueError("weights too large for float16 group mins")
    return stored
