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


def static_activations(x: np.ndarray, scales, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Static int8 quantization: float32 x (m, k) on fixed scales, one per block of `block`
    values along k ((k/block,), or one scalar for all) -> codes int8 (m, k) and the scales
    broadcast to (m, k/block), as the matmul kernels take them. q = clip(rint(x / s), -127,
    127), rint halving to even as in the dynamic rule; a zero scale gives zero codes."""
    m, k = x.shape
    s = np.asarray(scales, dtype=np.float32).reshape(-1)
    if s.size == 1:
        s = np.full(k // block, s[0], dtype=np.float32)
    if s.shape != (k // block,) or not (np.isfinite(s).all() and (s >= 0).all()):
        raise ValueError(f"static activation scales must be {k // block} finite values >= 0 "
                         f"(one per block of {block}), got shape {s.shape}")
    safe = np.where(s > 0, s, np.float32(1))
    q = np.where((s > 0)[:, None], np.rint(x.reshape(m, -1, block) / safe[:, None]), 0)
    codes = np.clip(q, -ref.ACT_QMAX, ref.ACT_QMAX).astype(np.int8).reshape(m, k)
    return codes, np.ascontiguousarray(np.broadcast_to(s, (m, s.shape[0])))


def linear(x, qt: QTensor, *, backend: str | None = None, act_block: int | None = 32,
           binarize_activations: bool = False, act_scale=None) -> np.ndarray:
    """x (m, k) or (k,) float32 times the quantized (n, k) matrix, transposed: (m, n) or (n,).

    x is quantized to int8 per block of act_block values along k (per row with None);
    products are summed exactly in integers per block, then scaled (see kernels.reference).
    act_scale (static mode): calibrated scales, one per block (or one for all), used instead
    of each row's own maxima (static_activations).
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
        if act_scale is None:
            xq, xs = _kernel("quantize_act", "*", name)(x2, block)
        else:
            xq, xs = static_activations(x2, act_scale, block)
        y = _kernel("matmul", kind, name)(qt, xq, xs, block)
    return y[0] if vector else y
