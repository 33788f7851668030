"""GPTQ's sequential variant: each block is calibrated on the inputs that the already quantized
blocks before it produce, so its quantization can make up for their errors.

    result = quantize_sequential(model, tensors, samples, recipe, groups)

The residual stream of every calibration sample is kept (samples x seq_len x dim float32: 19
MiB for SmolLM2 at 32 x 256) and carried through the decoder one block at a time:

    1. block b runs on the kept states with its float weights; the inputs of its linear layers
       are recorded (driver.install_recorders) into their InputStats
    2. its layers are quantized from those statistics (driver.quantize_tensors: any algorithm,
       AWQ / SmoothQuant folds included)
    3. the dequantized weights (and the norms scales were folded into) replace the block's
    4. block b runs again, now quantized: its outputs are block b + 1's inputs

Two block passes per block: about the cost of two forward passes over the samples, against one
for driver.collect_stats, whose statistics all come from the float model. Within a block the
inputs of o, gate|up and down still come from the block's float layers before them. The
model's weights are restored afterwards. Llama-family decoders (LlamaModel.block_forward).
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import numpy as np

from edgeq.calibrate import driver
from edgeq.calibrate.probe import swap_weights
from edgeq.calibrate.recipe import Recipe
from edgeq.errors import UnsupportedError

log = logging.getLogger(__name__)


class _Stream:
    """The residual stream of each sample between two blocks."""

    def __init__(self, model, samples: np.ndarray):
        self.model = model
        self.cache = model.new_cache(samples.shape[1])  # positions 0..T-1 of each sample in turn
        self.cos, self.sin = model.rope_angles(0, samples.shape[1])
        self.states = [model.embed_tokens(model.check_ids(ids)) for ids in samples]

    def through(self, block: int) -> list[np.ndarray]:
        """Each sample's state after `block` (the states are not changed)."""
        return [self.model.block_forward(block, x, self.cache, self.cos, self.sin) for x in self.states]


def quantize_sequential(model, tensors: Mapping[str, object], samples, recipe: Recipe,
                        groups: Sequence[driver.InputGroup], *,
                        on_layer: Callable[[str], None] | None = None) -> driver.QuantizeResult:
    """driver.quantize_tensors of `groups`, block by block, each block's statistics taken with
    the blocks before it quantized. model: the float LlamaModel of `tensors` (unfused)."""
    if not hasattr(model, "block_forward"):
        raise UnsupportedError("sequential calibration runs llama-family decoders block by block; "
                               "other models calibrate on the float model (calibration.sequential: false)")
    samples = np.asarray(samples)
    if samples.ndim != 2 or samples.shape[0] == 0 or samples.shape[1] == 0:
        raise ValueError(f"samples must be a non-empty (n, seq_len) array of token ids, got {samples.shape}")
    stream = _Stream(model, samples)
    original = list(model.blocks)
    out, reports = dict(tensors), []
    try:
        for block in sorted({g.block for g in groups}):
            mine = [g for g in groups if g.block == block]
            sinks, gathered = driver.stat_sinks(mine)
            restore = driver.install_recorders(model, sinks)
            try:
                stream.through(block)
            finally:
                restore()
            result = driver.quantize_tensors(out, driver.checked_stats(gathered), recipe, mine, on_layer=on_layer)
            out.update(result.tensors)
            reports += result.reports
            changed = [n for g in mine for n in g.layers + tuple(t for t, _ in g.folds)]
            swap_weights(model, {n: driver.float_weights(out[n]) for n in changed})
            stream.states = stream.through(block)
            log.info("block %d quantized on the quantized blocks' outputs", block)
    finally:
        model.blocks[:] = original
    return driver.QuantizeResult(out, reports)
