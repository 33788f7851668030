"""Import a Hugging Face model folder (config.json, safetensors, tokenizer.json) into an .eqm.

    convert_hf("all-MiniLM-L6-v2/", "minilm.eqm", qtype="int8")

Families (config.json "model_type"; anything else is UnsupportedError naming it):
    bert                    BertModel / sentence-transformers BERT -> edgeq.models.bert
                            (task heads such as "cls.*" or "pooler.*" are left out)
    llama, mistral, qwen2   LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM ->
                            edgeq.models.llama, with exactly the tensor names, shapes and config
                            keys converters.gguf_import writes for the same model's GGUF file.

Llama-family mapping (HF name -> GGUF name, as llama.cpp's converter does):
    model.embed_tokens.weight                 token_embd.weight
    model.norm.weight                         output_norm.weight
    lm_head.weight                            output.weight (absent when tied)
    model.layers.N.input_layernorm.weight     blk.N.attn_norm.weight
    model.layers.N.self_attn.{q,k,v,o}_proj   blk.N.attn_{q,k,v,output}  (.weight, .bias)
    model.layers.N.post_attention_layernorm   blk.N.ffn_norm.weight
    model.layers.N.mlp.{gate,up,down}_proj    blk.N.ffn_{gate,up,down}.weight
For llama and mistral (GGUF architecture "llama", RoPE on adjacent pairs) the rows of q and k
are permuted as llama.cpp's converter does: within each head of size d, HF row
s * d/2 + j (s = 0, 1 the half, j < d/2) becomes row 2j + s, so that HF's rotate-half RoPE
becomes RoPE on adjacent pairs (k uses the key/value head count). Qwen2 keeps HF order
(GGUF architecture "qwen2", RoPE on halves).

Steps: read the config (converters.hf_config), map every tensor and check names and shapes
before anything is written, then stream tensor by tensor through a PackedWriter (peak memory
about one tensor, quantized in row chunks; each source tensor's mapped pages are released once
it is written, so the resident set never holds the whole checkpoint). Matrices of the linear layers are quantized by
round-to-nearest to `qtype` (None keeps them float32); norms, biases and embeddings stay
float32 unless quantize_embeddings (same spec) or embedding_dtype="float16" is asked. F16 and
BF16 sources are widened to float32 exactly.

Metadata written:
    {"source": {"format": "hf", "folder": name, "architecture": ..., "model_type": ...},
     "import": {"qtype", "group_size", "granularity", "symmetric", "packing",
                "quantize_embeddings", "embedding_dtype",
                "tensors": {name: {"source": [hf names], "source_dtype": "F32", "stored": "int8 sym row",
                                   "exact": bool, "max_abs_error", "rel_rms_error" (not exact)}},
                "requantized": [names of tensors whose numbers changed]}}
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeq.converters.chunked import progress_bar, quantize_in_chunks
from edgeq.converters.hf_config import BertConfig, LlamaConfig, read_hf_config
from edgeq.converters.safetensors import open_checkpoint
from edgeq.errors import FormatError, UnsupportedError
from edgeq.format import PackedWriter
from edgeq.qtypes import QuantSpec, describe, get_layout
from edgeq.tokenizer.bpe import BPETokenizer
from edgeq.tokenizer.wordpiece import WordPieceTokenizer

log = logging.getLogger(__name__)

QTYPES = (None, "int8", "int4", "ternary", "binary", "pow2")
EMBEDDING_DTYPES = ("float32", "float16")
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class HFImportOptions:
    """How the matrices are stored. qtype None keeps float32; group_size None takes the type's
    default granularity (per row for int8, ternary, binary, pow2; groups of 32 for int4)."""

    qtype: str | None = None
    group_size: int | None = None
    granularity: str | None = None
    symmetric: bool = True
    packing: str = ""
    quantize_embeddings: bool = False
    embedding_dtype: str = "float32"

    def __post_init__(self):
        if self.qtype not in QTYPES:
            raise UnsupportedError(f"qtype {self.qtype!r}: choose from None (float), "
                                   f"{', '.join(q for q in QTYPES if q)}")
        if self.group_size is not None and (isinstance(self.group_size, bool)
                                            or not isinstance(self.group_size, int) or self.group_size <= 0):
            raise ValueError(f"group_size must be a positive integer or None, got {self.group_size!r}")
        if self.embedding_dtype not in EMBEDDING_DTYPES:
            raise UnsupportedError(f"embedding_dtype {self.embedding_dtype!r}: choose from {EMBEDDING_DTYPES}")
        if self.quantize_embeddings and self.qtype is None:
            raise ValueError("quantize_embeddings needs a qtype")

    def quantizes(self, item: Item) -> bool:
        """Whether the item's matrix is quantized (linear layers; embeddings when asked)."""
        return self.qtype is not None and (
            item.role == "linear" or (item.role == "embedding" and self.quantize_embeddings))

    def spec_for(self, name: str, shape: tuple[int, int]) -> QuantSpec:
        layout = get_layout(self.qtype)
        try:
            spec = layout.make_spec(shape[1], self.group_size, self.symmetric, self.granularity, self.packing)
            layout.check_shape(spec, shape)
        except ValueError as e:
            raise UnsupportedError(f"tensor {name!r} {shape}: {e}") from None
        return spec


