"""LLVM vector primitives for the Numba kernels.

Why these exist: LLVM only vectorizes a Numba loop when its trip count is large and unknown;
a 32-iteration dot product per quantization block is either fully unrolled into scalar code
or sent to the scalar remainder (measured: 0.5-1 GB/s for an int4 GEMV, against 10-15 GB/s
with the primitives below). Emitting a block as one vector expression lets LLVM pick the
instructions. The IR is target-independent (x86 with AVX-512 VNNI gets VPDPBUSD; AArch64
gets UMULL/SADALP or UDOT; SSE2 works), except one optional step: where the CPU has a
256-bit VNNI dot product, dot32x4_* call it directly and reduce four chunks together.

A chunk is 32 codes u (uint8) multiplied with 32 int8 activations:
    sum(u[t] * x[x_off + t]),  |sum| <= 32 * 255 * 128 < 2**31
and its codes come from the packed bytes of `buf` (flat, 1-D) in one of three ways:
    nibbles   16 bytes at base + 16c: low nibbles are codes 0-15, high nibbles 16-31
              (int4 with groups of 32; packing.py's nibble planes)
    bytes     32 bytes at base + 32c: byte ^ flip (int8, unpacked scratch rows)
    runs      32 bytes at base + table[c, 0]: ((byte ^ flip) >> table[c, 1]) & mask
              (int8, scratch rows, and bit planes whose runs hold whole chunks)
    table     two 16-byte runs at base + table[c, 0] and base + table[c, 2], shifted by
              table[c, 1] and table[c, 3]: any plane layout with runs of 16 codes
Shifts act on 16-bit lanes (x86 has no 8-bit vector shift); the mask then clears the bits
shifted in from the neighbouring byte (mask < 2**(8 - shift) always holds for plane fields).
Offsets are not bounds-checked: the caller's chunk table guarantees them.

    dot32(buf, off_a, sh_a, off_b, sh_b, mask, flip, x, x_off) -> int32     one chunk ("table")
    dot32x4_nibbles / _bytes / _runs / _table(buf, base, table, c, mask, flip, x, x_off, out)
        chunks c..c+3 (activations at x_off + 32 * (c + j)) -> out[c : c+4] (int32)
    as_float32(v)          float16 stored as uint16 -> float32 (exact); float32 passes through
    float32_from_bits(v)   the float32 whose IEEE bits are the low 32 bits of the integer v
    popcount_xor64(a, ai, b, bi) -> int64   popcount of the XOR of 8 bytes of a and of b
"""

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
CHUNK = 32


def _host_vnni() -> str | None:
    """Name of the LLVM intrinsic for a 256-bit u8 x s8 dot product on this CPU, if any."""
    features = llvm.get_host_cpu_features()
    if features.get("avx512vnni") and features.get("avx512vl"):
        return "llvm.x86.avx512.vpdpbusd.256"
    if features.get("avxvnni"):
        return "llvm.x86.avx2.vpdpbusd.256"
    return None


VNNI = _host_vnni()


def _is_vector(t, dtype) -> bool:
    return isinstance(t, types.Array) and t.dtype == dtype and t.ndim == 1


def _is_table(t) -> bool:
    return isinstance(t, types.Array) and t.dtype == types.int32 and t.ndim == 2


def _load(context, builder, arrty, arr, index, lanes: int, elem):
    """Unaligned load of `lanes` elements starting at flat element `index` of a C array."""
    ary = context.make_array(arrty)(context, builder, arr)
    ptr = builder.gep(ary.data, [index])
    return builder.load(builder.bitcast(ptr, ir.VectorType(elem, lanes).as_pointer()), align=1)


def _splat(builder, value, elem, lanes: int):
    vty = ir.VectorType(elem, lanes)
    scalar = builder.trunc(value, elem) if value.type.width > elem.width else value
    one = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


