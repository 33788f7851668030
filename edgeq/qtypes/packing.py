"""Bit packing shared by the quantized layouts.

Every packer works group by group along the last axis and is the exact inverse of its
unpacker. The layouts interleave *planes* inside a group rather than neighbouring codes,
so that a SIMD or Numba kernel unpacks a contiguous run with one shift and one mask
(ggml's Q4_0 does the same for nibbles):

    nibbles (4 bits, 2 per byte):   byte j of a group holds code j (bits 0-3)
                                    and code j + G/2 (bits 4-7)
    crumbs  (2 bits, 4 per byte):   byte j holds codes j + l*G/4 in bits 2l..2l+1, l = 0..3
    base-3  (5 trits per byte):     byte j holds trits j + l*S, S = ceil(G/5), l = 0..4;
                                    positions j + l*S >= G hold trit 1 (code 0)
    bits    (1 bit, 8 per byte):    bit i of byte j holds code 8j + i (least significant first)

Codes handed to the packers are already unsigned (offset applied by the caller).
"""

import numpy as np

#: 3**l for the five trits of a base-3 byte.
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint16)


def _grouped(a: np.ndarray, group: int) -> np.ndarray:
    rows, k = a.shape
    if group <= 0 or k % group:
        raise ValueError(f"row length {k} is not a multiple of the packing group {group}")
    return a.reshape(rows, k // group, group)


def pack_planes(codes: np.ndarray, group: int, bits: int) -> np.ndarray:
    """Pack unsigned codes (rows, k) of `bits` in {1, 2, 4} bits into uint8 (rows, k*bits/8)."""
    per_byte = 8 // bits
    if group % per_byte:
        raise ValueError(f"group size {group} is not a multiple of {per_byte}")
    rows, k = codes.shape
    g = _grouped(codes.astype(np.uint8), group)
    planes = g.reshape(rows, k // group, per_byte, group // per_byte)
    packed = np.zeros(planes.shape[:2] + planes.shape[3:], dtype=np.uint8)
    for plane in range(per_byte):
        packed |= planes[:, :, plane, :] << np.uint8(plane * bits)
    return packed.reshape(rows, k * bits // 8)


def unpack_planes(packed: np.ndarray, group: int, bits: int) -> np.ndarray:
    """Inverse of pack_planes: uint8 (rows, k*bits/8) -> uint8 codes (rows, k)."""
    per_byte = 8 // bits
    rows, nbytes = packed.shape
    k = nbytes * per_byte
    g = packed.reshape(rows, k // group, group // per_byte)
    mask = np.uint8((1 << bits) - 1)
    planes = [(g >> np.uint8(plane * bits)) & mask for plane in range(per_byte)]
    return np.concatenate(planes, axis=2).reshape(rows, k)


def pack_bits(codes: np.ndarray) -> np.ndarray:
    """Pack 0/1 codes (rows, k) LSB-first into uint8 (rows, ceil(k/8)); padding bits are 0."""
    return np.packbits(codes.astype(np.uint8), axis=1, bitorder="little")


def unpack_bits(packed: np.ndarray, k: int) -> np.ndarray:
    return np.unpackbits(packed, axis=1, count=k, bitorder="little")


def base3_bytes_per_group(group: int) -> int:
    return -(-group // 5)


def pack_base3(trits: np.ndarray, group: int) -> np.ndarray:
    """Pack trits in {0, 1, 2} (rows, k) five to a byte.

    The five trits t0..t4 of a byte form v = sum t_l * 3**(4-l) (t0 most significant),
    stored as ceil(v * 256 / 243). Trit l is then recovered without a division:
    ((byte * 3**l) mod 256) * 3 >> 8 (the fixed-point scheme of ggml's TQ1_0).
    """
    rows, k = trits.shape
    g = _grouped(trits.astype(np.uint16), group)
    stride = base3_bytes_per_group(group)
    padded = np.ones((rows, k // group, 5 * stride), dtype=np.uint16)  # pad with trit 1 (= code 0)
    padded[:, :, :group] = g
    planes = padded.reshape(rows, k // group, 5, stride)
    value = np.zeros((rows, k // group, stride), dtype=np.uint16)
    for plane in range(5):
        value += planes[:, :, plane, :] * _POW3[4 - plane]
    packed = (value * 256 + 242) // 243
    return packed.astype(np.uint8).reshape(rows, k // group * stride)


def unpack_base3(packed: np.ndarray, group: int) -> np.ndarray:
    """Inverse of pack_base3: uint8 (rows, ngroups*ceil(G/5)) -> trits uint8 (rows, k)."""
    rows, nbytes = packed.shape
    stride = base3_bytes_per_group(group)
    ngroups = nbytes // stride
    g = packed.reshape(rows, ngroups, 1, stride).astype(np.uint16)
    shifted = (g * _POW3.reshape(1, 1, 5, 1)) & 0xFF
    trits = ((shifted * 3) >> 8).astype(np.uint8)
    return trits.reshape(rows, ngroups, 5 * stride)[:, :, :group].reshape(rows, ngroups * group)
