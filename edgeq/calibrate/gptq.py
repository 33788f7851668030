"""GPTQ: quantize a layer column by column, moving each column's error onto the columns not yet
quantized (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", Algorithm 1).

For a layer y = x W^T with calibration inputs X (n rows), GPTQ minimizes ||X W^T - X Q^T||^2
one input column j at a time, using the Hessian of that error:

    H = 2 X^T X / n + damp * mean(diag(H)) * I                   (InputStats.hessian + damping)
    U = upper Cholesky factor of H^-1   (H^-1 = U^T U)
    for j in order:   q_j = nearest code of W[:, j] on its group's grid
                      err = (W[:, j] - dequant(q_j)) / U[j, j]
                      W[:, j+1:] -= err * U[j, j+1:]

Lazy batches: the update of columns beyond the current block of `block_size` columns is
deferred and applied once per block as one matrix product (the paper's Sec. 3 "lazy batch
updates"); the results equal the column-by-column sweep up to float rounding.

Columns whose input is always zero (H[j, j] == 0) get H[j, j] = 1 and weight 0, as in the paper's
code: the weight never meets a non-zero input.

Group scales are fitted when the sweep reaches the first column of a group, from that group's
weights as they are then (already updated by the errors of earlier columns); every column of
the group is then coded on that grid. In the natural order this is the reference
implementation's rule.

Act order (act_order=True): columns are visited by decreasing H[j, j] (stable sort). The
groups stay the layout's contiguous groups in the original column order (one scale per G
consecutive weights, so no index table is needed at run time); a group's grid is fitted the
first time the sweep visits any of its columns, from all G of its weights as they are at
that moment (weights beyond the current lazy block first receive the updates still pending
for them, so the fit sees exactly what an unbatched sweep would see).

With H = I and damp = 0 nothing moves (U = I), and GPTQ is round to nearest exactly.

Grid search (grid_search=True, the reference code's `mse` option): instead of the group's own
min and max, its grid covers [r lo, r hi] for the r in 1 - i/GRID_STEPS, i = 0 ..
GRID_STEPS * GRID_MAX_SHRINK, with the least sum |w - dequant(w)|**GRID_NORM over the group's
weights (per row; ties keep the wider grid). Clipping a few large weights buys a finer step
for the others, and GPTQ then spreads the clipped error onto later columns.
"""

from __future__ import annotations

import numpy as np

from edgeq.calibrate.grid import Grid
from edgeq.errors import FormatError
from edgeq.qtypes import QTensor

#: grid search: shrink steps, the largest shrink, and the error norm (as in the reference code)
GRID_STEPS = 100
GRID_MAX_SHRINK = 0.2
GRID_NORM = 2.4

def gptq(w, hessian, grid: Grid = Grid(), *, damp: float = 0.01, block_size: int = 128,
         act_order: bool = False, grid_search: bool = False) -> QTensor:
    """Quantize w (n, k) to `grid` with GPTQ, given the layer's Hessian H = 2 X^T X / rows (k, k).

    damp: added to the diagonal as a fraction of its mean (0.01 in the paper).
    block_size: columns per lazy batch (128 in the paper); does not change the result.
    act_order: visit columns by decreasing H[j, j] (see the module docstring for groups).
    grid_search: fit each group's grid by the clipping search of the module docstring.
    """
    g = grid.groups(w)
    weights = g.reshape(g.shape[0], -1).astype(np.float64)
    n, k = weights.shape
    h = _checked_hessian(hessian, k)
    if not damp >= 0:
        raise ValueError(f"damp must be >= 0, got {damp!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size <= 0:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")

    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    weights[:, dead] = 0.0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    weights = weights[:, order]
    h = h[np.ix_(order, order)]
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    u = _inverse_cholesky_upper(h, damp)

    codes = _sweep(weights, u, grid, order, block_size, grid_search)
    q = np.empty_like(codes.values)
    q[:, order] = codes.values
    return grid.qtensor(q, codes.scales, codes.mins)