@dataclass(frozen=True)
class Item:
    """One tensor of the .eqm: which HF tensors it is made of and how."""

    name: str                           # edgeq (GGUF-style) name
    sources: tuple[str, ...]            # HF names
    shapes: tuple[tuple[int, ...], ...]  # their expected shapes
    role: str                           # "linear" (quantized), "embedding" or "float"
    combine: Callable[[list[np.ndarray]], np.ndarray] | None = None  # several sources -> one

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the stored tensor: several sources are stacked along the rows."""
        first = self.shapes[0]
        return (sum(s[0] for s in self.shapes), *first[1:])


# --- BERT ------------------------------------------------------------------------------------
_BERT_LAYER = {  # edgeq suffix -> HF suffixes under encoder.layer.N.
    "attn_qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attn_output": ("attention.output.dense",),
    "attn_output_norm": ("attention.output.LayerNorm",),
    "ffn_up": ("intermediate.dense",),
    "ffn_down": ("output.dense",),
    "layer_output_norm": ("output.LayerNorm",),
}


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float32) for a in arrays], axis=0)


def _bert_prefix(names) -> str:
    """"" for BertModel checkpoints, "bert." (or similar) for task models wrapping one."""
    for name in names:
        if name.endswith("embeddings.word_embeddings.weight"):
            return name[:-len("embeddings.word_embeddings.weight")]
    raise FormatError("no tensor named '[prefix.]embeddings.word_embeddings.weight': not a BERT checkpoint")


def bert_plan(cfg: BertConfig, names) -> tuple[dict, list[Item]]:
    """Config dict of edgeq.models.bert and the tensor items of a BERT checkpoint."""
    p = _bert_prefix(names)
    d, f = cfg.hidden_size, cfg.intermediate_size
    config = {"architecture": "bert", "source_architecture": cfg.architecture,
              "hidden_size": d, "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
              "intermediate_size": f, "vocab_size": cfg.vocab_size,
              "max_position_embeddings": cfg.max_position_embeddings,
              "type_vocab_size": cfg.type_vocab_size, "layer_norm_eps": cfg.layer_norm_eps,
              "hidden_act": cfg.hidden_act, "pooling": cfg.pooling, "normalize": cfg.normalize,
              "max_seq_length": cfg.max_seq_length, "position_offset": 0}
    items = [Item("token_embd.weight", (f"{p}embeddings.word_embeddings.weight",), ((cfg.vocab_size, d),), "embedding"),
             Item("position_embd.weight", (f"{p}embeddings.position_embeddings.weight",),
                  ((cfg.max_position_embeddings, d),), "float"),
             Item("token_types.weight", (f"{p}embeddings.token_type_embeddings.weight",),
                  ((cfg.type_vocab_size, d),), "float")]
    items += _norm_items("token_embd_norm", f"{p}embeddings.LayerNorm", d, names)
    shapes = {"attn_qkv": (d, d), "attn_output": (d, d), "ffn_up": (f, d), "ffn_down": (d, f)}
    for i in range(cfg.num_layers):
        hf = f"{p}encoder.layer.{i}."
        for suffix, sources in _BERT_LAYER.items():
            name = f"blk.{i}.{suffix}"
            if suffix.endswith("norm"):
                items += _norm_items(name, hf + sources[0], d, names)
                continue
            out_f, in_f = shapes[suffix]
            combine = _concat if len(sources) > 1 else None
            items.append(Item(f"{name}.weight", tuple(f"{hf}{s}.weight" for s in sources),
                              ((out_f, in_f),) * len(sources), "linear", combine))
            items.append(Item(f"{name}.bias", tuple(f"{hf}{s}.bias" for s in sources),
                              ((out_f,),) * len(sources), "float", combine))
    return config, items


def _norm_items(name: str, hf: str, d: int, names) -> list[Item]:
    """LayerNorm weight and bias (older checkpoints call them gamma and beta)."""
    old = f"{hf}.gamma" in names and f"{hf}.weight" not in names
    return [Item(f"{name}.weight", (f"{hf}.{'gamma' if old else 'weight'}",), ((d,),), "float"),
            Item(f"{name}.bias", (f"{hf}.{'beta' if old else 'bias'}",), ((d,),), "float")]


# --- llama family ----------------------------------------------------------------------------
#: HF model_type -> (GGUF architecture, RoPE type, whether q/k rows are permuted)
LLAMA_ARCHS = {"llama": ("llama", "norm", True), "mistral": ("llama", "norm", True),
               "qwen2": ("qwen2", "neox", False)}


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half row order -> adjacent-pair order, per head (see the module docstring).

    Works for (rows, k) weights and (rows,) biases; rows = n_heads * head_dim.
    """
    rows = w.shape[0]
    return (w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of permute_rope_rows (adjacent-pair order -> HF order)."""
    rows = w.shape[0]
    return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _rope_scaling(cfg: LlamaConfig) -> dict | None:
    """GGUF importer's form of the scaling: None or {"type": "linear", "factor": f}."""
    scaling = cfg.rope_scaling
    if scaling is None:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = scaling.get("factor")
    if kind == "linear" and isinstance(factor, (int, float)) and factor > 0:
        return None if factor == 1 else {"type": "linear", "factor": float(factor)}
    raise UnsupportedError(f"RoPE scaling {scaling!r} is not supported (linear is)")


def llama_plan(cfg: LlamaConfig, names) -> tuple[dict, list[Item]]:
    """Config dict of edgeq.models.llama (the keys gguf_import.llama_config writes) and items."""
    if cfg.model_type not in LLAMA_ARCHS:
        raise UnsupportedError(f"architecture {cfg.architecture!r} is not supported")
    arch, rope_type, permute = LLAMA_ARCHS[cfg.model_type]
    if cfg.hidden_act != "silu":
        raise UnsupportedError(f"hidden_act {cfg.hidden_act!r}: the llama decoder uses silu")
    if cfg.mlp_bias:
        raise UnsupportedError("mlp_bias: the llama decoder has no feed-forward biases")
    o_bias = "model.layers.0.self_attn.o_proj.bias" in names
    if o_bias:
        raise UnsupportedError("attention output biases (o_proj.bias) are not supported by the llama decoder")
    has_bias = "model.layers.0.self_attn.q_proj.bias" in names
    tied = "lm_head.weight" not in names
    if not tied and cfg.tie_word_embeddings:
        log.info("tie_word_embeddings is set but lm_head.weight is present: using lm_head.weight")
    context = cfg.max_position_embeddings
    if cfg.sliding_window is not None and cfg.sliding_window < context:
        # full attention equals windowed attention for sequences up to the window
        log.warning("sliding window %d < %d positions: context length limited to the window",
                    cfg.sliding_window, context)
        context = cfg.sliding_window
    d, hd, f, v = cfg.dim, cfg.head_dim, cfg.ffn_dim, cfg.vocab_size
    q_rows, kv_rows = cfg.num_heads * hd, cfg.num_kv_heads * hd
    config = {"architecture": arch, "n_layers": cfg.num_layers, "dim": d, "n_heads": cfg.num_heads,
              "n_kv_heads": cfg.num_kv_heads, "head_dim": hd, "ffn_dim": f, "vocab_size": v,
              "rms_eps": cfg.rms_eps, "rope_type": rope_type, "rope_theta": cfg.rope_theta,
              "rope_dim": hd, "rope_scaling": _rope_scaling(cfg), "rope_freq_factors": False,
              "context_length": context, "tied_embeddings": tied, "has_qkv_bias": has_bias}

    def rope(n_heads):
        if not permute:
            return None
        return lambda arrays: permute_rope_rows(np.asarray(arrays[0], dtype=np.float32), n_heads)

    items = [Item("token_embd.weight", ("model.embed_tokens.weight",), ((v, d),), "embedding")]
    for i in range(cfg.num_layers):
        hf, b = f"model.layers.{i}.", f"blk.{i}."
        items += [
            Item(b + "attn_norm.weight", (hf + "input_layernorm.weight",), ((d,),), "float"),
            Item(b + "attn_q.weight", (hf + "self_attn.q_proj.weight",), ((q_rows, d),), "linear",
                 rope(cfg.num_heads)),
            Item(b + "attn_k.weight", (hf + "self_attn.k_proj.weight",), ((kv_rows, d),), "linear",
                 rope(cfg.num_kv_heads)),
            Item(b + "attn_v.weight", (hf + "self_attn.v_proj.weight",), ((kv_rows, d),), "linear"),
            Item(b + "attn_output.weight", (hf + "self_attn.o_proj.weight",), ((d, q_rows),), "linear"),
            Item(b + "ffn_norm.weight", (hf + "post_attention_layernorm.weight",), ((d,),), "float"),
            Item(b + "ffn_gate.weight", (hf + "mlp.gate_proj.weight",), ((f, d),), "linear"),
            Item(b + "ffn_up.weight", (hf + "mlp.up_proj.weight",), ((f, d),), "linear"),
            Item(b + "ffn_down.weight", (hf + "mlp.down_proj.weight",), ((d, f),), "linear"),
        ]
        if has_bias:
            items += [Item(b + "attn_q.bias", (hf + "self_attn.q_proj.bias",), ((q_rows,),), "float",
                           rope(cfg.num_heads)),
                      Item(b + "attn_k.bias", (hf + "self_attn.k_proj.bias",), ((kv_rows,),), "float",
                           rope(cfg.num_kv_heads)),
                      Item(b + "attn_v.bias", (hf + "self_attn.v_proj.bias",), ((kv_rows,),), "float")]
    items.append(Item("output_norm.weight", ("model.norm.weight",), ((d,),), "float"))
    if not tied:
        items.append(Item("output.weight", ("lm_head.weight",), ((v, d),), "linear"))
    return config, items


# --- tokenizers ------------------------------------------------------------------------------
def read_tokenizer(folder: Path, family: str) -> dict:
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise FormatError(f"{path}: file not found (edgeq reads tokenizers from tokenizer.json)")
    if family == "bert":
        return WordPieceTokenizer.from_tokenizer_json(path).to_header()
    # the same header converters.gguf_import writes, so both importers give the decoder one tokenizer
    return BPETokenizer.from_tokenizer_json(path).to_header()


# --- tensors ---------------------------------------------------------------------------------
def check_sources(items: list[Item], ckpt, folder: Path) -> None:
    """Every source tensor exists with the expected shape and a float dtype."""
    for item in items:
        for src, shape in zip(item.sources, item.shapes):
            if src not in ckpt:
                raise FormatError(f"{folder}: tensor {src!r} is missing (needed for {item.name})")
            info = ckpt.info(src)
            if tuple(info.shape) != tuple(shape):
                raise FormatError(f"{folder}: tensor {src!r} has shape {tuple(info.shape)}, expected {tuple(shape)}")
            if info.dtype not in ("F32", "F16", "BF16", "F64"):
                raise UnsupportedError(f"{folder}: tensor {src!r} has dtype {info.dtype}; "
                                       f"edgeq imports float checkpoints (F32, F16, BF16)")
    used = {s for item in items for s in item.sources}
    unused = [n for n in ckpt.names() if n not in used]
    if unused:
        log.info("%s: %d tensors not used by edgeq (e.g. %s)", folder, len(unused), ", ".join(unused[:3]))


def convert_item(item: Item, ckpt, options: HFImportOptions):
    """One .eqm tensor -> (QTensor or float array, its report entry)."""
    arrays = [ckpt.tensor(s) for s in item.sources]
    w = item.combine(arrays) if item.combine else arrays[0]
    record = {"source": list(item.sources), "source_dtype": ckpt.info(item.sources[0]).dtype, "exact": True}
    if options.quantizes(item):
        qt, error = quantize_in_chunks(item.name, tuple(w.shape), options.spec_for(item.name, tuple(w.shape)),
                                       lambda start, stop: w[start:stop])
        return qt, {**record, "exact": False, **error}
    if item.role == "embedding" and options.embedding_dtype == "float16":
        w16 = np.asarray(w, dtype=np.float16)
        if not np.isfinite(w16).all():
            raise UnsupportedError(f"tensor {item.name!r} overflows float16; keep embedding_dtype='float32'")
        err = w16.astype(np.float32) - np.asarray(w, dtype=np.float32)
        ref = float(np.square(np.asarray(w, dtype=np.float64)).sum())
        rel = math.sqrt(float(np.square(err, dtype=np.float64).sum()) / ref) if ref > 0 else 0.0
        return w16, {**record, "exact": not err.any(), "max_abs_error": float(np.abs(err).max()),
                     "rel_rms_error": rel}
    out = np.asarray(w, dtype=np.float32)
    if not np.isfinite(out).all():
        raise FormatError(f"tensor {item.name!r} ({', '.join(item.sources)}) contains NaN or inf")
    return out, record


# --- the import ------------------------------------------------------------------------------
def convert_hf(folder, dst, *, qtype: str | None = None, group_size: int | None = None,
               granularity: str | None = None, symmetric: bool = True, packing: str = "",
               quantize_embeddings: bool = False, embedding_dtype: str = "float32",
               progress: bool | None = None) -> Path:
    """Convert the HF folder `folder` into the .eqm `dst` (written atomically); returns dst.

    qtype None | "int8" | "int4" | "ternary" | "binary" | "pow2" ("keep" and "float" mean
    None) for the linear layers' matrices; group_size / granularity / symmetric / packing as
    in edgeq.quantize. progress: a tqdm bar (None: only when stderr is a terminal).
    """
    if qtype in ("keep", "float"):
        qtype = None
    options = HFImportOptions(qtype, group_size, granularity, symmetric, packing,
                              quantize_embeddings, embedding_dtype)
    folder, dst = Path(folder), Path(dst)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    cfg = read_hf_config(folder)
    family = "bert" if isinstance(cfg, BertConfig) else "llama"
    with open_checkpoint(folder) as ckpt:
        names = set(ckpt.names())
        config, items = bert_plan(cfg, names) if family == "bert" else llama_plan(cfg, names)
        check_sources(items, ckpt, folder)
        for item in items:  # every spec checked before the first byte is written
            if options.quantizes(item):
                options.spec_for(item.name, item.shape)
        tokenizer = read_tokenizer(folder, family)
        tensors, requantized = {}, []
        metadata = {"source": {"format": "hf", "folder": folder.resolve().name,
                               "architecture": cfg.architecture, "model_type": cfg.model_type},
                    "import": {**asdict(options), "tensors": tensors, "requantized": requantized}}
        with progress_bar(len(items), progress, f"converting {folder.name}") as bar, \
                PackedWriter(dst, config=config, tokenizer=tokenizer, metadata=metadata) as writer:
            for item in items:
                stored, record = convert_item(item, ckpt, options)
                writer.add(item.name, stored)  # written to disk now; nothing of it is kept
                record["stored"] = describe(stored)
                del stored
                for source in item.sources:  # its mapped pages leave the resident set
                    ckpt.release(source)
                tensors[item.name] = record
                if not record["exact"]:
                    requantized.append(item.name)
                bar.update()
    worst = max((tensors[n].get("rel_rms_error", 0.0) for n in requantized), default=0.0)
    log.info("imported %s (%s) -> %s: %d tensors, %d quantized, worst relative RMS error %.3g",
             folder, cfg.architecture, dst, len(items), len(requantized), worst)
    return dst