def _field(builder, raw, flip, shift, mask):
    """((raw ^ flip) >> shift) & mask on uint8 lanes, shifting 16-bit lanes."""
    lanes = raw.type.count
    flipped = builder.xor(raw, _splat(builder, flip, _I8, lanes))
    words = builder.bitcast(flipped, ir.VectorType(_I16, lanes // 2))
    shifted = builder.lshr(words, _splat(builder, shift, _I16, lanes // 2))
    return builder.and_(builder.bitcast(shifted, ir.VectorType(_I8, lanes)), _splat(builder, mask, _I8, lanes))


def _concat(builder, low, high):
    lanes = low.type.count
    return builder.shuffle_vector(low, high, ir.Constant(ir.VectorType(_I32, 2 * lanes), list(range(2 * lanes))))


def _const(value: int):
    return ir.Constant(_I64, value)


# --- the three chunk decoders: (context, builder, args, c) -> <32 x i8> codes -------------------

def _table_entry(context, builder, tblty, tbl, c, col):
    table = context.make_array(tblty)(context, builder, tbl)
    ptr = builder.gep(table.data, [builder.add(builder.mul(c, _const(4)), _const(col))])  # C order
    return builder.sext(builder.load(ptr), _I64)


def _nibbles(context, builder, sig, args, c):
    buf, base, _, _, _, _ = args[:6]
    raw = _load(context, builder, sig.args[0], buf, builder.add(base, builder.mul(c, _const(16))), 16, _I8)
    four, fifteen = _const(4), _const(15)
    zero = _const(0)
    return _concat(builder, _field(builder, raw, zero, zero, fifteen), _field(builder, raw, zero, four, fifteen))


def _bytes(context, builder, sig, args, c):
    buf, base, _, _, _, flip = args[:6]
    raw = _load(context, builder, sig.args[0], buf, builder.add(base, builder.mul(c, _const(CHUNK))), CHUNK, _I8)
    return builder.xor(raw, _splat(builder, flip, _I8, CHUNK))


def _runs(context, builder, sig, args, c):
    buf, base, tbl, _, mask, flip = args[:6]
    offset = builder.add(base, _table_entry(context, builder, sig.args[2], tbl, c, 0))
    raw = _load(context, builder, sig.args[0], buf, offset, CHUNK, _I8)
    return _field(builder, raw, flip, _table_entry(context, builder, sig.args[2], tbl, c, 1), mask)


def _two_runs(context, builder, sig, args, c):
    buf, base, tbl, _, mask, flip = args[:6]
    halves = []
    for col in (0, 2):
        offset = builder.add(base, _table_entry(context, builder, sig.args[2], tbl, c, col))
        raw = _load(context, builder, sig.args[0], buf, offset, 16, _I8)
        halves.append(_field(builder, raw, flip, _table_entry(context, builder, sig.args[2], tbl, c, col + 1), mask))
    return _concat(builder, *halves)


# --- reductions --------------------------------------------------------------------------------

def _reduce_dot(builder, codes, xv):
    """sum(zext(codes) * sext(xv)) over 32 lanes, in portable IR."""
    wide = ir.VectorType(_I32, CHUNK)
    products = builder.mul(builder.zext(codes, wide), builder.sext(xv, wide))
    reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [wide]),
                                            "llvm.vector.reduce.add.v32i32")
    return builder.call(reduce, [products])


def _shuffle_add(builder, a, b, first, second):
    lanes = ir.VectorType(_I32, len(first))
    return builder.add(builder.shuffle_vector(a, b, ir.Constant(lanes, first)),
                       builder.shuffle_vector(a, b, ir.Constant(lanes, second)))


def _sums4(builder, codes, xvs):
    """<4 x i32> of the four chunk sums."""
    if VNNI is None:
        sums = ir.Constant(ir.VectorType(_I32, 4), None)
        for j in range(4):
            sums = builder.insert_element(sums, _reduce_dot(builder, codes[j], xvs[j]), ir.Constant(_I32, j))
        return sums
    v8 = ir.VectorType(_I32, 8)
    dot = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [v8, v8, v8]), VNNI)
    parts = [builder.call(dot, [ir.Constant(v8, None), builder.bitcast(c, v8), builder.bitcast(x, v8)])
             for c, x in zip(codes, xvs)]
    halves = ([0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15])
    p01 = _shuffle_add(builder, parts[0], parts[1], *halves)  # 4 lanes of chunk 0, 4 of chunk 1
    p23 = _shuffle_add(builder, parts[2], parts[3], *halves)
    pairs = _shuffle_add(builder, p01, p23, [0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15])
    return _shuffle_add(builder, pairs, pairs, [0, 2, 4, 6], [1, 3, 5, 7])