class _Codes:
    """What the sweep produces: codes (in visiting order) and per-group grids (original order)."""

    def __init__(self, n: int, k: int, grid: Grid):
        ngroups = k // grid.group_size
        self.values = np.zeros((n, k), dtype=np.int16)
        self.scales = np.zeros((n, ngroups), dtype=np.float16)
        self.mins = None if grid.symmetric else np.zeros((n, ngroups), dtype=np.float16)
        self.fitted = np.zeros(ngroups, dtype=bool)


def _sweep(weights: np.ndarray, u: np.ndarray, grid: Grid, order: np.ndarray,
           block_size: int, grid_search: bool) -> _Codes:
    """The column sweep over `weights` (n, k) float64, already permuted to visiting order."""
    n, k = weights.shape
    size = grid.group_size
    out = _Codes(n, k, grid)
    position = np.argsort(order)  # original column -> visiting position
    for start in range(0, k, block_size):
        stop = min(start + block_size, k)
        errors = np.zeros((n, stop - start))
        for j in range(start, stop):
            group = order[j] // size
            if not out.fitted[group]:
                cols = position[group * size:(group + 1) * size]
                current = weights[:, cols]  # fancy indexing: a copy
                late = cols >= stop
                if late.any():  # the lazy updates not yet applied to these columns
                    current[:, late] -= errors[:, :j - start] @ u[start:j][:, cols[late]]
                current32 = current.astype(np.float32)
                scales, mins = (_searched_grid if grid_search else _minmax_grid)(grid, current32)
                out.scales[:, group] = scales
                if mins is not None:
                    out.mins[:, group] = mins
                out.fitted[group] = True
            scale = out.scales[:, group]
            low = None if out.mins is None else out.mins[:, group]
            # the hot loop: code one column, spread its error over the rest of the block
            column = weights[:, j]
            q = grid.codes(column.astype(np.float32)[:, None], scale, low)[:, 0]
            deq = q * scale.astype(np.float64)
            if low is not None:
                deq += low.astype(np.float64)
            err = (column - deq) / u[j, j]
            weights[:, j + 1:stop] -= np.outer(err, u[j, j + 1:stop])
            errors[:, j - start] = err
            out.values[:, j] = q
        weights[:, stop:] -= errors @ u[start:stop, stop:]
    return out


def _minmax_grid(grid: Grid, g: np.ndarray):
    return grid.fit(g.min(axis=1), g.max(axis=1))


def _searched_grid(grid: Grid, g: np.ndarray):
    """Per row of g (n, G): the shrunk grid with the least |error|**GRID_NORM."""
    lo, hi = g.min(axis=1), g.max(axis=1)
    best_scales, best_mins = grid.fit(lo, hi)
    best_err = np.full(g.shape[0], np.inf)
    for i in range(int(GRID_STEPS * GRID_MAX_SHRINK) + 1):
        r = np.float32(1 - i / GRID_STEPS)
        scales, mins = grid.fit(lo * r, hi * r)
        err = (np.abs(g - grid.values(grid.codes(g, scales, mins), scales, mins)) ** GRID_NORM).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scales = np.where(better, scales, best_scales)
        if mins is not None:
            best_mins = np.where(better, mins, best_mins)
    return best_scales, best_mins


def _checked_hessian(hessian, k: int) -> np.ndarray:
    h = np.array(hessian, dtype=np.float64)  # a copy: damping and dead columns change it
    if h.shape != (k, k):
        raise ValueError(f"Hessian of shape {h.shape} does not match a layer with {k} inputs")
    if not np.isfinite(h).all():
        raise FormatError("Hessian contains NaN or inf")
    return h


def _inverse_cholesky_upper(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper U with U^T U = h^-1 (h symmetric positive definite)."""
    try:
        lower = np.linalg.cholesky(h)
        inv_lower = np.linalg.solve(lower, np.eye(h.shape[0]))
        return np.linalg.cholesky(inv_lower.T @ inv_lower).T
    except np.linalg.LinAlgError:
        raise ValueError(f"the damped Hessian is not positive definite (damp={damp}); "
                         "raise damp or record more calibration rows") from None
