"""Write tests/golden/native_kernels.bin: inputs and NumPy-reference outputs for the C driver.

native/test_driver.c replays every case against each SIMD variant (on x86, and on aarch64
under qemu), so the C kernels are checked against the reference without Python.

File format (little-endian):
    magic b"EQNG", uint32 version (1), uint32 number of cases
    each case: int64 header[12], then uint32 n_arrays and n_arrays times (int64 nbytes, bytes)
    header = op, kind, rows (n), k, m, pack_group, row_bytes, scale_block, scale_rows,
             scale_f16, block (act block, sub-block or quantization block), 0
    op 0 quantize_act: arrays x (m, k) f32 | expected q (m, k) i8, scales (m, k/block) f32
    op 1 block_sums:   codes, scales, mins, zeros, xq (m, k) i8 | expected int32 (m, n, k/block)
    op 2 matmul:       codes, scales, mins, zeros, xq, xs (m, k/block) f32 | expected f32 (m, n)
    op 3 xnor:         w bits (n, kb), x bits (m, kb) | expected int32 (m, n); k in the header
Absent components (mins, zeros) are empty arrays. Weight components are random bytes (every
code value, including the ones only imports produce), not just quantizer output.

Run: python tests/golden/make_native_golden.py
"""

import math
import struct
from pathlib import Path

import numpy as np

from edgeq.kernels import numpy_backend
from edgeq.kernels import reference as ref
from edgeq.kernels.table import weight_kind
from edgeq.qtypes import QTensor, QuantSpec, get_layout

OUT = Path(__file__).with_name("native_kernels.bin")
KIND_IDS = {"int8": 0, "int8_asym": 1, "int4": 2, "int4_asym": 3, "ternary_2bit": 4,
            "ternary_base3": 5, "binary": 6, "pow2": 7, "int3": 8, "int3_asym": 9, "int2": 10,
            "int2_asym": 11}
OP_QUANTIZE, OP_BLOCK_SUMS, OP_MATMUL, OP_XNOR = range(4)

#: (qtype, granularity, group_size, symmetric, packing, rows, k)
WEIGHTS = [
    ("int8", "row", 0, True, "", 5, 96),
    ("int8", "tensor", 0, True, "", 3, 64),
    ("int8", "group", 32, True, "", 4, 128),
    ("int8", "row", 0, False, "", 4, 96),
    ("int8", "group", 16, False, "", 3, 64),
    ("int4", "group", 32, True, "", 5, 128),
    ("int4", "group", 64, True, "", 3, 192),
    ("int4", "group", 8, True, "", 3, 48),
    ("int4", "group", 32, False, "", 4, 96),
    ("ternary", "row", 0, True, "2bit", 4, 256),
    ("ternary", "group", 64, True, "2bit", 3, 192),
    ("ternary", "row", 0, True, "base3", 4, 160),
    ("ternary", "group", 64, True, "base3", 3, 192),
    ("ternary", "group", 35, True, "base3", 2, 70),
    ("binary", "row", 0, True, "", 4, 100),
    ("binary", "row", 0, True, "", 3, 256),
    ("pow2", "row", 0, True, "", 4, 128),
    ("pow2", "group", 32, True, "", 3, 96),
    ("int3", "group", 32, True, "", 4, 96),
    ("int3", "group", 8, False, "", 3, 40),
    ("int2", "group", 32, True, "", 4, 96),
    ("int2", "group", 4, False, "", 3, 36),
    # planes of 16 + 8 + tail bytes (int3 g96: crumbs 24, bit planes 12; g200: 50 and 25)
    ("int3", "group", 96, False, "", 3, 192),
    ("int3", "group", 200, True, "", 2, 400),
    ("int2", "group", 200, False, "", 3, 400),
]


