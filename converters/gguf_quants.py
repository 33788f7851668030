"""GGML block types -> edgeq layouts: exact repacking, or dequantize and re-quantize.

Exact imports (no rounding: the same numbers, repacked). A GGML row of k values is k/B blocks;
GGUF stores rows of blocks back to back, and numpy sees a tensor as (rows, k/B * block bytes).

    GGML   B    block bytes                          value                  edgeq layout
    Q8_0   32   d f16 | qs int8[32]                  d * qs[j]              int8 sym, group 32
    Q4_0   32   d f16 | qs u8[16]                    d * (n_j - 8)          int4 sym, group 32
    Q4_1   32   d f16 | m f16 | qs u8[16]            d * n_j + m            int4 asym, group 32
    TQ2_0  256  qs u8[64] | d f16                    d * (t_j - 1)          ternary 2bit, group 256
    TQ1_0  256  qs u8[48] | qh u8[4] | d f16         d * (t_j - 1)          ternary base3, group 256

Q4_0/Q4_1 nibbles: byte j holds n_j in bits 0-3 and n_{j+16} in bits 4-7, which is edgeq's int4
nibble-plane order, so the code bytes are copied unchanged and d, m become scales and mins.
Q8_0 code bytes are copied unchanged. TQ2_0: value 128c + 32l + m of a block is bits 2l..2l+1
of byte 32c + m. TQ1_0: byte b holds five trits in base 3 scaled by 256/243; trit l is
((b * 3**l) mod 256) * 3 >> 8. Bytes 0-31 give values 32l + m (l = 0..4), bytes 32-47 give
160 + 16l + m, and the 4 qh bytes give 240 + 4l + m (l = 0..3). Ternary codes are decoded and
repacked into edgeq's own packing (whose planes span the whole 256-value group).

Every other type (Q5_0, Q5_1, K-quants, IQ types, ...) has no exact edgeq form: it is
dequantized with gguf.quants.dequantize and quantized again (see fallback_qtype), and the
error is measured.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants as gguf_quants

from edgeq.errors import UnsupportedError
from edgeq.qtypes import QTensor, QuantSpec, from_components
from edgeq.qtypes.packing import pack_base3, pack_planes

TERNARY_GROUP = 256
#: codes of a TQ1_0 block in the order of its base-3 bytes: (first byte, bytes, trits per byte)
_TQ1_SPANS = ((0, 32, 5), (32, 16, 5), (48, 4, 4))
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint16)


def blocks(raw: np.ndarray, ggml_type: T) -> np.ndarray:
    """View a (rows, bytes) GGML tensor as (rows, blocks per row, block bytes)."""
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    return raw.reshape(raw.shape[0], -1, type_size)


def _f16(b: np.ndarray) -> np.ndarray:
    """(rows, nblocks, 2) bytes -> float16 (rows, nblocks)."""
    return np.ascontiguousarray(b).view(np.float16)[:, :, 0]


def _q8_0(raw: np.ndarray, rows: int, k: int) -> QTensor:
    b = blocks(raw, T.Q8_0)
    codes = np.ascontiguousarray(b[:, :, 2:]).view(np.int8).reshape(rows, k)
    return from_components(QuantSpec("int8", "group", 32, True), (rows, k),
                           {"codes": codes, "scales": _f16(b[:, :, :2])})


def _q4_0(raw: np.ndarray, rows: int, k: int) -> QTensor:
    b = blocks(raw, T.Q4_0)
    codes = np.ascontiguousarray(b[:, :, 2:]).reshape(rows, k // 2)
    return from_components(QuantSpec("int4", "group", 32, True), (rows, k),
                           {"codes": codes, "scales": _f16(b[:, :, :2])})


def _q4_1(raw: np.ndarray, rows: int, k: int) -> QTensor:
    b = blocks(raw, T.Q4_1)
    codes = np.ascontiguousarray(b[:, :, 4:]).reshape(rows, k // 2)
    return from_components(QuantSpec("int4", "group", 32, False), (rows, k),
                           {"codes": codes, "scales": _f16(b[:, :, :2]), "mins": _f16(b[:, :, 2:4])})


def tq2_0_trits(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TQ2_0 -> trits t in {0, 1, 2} (rows, k) in value order, and d float16 (rows, k/256)."""
    b = blocks(raw, T.TQ2_0)
    rows, nb, _ = b.shape
    qs = b[:, :, :64].reshape(rows, nb, 2, 1, 32)                 # (chunk c, -, byte m)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 4, 1)
    trits = (qs >> shifts) & np.uint8(3)                          # (rows, nb, c, l, m)
    return trits.reshape(rows, nb * TERNARY_GROUP), _f16(b[:, :, 64:66])


