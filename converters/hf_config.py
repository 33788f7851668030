"""Typed model configs read from a Hugging Face model folder.

Files read:

- ``config.json`` (always): ``model_type`` picks the family, ``architectures[0]`` names the
  class (kept for messages and metadata; falls back to ``model_type``).
- For BERT (``model_type == "bert"``), the sentence-transformers files when present:
  ``modules.json`` (the pipeline: a ``...Pooling`` module's folder, a ``...Normalize`` module
  means unit-length embeddings), that pooling folder's ``config.json`` (``pooling_mode_*``
  flags, default folder ``1_Pooling``) and ``sentence_bert_config.json`` (``max_seq_length``).
  A plain BERT folder without them gets mean pooling and no normalization, as
  sentence-transformers does.
- For llama, mistral and qwen2: the decoder fields. Optional fields take the defaults
  ``transformers`` uses for that model type; the sizes have no default and must be present.

Anything else raises UnsupportedError naming the architecture; missing or mistyped fields
raise FormatError naming the file and the field.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from edgeq.errors import FormatError, UnsupportedError

logger = logging.getLogger(__name__)

LLAMA_FAMILY = ("llama", "mistral", "qwen2")

# transformers' defaults for fields a llama-family config.json may leave out.
_LLAMA_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "attention_bias": False},
    "mistral": {
        "max_position_embeddings": 4096 * 32,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "sliding_window": 4096,  # used when the field is absent; null turns the window off
    },
    # qwen2 always has q/k/v biases (no config field for it).
    "qwen2": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "attention_bias": True},
}
_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


@dataclass(frozen=True)
class BertConfig:
    """A BERT encoder plus its sentence-embedding head."""

    architecture: str  # e.g. "BertModel"
    model_type: str  # "bert"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str  # "gelu" (erf), "gelu_new", "relu", ...
    pooling: str  # "mean" | "cls" | "max"
    normalize: bool  # L2-normalize the pooled embedding
    max_seq_length: int | None  # sentence-transformers' limit, if given

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class LlamaConfig:
    """A llama-family decoder (llama, mistral, qwen2)."""

    architecture: str  # e.g. "LlamaForCausalLM"
    model_type: str  # "llama" | "mistral" | "qwen2"
    vocab_size: int
    dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int
    rms_eps: float
    rope_theta: float
    rope_scaling: dict | None  # HF's dict as is (e.g. {"rope_type": "llama3", "factor": 8.0, ...})
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v (and o for llama's flag) carry biases
    mlp_bias: bool
    hidden_act: str  # "silu"
    sliding_window: int | None  # attention window if the config enables one


def _read_json(path: str) -> Any:
    """The parsed UTF-8 JSON of a file; FormatError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError as exc:
        raise FormatError(f"{path}: file not found") from exc
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: not valid UTF-8 JSON ({exc})") from exc