#: (qtype, granularity, group_size, symmetric, packing, rows, k, activation blocks): shapes that
#: reach every fused path of the C matmul (native/engine.c): odd group counts and partial
#: blocks of 8 slots, blocks of 8 rows with a remainder, tiles of 4 activation rows with a
#: remainder (m = 6), scales, mins and zero points expanded (group > sub-block), slot sums
#: folded into larger sub-blocks (activation blocks of 64 or the whole row); m = 19 takes the
#: packed-panel path (16 weight rows, tiles of 8 activation rows with a remainder).
FUSED = [
    ("int4", "group", 32, True, "", 11, 544, (32, 544)),
    ("int4", "group", 32, False, "", 9, 576, (32, 64)),
    ("int4", "group", 64, True, "", 9, 320, (32, 64)),
    ("int4", "group", 128, False, "", 10, 384, (32,)),
    ("pow2", "group", 32, True, "", 9, 544, (32,)),
    ("pow2", "row", 0, True, "", 9, 320, (32, 320)),
    ("ternary", "group", 64, True, "2bit", 9, 320, (32, 64)),
    ("ternary", "group", 128, True, "2bit", 9, 384, (32,)),
    ("ternary", "row", 0, True, "2bit", 9, 384, (32, 384)),
    ("ternary", "row", 0, True, "2bit", 9, 512, (32,)),
    ("ternary", "row", 0, True, "2bit", 9, 576, (32,)),
    # planes starting 8 or 24 codes into a slot (group / 4 = 136, 24), and planes under a slot
    ("ternary", "row", 0, True, "2bit", 9, 544, (32, 544)),
    ("ternary", "group", 96, True, "2bit", 9, 480, (32, 96)),
    ("ternary", "group", 32, True, "2bit", 9, 224, (32,)),
    ("ternary", "row", 0, True, "base3", 9, 320, (32,)),
    ("int8", "row", 0, True, "", 9, 288, (32, 288)),
    ("int8", "group", 32, True, "", 10, 288, (32,)),
    ("int8", "tensor", 0, True, "", 9, 256, (32,)),
    ("int8", "row", 0, False, "", 9, 256, (32,)),
    ("int8", "group", 32, False, "", 9, 256, (32,)),
    ("int8", "group", 64, False, "", 9, 320, (32,)),
    ("binary", "row", 0, True, "", 9, 320, (32,)),
    # packed panels of 16 rows (m >= 8 on AVX-512): two full panels and a partial one
    ("int8", "row", 0, True, "", 37, 256, (32, 256)),
    ("int4", "group", 32, False, "", 33, 320, (32, 64)),
    ("int8", "group", 32, False, "", 17, 256, (32,)),
    # int3 (decoded into scratch) and int2 (the ternary crumb kernels), both with mins
    ("int3", "group", 32, True, "", 9, 320, (32, 64)),
    ("int3", "group", 128, False, "", 17, 384, (32,)),
    ("int2", "group", 64, True, "", 9, 320, (32, 64)),
    ("int2", "group", 128, False, "", 17, 384, (32,)),
]


def random_qtensor(rng, qtype, granularity, group, symmetric, packing, rows, k) -> QTensor:
    spec = QuantSpec(qtype, granularity, group, symmetric, packing)
    layout = get_layout(qtype)
    data = {}
    for name, (dtype, shape) in layout.components(spec, (rows, k)).items():
        if dtype == np.float16 or dtype == np.float32:
            # finite scales of either sign and a spread of magnitudes
            data[name] = (rng.standard_normal(shape) * 2.0 ** rng.integers(-6, 3, shape)).astype(dtype)
        else:
            data[name] = rng.integers(0, 256, shape, dtype=np.uint8).view(dtype)
    if qtype == "binary" and k % 8:  # padding bits are zero in a well-formed file
        data["codes"][:, -1] &= np.uint8((1 << (k % 8)) - 1)
    return QTensor(spec, (rows, k), data)


def weight_header(qt: QTensor, op: int, m: int, block: int) -> list[int]:
    rows, k = qt.shape
    spec = qt.spec
    scales = qt.data["scales"]
    return [op, KIND_IDS[weight_kind(spec)], rows, k, m,
            spec.group_size if spec.granularity == "group" else k,
            qt.data["codes"].shape[1], qt.scale_block, scales.shape[0],
            int(scales.dtype == np.float16), block, 0]


def weight_arrays(qt: QTensor) -> list[np.ndarray]:
    empty = np.zeros(0, dtype=np.uint8)
    return [qt.data["codes"], qt.data["scales"], qt.data.get("mins", empty),
            qt.data.get("zeros", empty)]


