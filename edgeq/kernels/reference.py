"""NumPy reference kernels: the specification every fast backend must match.

Integer rules (written once, here):
- Activations are quantized symmetrically to int8 per block of B values along k:
  s = absmax / 127 (float32), q = rint(x / s) (half to even), q in [-127, 127]; an all-zero
  block has s = 0 and q = 0. Each row is quantized on its own, so padding rows in a batch
  never change another row's scales.
- A weight (rows, k) with one scale per G codes and activations with one scale per B values
  are multiplied in sub-blocks of b = gcd(G, B) codes: each sub-block's integer sum
  sum(c * q) is exact in int32 while b * max|c| * 128 <= 2**31 - 1 (128 = |-128|: an int8
  activation handed in from outside may hold -128; accumulator_dtype checks, int64 beyond).
- Scale-min layouts (int4 asymmetric: w = d*c + m) also need sum(q) per sub-block.
- The float result is y[i, n] = sum over sub-blocks of float32(isum) * (ws * xs)
  (+ float32(qsum) * (wm * xs)), in float32.
"""

import math

import numpy as np

INT32_MAX = 2**31 - 1
ACT_QMAX = 127


def quantize_activations(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 (m, k) -> int8 codes (m, k) and float32 scales (m, k/block)."""
    m, k = x.shape
    xb = x.reshape(m, k // block, block)
    scales = (np.abs(xb).max(axis=2) / np.float32(ACT_QMAX)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))[:, :, None]
    q = np.where(scales[:, :, None] > 0, np.rint(xb / safe), 0)
    return np.clip(q, -ACT_QMAX, ACT_QMAX).astype(np.int8).reshape(m, k), scales


def accumulator_dtype(sub_block: int, max_abs_code: int) -> np.dtype:
    """int32 when a sub-block sum provably fits, else int64."""
    bound = sub_block * max_abs_code * (ACT_QMAX + 1)
    return np.dtype(np.int32 if bound <= INT32_MAX else np.int64)


def block_sums(codes: np.ndarray, xq: np.ndarray, sub_block: int, acc: np.dtype) -> np.ndarray:
    """Integer sums per sub-block: codes (n, k) ints, xq (m, k) int8 -> acc (m, n, k/sub_block)."""
    n, k = codes.shape
    m = xq.shape[0]
    c = codes.reshape(n, k // sub_block, sub_block).astype(np.int64)
    q = xq.reshape(m, k // sub_block, sub_block).astype(np.int64)
    return np.einsum("nbj,mbj->mnb", c, q).astype(acc)


def act_sums(xq: np.ndarray, sub_block: int) -> np.ndarray:
    """sum(q) per sub-block: int32 (m, k/sub_block)."""
    m, k = xq.shape
    return xq.reshape(m, k // sub_block, sub_block).astype(np.int32).sum(axis=2)


def expand(scales: np.ndarray, rows: int, per: int, nsub: int) -> np.ndarray:
    """Scales (rows|1, k/per) -> one per sub-block (rows, nsub)."""
    s = np.broadcast_to(scales, (rows, scales.shape[1]))
    return np.repeat(s, nsub // s.shape[1], axis=1).astype(np.float32)


def apply_scales(isum, qsum, w_scales, w_mins, x_scales) -> np.ndarray:
    """Combine per-sub-block sums with scales (all already expanded to sub-blocks) -> (m, n)."""
    y = (isum.astype(np.float32) * (x_scales[:, None, :] * w_scales[None, :, :])).sum(axis=2)
    if w_mins is not None:
        y += (qsum.astype(np.float32)[:, None, :] * (x_scales[:, None, :] * w_mins[None, :, :])).sum(axis=2)
    return y.astype(np.float32)


def sub_block_size(weight_block: int, act_block: int) -> int:
    return math.gcd(weight_block, act_block)


def binarize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """XNOR-Net activations: sign bits (1 for x >= 0, LSB first) and scale mean|x| per row."""
    bits = np.packbits(x >= 0, axis=1, bitorder="little")
    return bits, np.abs(x).mean(axis=1).astype(np.float32)


def xnor_dot(w_bits: np.ndarray, x_bits: np.ndarray, k: int) -> np.ndarray:
    """Sign-vector dot products k - 2*popcount(w XOR x): uint8 (n, kb), (m, kb) -> int32 (m, n)."""
    diff = np.bitwise_xor(x_bits[:, None, :], w_bits[None, :, :])
    popcount = np.unpackbits(diff, axis=2).sum(axis=2, dtype=np.int64)
    return (k - 2 * popcount).astype(np.int32)
