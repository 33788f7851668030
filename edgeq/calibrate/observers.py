"""Activation range observers: the clipping threshold T of a symmetric int8 activation
quantizer, scale = T / 127 (kernels.reference.ACT_QMAX), from calibration values x.

    minmax       T = max |x|
    percentile   T = the q-th percentile of |x| (q = 99.99)
    mse          T = the candidate (i / n) max|x|, i = 1..n (n = 100), with the least
                 mean (x - fq(x, T))**2,  fq(x, T) = clip(rint(x / s), -127, 127) * s, s = T / 127
    kl           TensorRT's entropy calibration (Migacz 2017, "8-bit Inference with TensorRT"):
                 histogram h of |x| in `bins` (2048) equal bins over [0, max|x|]; for each
                 candidate i = levels .. bins (levels = 128 int8 magnitudes, every `stride`-th):
                   P = h[:i] with the clipped tail sum(h[i:]) added to P[i-1]
                   Q = h[:i] merged into `levels` runs of about i / levels bins, each run's count
                       spread evenly over its bins that are non-zero in h, 0 elsewhere
                 T = i * bin width for the i with the least KL(P || Q) (both normalized; Q gets
                 KL_EPS on bins where P > 0 and Q = 0, so no candidate is infinitely bad)

Per tensor (per_channel=False: one T for all of x) or per channel (one T per index of the last
axis, the input channel of a linear layer). Ties pick the smallest threshold.
"""

from __future__ import annotations

import numpy as np

from edgeq.kernels.reference import ACT_QMAX

METHODS = ("minmax", "percentile", "mse", "kl")
#: probability given to a bin of Q that P uses but Q left empty (before renormalizing)
KL_EPS = 1e-4


def observe(x, method: str = "minmax", *, per_channel: bool = False, percentile: float = 99.99,
            candidates: int = 100, bins: int = 2048, levels: int = ACT_QMAX + 1,
            stride: int = 1) -> np.ndarray:
    """Threshold T: float32 () per tensor, (channels,) per channel."""
    if method not in METHODS:
        raise ValueError(f"unknown observer {method!r}; choose from {', '.join(METHODS)}")
    x = np.asarray(x)
    if x.size == 0 or (per_channel and x.ndim == 0):
        raise ValueError(f"no values to observe (shape {x.shape})")
    values = np.abs(x.reshape(-1, x.shape[-1]) if per_channel else x.reshape(-1, 1)).astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("observed values contain NaN or inf")
    if method == "minmax":
        t = values.max(axis=0)
    elif method == "percentile":
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
        t = np.percentile(values, percentile, axis=0)
    elif method == "mse":
        t = mse_threshold(values, candidates)
    else:
        if not (levels >= 2 and bins >= levels and stride >= 1):
            raise ValueError(f"need 2 <= levels <= bins and stride >= 1, got levels={levels}, "
                             f"bins={bins}, stride={stride}")
        t = np.array([kl_threshold(values[:, c], bins, levels, stride) for c in range(values.shape[1])])
    t = t.astype(np.float32)
    return t if per_channel else t.reshape(())


def activation_scale(threshold) -> np.ndarray:
    """int8 scale T / 127 (float32)."""
    return (np.asarray(threshold, dtype=np.float32) / np.float32(ACT_QMAX)).astype(np.float32)


def fake_quantize(x, threshold) -> np.ndarray:
    """x quantized to int8 with range T and back, float64 (a zero threshold gives zeros)."""
    x = np.asarray(x, dtype=np.float64)
    s = np.asarray(threshold, dtype=np.float64) / ACT_QMAX
    safe = np.where(s > 0, s, 1.0)
    return np.where(s > 0, np.clip(np.rint(x / safe), -ACT_QMAX, ACT_QMAX) * s, 0.0)


def mse_threshold(values: np.ndarray, candidates: int) -> np.ndarray:
    """Per column of |x| values (n, c): the candidate threshold with the least MSE."""
    if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < 1:
        raise ValueError(f"candidates must be a positive integer, got {candidates!r}")
    amax = values.max(axis=0)
    best_t = amax.copy()
    best_err = np.full(amax.shape, np.inf)
    for i in range(1, candidates + 1):
        t = amax * (i / candidates)
        err = ((values - fake_quantize(values, t)) ** 2).mean(axis=0)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_t = np.where(better, t, best_t)
    return best_t


def kl_threshold(values: np.ndarray, bins: int, levels: int, stride: int) -> float:
    """TensorRT's entropy-calibrated threshold for |x| values (n,) (see the module docstring)."""
    amax = float(values.max())
    if amax == 0:
        return 0.0
    hist = np.histogram(values, bins=bins, range=(0.0, amax))[0].astype(np.float64)
    best_i, best_kl = bins, np.inf
    for i in range(levels, bins + 1, stride):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        kl = _kl(p, _merged(hist[:i], levels))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i * amax / bins


def _merged(h: np.ndarray, levels: int) -> np.ndarray:
    """h quantized to `levels` runs of bins, each run's count spread over its non-zero bins."""
    run = (np.arange(h.size) * levels) // h.size  # run index of every bin
    nonzero = h > 0
    totals = np.bincount(run, weights=h, minlength=levels)
    counts = np.bincount(run, weights=nonzero, minlength=levels)
    per_bin = totals / np.where(counts > 0, counts, 1)
    return np.where(nonzero, per_bin[run], 0.0)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    if q.sum() == 0:  # every count is in the clipped tail: nothing left to compare
        return np.inf
    p = p / p.sum()
    support = p > 0
    q = np.where(support & (q == 0), KL_EPS * q.sum(), q)
    q = q / q.sum()
    return float(np.sum(p[support] * np.log(p[support] / q[support])))