def activation_codes(rng, m: int, k: int) -> np.ndarray:
    xq = rng.integers(-128, 128, (m, k), dtype=np.int16).astype(np.int8)
    xq[0, : min(k, 8)] = -128  # the one value the quantizer never makes
    return xq


def quantize_cases(rng):
    x = rng.standard_normal((3, 96)).astype(np.float32) * 4
    x[1, :32] = 0.0                                          # an all-zero block: scale 0
    x[2, :32] = np.arange(-16, 16, dtype=np.float32) * 0.5   # exact halves: ties to even
    x[2, 31] = 127.0
    x[0, 32:64] = rng.standard_normal(32).astype(np.float32) * 1e-40  # subnormals
    for block in (32, 96, 8):
        q, s = ref.quantize_activations(x, block)
        yield [OP_QUANTIZE, 0, 0, 96, 3, 0, 0, 0, 0, 0, block, 0], [x, q, s]
    odd = rng.standard_normal((2, 45)).astype(np.float32)  # vector tails
    q, s = ref.quantize_activations(odd, 45)
    yield [OP_QUANTIZE, 0, 0, 45, 2, 0, 0, 0, 0, 0, 45, 0], [odd, q, s]


def weight_cases(rng):
    for qtype, gran, group, sym, packing, rows, k in WEIGHTS:
        qt = random_qtensor(rng, qtype, gran, group, sym, packing, rows, k)
        for m in (1, 3):
            xq = activation_codes(rng, m, k)
            subs = {math.gcd(qt.scale_block, 32), k, 16 if k % 16 == 0 else k}
            if k % 5 == 0:
                subs.add(5)
            for sub in sorted(subs):
                sums = numpy_backend.block_sums(qt, xq, sub)
                yield weight_header(qt, OP_BLOCK_SUMS, m, sub), weight_arrays(qt) + [xq, sums]
            for act_block in sorted({32 if k % 32 == 0 else k, k}):
                xs = (rng.random((m, k // act_block)) * 0.1).astype(np.float32)
                y = numpy_backend.matmul(qt, xq, xs, act_block)
                yield weight_header(qt, OP_MATMUL, m, act_block), weight_arrays(qt) + [xq, xs, y]


def fused_cases(rng):
    for qtype, gran, group, sym, packing, rows, k, act_blocks in FUSED:
        qt = random_qtensor(rng, qtype, gran, group, sym, packing, rows, k)
        for m in (1, 6, 19):
            xq = activation_codes(rng, m, k)
            for act_block in act_blocks:
                xs = (rng.random((m, k // act_block)) * 0.1).astype(np.float32)
                y = numpy_backend.matmul(qt, xq, xs, act_block)
                yield weight_header(qt, OP_MATMUL, m, act_block), weight_arrays(qt) + [xq, xs, y]


def xnor_cases(rng):
    # 4 x 4 register tiles with partial tiles in both directions, masked row tails
    for n, m, k in ((3, 1, 7), (4, 2, 64), (2, 3, 200), (5, 2, 1031), (9, 7, 1031), (8, 4, 576)):
        kb = -(-k // 8)
        w = rng.integers(0, 256, (n, kb), dtype=np.uint8)
        x = rng.integers(0, 256, (m, kb), dtype=np.uint8)
        yield [OP_XNOR, KIND_IDS["binary"], n, k, m, 0, kb, 0, 0, 0, 0, 0], [w, x, ref.xnor_dot(w, x, k)]


def golden_bytes() -> bytes:
    """The whole file, deterministically (tests compare it with the stored copy)."""
    rng = np.random.default_rng(20240601)
    cases = (list(quantize_cases(rng)) + list(weight_cases(rng)) + list(fused_cases(rng))
             + list(xnor_cases(rng)))
    out = bytearray(b"EQNG" + struct.pack("<II", 1, len(cases)))
    for header, arrays in cases:
        out += struct.pack("<12q", *header) + struct.pack("<I", len(arrays))
        for a in arrays:
            raw = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
            out += struct.pack("<q", len(raw)) + raw
    return bytes(out)


def main() -> None:
    data = golden_bytes()
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
