"""Static activation quantization: calibrated int8 input scales stored in the model file.

Dynamic mode (the runtime's default) scales each token's activations by their own maximum
per block of 32 values. Static mode uses fixed scales measured once on calibration data, so
the run time needs no maximum search and the scales travel with the weights.

Calibration (calibrate_scales): the float model runs over the calibration samples; for each
linear layer (the first layer of each input group: the others read the same input) the input
rows are kept (at most `max_rows`, an even subsample when more arrive) and an observer
(observers.py) turns them into thresholds T:

    granularity "block"    one T per block of `block` input channels (the values of all rows
                           in that block), so an outlier channel widens only its own block
    granularity "tensor"   one T for the layer

scale = T / 127 (observers.activation_scale). Stored per layer as the float32 tensor
"<layer>.input_scale" (e.g. "blk.0.attn_qkv.input_scale", shape (k/block,) or (1,)), next to
the weight "<layer>.weight"; the recipe in the metadata says how they were made.

Run time (install, called by edgeq.load when the file has such tensors): BERT's Dense layers
take the scales (Dense.act_scale, passed to edgeq.linear as act_scale). The llama-family
decoder takes them per projection (LlamaModel.set_static_scales, by the names of
LlamaModel.named_matrices; the output projection's would be "output.input_scale", which
calibration does not make, so it stays dynamic); q|k|v and gate|up fused into one matrix
(fuse_projections) need equal scales for their layers, as calibrate_scales writes them. Such a
decoder runs its numpy path: the fused C / Numba steps quantize activations dynamically. The
ffn_down input of a model with ffn_rotation is the rotated SwiGLU output, in calibration and at
run time alike. Scale tensors of unknown layers, of the wrong shape or dtype, or not finite and
>= 0 raise FormatError.
Integer requantization between layers (int8 outputs feeding the next layer without a float
round trip) is not done: each layer still returns float32.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from edgeq.calibrate.driver import InputGroup, capture
from edgeq.calibrate.observers import activation_scale, observe
from edgeq.calibrate.recipe import ActivationConfig
from edgeq.errors import FormatError, UnsupportedError
from edgeq.linear import activation_block
from edgeq.loader import STATIC_SCALE_SUFFIX
from edgeq.qtypes import QTensor

log = logging.getLogger(__name__)

SUFFIX = STATIC_SCALE_SUFFIX
#: input rows kept per layer for the observers (percentile, MSE and KL need the values)
MAX_ROWS = 8192
#: BERT Dense attribute -> layer name suffix
_BERT_DENSE = (("qkv", "attn_qkv"), ("out", "attn_output"), ("up", "ffn_up"), ("down", "ffn_down"))


def scale_name(weight_name: str) -> str:
    """"blk.0.attn_qkv.weight" -> "blk.0.attn_qkv.input_scale"."""
    return weight_name.removesuffix(".weight") + SUFFIX


class _Rows:
    """Input rows of one layer, subsampled evenly to at most max_rows."""

    def __init__(self, max_rows: int):
        self.max_rows, self.parts, self.seen = max_rows, [], 0

    def __call__(self, x: np.ndarray) -> None:
        rows = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        self.seen += rows.shape[0]
        self.parts.append(rows.copy())
        kept = sum(p.shape[0] for p in self.parts)
        if kept > 2 * self.max_rows:  # thin out: every other row
            self.parts = [np.concatenate(self.parts)[::2]]

    def values(self) -> np.ndarray:
        rows = np.concatenate(self.parts)
        step = max(1, -(-rows.shape[0] // self.max_rows))
        return rows[::step]


def thresholds(rows: np.ndarray, config: ActivationConfig) -> np.ndarray:
    """Thresholds of input rows (n, k): (k/block,) for "block", (1,) for "tensor"."""
    n, k = rows.shape
    if config.granularity == "tensor" or k % config.block:
        return observe(rows, config.observer).reshape(1)
    nb = k // config.block
    per_block = rows.reshape(n, nb, config.block).transpose(0, 2, 1).reshape(-1, nb)
    return observe(per_block, config.observer, per_channel=True)


def calibrate_scales(model, samples, groups: Sequence[InputGroup], config: ActivationConfig,
                     *, max_rows: int = MAX_ROWS) -> dict[str, np.ndarray]:
    """{"<layer>.input_scale": float32 scales} for every layer of `groups`, from the inputs
    the (float) `model` gives them on `samples`."""
    if config.mode != "static":
        raise ValueError("calibrate_scales needs an ActivationConfig with mode 'static'")
    sinks, rows = {}, {}
    for group in groups:
        rows[group] = _Rows(max_rows)
        sinks[group.layers[0]] = rows[group]
        for name in group.layers[1:]:
            sinks[name] = lambda x: None
    capture(model, samples, sinks)
    out = {}
    for group, seen in rows.items():
        if not seen.parts:
            raise ValueError(f"the model never multiplied {group.layers[0]!r}")
        scales = activation_scale(thresholds(seen.values(), config))
        for name in group.layers:
            out[scale_name(name)] = scales
        log.info("%s: %d input rows, int8 scales %.4g .. %.4g", group.layers[0], seen.seen,
                 scales.min(), scales.max())
    return out


def install(model, tensors: Mapping) -> int:
    """Give the model's linear layers the static scales found in `tensors` (e.g. a
    PackedFile); returns how many layers got one."""
    names = [n for n in tensors if n.endswith(SUFFIX)]
    if not names:
        return 0
    if hasattr(model, "blocks"):
        return _install_llama(model, tensors, names)
    if not hasattr(model, "layers"):
        raise UnsupportedError(f"static activation scales: no hook for {type(model).__name__}")
    count = 0
    for i, layer in enumerate(model.layers):
        for attr, suffix in _BERT_DENSE:
            name = f"blk.{i}.{suffix}{SUFFIX}"
            if name not in tensors:
                continue
            dense = getattr(layer, attr)
            scales = np.asarray(tensors[name], dtype=np.float32)
            k = dense.shape[1]
            block = activation_block(k, dense.act_block)
            if scales.ndim != 1 or scales.size not in (1, k // block):
                raise FormatError(f"tensor {name!r}: shape {scales.shape} does not give one scale per "
                                  f"block of {block} of the {k} inputs (or one in all)")
            if not (np.isfinite(scales).all() and (scales >= 0).all()):
                raise FormatError(f"tensor {name!r}: scales must be finite and >= 0")
            if dense.quantized:
                dense.act_scale = scales
                count += 1
    return count


def _llama_scales(where: str, name: str, tensor, k: int) -> np.ndarray:
    """Tensor `name` checked as the scales of a llama projection with k inputs: float, 1-D,
    one per block of the runtime's activation block (or one for all), finite, >= 0."""
    from edgeq.models.llama import ACT_BLOCK

    block = activation_block(k, ACT_BLOCK)
    dtype = getattr(tensor, "dtype", None)
    if dtype is None or np.dtype(dtype).kind != "f":
        raise FormatError(f"{where}: tensor {name!r} must be a float array of scales, "
                          f"got {type(tensor).__name__} {dtype}")
    scales = np.asarray(tensor, dtype=np.float32)
    if scales.ndim != 1 or scales.size not in (1, k // block):
        raise FormatError(f"{where}: tensor {name!r} has shape {scales.shape}; expected ({k // block},), one "
                          f"scale per block of {block} of the {k} inputs, or (1,)")
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise FormatError(f"{where}: tensor {name!r}: scales must be finite and >= 0")
    return scales


def _install_llama(model, tensors: Mapping, names: Sequence[str]) -> int:
    """install() for a LlamaModel: every scale tensor must name one of its projections; a
    fused matrix needs the scales of all its layers, and equal ones (they read one input)."""
    where = str(getattr(tensors, "path", "static scales"))
    pairs, used, count = [], set(), 0
    for layers, matrix in model.named_matrices():
        found = [scale_name(n) for n in layers if scale_name(n) in tensors]
        if not found:
            continue
        used.update(found)
        scales = [_llama_scales(where, n, tensors[n], matrix.shape[1]) for n in found]
        if len(found) < len(layers) or any(not np.array_equal(s, scales[0]) for s in scales[1:]):
            raise FormatError(f"{where}: {', '.join(map(scale_name, layers))} must all be present and equal: "
                              f"the model multiplies those layers as one fused matrix")
        if isinstance(matrix, QTensor):  # float matrices multiply in float: nothing to scale
            pairs.append((matrix, scales[0]))
            count += len(layers)
    unknown = sorted(set(names) - used)
    if unknown:
        raise FormatError(f"{where}: tensor {unknown[0]!r} names no projection of this "
                          f"{model.config.architecture} model")
    model.set_static_scales(pairs)
    return count
