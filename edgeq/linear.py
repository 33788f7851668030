"""The integer linear layer: y = x @ W.T with W quantized and x quantized on the fly."""

import numpy as np

from edgeq.errors import UnsupportedError
from edgeq.kernels import backends
from edgeq.kernels import reference as ref
from edgeq.kernels.table import lookup, weight_kind
from edgeq.qtypes import QTensor


def activation_block(k: int, act_block: int | None) -> int:
    """Values per activation scale: act_block when it tiles the row, else the whole row."""
    if act_block is None:
        return k
    if act_block <= 0:
        raise ValueError(f"act_block must be positive, got {act_block}")
    return act_block if k % act_block == 0 else k


def _kernel(op: str, kind: str, backend: str):
    return lookup(op, kind, backend) or lookup(op, kind, "numpy")


def linear(x, qt: QTensor, *, backend: str | None = None, act_block: int | None = 32,
           binarize_activations: bool = False) -> np.ndarray:
    """x (m, k) or (k,) float32 times the quantized (n, k) matrix, transposed: (m, n) or (n,).

    x is quantized to int8 per block of act_block values along k (per row with None);
    products are summed exactly in integers per block, then scaled (see kernels.reference).
    binarize_activations (binary weights only): XNOR-Net, x becomes sign(x) * mean|x| per row
    and the dot product is an XNOR-popcount.
    """
    x = np.asarray(x, dtype=np.float32)
    vector = x.ndim == 1
    x2 = np.ascontiguousarray(x.reshape(1, -1) if vector else x)
    n, k = qt.shape
    if x2.ndim != 2 or x2.shape[1] != k:
        raise ValueError(f"input of shape {x.shape} does not match a weight of shape {qt.shape}")
    if not np.isfinite(x2).all():
        raise ValueError("input contains NaN or inf")
    name = backends.resolve(backend)
    kind = weight_kind(qt.spec)
    if binarize_activations:
        if qt.qtype != "binary":
            raise UnsupportedError(f"binarized activations need binary weights, not {qt.qtype}")
        x_bits, x_scales = ref.binarize_activations(x2)
        dots = _kernel("xnor", "binary", name)(qt.data["codes"], x_bits, k)
        y = dots.astype(np.float32) * (x_scales[:, None] * qt.scales()[:, 0][None, :])
    else:
        block = activation_block(k, act_block)
        xq, xs = _kernel("quantize_act", "*", name)(x2, block)
        y = _kernel("matmul", kind, name)(qt, xq, xs, block)
    return y[0] if vector else y
