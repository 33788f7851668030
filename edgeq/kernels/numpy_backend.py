"""The numpy backend: registers the reference kernels for every weight kind."""

import numpy as np

from edgeq.kernels import reference as ref
from edgeq.kernels.table import WEIGHT_KINDS, register

NAME = "numpy"
#: output rows per chunk of the reference matmul, to bound its (m, n, blocks) temporaries
_CHUNK_ELEMENTS = 1 << 24


def block_sums(qt, xq, sub_block):
    acc = ref.accumulator_dtype(sub_block, qt.layout.max_abs_code(qt.spec))
    return ref.block_sums(qt.int_codes(), xq, sub_block, acc)


def matmul(qt, xq, xs, act_block):
    n, k = qt.shape
    m = xq.shape[0]
    sub = ref.sub_block_size(qt.scale_block, act_block)
    nsub = k // sub
    codes = qt.int_codes()
    acc = ref.accumulator_dtype(sub, qt.layout.max_abs_code(qt.spec))
    w_scales = ref.expand(qt.scales(), n, qt.scale_block, nsub)
    mins = qt.mins()
    w_mins = None if mins is None else ref.expand(mins, n, qt.scale_block, nsub)
    out = np.empty((m, n), dtype=np.float32)
    rows = max(1, _CHUNK_ELEMENTS // (n * nsub))
    for start in range(0, m, rows):
        part = slice(start, start + rows)
        isum = ref.block_sums(codes, xq[part], sub, acc)
        qsum = ref.act_sums(xq[part], sub) if w_mins is not None else None
        x_scales = ref.expand(xs[part], xq[part].shape[0], act_block, nsub)
        out[part] = ref.apply_scales(isum, qsum, w_scales, w_mins, x_scales)
    return out


register("quantize_act", "*", NAME)(ref.quantize_activations)
register("xnor", "binary", NAME)(ref.xnor_dot)
for _kind in WEIGHT_KINDS:
    register("block_sums", _kind, NAME)(block_sums)
    register("matmul", _kind, NAME)(matmul)
