"""Round-to-nearest quantization of a large matrix a chunk of rows at a time.

Converters stream: a tensor is read (or dequantized) in chunks of about CHUNK_VALUES floats,
each chunk is quantized and the chunks' packed components are joined, so the float32
temporaries stay bounded whatever the tensor's size. Per-row and per-group scales make the
chunks independent; a per-tensor scale needs every row at once, so it takes one chunk.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from edgeq.errors import FormatError
from edgeq.qtypes import QTensor, QuantSpec, from_components, quantize

#: float values per chunk, to bound the float32 temporaries
CHUNK_VALUES = 1 << 22


def quantize_in_chunks(name: str, shape: tuple[int, int], spec: QuantSpec,
                       read_rows: Callable[[int, int], np.ndarray]) -> tuple[QTensor, dict]:
    """Quantize the (rows, k) matrix that read_rows(start, stop) yields row range by row range.

    Returns the QTensor and its error against the float rows: max_abs_error and rel_rms_error
    (root of the summed squared error over the summed squared values).
    """
    rows, k = shape
    step = rows if spec.granularity == "tensor" else max(1, CHUNK_VALUES // k)
    parts, sq_err, sq_ref, max_err = [], 0.0, 0.0, 0.0
    for start in range(0, rows, step):
        chunk = np.asarray(read_rows(start, min(rows, start + step)), dtype=np.float32)
        try:
            q = quantize(chunk, spec.qtype, group_size=spec.group_size or None, symmetric=spec.symmetric,
                         granularity=spec.granularity, packing=spec.packing)
        except FormatError as e:
            raise FormatError(f"tensor {name!r}: {e}") from None
        err = q.dequantize() - chunk
        sq_err += float(np.square(err, dtype=np.float64).sum())
        sq_ref += float(np.square(chunk, dtype=np.float64).sum())
        max_err = max(max_err, float(np.abs(err).max()))
        parts.append(q.data)
    data = parts[0] if len(parts) == 1 else {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    qt = from_components(spec, (rows, k), data, where=f"tensor {name!r}")
    rel = math.sqrt(sq_err / sq_ref) if sq_ref > 0 else 0.0
    return qt, {"max_abs_error": max_err, "rel_rms_error": rel}
