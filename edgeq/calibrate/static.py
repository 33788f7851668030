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

Layers the config keeps dynamic (ActivationConfig.dynamic, fnmatch patterns such as
"*.ffn_down.weight") get no scales: their inputs are quantized per token at run time.

scale = T / 127 (observers.activation_scale). Stored per layer as the float32 tensor
"<layer>.input_scale" (e.g. "blk.0.attn_qkv.input_scale", shape (k/block,) or (1,)), next to
the weight "<layer>.weight"; the recipe in the metadata says how they were made.

With granularity "tensor", or integer_ffn (which scales the FFN's inputs per tensor and the
other layers by `granularity`), calibrate_scales also stores each BERT layer's ffn_up output
scale, from the same capture pass: h = x W^T + b on the kept ffn_up input rows (float
weight), T = max |h|, s_y = T / 32767, as the float32 tensor "blk.N.ffn_up.output_scale"
shape (1,).

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

Integer requantization between layers, where BERT's graph allows it: a layer whose ffn_up
weight is int8 symmetric per row, whose ffn_up and ffn_down input scales are per tensor and
whose file carries ffn_up's output scale (checked: float, shape (1,), finite, > 0, else
FormatError) runs ffn_up -> GELU -> ffn_down on integer codes (Layer.integer_ffn,
edgeq.models.bert_integer_ffn: int32 accumulators, per-channel fixed-point requantization to
int16, GELU as an int16 -> int8 table); the others run the float round trip, and why is
logged once at INFO. Attention (softmax) and the LayerNorms stay float: every layer still
hands float32 to the residual. The decoder's SwiGLU multiplies two projections' outputs, so
it has no such single-input step.
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
from edgeq.models.bert_integer_ffn import Y_QMAX, IntegerFFN
from edgeq.qtypes import QTensor

log = logging.getLogger(__name__)

SUFFIX = STATIC_SCALE_SUFFIX
#: ffn_up's int16 output scale (the integer FFN): "blk.N.ffn_up.output_scale", shape (1,)
OUTPUT_SUFFIX = ".output_scale"
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


def _ffn_layer(name: str) -> bool:
    return name.endswith(("ffn_up.weight", "ffn_down.weight"))


def thresholds(rows: np.ndarray, config: ActivationConfig, per_tensor: bool = False) -> np.ndarray:
    """Thresholds of input rows (n, k): (k/block,) for "block", (1,) for "tensor" or per_tensor."""
    n, k = rows.shape
    if per_tensor or config.granularity == "tensor" or k % config.block:
        return observe(rows, config.observer).reshape(1)
    nb = k // config.block
    per_block = rows.reshape(n, nb, config.block).transpose(0, 2, 1).reshape(-1, nb)
    return observe(per_block, config.observer, per_channel=True)


def calibrate_scales(model, samples, groups: Sequence[InputGroup], config: ActivationConfig,
                     *, max_rows: int = MAX_ROWS) -> dict[str, np.ndarray]:
    """{"<layer>.input_scale": float32 scales} for every layer of `groups` but those the
    config keeps dynamic, from the inputs the (float) `model` gives them on `samples`."""
    if config.mode != "static":
        raise ValueError("calibrate_scales needs an ActivationConfig with mode 'static'")
    sinks, rows = {}, {}
    for group in (g for g in groups if not config.keeps_dynamic(g.layers[0])):
        rows[group] = _Rows(max_rows)
        sinks[group.layers[0]] = rows[group]
        for name in group.layers[1:]:
            sinks[name] = lambda x: None
    capture(model, samples, sinks)
    integer_ffn = config.integer_ffn or config.granularity == "tensor"
    out = _ffn_up_output_scales(model, rows) if integer_ffn else {}
    for group, seen in rows.items():
        if not seen.parts:
            raise ValueError(f"the model never multiplied {group.layers[0]!r}")
        per_tensor = config.integer_ffn and _ffn_layer(group.layers[0])
        scales = activation_scale(thresholds(seen.values(), config, per_tensor))
        for name in group.layers:
            out[scale_name(name)] = scales
        log.info("%s: %d input rows, int8 scales %.4g .. %.4g", group.layers[0], seen.seen,
                 scales.min(), scales.max())
    return out


def output_scale_name(weight_name: str) -> str:
    """"blk.0.ffn_up.weight" -> "blk.0.ffn_up.output_scale"."""
    return weight_name.removesuffix(".weight") + OUTPUT_SUFFIX


