"""AWQ: activation-aware per-input-channel scaling before quantization (Lin et al. 2023, "AWQ:
Activation-aware Weight Quantization for LLM Compression and Acceleration").

Input channels that carry large activations matter more. AWQ multiplies weight column j by
s_j > 1 for them (so its quantization error shrinks relative to the weight) and divides the
activation by s_j, which is free when folded into the operation before the layer:

    y = x W^T = (x / s) (W diag(s))^T  ~=  (x / s) Q(W diag(s))^T

Scale search: s = absmean(x)**alpha, normalized by sqrt(max(s) * min(s)), for alpha on the grid
i / n_grid, i = 0 .. n_grid - 1 (alpha = 0 is plain round to nearest). The alpha with the least
output error sum_i ||X w_i^T - (X/s) q_i^T||^2 over the calibration rows wins; the error comes
from the Gram matrix X^T X (stats.output_error), so no activations are kept.

Clipping search (clip=True, after the scale search): per group, the grid's range is narrowed to
[max(lo, -r*a), min(hi, r*a)], a = max|w| of the group, for r = 1 - i/n_grid while
r > 1 - max_shrink; each group keeps the r with the least error ||X_g e_g^T||^2 of its own
input slice (cross-group terms are ignored, as in the paper's code). r = 1 is always a
candidate, so no group's own error grows.

Several layers reading the same input (q, k and v after one norm; gate and up) share one s:
pass them together, the error is their sum. Folding s: divide the preceding norm's weight
(or the preceding linear's output rows) by s; run time then computes (x / s) Q^T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgeq.calibrate.grid import Grid
from edgeq.calibrate.stats import InputStats, output_error
from edgeq.qtypes import QTensor
from edgeq.qtypes.base import as_matrix

#: smallest s_j before normalization: a channel that is never active keeps a usable scale
MIN_SCALE = 1e-4


@dataclass(frozen=True)
class AWQResult:
    qtensors: tuple[QTensor, ...]  # Q(W_i diag(s)), one per layer passed
    scales: np.ndarray             # s, float32 (k,): divide the layers' input by it
    alpha: float
    error: float                   # output error after scaling (and clipping)
    rtn_error: float               # output error of round to nearest, for comparison


def awq(weights: Sequence, stats: InputStats, grid: Grid = Grid(), *, n_grid: int = 20,
        clip: bool = True, max_shrink: float = 0.5) -> AWQResult:
    """AWQ for the layers `weights` (each (n_i, k)) sharing the input described by `stats`."""
    mats = [as_matrix(w) for w in weights]
    if not mats:
        raise ValueError("awq needs at least one weight matrix")
    k = stats.k
    for w in mats:
        if w.shape[1] != k:
            raise ValueError(f"weight of shape {w.shape} does not read the {k} inputs of the statistics")
        grid.groups(w)  # the group size must divide k
    if isinstance(n_grid, bool) or not isinstance(n_grid, (int, np.integer)) or n_grid <= 0:
        raise ValueError(f"n_grid must be a positive integer, got {n_grid!r}")
    if not 0 <= max_shrink < 1:
        raise ValueError(f"max_shrink must be in [0, 1), got {max_shrink!r}")
    gram = stats.gram
    absmean = stats.absmean

    def error(s: np.ndarray, clipped: bool) -> tuple[float, list[QTensor]]:
        qts = [_quantize_scaled(w * s, gram / np.outer(s, s), grid, n_grid, max_shrink, clipped)
               for w in mats]
        total = sum(output_error(w, qt.dequantize() / s, gram) for w, qt in zip(mats, qts))
        return total, qts

    alphas = [i / n_grid for i in range(n_grid)]
    errors = [error(channel_scales(absmean, alpha), clipped=False)[0] for alpha in alphas]
    alpha = alphas[int(np.argmin(errors))]  # the first minimum: ties keep the smaller alpha
    s = channel_scales(absmean, alpha)
    err, qts = error(s, clipped=clip)
    return AWQResult(tuple(qts), s, alpha, err, rtn_error=errors[0])


def channel_scales(absmean: np.ndarray, alpha: float) -> np.ndarray:
    """s = max(absmean, MIN_SCALE)**alpha / sqrt(max * min), float32 (alpha = 0 gives ones)."""
    s = np.maximum(np.asarray(absmean, dtype=np.float64), MIN_SCALE) ** alpha
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def _quantize_scaled(w: np.ndarray, gram: np.ndarray, grid: Grid, n_grid: int,
                     max_shrink: float, clip: bool) -> QTensor:
    """Quantize the scaled weight w (n, k); with clip, choose each group's clip ratio by the
    error of its own input slice (gram: the Gram matrix of the scaled inputs)."""
    g = grid.groups(w)
    if not clip:
        return grid.rtn(w)
    lo, hi = g.min(axis=2), g.max(axis=2)
    amax = np.maximum(-lo, hi)
    size = grid.group_size
    ngroups = g.shape[1]
    blocks = gram.reshape(ngroups, size, ngroups, size)[np.arange(ngroups), :, np.arange(ngroups), :]
    best_err = np.full(lo.shape, np.inf)
    best_scales, best_mins = grid.fit(lo, hi)
    for i in range(n_grid):
        r = np.float32(1 - i / n_grid)
        if i and r <= 1 - max_shrink:
            break
        low = np.maximum(lo, -r * amax)
        scales, mins = grid.fit(low, np.maximum(np.minimum(hi, r * amax), low))
        e = g.astype(np.float64) - grid.values(grid.codes(g, scales, mins), scales, mins)
        err = np.einsum("rgi,gij,rgj->rg", e, blocks, e)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scales = np.where(better, scales, best_scales)
        if mins is not None:
            best_mins = np.where(better, mins, best_mins)
    return grid.qtensor(grid.codes(g, best_scales, best_mins), best_scales, best_mins)
