"""SmoothQuant: move activation outliers into the weights with per-input-channel factors
(Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models").

For layers y = x W^T reading the same input, with a_j = max |x_j| over the calibration rows
and b_j = max |W[:, j]| over all those layers' rows:

    s_j = a_j**alpha / b_j**(1 - alpha)          (alpha = 0.5 in the paper)
    y = (x / s) (W diag(s))^T                    exactly, in real arithmetic

so activations lose their outlier channels (easier to quantize to int8) and the weights take
them on. A channel whose activation or weight maximum is 0 keeps s_j = 1 (nothing to
balance); other maxima are floored at `floor` (1e-5, as in the paper's code).

Folding: divide the preceding norm's weight (and bias) by s, or the preceding linear's output
rows; the smoothed weights then go to any weight quantizer. As a recipe algorithm
("smoothquant", recipe.SmoothQuantParams(alpha)) the driver does both for every input group
with a fold target (driver.apply_input_scales) and rounds the smoothed weights to nearest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgeq.qtypes.base import as_matrix


@dataclass(frozen=True)
class SmoothResult:
    weights: tuple[np.ndarray, ...]  # W_i diag(s), float32, one per layer passed
    factors: np.ndarray              # s, float32 (k,): the layers' input is divided by it


def smooth(act_absmax, weights: Sequence, alpha: float = 0.5, floor: float = 1e-5) -> SmoothResult:
    """Smoothing factors for layers `weights` ((n_i, k) each) sharing an input with per-channel
    maxima `act_absmax` (k,) (InputStats.absmax)."""
    a = np.asarray(act_absmax, dtype=np.float64)
    mats = [as_matrix(w) for w in weights]
    if not mats:
        raise ValueError("smooth needs at least one weight matrix")
    if a.ndim != 1 or not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"act_absmax must be finite non-negative values (k,), got shape {a.shape}")
    for w in mats:
        if w.shape[1] != a.shape[0]:
            raise ValueError(f"weight of shape {w.shape} does not read {a.shape[0]} input channels")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if not floor > 0:
        raise ValueError(f"floor must be positive, got {floor!r}")
    b = np.max([np.abs(w).max(axis=0) for w in mats], axis=0).astype(np.float64)
    s = np.maximum(a, floor) ** alpha / np.maximum(b, floor) ** (1 - alpha)
    s = np.where((a > 0) & (b > 0), s, 1.0).astype(np.float32)
    return SmoothResult(tuple(w * s for w in mats), s)
