"""Statistics of one linear layer's inputs, accumulated batch by batch.

For a linear layer y = x W^T with W of shape (n, k), a calibration driver hands every batch of
input rows x (..., k) it sees to InputStats.update. The weight algorithms need only:

    gram     sum of x^T x over all rows, float64 (k, k)   GPTQ's Hessian, AWQ's error
    absmax   max |x_j| per input channel, float64 (k,)     SmoothQuant
    absmean  mean |x_j| per input channel, float64 (k,)    AWQ's scale s = absmean**alpha

so a layer costs k*k float64 whatever the number of samples. The output error of a weight
W_hat on the calibration rows follows from the Gram matrix alone:
    ||X W^T - X W_hat^T||_F^2 = sum_i e_i G e_i^T,   e_i = row i of W - W_hat   (output_error)
"""

from __future__ import annotations

import numpy as np

from edgeq.errors import FormatError


class InputStats:
    """Running sums over the input rows of one linear layer with k input features."""

    def __init__(self, k: int):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"input width must be a positive integer, got {k!r}")
        self.k = int(k)
        self.rows = 0
        self.gram = np.zeros((self.k, self.k), dtype=np.float64)
        self.absmax = np.zeros(self.k, dtype=np.float64)
        self._abssum = np.zeros(self.k, dtype=np.float64)

    @classmethod
    def from_inputs(cls, x) -> InputStats:
        x = np.asarray(x)
        stats = cls(x.shape[-1] if x.ndim else 0)
        stats.update(x)
        return stats

    def update(self, x) -> None:
        """Add input rows x (..., k); any leading shape (batch, positions) is flattened."""
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.k:
            raise ValueError(f"inputs of shape {x.shape} do not end in the layer width {self.k}")
        rows = x.reshape(-1, self.k).astype(np.float64)
        if not np.isfinite(rows).all():
            raise FormatError("calibration inputs contain NaN or inf")
        if rows.shape[0] == 0:
            return
        self.rows += rows.shape[0]
        self.gram += rows.T @ rows
        np.maximum(self.absmax, np.abs(rows).max(axis=0), out=self.absmax)
        self._abssum += np.abs(rows).sum(axis=0)

    @property
    def absmean(self) -> np.ndarray:
        self._need_rows()
        return self._abssum / self.rows

    def scaled(self, s: np.ndarray) -> InputStats:
        """The statistics of the inputs x / s (s: per-channel factors, as AWQ folds them)."""
        s = np.asarray(s, dtype=np.float64)
        out = InputStats(self.k)
        out.rows = self.rows
        out.gram = self.gram / np.outer(s, s)
        out.absmax = self.absmax / s
        out._abssum = self._abssum / s
        return out

    def hessian(self) -> np.ndarray:
        """GPTQ's H = 2 X^T X / n (without damping), float64 (k, k)."""
        self._need_rows()
        return 2.0 * self.gram / self.rows

    def _need_rows(self) -> None:
        if self.rows == 0:
            raise ValueError("no calibration rows were recorded for this layer")


def output_error(w, w_hat, gram: np.ndarray) -> float:
    """||X W^T - X W_hat^T||_F^2 for the rows X whose Gram matrix X^T X is `gram`."""
    e = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)
    return float(np.einsum("ij,ij->", e @ gram, e))
