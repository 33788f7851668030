"""Offline post-training quantization: calibration data, statistics and weight algorithms.

    data         calibration text (built-in pydoc corpus, text or JSON lines), held apart
                 from the evaluation tokens; token windows with a seed
    stats        InputStats: a linear layer's input Gram matrix, per-channel max and mean |x|
    observers    activation ranges: min-max, percentile, MSE search, KL (TensorRT) -> int8 scale
    grid         Grid: the int4 / int3 / int2 per-group target every algorithm packs into
    rtn, gptq, awq, smoothquant, hqq     the weight algorithms (plain functions on numpy arrays)
    mixed        bits per layer under a bits-per-weight budget
    rotation     a llama decoder with its residual stream rotated (same function, for GPTQ)
    recipe       Recipe: typed, versioned settings (YAML / JSON, stored in the .eqm metadata)
    driver       runs a model over calibration samples and quantizes a whole .eqm by a recipe
    static       calibrated int8 activation scales stored in the file (static mode, BERT)
    api          quantize(src, dst, recipe, **options): GGUF / HF / .eqm in, .eqm out
    similarity   embedding cosine against the float model (`edgeq eval embed-sim`)
"""

from edgeq.calibrate.api import QuantizeSummary, build_recipe, quantize
from edgeq.calibrate.recipe import ActivationConfig, Recipe, RotationConfig, WeightConfig

__all__ = ["ActivationConfig", "QuantizeSummary", "Recipe", "RotationConfig", "WeightConfig", "build_recipe",
           "quantize"]
