"""Calibration driver: run a model over calibration samples, record each linear layer's input
statistics, and quantize its weights by a Recipe, block by block.

    stats  = collect_stats(model, samples, groups)          one forward pass over the samples
    result = quantize_tensors(tensors, stats, recipe, groups)
    recipe, reports = quantize_packed(src, dst, recipe, bits=3.5)    both, for a whole .eqm file

Input groups (input_groups): the linear layers of a block that read the same input, in
forward order, with the tensors the 1/s of input scaling (AWQ, SmoothQuant) can be folded into
(tensor[first + j] /= s_j):

    llama / qwen2   q, k, v       <- blk.i.attn_norm.weight (RMSNorm: n / s is norm weight / s)
                    attn_output   <- rows of blk.i.attn_v (+ bias) when n_heads == n_kv_heads
                                     (with grouped-query attention one v row serves several
                                     output channels, which s may not scale alike: no fold)
                    gate, up      <- blk.i.ffn_norm.weight
                    ffn_down      <- rows of blk.i.ffn_up (silu(g) * u / s = silu(g) * (u / s)),
                                     unless the model's ffn_rotation turns ffn_down's input first
    bert            qkv, up, down: no fold (post-norm: the LayerNorm output is also the
                    residual; down follows GELU)
                    attn_output   <- the v rows of blk.i.attn_qkv (+ bias)

Per layer, recipe.for_layer(name) picks the algorithm. Input scaling (apply_input_scales)
applies to a group only when every layer of the group uses one scaling algorithm and the group
has fold targets:
    awq          s searched by AWQ; the scaled layers then get AWQ's clipping search on the
                 scaled inputs, awq layers of other groups the clipping search alone
    smoothquant  s = smooth(absmax, weights, alpha) (smoothquant.py); every smoothquant layer is
                 then rounded to nearest, those of other groups unscaled
A group mixing awq and smoothquant layers is refused (its layers share one s). The reports say
which layers were scaled (LayerReport.scaled).

Capture (until the models expose a hook): each linear weight the model multiplies is swapped,
for the duration of the pass, for a float32 ndarray subclass (_Recording) whose matmul
(numpy's __array_ufunc__ protocol) hands the input rows to the group's InputStats and then
computes the same product on the plain arrays. Quantized weights are dequantized for the pass,
so statistics always come from the float (or dequantized) model; every block sees inputs of
the unquantized model before it (GPTQ's sequential variant, where it sees the quantized
blocks' outputs, is edgeq.calibrate.sequential: recipe.calibration.sequential). Layers of one group share
one InputStats (their input is the same), so a pass holds one k x k float64 Gram matrix per
group; quantize_packed puts as many blocks in one pass as fit its memory budget.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from edgeq.calibrate import data
from edgeq.calibrate.awq import awq
from edgeq.calibrate.gptq import gptq
from edgeq.calibrate.grid import Grid
from edgeq.calibrate.hqq import hqq
from edgeq.calibrate.recipe import ANY_QTYPE, Recipe, WeightConfig
from edgeq.calibrate.smoothquant import smooth
from edgeq.calibrate.stats import InputStats, output_error
from edgeq.errors import UnsupportedError
from edgeq.qtypes import QTensor, quantize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputGroup:
    """Linear layers (weight tensor names) of one block that read one input."""

    block: int
    layers: tuple[str, ...]
    folds: tuple[tuple[str, int], ...] = ()  # (tensor name, first index) that 1/s divides


def input_groups(config: Mapping) -> list[InputGroup]:
    """The input groups of a model from its .eqm config, in forward order."""
    arch = config.get("architecture")
    if arch in ("llama", "qwen2"):
        return _llama_groups(config)
    if arch == "bert":
        return _bert_groups(config)
    raise UnsupportedError(f"no calibration layout for architecture {arch!r} (known: llama, qwen2, bert)")


def _llama_groups(c: Mapping) -> list[InputGroup]:
    groups = []
    for i in range(c["n_layers"]):
        b = f"blk.{i}."
        q_rows = c["n_heads"] * c["head_dim"]
        v_folds = ((b + "attn_v.weight", 0),) + (((b + "attn_v.bias", 0),) if c.get("has_qkv_bias") else ())
        groups += [
            InputGroup(i, (b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"),
                       ((b + "attn_norm.weight", 0),)),
            InputGroup(i, (b + "attn_output.weight",),
                       v_folds if c["n_heads"] == c["n_kv_heads"] and q_rows else ()),
            InputGroup(i, (b + "ffn_gate.weight", b + "ffn_up.weight"), ((b + "ffn_norm.weight", 0),)),
            InputGroup(i, (b + "ffn_down.weight",), () if c.get("ffn_rotation") else ((b + "ffn_up.weight", 0),)),
        ]
    return groups


def _bert_groups(c: Mapping) -> list[InputGroup]:
    groups = []
    for i in range(c["num_layers"]):
        b = f"blk.{i}."
        v = 2 * c["hidden_size"]  # the qkv rows are [q | k | v]
        groups += [InputGroup(i, (b + "attn_qkv.weight",)),
                   InputGroup(i, (b + "attn_output.weight",), ((b + "attn_qkv.weight", v), (b + "attn_qkv.bias", v))),
                   InputGroup(i, (b + "ffn_up.weight",)),
                   InputGroup(i, (b + "ffn_down.weight",))]
    return groups


# --- capture ----------------------------------------------------------------------------------------
class _Recording(np.ndarray):
    """A weight matrix that reports the left operand of every matmul it is the right operand of."""

    def __new__(cls, array: np.ndarray, sink: Callable[[np.ndarray], None]):
        obj = np.asarray(array, dtype=np.float32).view(cls)
        obj._sink = sink
        return obj

    def __array_finalize__(self, obj):
        self._sink = getattr(obj, "_sink", None)  # views such as W.T keep reporting

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [a.view(np.ndarray) if isinstance(a, _Recording) else a for a in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(a.view(np.ndarray) if isinstance(a, _Recording) else a for a in kwargs["out"])
        if ufunc is np.matmul and method == "__call__" and len(inputs) == 2 and inputs[1] is self:
            self._sink(plain[0])
        return getattr(ufunc, method)(*plain, **kwargs)


def float_weights(w) -> np.ndarray:
    """A tensor as float32: QTensors dequantized."""
    return w.dequantize() if isinstance(w, QTensor) else np.asarray(w, dtype=np.float32)


def install_recorders(model, sinks: Mapping[str, Callable]) -> Callable[[], None]:
    """Swap each linear weight named in `sinks` for a recording copy (sinks[name](x) sees its
    input rows x) in a LlamaModel or BertEncoder; returns the undo."""
    install = _llama_install if hasattr(model, "blocks") else _bert_install
    return install(model, sinks)


def _llama_install(model, sinks: Mapping[str, Callable]) -> Callable[[], None]:
    if model.fuse_projections:
        raise UnsupportedError("calibration needs the separate projections: load the model "
                               "with fuse_projections=False")
    saved = list(model.blocks)

    def wrap(name, w):
        return _Recording(float_weights(w), sinks[name]) if name in sinks else w

    for i, block in enumerate(saved):
        b = f"blk.{i}."
        model.blocks[i] = replace(
            block,
            qkv=tuple(wrap(b + n, w) for n, w in zip(("attn_q.weight", "attn_k.weight", "attn_v.weight"), block.qkv)),
            wo=wrap(b + "attn_output.weight", block.wo),
            gate_up=tuple(wrap(b + n, w) for n, w in zip(("ffn_gate.weight", "ffn_up.weight"), block.gate_up)),
            w_down=wrap(b + "ffn_down.weight", block.w_down))

    # the fused fast path (when every matrix is quantized) reads its own copies of the
    # weights; the swapped-in recordings run on the plain numpy path
    fast = getattr(model, "fast_path", False)
    model.fast_path = False

    def restore():
        model.blocks[:] = saved
        model.fast_path = fast
    return restore


def _bert_install(model, sinks: Mapping[str, Callable]) -> Callable[[], None]:
    saved = []
    for i, layer in enumerate(model.layers):
        for attr, suffix in (("qkv", "attn_qkv"), ("out", "attn_output"), ("up", "ffn_up"), ("down", "ffn_down")):
            name = f"blk.{i}.{suffix}.weight"
            if name not in sinks:
                continue
            dense = getattr(layer, attr)
            saved.append((dense, dense.weight, dense.quantized))
            w = dense.weight if not dense.quantized else dense.weight.dequantize().T
            dense.weight, dense.quantized = _Recording(w, sinks[name]), False  # Dense stores W.T

    def restore():
        for dense, weight, quantized in saved:
            dense.weight, dense.quantized = weight, quantized
    return restore


def _run(model, samples: np.ndarray, batch_size: int, on_samples: Callable[[int], None] | None) -> None:
    done = on_samples or (lambda n: None)
    if hasattr(model, "blocks"):
        for ids in samples:  # prefill: logits of the last position only
            model.prefill(ids, model.new_cache(len(ids)))
            done(1)
    else:
        for start in range(0, len(samples), batch_size):
            rows = samples[start:start + batch_size]
            model.embed_ids([list(map(int, ids)) for ids in rows], batch_size=batch_size)
            done(len(rows))


def capture(model, samples, sinks: Mapping[str, Callable[[np.ndarray], None]], *, batch_size: int = 8,
            on_samples: Callable[[int], None] | None = None) -> None:
    """Run `samples` (token id rows (n, seq_len)) through a LlamaModel or BertEncoder, calling
    sinks[name](x) with the input rows x of every multiplication by linear weight `name`
    (and on_samples(count) as samples finish: progress)."""
    samples = np.asarray(samples)
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must be a non-empty (n, seq_len) array of token ids, got {samples.shape}")
    restore = install_recorders(model, sinks)
    try:
        _run(model, samples, batch_size, on_samples)
    finally:
        restore()


def collect_stats(model, samples, groups: Sequence[InputGroup], *, batch_size: int = 8,
                  on_samples: Callable[[int], None] | None = None) -> dict[str, InputStats]:
    """Run `samples` (token id rows) through a LlamaModel or BertEncoder and return the input
    statistics of every layer in `groups` (layers of one group share one InputStats)."""
    samples = np.asarray(samples)
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must be a non-empty (n, seq_len) array of token ids, got {samples.shape}")
    sinks, stats = stat_sinks(groups)
    capture(model, samples, sinks, batch_size=batch_size, on_samples=on_samples)
    return checked_stats(stats)


def stat_sinks(groups: Sequence[InputGroup]) -> tuple[dict[str, Callable], dict[str, list]]:
    """Sinks for capture that gather each group's inputs into one InputStats, and where they
    land (layer -> a list that holds the group's InputStats once inputs arrived)."""
    stats: dict[str, list] = {}
    sinks: dict[str, Callable] = {}
    for group in groups:
        shared: list[InputStats] = []

        def sink(x, shared=shared):
            if not shared:
                shared.append(InputStats(x.shape[-1]))
            shared[0].update(x)
        # q, k and v get the same rows: only the first layer of a group records them
        sinks[group.layers[0]] = sink
        for name in group.layers[1:]:
            sinks[name] = lambda x: None
        stats.update({name: shared for name in group.layers})
    return sinks, stats


def checked_stats(stats: Mapping[str, list]) -> dict[str, InputStats]:
    """stat_sinks' lists -> layer -> InputStats; ValueError if a layer never got inputs."""
    missing = [name for name, shared in stats.items() if not shared]
    if missing:
        raise ValueError(f"the model never multiplied {missing[:3]}...: are the group names right?")
    return {name: shared[0] for name, shared in stats.items()}


# --- quantization --------------------------------------------------------------------------------------
@dataclass
class LayerReport:
    name: str
    config: WeightConfig
    error: float | None  # ||X W^T - X Q^T||^2 on the calibration rows (None without statistics)
    scaled: bool = False  # its input channels were scaled (awq, smoothquant) with 1/s folded before it
    relative_error: float | None = None  # error / ||X W^T||^2
    bits_per_weight: float | None = None  # of the stored tensor, scales included


@dataclass
class QuantizeResult:
    tensors: dict[str, object]          # every tensor: quantized layers, folded norms, the rest as given
    reports: list[LayerReport] = field(default_factory=list)


def _needs_stats(config: WeightConfig) -> bool:
    return config.algorithm in ("gptq", "awq", "smoothquant")


def _quantize_layer(w: np.ndarray, config: WeightConfig, stats: InputStats | None) -> QTensor:
    p = config.params
    if config.algorithm in ANY_QTYPE:  # round to nearest (smoothquant's scaling is already folded in)
        return quantize(w, config.qtype, group_size=config.group_size, symmetric=config.symmetric)
    grid = Grid(config.qtype, config.group_size, config.symmetric)
    if config.algorithm == "hqq":
        return hqq(w, grid, iters=p.iters, p=p.p, beta=p.beta, kappa=p.kappa, optimize_scale=p.optimize_scale)
    if config.algorithm == "gptq":
        return gptq(w, stats.hessian(), grid, damp=p.damp, block_size=p.block_size, act_order=p.act_order,
                    grid_search=p.grid_search)
    # awq: any scaling is already folded in; this is the clipping search alone
    return awq([w], stats, grid, n_grid=1, clip=p.clip, max_shrink=p.max_shrink).qtensors[0]


#: the algorithms that scale a group's input channels (weights * s, 1/s folded into the group's folds)
SCALING = ("awq", "smoothquant")


def apply_input_scales(floats: dict[str, np.ndarray], stats: Mapping[str, InputStats], recipe: Recipe,
                       groups: Sequence[InputGroup]) -> tuple[dict[str, InputStats], set[str]]:
    """Scale the input channels of every group whose layers all use one scaling algorithm and
    that has fold targets: s is AWQ's searched scales ("awq") or SmoothQuant's factors
    smooth(absmax, weights, alpha) ("smoothquant"); those layers' columns are multiplied by s
    and the fold targets divided by s, in `floats` (float32 copies, changed in place).
    Returns the input statistics as the layers now see them (InputStats.scaled(s)) and the
    names of the scaled layers. The float model computes the same function after this (up to
    float rounding). A group mixing awq and smoothquant layers raises UnsupportedError; other
    groups are left as they are (their awq / smoothquant layers are quantized unscaled)."""
    inputs = dict(stats)
    scaled: set[str] = set()
    for group in groups:  # forward order: a fold into an earlier group's rows comes after it was scaled
        configs = [recipe.for_layer(name) for name in group.layers]
        algorithms = {c.algorithm for c in configs}
        if len(algorithms & set(SCALING)) > 1:
            raise UnsupportedError(f"layers {', '.join(group.layers)} read one input, so they share its scales; "
                                   f"they cannot mix {' and '.join(SCALING)}: give them one of the two")
        algorithm = algorithms.pop() if len(algorithms) == 1 else None
        if algorithm not in SCALING:
            continue
        if not group.folds:
            log.info("%s %s: no tensor to fold 1/s into; not scaled", algorithm, group.layers)
            continue
        weights = [floats[n] for n in group.layers]
        find = _awq_scales if algorithm == "awq" else _smooth_scales
        s = find(group, configs, weights, stats[group.layers[0]])
        for name in group.layers:
            floats[name] = floats[name] * s
            inputs[name] = stats[name].scaled(s)
            scaled.add(name)
        for name, first in group.folds:
            t = floats[name]
            t[first:first + s.shape[0]] /= s.reshape((-1,) + (1,) * (t.ndim - 1))
    return inputs, scaled


def _awq_scales(group: InputGroup, configs: Sequence[WeightConfig], weights: Sequence[np.ndarray],
                stats: InputStats) -> np.ndarray:
    """AWQ's searched scales for one group of awq layers (they must share one grid)."""
    grids = {Grid(c.qtype, c.group_size, c.symmetric) for c in configs}
    if len(grids) > 1:
        raise UnsupportedError(f"AWQ layers {group.layers} share an input but not a type: {grids}")
    p = configs[0].params
    found = awq(weights, stats, grids.pop(), n_grid=p.n_grid, clip=False, max_shrink=p.max_shrink)
    log.info("AWQ %s: alpha %.2f, output error %.4g -> %.4g", group.layers, found.alpha,
             found.rtn_error, found.error)
    return found.scales


def _smooth_scales(group: InputGroup, configs: Sequence[WeightConfig], weights: Sequence[np.ndarray],
                   stats: InputStats) -> np.ndarray:
    """SmoothQuant's factors for one group of smoothquant layers (they must share one alpha)."""
    alphas = {c.params.alpha for c in configs}
    if len(alphas) > 1:
        raise UnsupportedError(f"SmoothQuant layers {group.layers} share an input but not an alpha: {alphas}")
    return smooth(stats.absmax, weights, alphas.pop()).factors


def quantize_tensors(tensors: Mapping[str, object], stats: Mapping[str, InputStats], recipe: Recipe,
                     groups: Sequence[InputGroup], *,
                     on_layer: Callable[[str], None] | None = None) -> QuantizeResult:
    """Quantize the layers of `groups` by `recipe`; AWQ and SmoothQuant scales fold into the
    named tensors (apply_input_scales).

    tensors: name -> float array or QTensor (QTensors are dequantized first); stats: from
    collect_stats (needed for gptq, awq and smoothquant layers). Tensors not in any group pass through.
    on_layer(name) is called after each layer (progress).
    """
    for group in groups:
        for name in group.layers:
            config = recipe.for_layer(name)
            if _needs_stats(config) and name not in stats:
                raise ValueError(f"layer {name!r} uses {config.algorithm} but has no calibration statistics")
    out = dict(tensors)
    floats = {name: float_weights(out[name]).copy() for g in groups for name in g.layers + tuple(t for t, _ in g.folds)}
    inputs, scaled = apply_input_scales(floats, stats, recipe, groups)
    reports = []
    for group in groups:
        for name in group.layers:
            config = recipe.for_layer(name)
            qt = _quantize_layer(floats[name], config, inputs.get(name))
            error = relative = None
            if name in inputs:  # scaled layers: ||(X/s)(W s)^T - (X/s) Q^T||^2 = ||X W^T - (X/s) Q^T||^2
                error = output_error(floats[name], qt.dequantize(), inputs[name].gram)
                energy = output_error(floats[name], np.zeros_like(floats[name]), inputs[name].gram)
                relative = error / energy if energy > 0 else 0.0
            out[name] = qt
            reports.append(LayerReport(name, config, error, name in scaled, relative, qt.bits_per_weight))
            if on_layer is not None:
                on_layer(name)
    for group in groups:
        for name, _ in group.folds:
            if not isinstance(out[name], QTensor):
                out[name] = floats[name]
    return QuantizeResult(out, reports)


def calibration_samples(model, settings) -> np.ndarray:
    """Token windows for `settings` (recipe.calibration) with the model's own tokenizer."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise UnsupportedError("the model file has no tokenizer: pass calibration samples as token ids")
    if hasattr(model, "blocks"):
        def encode(text):
            return tokenizer.encode(text, add_special=False, parse_special=False)
    else:
        def encode(text):
            return tokenizer.encode(text, add_special=False)
    tokens = data.tokenize(data.load_text(settings.source), encode)
    seq_len = min(settings.seq_len, model_max_tokens(model))
    if seq_len < settings.seq_len:
        log.info("calibration windows of %d tokens: the model takes at most that many", seq_len)
    return data.calibration_samples(tokens, settings.samples, seq_len, settings.seed,
                                    holdout=settings.source == data.BUILTIN)


def model_max_tokens(model) -> int:
    """Tokens one calibration window may hold: the decoder's context, the encoder's limit."""
    return model.context_length if hasattr(model, "blocks") else model.spec.max_tokens


def gram_bytes(groups: Sequence[InputGroup], config: Mapping) -> int:
    """Memory of the Gram matrices (float64 k x k per group) of `groups`."""
    width = _input_widths(config)
    return sum(8 * width(g.layers[0]) ** 2 for g in groups)


def _input_widths(c: Mapping) -> Callable[[str], int]:
    if c.get("architecture") == "bert":
        return lambda name: c["intermediate_size"] if name.endswith("ffn_down.weight") else c["hidden_size"]
    return lambda name: (c["ffn_dim"] if name.endswith("ffn_down.weight") else
                         c["n_heads"] * c["head_dim"] if name.endswith("attn_output.weight") else c["dim"])


def block_chunks(groups: Sequence[InputGroup], config: Mapping, memory: int) -> list[list[InputGroup]]:
    """Consecutive blocks per calibration pass, as many as keep the Gram matrices of one pass
    within `memory` bytes (at least one block per pass)."""
    blocks = sorted({g.block for g in groups})
    chunks: list[list[InputGroup]] = [[]]
    for b in blocks:
        mine = [g for g in groups if g.block == b]
        if chunks[-1] and gram_bytes(chunks[-1] + mine, config) > memory:
            chunks.append([])
        chunks[-1] += mine
    return chunks


def _units(groups: Sequence[InputGroup], recipe: Recipe) -> list[tuple[str, ...]]:
    """What mixed precision sizes alike: an AWQ input group shares one grid, others are per layer."""
    units = []
    for g in groups:
        if g.folds and all(recipe.for_layer(n).algorithm == "awq" for n in g.layers):
            units.append(g.layers)
        else:
            units += [(n,) for n in g.layers]
    return units


class _Bars:
    """tqdm bars (with time estimates) when enabled, else nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm  # installed with gguf; the bars are optional
            except ImportError:
                self.enabled = False
            else:
                self._tqdm = tqdm

    def bar(self, total: int, desc: str, unit: str):
        if not self.enabled:
            return None
        return self._tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


#: how a bits budget is spread over the layers (quantize_packed's `allocation`)
ALLOCATIONS = ("output-error", "probed", "probed-gains")
#: the llama-family decoders: the probed allocation (edgeq.calibrate.probe) measures their output,
#: sequential calibration (edgeq.calibrate.sequential) runs them block by block
DECODERS = ("llama", "qwen2")


def check_allocation(allocation: str, bits: float | None, architecture: str | None = None) -> None:
    """ValueError for an unknown allocation or "probed" without a budget; UnsupportedError for
    "probed" on an architecture other than DECODERS (when it is given)."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if allocation != "output-error" and bits is None:
        raise ValueError("the probed allocation spreads a bits-per-weight budget: give bits too")
    if allocation != "output-error" and architecture is not None and architecture not in DECODERS:
        raise UnsupportedError(f"the probed allocation measures next-token distributions of a llama-family "
                               f"decoder ({', '.join(DECODERS)}); {architecture!r} is not one: "
                               f"use allocation 'output-error'")


def quantize_packed(src, dst, recipe: Recipe, *, samples=None, bits: float | None = None,
                    allocation: str = "output-error", gram_memory: int = 2 << 30,
                    progress: bool = False) -> tuple[Recipe, list[LayerReport]]:
    """Quantize the linear layers of the model in .eqm `src` by `recipe` into `dst`.

    samples: token id rows (default: recipe.calibration with the model's tokenizer).
    bits: a bits-per-weight budget over the linear layers: mixed.budget_recipe adds per-layer
    overrides, from sensitivities chosen by `allocation`:
        "output-error"  the relative round-to-nearest output error of each layer over
                        mixed.DEFAULT_CANDIDATES
        "probed"        the model's own loss (edgeq.calibrate.probe: KL divergence from the
                        float model on probe.probe_windows(samples)) with each unit alone at
                        the probe grid, carried to mixed.LOW_BIT_CANDIDATES by the relative
                        errors (mixed.probed_errors); llama-family models only, one forward
                        pass per window and unit
        "probed-gains"  probed, with each unit's sensitivities scaled by how much its
                        algorithm (GPTQ, AWQ, HQQ) lowers round to nearest's error at each
                        qtype (recipe_gains: the algorithm run once per qtype on each layer).
                        Better at 2.5-3.25 bits on a rotated SmolLM2, slightly worse at 3.5;
                        the same gains made the output-error allocation worse at 3.5 bits
                        (24.51 -> 29.40), so only this allocation applies them
    dst's metadata records "bits_budget", "allocation" and, when probed, "probe" (grid,
    windows, tokens).
    The blocks are calibrated in passes whose Gram matrices fit `gram_memory` bytes (all of
    SmolLM2-135M's fit in 0.8 GiB: one pass); with recipe.calibration.sequential, one block at a
    time on the outputs of the blocks already quantized (edgeq.calibrate.sequential; the
    allocation's statistics still come from the float model). With recipe.activations.mode
    "static" the layers' int8 input scales are calibrated too (edgeq.calibrate.static;
    llama-family decoders and BERT encoders).
    With recipe.rotation.mode "hadamard" the decoder is rotated first (edgeq.calibrate.rotation:
    a float copy of it in a temporary folder next to dst, removed afterwards), and everything
    above runs on the rotated model.
    The recipe actually applied (with the allocation) is stored in dst's metadata under
    "recipe" and returned with the per-layer reports.
    """
    from edgeq.format import open_packed

    packed = open_packed(Path(src))
    config = packed.config or {}
    check_allocation(allocation, bits, config.get("architecture"))
    if recipe.rotation.mode == "none":
        return _quantize_packed(packed, dst, recipe, samples, bits, allocation, gram_memory, progress)
    from edgeq.calibrate.rotation import save_rotated

    with tempfile.TemporaryDirectory(dir=Path(dst).parent, prefix=".edgeq-rotate-") as tmp:
        rotated = open_packed(save_rotated(packed, Path(tmp) / "rotated.eqm", recipe.rotation.seed))
        return _quantize_packed(rotated, dst, recipe, samples, bits, allocation, gram_memory, progress)


def _quantize_packed(packed, dst, recipe: Recipe, samples, bits, allocation, gram_memory, progress):
    """quantize_packed of an open PackedFile."""
    from edgeq.calibrate import mixed, static
    from edgeq.format import save
    from edgeq.models import build_model

    config = packed.config or {}
    groups = input_groups(config)
    static_acts = recipe.activations.mode == "static"
    if recipe.activations.integer_ffn and config.get("architecture") != "bert":
        raise UnsupportedError(f"integer_ffn runs BERT's ffn_up -> GELU -> ffn_down on integer codes; "
                               f"{config.get('architecture')!r} has no such step (its SwiGLU multiplies "
                               f"two projections)")
    layers = [name for g in groups for name in g.layers]
    sequential = recipe.calibration.sequential and any(_needs_stats(recipe.for_layer(n)) for n in layers)
    if sequential and config.get("architecture") not in DECODERS:
        raise UnsupportedError(f"sequential calibration runs llama-family decoders block by block, "
                               f"not {config.get('architecture')!r}; set calibration.sequential to false")
    needs = bits is not None or static_acts or any(_needs_stats(recipe.for_layer(n)) for n in layers)
    model = build_model(packed) if needs else None
    if needs and samples is None:
        samples = calibration_samples(model, recipe.calibration)
    chunks = block_chunks(groups, config, gram_memory) if needs else [list(groups)]
    bars = _Bars(progress)
    cached: dict[str, InputStats] | None = None

    def stats_of(chunk, what):
        nonlocal cached
        if cached is not None:
            return cached
        bar = bars.bar(len(samples), f"calibrating {what}", "sample")
        try:
            stats = collect_stats(model, samples, chunk, on_samples=bar.update if bar else None)
        finally:
            if bar:
                bar.close()
        if len(chunks) == 1:
            cached = stats
        return stats

    probe_record = None
    if bits is not None:
        probed = allocation != "output-error"
        candidates = mixed.LOW_BIT_CANDIDATES if probed else mixed.DEFAULT_CANDIDATES
        sizes, errors, gains = {}, {}, {}
        for i, chunk in enumerate(chunks):
            units = _units(chunk, recipe)
            floats = {n: float_weights(packed[n]) for u in units for n in u}
            stats = stats_of(chunk, f"pass {i + 1}/{len(chunks)}")
            s, e = mixed.relative_errors(floats, stats, units, candidates)
            sizes.update(s)
            errors.update(e)
            if allocation == "probed-gains":
                bar = bars.bar(len(units), "measuring the algorithm's gains", "layer")
                try:
                    gains.update(recipe_gains(floats, stats, units, e, candidates, recipe,
                                              on_unit=bar.update if bar else None))
                finally:
                    if bar:
                        bar.close()
        if probed:
            errors, probe_record = _probed(model, packed, _units(groups, recipe), errors, samples, candidates, bars)
        if gains:
            errors = mixed.with_gains(errors, gains, candidates)
        recipe = mixed.budget_recipe(recipe, sizes, errors, _units(groups, recipe), bits, candidates)
        log.info("mixed precision (%s) for %.3f bits per weight: %d layer overrides", allocation, bits,
                 len(recipe.overrides))

    tensors = {name: packed[name] for name in packed}
    reports: list[LayerReport] = []
    bar = bars.bar(len(layers), "quantizing", "layer")
    try:
        if sequential:
            from edgeq.calibrate.sequential import quantize_sequential
            result = quantize_sequential(model, tensors, samples, recipe, groups,
                                         on_layer=(lambda name: bar.update(1)) if bar else None)
            tensors.update(result.tensors)
            reports += result.reports
        for i, chunk in enumerate(chunks if not sequential else ()):
            chunk_layers = [n for g in chunk for n in g.layers]
            stats = (stats_of(chunk, f"pass {i + 1}/{len(chunks)}")
                     if any(_needs_stats(recipe.for_layer(n)) for n in chunk_layers) else {})
            result = quantize_tensors(tensors, stats, recipe, chunk,
                                      on_layer=(lambda name: bar.update(1)) if bar else None)
            tensors.update(result.tensors)
            reports += result.reports
            log.info("quantized blocks %d..%d", chunk[0].block, chunk[-1].block)
    finally:
        if bar:
            bar.close()
    if static_acts:
        tensors.update(static.calibrate_scales(model, samples, groups, recipe.activations))
    metadata = dict(packed.metadata or {}, recipe=recipe.to_json())
    if bits is not None:
        metadata.update(bits_budget=bits, allocation=allocation)
    if probe_record is not None:
        metadata["probe"] = probe_record
    save(Path(dst), tensors, config=packed.config, tokenizer=packed.tokenizer, metadata=metadata)
    return recipe, reports


def recipe_gains(floats, stats, units, relative, candidates, recipe: Recipe, *,
                 on_unit: Callable[[], None] | None = None) -> dict:
    """mixed.algorithm_gains of the units whose algorithm (recipe.for_layer) is not round to
    nearest, each layer quantized by its own algorithm and parameters; 1 for the others.
    relative: mixed.relative_errors of the units over `candidates`."""
    from edgeq.calibrate import mixed

    def by_algorithm(name, w, grid):
        config = replace(recipe.for_layer(name), qtype=grid.qtype, group_size=grid.group_size,
                         symmetric=grid.symmetric)
        return _quantize_layer(w, config, stats.get(name))

    searched = [u for u in units if any(recipe.for_layer(n).algorithm not in ANY_QTYPE for n in u)]
    gains = {u[0]: {candidates[c].qtype: 1.0 for c in relative[u[0]]} for u in units}
    gains.update(mixed.algorithm_gains(floats, stats, searched, relative, candidates, by_algorithm, on_unit=on_unit))
    return gains


def _probed(model, packed, units, relative, samples, candidates, bars) -> tuple[dict, dict]:
    """probe.probed_sensitivities of `units`, every block matrix float in the reference."""
    from edgeq.calibrate import probe

    floats = {n: float_weights(packed[n]) for u in units for n in u}
    bar = bars.bar(len(units), "probing", "layer")
    try:
        return probe.probed_sensitivities(model, floats, units, relative, samples, candidates,
                                          on_unit=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
