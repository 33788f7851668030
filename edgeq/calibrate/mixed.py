"""Mixed precision: choose a weight type per layer under a bits-per-weight budget.

Each layer i has n_i weights and, for each candidate type c, a cost (bits per weight b_c,
scales included: Grid.bits_per_weight) and a sensitivity e_ic (how much worse the model gets
when the layer alone is quantized to c; `sensitivities` measures the layer's output error on
the calibration rows, ||X W^T - X Q_c^T||^2). The allocation minimizes sum_i e_ic(i) subject to

    sum_i n_i b_c(i)  <=  budget * sum_i n_i

a multiple-choice knapsack, solved by dynamic programming over the budget in whole units:

    exact     when the costs (fractions of the float inputs) share a unit u that cuts the budget
              into at most `resolution` (65536) parts (real models: layer sizes share large
              factors, e.g. 110592 weights x 0.5 bits for SmolLM2's int2..int8 candidates)
    rounded   otherwise u = budget / resolution and every cost is rounded *up* to whole units:
              still never over the budget, optimal for the rounded costs, and wasting less
              than (layers / resolution) of the budget

budget_recipe ties it to a Recipe: each linear layer (or, for AWQ, each input group, whose
layers must share a grid) is scored by the *relative* output error of round to nearest,
||X (W - Q_c)^T||^2 / ||X W^T||^2 (scale-free, so layers with large outputs do not crowd out
the rest), and the allocation is written as overrides with exact layer names that change
only qtype, group size and symmetry: the recipe's algorithm still quantizes every layer.

The relative output error weighs every layer alike, yet a unit error in one layer moves the
model's output far more than in another. probed_errors measures that on the model itself, at
one forward pass per unit: the loss (e.g. KL divergence from the float model's next-token
distributions) with that unit alone quantized to one probe grid, carried to the other
candidates by the ratio of their relative output errors (both grow with the square of the
layer's output error, so for small errors the ratio holds); edgeq.calibrate.probe gives that
loss for llama-family decoders (driver.quantize_packed, allocation "probed"). LOW_BIT_CANDIDATES
adds the coarse groups (192 divides both of SmolLM2's widths, 576 and 1536) that make 2.0-2.5
bit budgets leave room for wider layers.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Callable, Mapping

import numpy as np

from edgeq.calibrate.grid import Grid
from edgeq.calibrate.recipe import Override, Recipe
from edgeq.calibrate.stats import InputStats, output_error

#: candidate grids of budget_recipe by default: 2 to 4 bits, asymmetric (int2 symmetric has
#: only the 3 levels {-d, 0, d})
DEFAULT_CANDIDATES = {f"{q} g{g}": Grid(q, g, False) for q, g in
                      (("int2", 32), ("int2", 64), ("int3", 32), ("int3", 64), ("int3", 128),
                       ("int4", 32), ("int4", 64), ("int4", 128))}
#: DEFAULT_CANDIDATES plus group 96 and 192 (int2 g192: 2.17 bits per weight)
LOW_BIT_CANDIDATES = {**DEFAULT_CANDIDATES,
                      **{f"{q} g{g}": Grid(q, g, False) for q in ("int2", "int3", "int4") for g in (96, 192)}}


def sensitivities(w, gram: np.ndarray, candidates: Mapping[str, Grid]) -> dict[str, float]:
    """Output error of round to nearest for each candidate grid: name -> ||X (W - Q)^T||^2."""
    return {name: output_error(w, grid.rtn(w).dequantize(), gram) for name, grid in candidates.items()}


def allocate(sizes: Mapping[str, int], errors: Mapping[str, Mapping[str, float]],
             bits_per_weight: Mapping[str, float], budget: float,
             resolution: int = 65536) -> dict[str, str]:
    """Layer name -> candidate name, minimizing the summed errors within `budget` bits/weight.

    sizes: layer -> number of weights; errors: layer -> candidate -> sensitivity (a layer may
    list only some candidates); bits_per_weight: candidate -> cost.
    """
    names = list(sizes)
    if not names:
        return {}
    if set(errors) != set(names):
        raise ValueError(f"errors are given for {sorted(errors)} but the layers are {sorted(names)}")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    options = []
    for name in names:
        size = sizes[name]
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"layer {name!r}: size must be a positive integer, got {size!r}")
        if not errors[name]:
            raise ValueError(f"layer {name!r} has no candidate types")
        for cand, err in errors[name].items():
            if cand not in bits_per_weight:
                raise ValueError(f"layer {name!r}: candidate {cand!r} has no bits_per_weight")
            if not math.isfinite(err):
                raise ValueError(f"layer {name!r}: sensitivity of {cand!r} is {err!r}")
        options.append([(cand, size * Fraction(bits_per_weight[cand]), err) for cand, err in errors[name].items()])

    total_bits = Fraction(budget) * sum(sizes.values())
    cheapest = sum(min(bits for _, bits, _ in opts) for opts in options)
    if cheapest > total_bits:
        raise ValueError(f"the budget of {budget} bits per weight is below the cheapest choice "
                         f"({float(cheapest) / sum(sizes.values()):.4f})")
    unit = _common_unit([bits for opts in options for _, bits, _ in opts])
    if total_bits / unit > resolution:
        unit = total_bits / resolution
    units = math.floor(total_bits / unit)

    def cost_units(bits: Fraction) -> int:  # exact arithmetic: the budget is never exceeded
        return math.ceil(bits / unit)

    costs = [[cost_units(bits) for _, bits, _ in opts] for opts in options]
    # best[u]: least error of the layers so far within u units; choice[i, u] backtracks
    best = np.zeros(units + 1)
    choice = np.zeros((len(names), units + 1), dtype=np.int16)
    for i, opts in enumerate(options):
        new = np.full(units + 1, np.inf)
        for j, (_, _, err) in enumerate(opts):
            cost = costs[i][j]
            if cost > units:
                continue
            shifted = np.full(units + 1, np.inf)
            shifted[cost:] = best[:units + 1 - cost] + err
            better = shifted < new
            new[better] = shifted[better]
            choice[i, better] = j
        best = new
    if not np.isfinite(best[units]):
        raise ValueError(f"no allocation fits {budget} bits per weight at resolution {resolution}; "
                         "raise the resolution or the budget")
    picked: dict[str, str] = {}
    left = units
    for i in range(len(names) - 1, -1, -1):
        j = choice[i, left]
        picked[names[i]] = options[i][j][0]
        left -= costs[i][j]
    return {name: picked[name] for name in names}


def _common_unit(values: list[Fraction]) -> Fraction:
    """The largest u with every value a whole multiple of u."""
    numerator = math.gcd(*(v.numerator for v in values))
    denominator = math.lcm(*(v.denominator for v in values))
    return Fraction(numerator, denominator)


def relative_errors(weights: Mapping[str, np.ndarray], stats: Mapping[str, InputStats],
                    units: list[tuple[str, ...]], candidates: Mapping[str, Grid] = DEFAULT_CANDIDATES
                    ) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
    """Sizes and sensitivities of `units` (tuples of layer names quantized alike), keyed by
    each unit's first name: weights and relative RTN output error summed over its layers.
    Candidates whose group size does not divide a layer's k are left out for that unit."""
    sizes, errors = {}, {}
    for unit in units:
        key = unit[0]
        sizes[key] = sum(int(np.asarray(weights[n]).size) for n in unit)
        errors[key] = {}
        mats = [np.asarray(weights[n], dtype=np.float32) for n in unit]
        for cand, grid in candidates.items():
            if any(w.shape[1] % grid.group_size for w in mats):
                continue
            errors[key][cand] = _relative(unit, mats, stats, lambda name, w, g=grid: g.rtn(w))
    return sizes, errors