def _dot32x4(decoder):
    def typer(typingctx, buf, base, table, c, mask, flip, x, x_off, out):
        if not (_is_vector(buf, types.uint8) and _is_table(table) and _is_vector(x, types.int8)
                and _is_vector(out, types.int32)):
            return None
        sig = types.void(buf, base, table, c, mask, flip, x, x_off, out)

        def codegen(context, builder, signature, args):
            args = [builder.sext(a, _I64) if isinstance(a.type, ir.IntType) and a.type.width < 64 else a
                    for a in args]
            c, x, x_off, out = args[3], args[6], args[7], args[8]
            codes, xvs = [], []
            for j in range(4):
                chunk = builder.add(c, _const(j))
                codes.append(decoder(context, builder, signature, args, chunk))
                xvs.append(_load(context, builder, signature.args[6], x,
                                 builder.add(x_off, builder.mul(chunk, _const(CHUNK))), CHUNK, _I8))
            out_ = context.make_array(signature.args[8])(context, builder, out)
            target = builder.bitcast(builder.gep(out_.data, [c]), ir.VectorType(_I32, 4).as_pointer())
            builder.store(_sums4(builder, codes, xvs), target, align=4)
            return context.get_dummy_value()

        return sig, codegen

    typer.__name__ = f"dot32x4{decoder.__name__}"
    return intrinsic(typer)


dot32x4_nibbles = _dot32x4(_nibbles)
dot32x4_bytes = _dot32x4(_bytes)
dot32x4_runs = _dot32x4(_runs)
dot32x4_table = _dot32x4(_two_runs)


@intrinsic
def dot32(typingctx, buf, off_a, sh_a, off_b, sh_b, mask, flip, x, x_off):
    if not (_is_vector(buf, types.uint8) and _is_vector(x, types.int8)):
        return None
    sig = types.int32(buf, off_a, sh_a, off_b, sh_b, mask, flip, x, x_off)

    def codegen(context, builder, signature, args):
        b, oa, sa, ob, sb, m, f, xx, xo = args
        low = _field(builder, _load(context, builder, signature.args[0], b, oa, 16, _I8), f, sa, m)
        high = _field(builder, _load(context, builder, signature.args[0], b, ob, 16, _I8), f, sb, m)
        xv = _load(context, builder, signature.args[7], xx, xo, CHUNK, _I8)
        return _reduce_dot(builder, _concat(builder, low, high), xv)

    return sig, codegen


@intrinsic
def as_float32(typingctx, value):
    if value == types.uint16:
        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    elif value == types.float32:
        def codegen(context, builder, signature, args):
            return args[0]
    else:
        return None
    return types.float32(value), codegen


@intrinsic
def float32_from_bits(typingctx, value):
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        word = args[0] if value.bitwidth == 32 else builder.trunc(args[0], _I32)
        return builder.bitcast(word, ir.FloatType())

    return types.float32(value), codegen


@intrinsic
def popcount_xor64(typingctx, a, ai, b, bi):
    if not (_is_vector(a, types.uint8) and _is_vector(b, types.uint8)):
        return None
    sig = types.int64(a, ai, b, bi)

    def codegen(context, builder, signature, args):
        va = _load(context, builder, signature.args[0], args[0], args[1], 1, _I64)
        vb = _load(context, builder, signature.args[2], args[2], args[3], 1, _I64)
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_I64]),
                                               "llvm.ctpop.i64")
        word = builder.extract_element(builder.xor(va, vb), ir.Constant(_I32, 0))
        return builder.call(ctpop, [word])

    return sig, codegen
