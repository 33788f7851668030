"""Scale computation shared by the layouts: group statistics and storable scales.

Rounding rule for codes everywhere: round half to even (numpy.rint), applied to w / scale
where scale is the value *as stored* (after rounding to float16 for group scales), so the
dequantization bound holds for the numbers actually in the file.
"""

import numpy as np


def grouped(w: np.ndarray, spec) -> np.ndarray:
    """View (rows, k) as (scale_rows, groups, codes_per_group)."""
    rows, k = w.shape
    if spec.granularity == "tensor":
        return w.reshape(1, 1, rows * k)
    if spec.granularity == "row":
        return w.reshape(rows, 1, k)
    return w.reshape(rows, k // spec.group_size, spec.group_size)


def storable_scale(scale: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round scales to `dtype`, never downwards, so scale * qmax still covers the group."""
    with np.errstate(over="ignore"):  # an overflow to inf is reported below
        stored = scale.astype(dtype)
    low = stored.astype(np.float32) < scale
    if low.any():
        stored[low] = np.nextafter(stored[low], np.array(np.inf, dtype=dtype))
    if not np.isfinite(stored).all():
        hint = "; use granularity='row' (float32 scales)" if np.dtype(dtype) == np.float16 else ""
        raise ValueError(f"weights too large for {np.dtype(dtype).name} scales{hint}")
    return stored


def symmetric_scale(groups: np.ndarray, qmax: float, dtype: np.dtype) -> np.ndarray:
    """absmax / qmax per group (shape (scale_rows, groups)), stored in `dtype`."""
    amax = np.abs(groups).max(axis=2)
    return storable_scale(amax / np.float32(qmax), dtype)


def divide_or_zero(groups: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """groups / scale with all-zero groups (scale 0) giving 0 instead of NaN."""
    s = scale.astype(np.float32)[:, :, None]
    safe = np.where(s > 0, s, np.float32(1))
    return np.where(s > 0, groups / safe, np.float32(0))