class _Json:
    """One JSON object read from a file, with typed field access."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.obj = _read_json(path)
        if not isinstance(self.obj, dict):
            raise FormatError(f"{path}: expected a JSON object, got {type(self.obj).__name__}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        """The field, checked against ``kind``; ``default`` if absent or null (required if none given)."""
        value = self.obj.get(key)
        if value is None:
            if default is ...:
                raise FormatError(f"{self.path}: missing field {key!r}")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # JSON true/false are bools, which Python also counts as ints.
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds) or (float in kinds and isinstance(value, int))
        if not ok:
            names = "/".join(k.__name__ for k in kinds)
            raise FormatError(f"{self.path}: field {key!r}: expected {names}, got {value!r}")
        return float(value) if kinds == (float,) else value

    def positive(self, key: str, default: Any = ...) -> int:
        value = self.get(key, int, default)
        if value <= 0:
            raise FormatError(f"{self.path}: field {key!r}: expected a positive int, got {value}")
        return value


def read_hf_config(folder: str | os.PathLike) -> BertConfig | LlamaConfig:
    """Read ``folder/config.json`` (and the sentence-transformers files for BERT)."""
    folder = os.fspath(folder)
    cfg = _Json(os.path.join(folder, "config.json"))
    model_type = cfg.get("model_type", str)
    architectures = cfg.get("architectures", list, default=[])
    architecture = architectures[0] if architectures and isinstance(architectures[0], str) else model_type
    if model_type == "bert":
        return _bert(folder, cfg, architecture)
    if model_type in LLAMA_FAMILY:
        return _llama(cfg, architecture, model_type)
    raise UnsupportedError(
        f"{cfg.path}: architecture {architecture!r} (model_type {model_type!r}) is not supported; "
        f"edgeq reads bert and {', '.join(LLAMA_FAMILY)}"
    )


def _bert(folder: str, cfg: _Json, architecture: str) -> BertConfig:
    position_type = cfg.get("position_embedding_type", str, "absolute")
    if position_type != "absolute":
        raise UnsupportedError(f"{cfg.path}: position_embedding_type {position_type!r} (only 'absolute')")
    hidden, heads = cfg.positive("hidden_size"), cfg.positive("num_attention_heads")
    if hidden % heads:
        raise FormatError(f"{cfg.path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")

    pooling_dir, normalize = "1_Pooling", False
    modules_path = os.path.join(folder, "modules.json")
    if os.path.exists(modules_path):
        pooling_dir, normalize = _read_modules(modules_path)
    pooling = "mean"
    pooling_path = os.path.join(folder, pooling_dir, "config.json")
    if os.path.exists(pooling_path):
        pooling = _read_pooling(_Json(pooling_path))
    else:
        logger.info("%s: no pooling config, using mean pooling", folder)
    max_seq_length = None
    st_path = os.path.join(folder, "sentence_bert_config.json")
    if os.path.exists(st_path):
        max_seq_length = _Json(st_path).get("max_seq_length", int, None)

    return BertConfig(
        architecture=architecture,
        model_type="bert",
        vocab_size=cfg.positive("vocab_size"),
        hidden_size=hidden,
        num_layers=cfg.positive("num_hidden_layers"),
        num_heads=heads,
        intermediate_size=cfg.positive("intermediate_size"),
        max_position_embeddings=cfg.positive("max_position_embeddings"),
        type_vocab_size=cfg.get("type_vocab_size", int, 2),
        layer_norm_eps=cfg.get("layer_norm_eps", float, 1e-12),
        hidden_act=cfg.get("hidden_act", str, "gelu"),
        pooling=pooling,
        normalize=normalize,
        max_seq_length=max_seq_length,
    )


def _read_modules(path: str) -> tuple[str, bool]:
    """(pooling module folder, whether a Normalize module follows) from modules.json."""
    modules = _read_json(path)
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type"), str) for m in modules
    ):
        raise FormatError(f"{path}: expected a list of objects with a 'type' string")
    pooling_dir = "1_Pooling"
    for module in modules:
        if module["type"].endswith(".Pooling") and isinstance(module.get("path"), str):
            pooling_dir = module["path"]
    normalize = any(module["type"].endswith(".Normalize") for module in modules)
    return pooling_dir, normalize


def _read_pooling(pool: _Json) -> str:
    modes = [mode for key, mode in _POOLING_MODES.items() if pool.get(key, bool, False)]
    others = [
        key
        for key, value in pool.obj.items()
        if key.startswith("pooling_mode_") and key not in _POOLING_MODES and value is True
    ]
    if others:
        raise UnsupportedError(f"{pool.path}: {others[0]} is not supported (only mean, cls, max)")
    if len(modes) != 1:
        raise UnsupportedError(f"{pool.path}: expected exactly one pooling mode, got {modes or 'none'}")
    return modes[0]


def _llama(cfg: _Json, architecture: str, model_type: str) -> LlamaConfig:
    defaults = _LLAMA_DEFAULTS[model_type]
    dim = cfg.positive("hidden_size")
    heads = cfg.positive("num_attention_heads")
    kv_heads = cfg.positive("num_key_value_heads", heads)
    if heads % kv_heads:
        raise FormatError(
            f"{cfg.path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    if "head_dim" in cfg.obj and cfg.obj["head_dim"] is not None:
        head_dim = cfg.positive("head_dim")
    elif dim % heads:
        raise FormatError(f"{cfg.path}: hidden_size {dim} is not a multiple of num_attention_heads {heads}")
    else:
        head_dim = dim // heads

    # Newer transformers keep rope_theta and the scaling in one "rope_parameters" object.
    rope_params = cfg.get("rope_parameters", dict, None)
    rope_theta = cfg.get("rope_theta", float, None)
    rope_scaling = cfg.get("rope_scaling", dict, None)
    if rope_params is not None:
        theta = rope_params.get("rope_theta", rope_theta)
        if not isinstance(theta, (int, float)) or isinstance(theta, bool):
            raise FormatError(f"{cfg.path}: rope_parameters.rope_theta: expected a number, got {theta!r}")
        rope_theta = float(theta)
        if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
            rope_scaling = rope_params
    if rope_scaling is not None and rope_scaling.get("rope_type", rope_scaling.get("type")) == "default":
        rope_scaling = None
    if rope_theta is None:
        rope_theta = 10000.0

    if "sliding_window" in cfg.obj:
        sliding_window = cfg.get("sliding_window", int, None)
    else:
        sliding_window = defaults.get("sliding_window")
    if model_type == "qwen2" and not cfg.get("use_sliding_window", bool, False):
        sliding_window = None  # qwen2 records a window but only uses it when this flag is set

    return LlamaConfig(
        architecture=architecture,
        model_type=model_type,
        vocab_size=cfg.positive("vocab_size"),
        dim=dim,
        num_layers=cfg.positive("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        ffn_dim=cfg.positive("intermediate_size"),
        rms_eps=cfg.get("rms_norm_eps", float, defaults["rms_norm_eps"]),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=cfg.positive("max_position_embeddings", defaults["max_position_embeddings"]),
        tie_word_embeddings=cfg.get("tie_word_embeddings", bool, False),
        attention_bias=defaults["attention_bias"] or cfg.get("attention_bias", bool, False),
        mlp_bias=cfg.get("mlp_bias", bool, False),
        hidden_act=cfg.get("hidden_act", str, "silu"),
        sliding_window=sliding_window,
    )
