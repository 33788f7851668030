"""Quantization recipes: how a model's weights are quantized, as typed, versioned data.

A Recipe holds the default weight settings, per-layer overrides chosen by fnmatch patterns on
layer names, and the calibration data settings. It reads and writes YAML or JSON, and
to_json() is the dict stored in the .eqm header's metadata, so every file says how it was made.

    version: 1
    weights:                      # the default for every layer
      qtype: int4                 # rtn, smoothquant: any edgeq qtype; gptq / awq / hqq: int4, int3, int2
      group_size: 32              # null: the type's default granularity (rtn, smoothquant only)
      symmetric: true
      algorithm: gptq             # rtn | gptq | awq | hqq | smoothquant
      params: {damp: 0.01, act_order: true, grid_search: true}   # missing keys take defaults
    overrides:                    # in order; every matching one applies, later ones win
      - pattern: "*.mlp.down_proj"
        qtype: int8               # fields left out are inherited
        group_size: null
        algorithm: rtn
      - pattern: "*.ffn_*"      # W8A8: int8 per row after SmoothQuant's input scaling
        qtype: int8
        group_size: null
        algorithm: smoothquant
        params: {alpha: 0.5}
    calibration: {source: pydoc, samples: 64, seq_len: 512, seed: 0, sequential: false}
    activations: {mode: dynamic}  # or {mode: static, observer: percentile, granularity: block,
                                  #     integer_ffn: false, dynamic: ["*.ffn_down.weight"]}
    rotation: {mode: none}        # or {mode: hadamard, seed: 0}: llama-family decoders

An override that changes the algorithm without giving params gets that algorithm's defaults.
smoothquant (edgeq.calibrate.smoothquant) scales an input group's weights by s (folding 1/s into
the tensor before them, as AWQ does) and then rounds to nearest like rtn, so it takes any qtype;
its one parameter is alpha in [0, 1], how much of the activations' range moves into the weights.
activations (optional, default dynamic): "static" stores calibrated int8 input scales for every
linear layer in the file (edgeq.calibrate.static), one per block of `block` input channels
(granularity "block") or one per layer ("tensor"), from the chosen observer (observers.py).
rotation (optional, default none): "hadamard" turns the decoder's residual stream by a random
orthogonal matrix before the weights are quantized (edgeq.calibrate.rotation: the same
function, weights GPTQ quantizes much better).
A mixed-precision allocation (mixed.allocate) is written as overrides with exact layer names.
Malformed input raises FormatError naming the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from edgeq.calibrate.grid import BITS
from edgeq.errors import FormatError, UnsupportedError

RECIPE_VERSION = 1


@dataclass(frozen=True)
class RTNParams:
    """Round to nearest has no parameters."""


@dataclass(frozen=True)
class GPTQParams:
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    grid_search: bool = False


@dataclass(frozen=True)
class AWQParams:
    n_grid: int = 20
    clip: bool = True
    max_shrink: float = 0.5


@dataclass(frozen=True)
class HQQParams:
    iters: int = 20
    p: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    optimize_scale: Union[bool, None] = None


@dataclass(frozen=True)
class SmoothQuantParams:
    alpha: float = 0.5  # s_j = max|x_j|**alpha / max|W[:, j]|**(1 - alpha)

    def __post_init__(self):
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")


Params = Union[RTNParams, GPTQParams, AWQParams, HQQParams, SmoothQuantParams]
PARAMS: dict[str, type] = {"rtn": RTNParams, "gptq": GPTQParams, "awq": AWQParams, "hqq": HQQParams,
                           "smoothquant": SmoothQuantParams}
#: the algorithms that round to nearest on any edgeq qtype (the others search int4 / int3 / int2 grids)
ANY_QTYPE = ("rtn", "smoothquant")


@dataclass(frozen=True)
class WeightConfig:
    """How one layer's weights are quantized."""

    qtype: str = "int4"
    group_size: Union[int, None] = 32
    symmetric: bool = True
    algorithm: str = "rtn"
    params: Union[Params, None] = None  # None: the algorithm's defaults

    def __post_init__(self):
        if self.algorithm not in PARAMS:
            raise UnsupportedError(f"unknown algorithm {self.algorithm!r}; choose from {', '.join(PARAMS)}")
        if self.params is None:
            object.__setattr__(self, "params", PARAMS[self.algorithm]())
        elif type(self.params) is not PARAMS[self.algorithm]:
            raise ValueError(f"{type(self.params).__name__} given for algorithm {self.algorithm!r}")
        if self.algorithm not in ANY_QTYPE and (self.qtype not in BITS or self.group_size is None):
            raise UnsupportedError(f"{self.algorithm} quantizes to {', '.join(BITS)} with a group size, "
                                   f"not {self.qtype} (group size {self.group_size})")


