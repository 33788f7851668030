"""edgeq.calibrate.quantize: one call from a model source to a quantized .eqm file.

    summary = quantize("model.gguf", "model-int4.eqm", qtype="int4", algorithm="gptq", group_size=32)
    summary = quantize("hf-folder/", "out.eqm", recipe="recipe.yaml", bits=3.5)
    print(summary.table())

Sources: a GGUF file (imported exactly, through edgeq's conversion cache like edgeq.load, then
dequantized layer by layer), a Hugging Face folder (imported as float32 into a temporary .eqm
next to the output, removed afterwards) or an .eqm file (its float tensors; quantized ones are
dequantized first, with a warning).

Settings: `recipe` (a Recipe, or a YAML / JSON file) gives the defaults; the keyword options
change them: qtype, algorithm, group_size (0: the type's default granularity, e.g. int8 per
row), symmetric (the default weight settings; a new algorithm starts from its default
parameters), params (some of the algorithm's parameters, e.g. {"act_order": True,
"grid_search": True} for GPTQ with act order and grid search, "gptq+" in the tables), calib /
samples / seq_len / seed (calibration text and windows), sequential (each block calibrated on
the outputs of the blocks already quantized: edgeq.calibrate.sequential, llama-family
decoders), activations ("dynamic" | "static", a mapping of the ActivationConfig fields to
change, e.g. {"mode": "static", "integer_ffn": True}, or an ActivationConfig) and bits (a
bits-per-weight budget: mixed precision over the linear layers) with allocation (how the budget
is spread: "output-error", each layer's relative output error, or "probed", the model's own KL
divergence from the float model with each layer alone at int2, measured on two 128-token
windows of the calibration samples: better, one forward pass per layer and window, llama-family
models only; or "probed-gains", probed with each layer's sensitivities scaled by its
algorithm's measured gain; see driver.quantize_packed) and rotation ("hadamard": the decoder's residual
stream is rotated before quantizing, edgeq.calibrate.rotation). The recipe actually applied
travels in the output file's metadata ("recipe", with "bits_budget" and "allocation").
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from typing import Mapping
from pathlib import Path

from edgeq.calibrate import driver
from edgeq.calibrate.recipe import ActivationConfig, Recipe, RotationConfig, algorithm_params
from edgeq.format import MAGIC

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeSummary:
    """What quantize wrote: the file, the recipe applied, one report per linear layer."""

    path: Path
    recipe: Recipe
    reports: tuple[driver.LayerReport, ...]

    @property
    def bits_per_weight(self) -> float:
        """Over the quantized linear layers, scales included."""
        from edgeq.format import open_packed

        packed = open_packed(self.path)
        bits = count = 0
        for r in self.reports:
            t = packed[r.name]
            bits += 8 * t.nbytes
            count += t.shape[0] * t.shape[1]
        return bits / count if count else 0.0

    def table(self) -> str:
        """The per-layer summary: type, bits per weight, algorithm, relative output error."""
        header = f"{'layer':<28} {'type':<16} {'bits':>6} {'algorithm':<13} {'rel. error':>10}"
        lines = [header, "-" * len(header)]
        for r in self.reports:
            c = r.config
            kind = f"{c.qtype} {'g' + str(c.group_size) if c.group_size else 'row'} " \
                   f"{'sym' if c.symmetric else 'asym'}"
            err = "-" if r.relative_error is None else f"{r.relative_error:.3e}"
            algo = c.algorithm + ("+s" if r.scaled else "")
            bpw = "-" if r.bits_per_weight is None else f"{r.bits_per_weight:.3f}"
            lines.append(f"{r.name.removesuffix('.weight'):<28} {kind:<16} {bpw:>6} {algo:<13} {err:>10}")
        size = self.path.stat().st_size
        lines.append(f"{len(self.reports)} linear layers, {self.bits_per_weight:.3f} bits per weight; "
                     f"{self.path} {size / 2**20:.1f} MiB")
        return "\n".join(lines)


def is_packed(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def build_recipe(recipe=None, *, qtype=None, algorithm=None, group_size=None, symmetric=None,
                 params=None, calib=None, samples=None, seq_len=None, seed=None,
                 sequential=None, activations=None, rotation=None) -> Recipe:
    """A Recipe from a Recipe / recipe file / None, with the given options changed; params: a
    mapping of some of the (new) algorithm's parameters, e.g. {"act_order": True}; rotation:
    "none" / "hadamard" (seed 0) or a RotationConfig."""
    if recipe is None:
        recipe = Recipe()
    elif not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    w = recipe.weights
    changes = {k: v for k, v in (("qtype", qtype), ("group_size", group_size),
                                  ("symmetric", symmetric)) if v is not None}
    if group_size == 0:  # the type's default granularity (e.g. int8 per row; rtn only)
        changes["group_size"] = None
    if algorithm is not None and algorithm != w.algorithm:
        changes.update(algorithm=algorithm, params=None)
    if params:
        base = changes.get("params", w.params)
        start = {} if base is None else dataclasses.asdict(base)
        changes["params"] = algorithm_params(changes.get("algorithm", w.algorithm), {**start, **params})
    if changes:
        recipe = dataclasses.replace(recipe, weights=dataclasses.replace(w, **changes))
    cal = {k: v for k, v in (("source", None if calib is None else str(calib)), ("samples", samples),
                             ("seq_len", seq_len), ("seed", seed), ("sequential", sequential)) if v is not None}
    if cal:
        recipe = dataclasses.replace(recipe, calibration=dataclasses.replace(recipe.calibration, **cal))
    if activations is not None:
        if isinstance(activations, str):
            activations = {"mode": activations}
        if isinstance(activations, Mapping):  # some fields changed
            activations = dataclasses.replace(recipe.activations, **activations)
        if not isinstance(activations, ActivationConfig):
            raise TypeError(f"activations must be 'dynamic', 'static', a mapping of ActivationConfig "
                            f"fields or an ActivationConfig, got {activations!r}")
        recipe = dataclasses.replace(recipe, activations=activations)
    if rotation is not None:
        if isinstance(rotation, str):
            rotation = RotationConfig(rotation)
        if not isinstance(rotation, RotationConfig):
            raise TypeError(f"rotation must be 'none', 'hadamard' or a RotationConfig, got {rotation!r}")
        recipe = dataclasses.replace(recipe, rotation=rotation)
    return recipe


def quantize(src, dst, recipe=None, *, bits: float | None = None, allocation: str = "output-error",
             progress: bool = False, calibration_ids=None, **options) -> QuantizeSummary:
    """Quantize the model at `src` (GGUF, HF folder or .eqm) into the .eqm `dst`.

    recipe / options: see the module docstring (options are build_recipe's keywords).
    calibration_ids: token id rows (n, seq_len) to calibrate on instead of the recipe's text.
    progress: tqdm bars with time estimates on stderr.
    """
    from edgeq import cache
    from edgeq.converters.convert import convert, source_kind

    recipe = build_recipe(recipe, **options)
    driver.check_allocation(allocation, bits)  # before a slow import of the source
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".edgeq-quantize-") as tmp:
        if is_packed(src):
            source = src
            _warn_if_quantized(src)
        elif source_kind(src) == "gguf":  # the exact import edgeq.load uses, converted once
            source = cache.converted(src)
        else:
            source = convert(src, Path(tmp) / "source.eqm")
            log.info("imported %s into a temporary float/exact .eqm", src)
        applied, reports = driver.quantize_packed(source, dst, recipe, samples=calibration_ids, bits=bits,
                                                  allocation=allocation, progress=progress)
    return QuantizeSummary(dst, applied, tuple(reports))


def _warn_if_quantized(path: Path) -> None:
    from edgeq.format import open_packed
    from edgeq.qtypes import QTensor

    packed = open_packed(path)
    names = [g.layers for g in driver.input_groups(packed.config or {})]
    quantized = [n for layers in names for n in layers if isinstance(packed[n], QTensor)]
    if quantized:
        log.warning("%s: %d linear layers are already quantized; they are dequantized and quantized "
                    "again (errors add up)", path, len(quantized))
