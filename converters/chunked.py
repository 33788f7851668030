"""Streaming helpers of the converters: chunked round-to-nearest quantization and a progress bar.

Converters stream: a tensor is read (or dequantized) in chunks of about CHUNK_VALUES values,
each chunk is quantized (or repacked) and its packed components are copied into the output
arrays (join_row_chunks), so the temporaries stay bounded whatever the tensor's size (about
8 bytes of float64 and 16 of float32 per chunk value while measuring the error: 24 MiB at
2**20 values). Per-row and per-group scales make the chunks independent; a per-tensor scale
needs every row at once, so it takes one chunk.
"""

from __future__ import annotations

import math
import sys
from typing import Callable

import numpy as np

from edgeq.errors import FormatError
from edgeq.qtypes import QTensor, QuantSpec, from_components, quantize

#: float values per chunk, to bound the float32 temporaries
CHUNK_VALUES = 1 << 20


def chunk_rows(shape: tuple[int, int]) -> int:
    """Rows per chunk of a (rows, k) matrix: about CHUNK_VALUES values."""
    return max(1, CHUNK_VALUES // shape[1])


def join_row_chunks(name: str, shape: tuple[int, int], step: int,
                    make: Callable[[int, int], QTensor]) -> QTensor:
    """The QTensor of a (rows, k) matrix built `step` rows at a time: make(start, stop) gives
    those rows' QTensor, whose components (rows on their first axis, as in every layout) are
    copied into arrays allocated once, so the only full-size arrays are the result's."""
    rows = shape[0]
    if step >= rows:
        return make(0, rows)
    data: dict[str, np.ndarray] = {}
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        q = make(start, stop)
        for part, a in q.data.items():
            if part not in data:
                data[part] = np.empty((rows, *a.shape[1:]), dtype=a.dtype)
            data[part][start:stop] = a
    return from_components(q.spec, shape, data, where=f"tensor {name!r}")


def quantize_in_chunks(name: str, shape: tuple[int, int], spec: QuantSpec,
                       read_rows: Callable[[int, int], np.ndarray]) -> tuple[QTensor, dict]:
    """Quantize the (rows, k) matrix that read_rows(start, stop) yields row range by row range.

    Returns the QTensor and its error against the float rows: max_abs_error and rel_rms_error
    (root of the summed squared error over the summed squared values).
    """
    sums = {"sq_err": 0.0, "sq_ref": 0.0, "max_err": 0.0}

    def quantize_rows(start: int, stop: int) -> QTensor:
        chunk = np.asarray(read_rows(start, stop), dtype=np.float32)
        try:
            q = quantize(chunk, spec.qtype, group_size=spec.group_size or None, symmetric=spec.symmetric,
                         granularity=spec.granularity, packing=spec.packing)
        except FormatError as e:
            raise FormatError(f"tensor {name!r}: {e}") from None
        err = q.dequantize() - chunk
        sums["sq_err"] += float(np.square(err, dtype=np.float64).sum())
        sums["sq_ref"] += float(np.square(chunk, dtype=np.float64).sum())
        sums["max_err"] = max(sums["max_err"], float(np.abs(err).max()))
        return q

    step = shape[0] if spec.granularity == "tensor" else chunk_rows(shape)
    qt = join_row_chunks(name, shape, step, quantize_rows)
    rel = math.sqrt(sums["sq_err"] / sums["sq_ref"]) if sums["sq_ref"] > 0 else 0.0
    return qt, {"max_abs_error": sums["max_err"], "rel_rms_error": rel}


class _NoBar:
    """progress_bar's stand-in when no bar is shown."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        pass


def progress_bar(total: int, enabled: bool | None, desc: str):
    """A tqdm bar on stderr counting tensors (enabled None: only when stderr is a terminal), or a
    silent stand-in with the same update(), close() and context manager."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if enabled:
        try:
            from tqdm import tqdm  # installed with gguf; the bar is optional
        except ImportError:
            return _NoBar()
        return tqdm(total=total, desc=desc, unit="tensor", leave=False, file=sys.stderr)
    return _NoBar()