def _ffn_up_output_scales(model, rows: Mapping[InputGroup, "_Rows"]) -> dict[str, np.ndarray]:
    """{"blk.N.ffn_up.output_scale": (1,) float32 s_y} of a BERT model, from the ffn_up input
    rows kept by the capture pass: h = x W^T + b with the model's (float or dequantized)
    weight, T = max |h| (minmax: int16 codes are fine enough that clipping the tail buys
    nothing, and a clipped pre-activation would change GELU's large outputs), s_y = T / 32767."""
    if not hasattr(model, "layers"):
        return {}
    out = {}
    for group, seen in rows.items():
        name = group.layers[0]
        if not name.endswith("ffn_up.weight") or not seen.parts:
            continue
        dense = model.layers[group.block].up
        w_t = dense.weight.dequantize().T if dense.quantized else dense.weight  # (dim, ffn)
        x = seen.values()
        t = np.float32(0)
        for start in range(0, x.shape[0], 1024):  # 1024 rows at a time: a few MB of outputs
            h = x[start:start + 1024] @ w_t
            if dense.bias is not None:
                h += dense.bias
            t = max(t, observe(h, "minmax"))
        out[output_scale_name(name)] = np.array([t / Y_QMAX], dtype=np.float32)
        log.info("%s: int16 output threshold %.4g", name, t)
    return out


def _output_scale(model, tensors: Mapping, name: str) -> float:
    """The checked s_y of tensor `name`: float, shape (1,), finite and > 0."""
    t = tensors[name]
    where = f"{getattr(model, 'path', '?')}: tensor {name!r}"
    if isinstance(t, QTensor) or not np.issubdtype(np.asarray(t).dtype, np.floating):
        raise FormatError(f"{where}: expected a float32 array, got {getattr(t, 'dtype', type(t).__name__)}")
    s = np.asarray(t, dtype=np.float32)
    if s.shape != (1,):
        raise FormatError(f"{where}: shape {s.shape}, expected (1,) (one int16 output scale)")
    if not (np.isfinite(s[0]) and s[0] > 0):
        raise FormatError(f"{where}: the output scale must be finite and > 0, got {s[0]!r}")
    return float(s[0])


def _install_integer_ffn(model, tensors: Mapping) -> None:
    """Give every BERT layer whose FFN qualifies its IntegerFFN (edgeq.models.bert_integer_ffn,
    after the input scales are in); the others keep the float FFN, and why is logged once."""
    why = []
    for i, layer in enumerate(model.layers):
        name = f"blk.{i}.ffn_up{OUTPUT_SUFFIX}"
        layer.integer_ffn = None
        if name not in tensors:
            why.append(f"{name!r} is missing (it is calibrated with activations integer_ffn or granularity 'tensor')")
            continue
        layer.integer_ffn, reason = IntegerFFN.of(layer.up, layer.down, _output_scale(model, tensors, name),
                                                  model.activation)
        if reason:
            why.append(f"layer {i}: {reason}")
    count = sum(layer.integer_ffn is not None for layer in model.layers)
    if why:
        log.info("static mode: integer FFN in %d of %d layers, float FFN in the others: %s",
                 count, len(model.layers), why[0])
    else:
        log.info("static mode: integer FFN in all %d layers", count)


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
            scales = checked_scales(_where(tensors), name, tensors[name], dense.shape[1], dense.act_block)
            if dense.quantized:
                dense.act_scale = scales
                count += 1
    _install_integer_ffn(model, tensors)
    return count


def _where(tensors: Mapping) -> str:
    return str(getattr(tensors, "path", "static scales"))


def checked_scales(where: str, name: str, tensor, k: int, act_block: int | None) -> np.ndarray:
    """Tensor `name` checked as the static scales of a layer with k inputs quantized per block
    of act_block (edgeq.linear.activation_block): float, 1-D, one per block (or one for all),
    finite, >= 0; else FormatError."""
    block = activation_block(k, act_block)
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
    from edgeq.models.llama import ACT_BLOCK

    where = _where(tensors)
    pairs, used, count = [], set(), 0
    for layers, matrix in model.named_matrices():
        found = [scale_name(n) for n in layers if scale_name(n) in tensors]
        if not found:
            continue
        used.update(found)
        scales = [checked_scales(where, n, tensors[n], matrix.shape[1], ACT_BLOCK) for n in found]
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