def tq1_0_trits(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TQ1_0 -> trits t in {0, 1, 2} (rows, k) in value order, and d float16 (rows, k/256)."""
    b = blocks(raw, T.TQ1_0)
    rows, nb, _ = b.shape
    parts = []
    for first, count, per_byte in _TQ1_SPANS:
        q = b[:, :, first:first + count].astype(np.uint16)[:, :, None, :]
        shifted = (q * _POW3[:per_byte].reshape(1, 1, per_byte, 1)) & 0xFF
        parts.append((((shifted * 3) >> 8).astype(np.uint8)).reshape(rows, nb, per_byte * count))
    trits = np.concatenate(parts, axis=2)
    return trits.reshape(rows, nb * TERNARY_GROUP), _f16(b[:, :, 52:54])


def _ternary(trits: np.ndarray, d: np.ndarray, packing: str) -> QTensor:
    rows, k = trits.shape
    if packing == "2bit":
        codes = pack_planes(trits, TERNARY_GROUP, 2)
    else:
        codes = pack_base3(trits, TERNARY_GROUP)
    return from_components(QuantSpec("ternary", "group", TERNARY_GROUP, True, packing), (rows, k),
                           {"codes": codes, "scales": d})


def _tq2_0(raw: np.ndarray, rows: int, k: int) -> QTensor:
    return _ternary(*tq2_0_trits(raw), "2bit")


def _tq1_0(raw: np.ndarray, rows: int, k: int) -> QTensor:
    return _ternary(*tq1_0_trits(raw), "base3")


#: GGML type -> fn(raw uint8 (rows, bytes), rows, k) -> QTensor holding the same numbers
EXACT = {T.Q8_0: _q8_0, T.Q4_0: _q4_0, T.Q4_1: _q4_1, T.TQ2_0: _tq2_0, T.TQ1_0: _tq1_0}
#: the spec each exact import produces (used to skip a re-quantization that would change nothing)
EXACT_SPECS = {T.Q8_0: QuantSpec("int8", "group", 32, True),
               T.Q4_0: QuantSpec("int4", "group", 32, True),
               T.Q4_1: QuantSpec("int4", "group", 32, False),
               T.TQ2_0: QuantSpec("ternary", "group", TERNARY_GROUP, True, "2bit"),
               T.TQ1_0: QuantSpec("ternary", "group", TERNARY_GROUP, True, "base3")}


def import_exact(raw: np.ndarray, ggml_type: T, rows: int, k: int) -> QTensor:
    return EXACT[ggml_type](raw, rows, k)


def bits_per_weight(ggml_type: T) -> float:
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    return 8.0 * type_size / block


def fallback_qtype(ggml_type: T) -> dict:
    """Where a type with no exact form goes under qtype="keep": types of at most 4.5 bits per
    weight (Q4_K, Q3_K, Q2_K, IQ*, MXFP4) become int4 asymmetric group 32, wider ones (Q5_*,
    Q6_K, Q8_1, Q8_K) int8 symmetric group 32, so no tensor loses more than a 4-bit or 8-bit
    round-to-nearest of its dequantized values."""
    if bits_per_weight(ggml_type) <= 4.5:
        return {"qtype": "int4", "group_size": 32, "symmetric": False}
    return {"qtype": "int8", "group_size": 32, "symmetric": True}


def can_dequantize(ggml_type: T) -> bool:
    """Whether gguf.quants decodes this type (probed on one all-zero block; the package raises
    NotImplementedError for types it has no decoder for)."""
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    probe = np.zeros((1, type_size), dtype=np.uint8)
    if ggml_type in (T.F32, T.F16):
        probe = probe.view(np.float32 if ggml_type == T.F32 else np.float16)
    try:
        gguf_quants.dequantize(probe, ggml_type)
    except NotImplementedError:
        return False
    return True


def dequantize(raw: np.ndarray, ggml_type: T, name: str) -> np.ndarray:
    """float32 values (rows, k) of a GGML tensor or row slice, decoded by gguf.quants."""
    try:
        values = gguf_quants.dequantize(np.asarray(raw), ggml_type)
    except NotImplementedError:
        raise UnsupportedError(f"tensor {name!r}: GGML type {ggml_type.name} cannot be decoded "
                               f"by the installed gguf package") from None
    return values.astype(np.float32, copy=False)