def _relative(unit, mats, stats, quantize: Callable) -> float:
    """Relative output error of a unit, sum over its layers of ||X (W - Q)^T||^2 / ||X W^T||^2
    with Q = quantize(name, W)."""
    total = 0.0
    for name, w in zip(unit, mats):
        energy = max(output_error(w, np.zeros_like(w), stats[name].gram), 1e-30)
        total += output_error(w, quantize(name, w).dequantize(), stats[name].gram) / energy
    return total


def algorithm_gains(weights: Mapping[str, np.ndarray], stats: Mapping[str, InputStats],
                    units: list[tuple[str, ...]], relative: Mapping[str, Mapping[str, float]],
                    candidates: Mapping[str, Grid], quantize: Callable[[str, np.ndarray, Grid], object],
                    on_unit: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """How much a unit's algorithm lowers round to nearest's output error, per qtype: unit ->
    qtype -> r_alg / r_rtn, both relative output errors at the coarsest group of that qtype the
    unit lists in `relative` (relative_errors: r_rtn is read from it). quantize(name, w, grid)
    -> QTensor quantizes one layer by its algorithm. GPTQ cuts the error 4x to 60x on
    SmolLM2's layers, differently per layer, so an allocation from round to nearest's errors
    alone misjudges which layers cost most."""
    gains = {}
    for unit in units:
        key = unit[0]
        mats = [np.asarray(weights[n], dtype=np.float32) for n in unit]
        gains[key] = {}
        for qtype in sorted({candidates[c].qtype for c in relative[key]}):
            name = max((c for c in relative[key] if candidates[c].qtype == qtype),
                       key=lambda c: candidates[c].group_size)
            rtn = relative[key][name]
            ours = _relative(unit, mats, stats, lambda layer, w: quantize(layer, w, candidates[name]))
            gains[key][qtype] = ours / rtn if rtn > 0 else 1.0
        if on_unit is not None:
            on_unit()
    return gains


def with_gains(errors: Mapping[str, Mapping[str, float]], gains: Mapping[str, Mapping[str, float]],
               candidates: Mapping[str, Grid]) -> dict[str, dict[str, float]]:
    """errors (round to nearest's: relative_errors or probed_errors) times each unit's
    algorithm_gains at the candidate's qtype."""
    return {key: {c: e * gains[key][candidates[c].qtype] for c, e in errs.items()} for key, errs in errors.items()}


def probed_errors(loss_with: Callable[[dict[str, np.ndarray]], float], weights: Mapping[str, np.ndarray],
                  units: list[tuple[str, ...]], relative: Mapping[str, Mapping[str, float]], probe: str,
                  candidates: Mapping[str, Grid] = DEFAULT_CANDIDATES) -> dict[str, dict[str, float]]:
    """Sensitivities measured on the model's output, keyed like `relative`:

        e_ic = L_i * r_ic / r_i,probe

    L_i = loss_with({name: probe grid's round to nearest of weights[name], dequantized, for
    the names of unit i}): the model's loss with unit i alone quantized (loss 0 = the float
    model; a loss below 0 counts as 0); r: relative output errors (relative_errors). Every
    unit must list the probe candidate."""
    grid = candidates[probe]
    out = {}
    for unit in units:
        key = unit[0]
        if probe not in relative[key]:
            raise ValueError(f"unit {key!r} has no relative error for the probe {probe!r}")
        loss = max(float(loss_with({n: grid.rtn(np.asarray(weights[n], np.float32)).dequantize()
                                    for n in unit})), 0.0)
        if not math.isfinite(loss):
            raise ValueError(f"unit {key!r}: the probe loss is {loss!r}")
        base = relative[key][probe]
        out[key] = {c: loss * r / base if base > 0 else 0.0 for c, r in relative[key].items()}
    return out


def budget_recipe(recipe: Recipe, sizes: Mapping[str, int], errors: Mapping[str, Mapping[str, float]],
                  units: list[tuple[str, ...]], budget: float,
                  candidates: Mapping[str, Grid] = DEFAULT_CANDIDATES) -> Recipe:
    """`recipe` plus overrides giving each unit the candidate grid `allocate` chooses under
    `budget` bits per weight (sizes, errors: from relative_errors)."""
    picked = allocate(sizes, errors, {c: g.bits_per_weight for c, g in candidates.items()}, budget)
    overrides = []
    for unit in units:
        grid = candidates[picked[unit[0]]]
        overrides += [Override(n, qtype=grid.qtype, group_size=grid.group_size, symmetric=grid.symmetric)
                      for n in unit]
    return dataclasses.replace(recipe, overrides=recipe.overrides + tuple(overrides))