@dataclass(frozen=True)
class Override:
    """Settings for the layers whose names match `pattern` (fnmatch); None fields inherit."""

    pattern: str
    qtype: Union[str, None] = None
    group_size: Union[int, None] = None
    symmetric: Union[bool, None] = None
    algorithm: Union[str, None] = None
    params: Union[Params, None] = None
    #: group_size is the one field where null is a value (the type's default granularity)
    ungrouped: bool = False

    def apply(self, base: WeightConfig) -> WeightConfig:
        changes = {name: getattr(self, name) for name in ("qtype", "group_size", "symmetric", "algorithm")
                   if getattr(self, name) is not None}
        if self.ungrouped:
            changes["group_size"] = None
        if self.params is not None:
            changes["params"] = self.params
        elif self.algorithm is not None and self.algorithm != base.algorithm:
            changes["params"] = None
        return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class CalibrationSettings:
    """Calibration text (data.py): "pydoc" (built in) or a path; samples x seq_len tokens.
    sequential: each block's statistics come from the model with the blocks before it already
    quantized (edgeq.calibrate.sequential; llama-family decoders), not from the float model."""

    source: str = "pydoc"
    samples: int = 64
    seq_len: int = 512
    seed: int = 0
    sequential: bool = False

    def __post_init__(self):
        for name in ("samples", "seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"calibration {name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class ActivationConfig:
    """How the linear layers' int8 inputs are scaled at run time: "dynamic" (per token, by the
    runtime) or "static" (calibrated scales stored in the file). integer_ffn (static, BERT):
    the FFN's inputs get one scale per tensor whatever the granularity, and ffn_up's output
    scale is stored, so that ffn_up -> GELU -> ffn_down runs on integer codes
    (edgeq.calibrate.static). dynamic (static): fnmatch patterns of the layers whose inputs
    stay dynamic, e.g. ("*.ffn_down.weight",): no scales are stored for them."""

    mode: str = "dynamic"
    observer: str = "percentile"
    granularity: str = "block"
    block: int = 32
    integer_ffn: bool = False
    dynamic: tuple[str, ...] = ()

    def __post_init__(self):
        from edgeq.calibrate.observers import METHODS
        if self.mode not in ("dynamic", "static"):
            raise ValueError(f"activation mode must be 'dynamic' or 'static', got {self.mode!r}")
        if self.observer not in METHODS:
            raise ValueError(f"unknown observer {self.observer!r}; choose from {', '.join(METHODS)}")
        if self.granularity not in ("block", "tensor"):
            raise ValueError(f"granularity must be 'block' or 'tensor', got {self.granularity!r}")
        if self.block <= 0:
            raise ValueError(f"block must be positive, got {self.block}")
        if self.integer_ffn and self.mode != "static":
            raise ValueError("integer_ffn needs static activations (mode 'static')")
        if not all(isinstance(p, str) and p for p in self.dynamic):
            raise ValueError(f"dynamic must be layer name patterns (non-empty strings), got {self.dynamic!r}")
        object.__setattr__(self, "dynamic", tuple(self.dynamic))

    def keeps_dynamic(self, layer: str) -> bool:
        """Whether `layer`'s input is left to dynamic quantization in static mode."""
        return any(fnmatch.fnmatchcase(layer, p) for p in self.dynamic)


@dataclass(frozen=True)
class RotationConfig:
    """Whether (and from which seed) the residual stream is rotated before quantization."""

    mode: str = "none"
    seed: int = 0

    def __post_init__(self):
        from edgeq.calibrate.rotation import MODES
        if self.mode not in MODES:
            raise ValueError(f"rotation mode must be one of {', '.join(MODES)}, got {self.mode!r}")


@dataclass(frozen=True)
class Recipe:
    weights: WeightConfig = WeightConfig()
    overrides: tuple[Override, ...] = ()
    calibration: CalibrationSettings = CalibrationSettings()
    version: int = RECIPE_VERSION
    activations: ActivationConfig = ActivationConfig()
    rotation: RotationConfig = RotationConfig()

    def for_layer(self, name: str) -> WeightConfig:
        """The settings for layer `name`: the default with every matching override applied."""
        config = self.weights
        for override in self.overrides:
            if fnmatch.fnmatchcase(name, override.pattern):
                try:
                    config = override.apply(config)
                except ValueError as e:
                    raise type(e)(f"layer {name!r}, override {override.pattern!r}: {e}") from None
        return config

    # --- serialization ---------------------------------------------------------------------
    def to_json(self) -> dict:
        """A JSON-compatible dict (the .eqm metadata entry)."""
        return {"version": self.version, "weights": _config_dict(self.weights),
                "overrides": [_override_dict(o) for o in self.overrides],
                "calibration": dataclasses.asdict(self.calibration),
                "activations": {**dataclasses.asdict(self.activations), "dynamic": list(self.activations.dynamic)},
                "rotation": dataclasses.asdict(self.rotation)}

    @classmethod
    def from_json(cls, data, where: str = "recipe") -> Recipe:
        obj = _mapping(data, where, {"version", "weights", "overrides", "calibration", "activations", "rotation"})
        version = obj.get("version", RECIPE_VERSION)
        if version != RECIPE_VERSION:
            raise UnsupportedError(f"{where}: recipe version {version!r}; this edgeq reads {RECIPE_VERSION}")
        overrides = obj.get("overrides") or []
        if not isinstance(overrides, list):
            raise FormatError(f"{where}: 'overrides' must be a list, got {type(overrides).__name__}")
        return cls(weights=_config(obj.get("weights", {}), f"{where}.weights"),
                   overrides=tuple(_override(o, f"{where}.overrides[{i}]") for i, o in enumerate(overrides)),
                   calibration=_simple(CalibrationSettings, obj.get("calibration", {}), f"{where}.calibration"),
                   activations=_simple(ActivationConfig, obj.get("activations", {}), f"{where}.activations"),
                   rotation=_simple(RotationConfig, obj.get("rotation", {}), f"{where}.rotation"))

    def to_yaml(self) -> str:
        return _yaml().safe_dump(self.to_json(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, where: str = "recipe") -> Recipe:
        yaml = _yaml()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FormatError(f"{where}: not valid YAML ({e})") from None
        return cls.from_json(data, where)

    def save(self, path) -> Path:
        """Write YAML (.yaml / .yml) or JSON (anything else)."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else json.dumps(self.to_json(), indent=2) + "\n"
        path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path) -> Recipe:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{path}: not UTF-8 text ({e})") from None
        if path.suffix in (".yaml", ".yml"):
            return cls.from_yaml(text, str(path))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: not valid JSON ({e})") from None
        return cls.from_json(data, str(path))


# --- dict <-> dataclass helpers ------------------------------------------------------------------
def _yaml():
    try:
        import yaml  # pyyaml, installed with gguf
    except ImportError:
        raise UnsupportedError("YAML recipes need pyyaml (pip install pyyaml); JSON works without it") from None
    return yaml


def _config_dict(config: WeightConfig) -> dict:
    return {"qtype": config.qtype, "group_size": config.group_size, "symmetric": config.symmetric,
            "algorithm": config.algorithm, "params": dataclasses.asdict(config.params)}


def _override_dict(o: Override) -> dict:
    out: dict = {"pattern": o.pattern}
    for name in ("qtype", "group_size", "symmetric", "algorithm"):
        if getattr(o, name) is not None:
            out[name] = getattr(o, name)
    if o.ungrouped:
        out["group_size"] = None
    if o.params is not None:
        out["params"] = dataclasses.asdict(o.params)
    return out


def _mapping(data, where: str, allowed: set[str]) -> dict:
    if not isinstance(data, dict):
        raise FormatError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = set(data) - allowed
    if unknown:
        raise FormatError(f"{where}: unknown field(s) {sorted(map(str, unknown))}; expected {sorted(allowed)}")
    return data


def _build(where: str, make):
    """Run a constructor; its errors name `where` (a ValueError becomes a FormatError)."""
    try:
        return make()
    except UnsupportedError as e:
        raise UnsupportedError(f"{where}: {e}") from None
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from None


def _check(value, hint, where: str):
    """`value` against a simple type hint (str, int, float, bool, one of them | None, or
    tuple[str, ...] given as a list)."""
    if typing.get_origin(hint) is tuple:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise FormatError(f"{where}: expected a list of strings, got {value!r}")
    options = typing.get_args(hint) or (hint,)
    if value is None and type(None) in options:
        return value
    for t in options:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in options)
    raise FormatError(f"{where}: expected {names}, got {value!r}")


def _simple(cls, data, where: str, skip: tuple[str, ...] = ()):
    """A dataclass of plain fields from a mapping; missing fields take their defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(skip)
    obj = _mapping(data, where, names)
    values = {name: _check(obj[name], hints[name], f"{where}.{name}") for name in obj}
    return _build(where, lambda: cls(**values))


def algorithm_params(algorithm: str, data, where: str = "params") -> Params:
    """The parameters of `algorithm` from a mapping of some of them (missing keys take their
    defaults); FormatError for an unknown key or a value of the wrong type."""
    return _params(algorithm, data, where)


def _params(algorithm: str, data, where: str):
    if algorithm not in PARAMS:
        raise UnsupportedError(f"{where}: unknown algorithm {algorithm!r}; choose from {', '.join(PARAMS)}")
    return _simple(PARAMS[algorithm], {} if data is None else data, where)


def _config(data, where: str) -> WeightConfig:
    obj = _mapping(data, where, {f.name for f in dataclasses.fields(WeightConfig)})
    plain = _simple(WeightConfig, {k: v for k, v in obj.items() if k != "params"}, where)
    params = _params(plain.algorithm, obj.get("params"), f"{where}.params")
    return _build(where, lambda: dataclasses.replace(plain, params=params))


def _override(data, where: str) -> Override:
    obj = _mapping(data, where, {"pattern", "qtype", "group_size", "symmetric", "algorithm", "params"})
    if "pattern" not in obj:
        raise FormatError(f"{where}: missing 'pattern'")
    fields = {k: v for k, v in obj.items() if k != "params"}
    ungrouped = "group_size" in obj and obj["group_size"] is None
    o = _simple(Override, fields, where, skip=("params", "ungrouped"))
    params = None
    if "params" in obj:
        if o.algorithm is None:
            raise FormatError(f"{where}: 'params' needs the 'algorithm' they belong to")
        params = _params(o.algorithm, obj["params"], f"{where}.params")
    return dataclasses.replace(o, params=params, ungrouped=ungrouped)
