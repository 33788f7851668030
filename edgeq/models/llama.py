"""Llama-family decoder: llama (and mistral, smollm: GGUF architecture "llama"), qwen2.

Config keys (the "config" object of the .eqm header, written by the converters):

    architecture       "llama" | "qwen2"
    n_layers           decoder blocks
    dim                hidden size
    n_heads            query heads;  n_kv_heads: key/value heads (grouped-query attention:
                       query head h reads key/value head h // (n_heads / n_kv_heads))
    head_dim           size of each head (usually dim / n_heads)
    ffn_dim            SwiGLU hidden size
    vocab_size         rows of token_embd.weight
    rms_eps            RMSNorm epsilon: y = x / sqrt(mean(x^2) + eps) * weight
    rope_type          "norm": rotate adjacent pairs (x[2i], x[2i+1]); llama GGUFs need it
                       because the HF->GGUF converter permutes the q/k rows. "neox": rotate
                       (x[i], x[i + rope_dim/2]), the HF layout (qwen2 GGUFs, HF imports).
    rope_theta         frequency base: pair i turns by pos * rope_theta ** (-2i / rope_dim)
    rope_dim           leading dimensions of each head that rotate; the rest pass through
    rope_scaling       null, or {"type": "linear", "factor": f, ...}: positions divided by f
    rope_freq_factors  true when tensor rope_freqs.weight (rope_dim/2,) divides each pair's
                       angle (how GGUF stores llama3-style scaling)
    context_length     positions the model was trained for: the default KV cache capacity
    tied_embeddings    true: the output projection is token_embd.weight (no output.weight)
    has_qkv_bias       true: blk.N.attn_{q,k,v}.bias are added after the projections (qwen2)
    residual_rotation  optional, default false; true: the blocks work on the residual stream
                       turned by the orthogonal residual_rotation.weight R (dim, dim): each
                       embedded token is multiplied by R, the final hidden state by R^T before
                       output_norm (made by edgeq.calibrate.rotation, which rotates the blocks)
    ffn_rotation       optional, default false; true: each ffn_down reads the SwiGLU output h
                       (T, ffn_dim) turned by the orthogonal H_f = diag(s) (Q (x) H_p / sqrt(p))
                       (its weights hold W_down H_f; edgeq.calibrate.rotation), which the runtime
                       applies as h -> h H_f (rotate_ffn_rows: O(ffn_dim log ffn_dim) per row);
                       p is the largest power of two dividing ffn_dim, H_p the Sylvester
                       Hadamard matrix, m = ffn_dim / p

Tensors (GGUF names; numpy shapes are (out_features, in_features)):
    token_embd.weight (vocab, dim), output_norm.weight (dim,), output.weight (vocab, dim) unless
    tied, rope_freqs.weight (rope_dim/2,) if rope_freq_factors, and per block i, blk.i.:
    attn_norm.weight (dim,), attn_q.weight (n_heads*head_dim, dim), attn_k.weight and
    attn_v.weight (n_kv_heads*head_dim, dim), attn_output.weight (dim, n_heads*head_dim),
    ffn_norm.weight (dim,), ffn_gate.weight and ffn_up.weight (ffn_dim, dim),
    ffn_down.weight (dim, ffn_dim), attn_{q,k,v}.bias if has_qkv_bias,
    residual_rotation.weight (dim, dim) float if residual_rotation; ffn_rotation.signs
    (ffn_dim,) float, every value exactly +1 or -1 (s), and ffn_rotation.mix (m, m) float,
    orthogonal (Q), if ffn_rotation; optional static activation scales
    blk.i.<layer>.input_scale (edgeq.calibrate.static, installed by edgeq.load).
Matrices are QTensors (multiplied by edgeq.linear: integer kernels) or float arrays (numpy
matmul); 1-D tensors are float. A quantized embedding is dequantized row by row as tokens
need it.

One block, as llama.cpp computes it:
    n = rmsnorm(x) * attn_norm
    x = x + Wo . attention(rope(Wq n + bq), rope(Wk n + bk), Wv n + bv)   causal, softmax
    m = rmsnorm(x) * ffn_norm
    x = x + Wdown . (silu(Wgate m) * (Wup m))          (the SwiGLU output times H_f first
                                                         if ffn_rotation)
and logits = Wout . (rmsnorm(x) * output_norm).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import MISSING, dataclass, fields

import numpy as np

from edgeq.errors import FormatError, UnsupportedError
from edgeq.kernels import backends
from edgeq.kernels.table import lookup, weight_kind
from edgeq.linear import activation_block, linear
from edgeq.models import register
from edgeq.models.kv_cache import KV_DTYPES, KVCache
from edgeq.qtypes import QTensor, take_rows

log = logging.getLogger(__name__)

ROPE_TYPES = ("norm", "neox")
#: prompt positions processed per forward pass; bounds the attention scores' memory
BATCH_SIZE = 256
#: implementations of the fast path's fused steps, best first: C, then Numba
STEPS = ("native", "numba")
#: activation quantization block of every projection (edgeq.linear's act_block)
ACT_BLOCK = 32


def load_steps(name: str):
    """The fused steps `name` ("native": NativeSteps of edgeq.models.llama_native_steps,
    "numba": the module edgeq.models.llama_steps), or the reason they are unavailable.

    Imported only when asked for: importing Numba costs about 125 MiB of memory and half a
    second, which the C steps avoid."""
    try:
        if name == "native":
            from edgeq.models.llama_native_steps import NativeSteps
            return NativeSteps(), None
        from edgeq.models import llama_steps
        return llama_steps, None
    except (ImportError, OSError) as e:
        return None, f"{type(e).__name__}: {e}"


@dataclass(frozen=True)
class LlamaConfig:
    architecture: str
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    rms_eps: float
    rope_type: str
    rope_theta: float
    rope_dim: int
    rope_scaling: dict | None
    rope_freq_factors: bool
    context_length: int
    tied_embeddings: bool
    has_qkv_bias: bool
    residual_rotation: bool = False
    ffn_rotation: bool = False

    @classmethod
    def from_dict(cls, config: dict, where: str = "config") -> "LlamaConfig":
        """Validate the header's config object (FormatError naming the bad key)."""
        values = {}
        for f in fields(cls):
            if f.name not in config and f.default is not MISSING:
                continue
            if f.name not in config:
                raise FormatError(f"{where}: key {f.name!r} is missing")
            v = config[f.name]
            kind = {"int": int, "float": float, "str": str, "bool": bool}.get(f.type)
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else
                  isinstance(v, int) and not isinstance(v, bool) and v > 0 if kind is int else
                  isinstance(v, kind) if kind is not None else
                  v is None or isinstance(v, dict))
            if not ok:
                raise FormatError(f"{where}: key {f.name!r} has bad value {v!r} (expected {f.type})")
            values[f.name] = float(v) if kind is float else v
        c = cls(**values)
        if c.rope_type not in ROPE_TYPES:
            raise UnsupportedError(f"{where}: rope_type {c.rope_type!r} (known: {ROPE_TYPES})")
        if c.n_heads % c.n_kv_heads or c.rope_dim % 2 or c.rope_dim > c.head_dim:
            raise FormatError(f"{where}: n_heads {c.n_heads} must be a multiple of n_kv_heads "
                              f"{c.n_kv_heads}, rope_dim {c.rope_dim} even and <= head_dim {c.head_dim}")
        if c.rms_eps <= 0 or c.rope_theta <= 0:
            raise FormatError(f"{where}: rms_eps and rope_theta must be positive")
        scaling = c.rope_scaling
        if scaling is not None:
            factor = scaling.get("factor")
            if scaling.get("type") != "linear":
                raise UnsupportedError(f"{where}: rope_scaling type {scaling.get('type')!r}")
            if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
                raise FormatError(f"{where}: rope_scaling factor must be positive, got {factor!r}")
        return c


@dataclass(frozen=True)
class Block:
    """One decoder block's weights. Matrices are QTensors or float32 (out, in) arrays; qkv
    and gate_up hold one row-concatenated matrix when fused, else the separate matrices."""

    attn_norm: np.ndarray
    qkv: tuple          # (Wq|Wk|Wv,) or (Wq, Wk, Wv): outputs [q | k | v]
    qkv_bias: np.ndarray | None
    wo: object
    ffn_norm: np.ndarray
    gate_up: tuple      # (Wgate|Wup,) or (Wgate, Wup): outputs [gate | up]
    w_down: object


def fuse_rows(matrices: list):
    """One matrix holding the rows of `matrices` in order, or None when they cannot share one:
    QTensors need the same spec and scales per row or group; float arrays concatenate."""
    if all(isinstance(m, np.ndarray) for m in matrices):
        return np.concatenate(matrices)
    if not all(isinstance(m, QTensor) for m in matrices):
        return None
    spec, k = matrices[0].spec, matrices[0].shape[1]
    if spec.granularity == "tensor" or any(m.spec != spec or m.shape[1] != k for m in matrices):
        return None
    data = {part: np.concatenate([m.data[part] for m in matrices]) for part in matrices[0].data}
    return QTensor(spec, (sum(m.shape[0] for m in matrices), k), data)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x (T, dim) float32 -> x / sqrt(mean(x^2) + eps) * weight; the mean in float64 (as
    llama.cpp sums it), rounded once to float32."""
    x64 = x.astype(np.float64)
    inv = (1.0 / np.sqrt(np.einsum("td,td->t", x64, x64) / x.shape[1] + eps)).astype(np.float32)
    return (x * inv[:, None]) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1) + np.exp(-x))


def rows_times(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """x (T, n) @ matrix (n, m), one row at a time: the same BLAS call whatever T, so a
    position gets the same bits decoded alone or inside a prompt (a product of several rows
    may round them differently)."""
    return np.stack([row @ matrix for row in x]) if len(x) else x @ matrix


def rotate_ffn_rows(h: np.ndarray, signs: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """h (T, f) float32 -> h H_f, H_f = diag(signs) (mix (x) H_p / sqrt(p)), p = f / m a power
    of two (mix (m, m)): the signs, a fast Walsh-Hadamard transform of each chunk of p values
    (all rows and chunks at once, span by span), / sqrt(p), then the chunks mixed by mix. The
    C and Numba steps compute the same in a fixed order (llama_steps.rotate_row); this agrees
    with them to float rounding."""
    t, f = h.shape
    m = mix.shape[0]
    p = f // m
    y = h * signs
    span = 1
    while span < p:
        pairs = y.reshape(t, m, p // (2 * span), 2, span)
        lo, hi = pairs[..., 0, :], pairs[..., 1, :]
        y = np.stack([lo + hi, lo - hi], axis=-2)
        span *= 2
    y = y.reshape(t, m, p) * np.float32(1.0 / np.sqrt(p))
    return np.einsum("tab,ac->tcb", y, mix).reshape(t, f)


class LlamaModel:
    """A llama-family decoder over the tensors of a PackedFile (views into its memory map).

    context_length: KV cache capacity, at most the config's (default); kv_dtype: "float16",
    "float32" or "int8" (see kv_cache); backend: kernel backend for edgeq.linear (None: the
    default choice); fuse_projections: copy Wq|Wk|Wv and Wgate|Wup into one matrix each at
    load, so one linear call (one activation quantization) serves each group. Off by default:
    on SmolLM2-135M it saves 10-25% of the time of those five projections (about 3 ms per
    decoded token with the numba and native kernels) but costs 41.5 MiB of copied weights
    (repacked_bytes) next to the 96 MiB memory map.

    fused_steps: run the work between matrix products as fused steps (four calls per block;
    each activation quantized once and the result shared by every matrix that reads it):
    the C steps (edgeq.models.llama_native_steps) when the extension has them, else the
    Numba steps (edgeq.models.llama_steps), which give the same bits. True picks the best
    one the kernel backend allows (native: C then Numba; numba: Numba; numpy: none);
    "native" or "numba" asks for one (UnsupportedError if it is missing). They apply when
    every matrix is a QTensor, the KV cache is float16 and no static activation scales are
    installed (set_static_scales); otherwise, or with False, the numpy path below runs.
    `fast_path` says whether the steps run, `steps_backend` which ("native", "numba" or
    None). The backend is resolved once, at load.
    """

    def __init__(self, packed, *, context_length: int | None = None, kv_dtype: str = "float16",
                 backend: str | None = None, fuse_projections: bool = False,
                 fused_steps: bool | str = True):
        where = f"{packed.path}: config"
        self.config = c = LlamaConfig.from_dict(packed.config or {}, where)
        limit = c.context_length if context_length is None else int(context_length)
        if not 0 < limit <= c.context_length:
            raise ValueError(f"context_length must be in [1, {c.context_length}] for this model, "
                             f"got {context_length}")
        self.context_length, self.kv_dtype, self.backend = limit, kv_dtype, backend
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {', '.join(KV_DTYPES)}, not {kv_dtype!r}")
        self.fuse_projections = fuse_projections
        self._act_scales = {}  # id(matrix) -> static activation scales (set_static_scales)
        self.repacked_bytes = 0  # bytes copied out of the memory map at load
        self.path = packed.path
        self.metadata = packed.metadata
        self.tokenizer = _tokenizer(packed)
        self._load(packed)
        self._inv_freq = self._rope_frequencies(packed)
        self._group = c.n_heads // c.n_kv_heads
        self._scale = np.float32(1.0 / np.sqrt(c.head_dim))
        self._wanted_steps = fused_steps
        self._steps, self.steps_backend = self._choose_steps(fused_steps)
        self._layer_views = weakref.WeakKeyDictionary()  # KVCache -> its layers for the steps
        self.fast_path = self._steps is not None
        self._whole_pass = None
        if self.fast_path:
            self._matmul = self._matmul_kernels()
            rotations = [a for a in (self._unrotation, *(self.ffn_rotation or ())) if a is not None]
            self._pin(self.output_norm, *rotations,
                      *(w for b in self.blocks for w in (b.attn_norm, b.ffn_norm)))
            if self.steps_backend == "native":
                self._whole_pass = self._native_forward()

    def named_matrices(self) -> list[tuple[tuple[str, ...], object]]:
        """(weight names, matrix) of every projection the forward pass multiplies by: a fused
        matrix (fuse_projections) carries the names of the layers it holds, in row order
        (("blk.i.attn_q.weight", "blk.i.attn_k.weight", "blk.i.attn_v.weight"), ...); the
        output projection is "output.weight" (also when it is the tied token_embd.weight)."""
        def named(names, matrices):
            if len(matrices) == 1:
                return [(tuple(names), matrices[0])]
            return [((n,), m) for n, m in zip(names, matrices)]

        out = [(("output.weight",), self.output)]
        for i, b in enumerate(self.blocks):
            p = f"blk.{i}."
            out += named([p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"], b.qkv)
            out.append(((p + "attn_output.weight",), b.wo))
            out += named([p + "ffn_gate.weight", p + "ffn_up.weight"], b.gate_up)
            out.append(((p + "ffn_down.weight",), b.w_down))
        return out

    def set_static_scales(self, scales: list[tuple[QTensor, np.ndarray]]) -> None:
        """Static activation mode (edgeq.calibrate.static.install): the input of each (matrix,
        scales) pair is quantized on those calibrated scales, one per block of ACT_BLOCK
        inputs or one for all (edgeq.linear's act_scale), instead of each token's own maxima;
        other matrices stay dynamic. The fused steps quantize inside their kernels, always
        dynamically, so a model with static scales runs the numpy path (UnsupportedError if
        fused_steps named one)."""
        self._act_scales = {id(m): np.asarray(s, dtype=np.float32) for m, s in scales}
        if not self._act_scales:
            return
        why = "the fused steps quantize activations dynamically, the file has static scales"
        if self._wanted_steps in STEPS:
            raise UnsupportedError(f"{self.path}: fused_steps={self._wanted_steps!r} cannot run: {why}")
        if self.fast_path:
            log.info("%s: the numpy path runs: %s", self.path, why)
        self.fast_path, self._steps, self.steps_backend, self._whole_pass = False, None, None, None

    def static_scales(self, matrix) -> np.ndarray | None:
        """The static activation scales `matrix`'s input is quantized on (set_static_scales),
        or None: dynamic, each token by its own maxima."""
        return self._act_scales.get(id(matrix))

    def _matrices(self) -> list:
        return [matrix for _, matrix in self.named_matrices()]

    def _choose_steps(self, wanted: bool | str) -> tuple:
        """(steps, name) of the fused steps to run, or (None, None) for the numpy path."""
        if wanted not in (True, False, *STEPS):
            raise ValueError(f"fused_steps must be True, False or one of {STEPS}, not {wanted!r}")
        if wanted is False:
            return None, None
        why = ("the KV cache is not float16" if self.kv_dtype != "float16" else
               "some matrices are not quantized"
               if not all(isinstance(m, QTensor) for m in self._matrices()) else None)
        if wanted is True and why is None:
            backend = backends.resolve(self.backend)
            names = STEPS[STEPS.index(backend):] if backend in STEPS else ()
            why = f"the {backend} backend has no fused steps" if not names else None
        else:
            names = (wanted,)
        for name in names if why is None else ():
            steps, missing = load_steps(name)
            if steps is not None:
                return steps, name
            why = f"{name} steps unavailable ({missing})"
            log.info("%s: %s", self.path, why)
        if wanted is not True:
            raise UnsupportedError(f"{self.path}: fused_steps={wanted!r} cannot run: {why}")
        log.info("%s: the numpy path runs: %s", self.path, why)
        return None, None

    @property
    def native_pass(self) -> bool:
        """Whether forward() runs as one C call (edgeq.models.llama_native_forward): the
        native steps with every matrix one the native kernels take, and a float16 cache."""
        return self.fast_path and self._whole_pass is not None

    def _activation_blocks(self) -> tuple[int, int, int]:
        """Activation quantization blocks of the inputs of width dim, n_heads*head_dim and
        ffn_dim."""
        c = self.config
        return tuple(activation_block(n, ACT_BLOCK) for n in (c.dim, c.n_heads * c.head_dim, c.ffn_dim))

    def _native_forward(self):
        """The whole forward pass in one C call (edgeq.models.llama_native_forward), when
        every matrix allows it; else None and the per-step path runs."""
        try:
            from edgeq.models.llama_native_forward import NativeForward
        except ImportError as e:
            log.info("%s: the per-step path runs: %s", self.path, e)
            return None
        whole, why = NativeForward.of(self, self._activation_blocks())
        if whole is None:
            log.info("%s: the per-step path runs: %s", self.path, why)
        return whole

    def _pin(self, *arrays: np.ndarray) -> None:
        """Arrays the steps will see again and again (the C steps keep their pointers)."""
        pin = getattr(self._steps, "pin", None)
        if pin is not None:
            pin(*arrays)

    def _matmul_kernels(self) -> dict:
        """id(matrix) -> the op table's matmul for its kind on this model's backend."""
        name = backends.resolve(self.backend)
        table = {}
        for m in self._matrices():
            kind = weight_kind(m.spec)
            table[id(m)] = lookup("matmul", kind, name) or lookup("matmul", kind, "numpy")
        return table

    # --- loading -------------------------------------------------------------------------
    def _tensor(self, packed, name: str, shape: tuple[int, ...]):
        if name not in packed:
            raise FormatError(f"{packed.path}: tensor {name!r} is missing")
        t = packed[name]
        if tuple(t.shape) != shape:
            raise FormatError(f"{packed.path}: tensor {name!r} has shape {tuple(t.shape)}, "
                              f"expected {shape}")
        if isinstance(t, QTensor):
            if len(shape) != 2:
                raise FormatError(f"{packed.path}: tensor {name!r} must be a float array")
            return t
        if t.dtype.kind != "f":
            raise FormatError(f"{packed.path}: tensor {name!r} has dtype {t.dtype}, expected float")
        if t.dtype == np.float32:
            return t
        # float16 matrices are widened once here (numpy would widen them on every matmul)
        self.repacked_bytes += 4 * t.size
        return t.astype(np.float32)

    def _load(self, packed) -> None:
        c = self.config
        d, hd, q, kv = c.dim, c.head_dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        self.embedding = self._tensor(packed, "token_embd.weight", (c.vocab_size, d))
        self.output_norm = self._tensor(packed, "output_norm.weight", (d,))
        self.output = self.embedding if c.tied_embeddings else \
            self._tensor(packed, "output.weight", (c.vocab_size, d))
        self.rotation = self._unrotation = None
        if c.residual_rotation:
            self.rotation = self._orthogonal(packed, "residual_rotation.weight", d)
            self._unrotation = np.ascontiguousarray(self.rotation.T)
        self.ffn_rotation = self._ffn_rotation(packed) if c.ffn_rotation else None
        self.blocks = []
        for i in range(c.n_layers):
            def t(suffix, shape, _i=i):
                return self._tensor(packed, f"blk.{_i}.{suffix}", shape)
            qkv = [t("attn_q.weight", (q, d)), t("attn_k.weight", (kv, d)), t("attn_v.weight", (kv, d))]
            gate_up = [t("ffn_gate.weight", (c.ffn_dim, d)), t("ffn_up.weight", (c.ffn_dim, d))]
            bias = None
            if c.has_qkv_bias:
                bias = np.concatenate([t("attn_q.bias", (q,)), t("attn_k.bias", (kv,)),
                                       t("attn_v.bias", (kv,))])
            self.blocks.append(Block(
                attn_norm=t("attn_norm.weight", (d,)), qkv=self._fused(qkv), qkv_bias=bias,
                wo=t("attn_output.weight", (d, q)), ffn_norm=t("ffn_norm.weight", (d,)),
                gate_up=self._fused(gate_up), w_down=t("ffn_down.weight", (d, c.ffn_dim))))
        if self.repacked_bytes:
            log.info("%s: %.1f MiB of weights copied out of the memory map (fused projections, "
                     "float16 matrices widened)", packed.path, self.repacked_bytes / 2**20)

    def _orthogonal(self, packed, name: str, n: int) -> np.ndarray:
        """Tensor `name` (n, n), checked to be a finite orthogonal float matrix (float32)."""
        r = self._tensor(packed, name, (n, n))
        if isinstance(r, QTensor):
            raise FormatError(f"{packed.path}: tensor {name!r} must be a float array")
        r = np.ascontiguousarray(r, dtype=np.float32)
        # R^T R v = v for a few random v: O(n^2), where forming R^T R would be O(n^3)
        probe = np.random.default_rng(0).standard_normal((n, 4))
        r64 = r.astype(np.float64)
        if not np.isfinite(r).all() or np.abs(r64.T @ (r64 @ probe) - probe).max() > 1e-4 * np.abs(probe).max():
            raise FormatError(f"{packed.path}: tensor {name!r} is not orthogonal")
        return r

    def _ffn_rotation(self, packed) -> tuple[np.ndarray, np.ndarray]:
        """(signs (ffn_dim,), mix (m, m)) float32 of ffn_down's input rotation, checked: signs
        exactly +-1, mix orthogonal, m = ffn_dim / its largest power-of-two divisor."""
        f = self.config.ffn_dim
        signs = np.ascontiguousarray(self._tensor(packed, "ffn_rotation.signs", (f,)), dtype=np.float32)
        if not np.all(np.abs(signs) == 1):
            raise FormatError(f"{packed.path}: tensor 'ffn_rotation.signs' must hold only +1 and -1")
        return signs, self._orthogonal(packed, "ffn_rotation.mix", f // (f & -f))

    def _fused(self, matrices: list) -> tuple:
        """Concatenate projections that read the same input, so one linear call (one
        activation quantization) computes them all; the copy costs memory (repacked_bytes)."""
        if not self.fuse_projections:
            return tuple(matrices)
        fused = fuse_rows(matrices)
        if fused is None:
            return tuple(matrices)
        self.repacked_bytes += fused.nbytes
        return (fused,)

    def _rope_frequencies(self, packed) -> np.ndarray:
        """Angle per position of each rotating pair: float64 (rope_dim/2,)."""
        c = self.config
        inv = c.rope_theta ** (-np.arange(0, c.rope_dim, 2, dtype=np.float64) / c.rope_dim)
        if c.rope_freq_factors:
            factors = self._tensor(packed, "rope_freqs.weight", (c.rope_dim // 2,))
            inv = inv / factors.astype(np.float64)
        if c.rope_scaling is not None:
            inv = inv / float(c.rope_scaling["factor"])
        return inv

    # --- the forward pass ----------------------------------------------------------------
    def new_cache(self, capacity: int | None = None) -> KVCache:
        """An empty KV cache for up to `capacity` positions (default: the context length)."""
        capacity = self.context_length if capacity is None else capacity
        if capacity > self.context_length:
            raise ValueError(f"{capacity} positions exceed the context length {self.context_length}")
        c = self.config
        return KVCache(c.n_layers, c.n_kv_heads, c.head_dim, capacity, self.kv_dtype)

    def check_ids(self, ids) -> np.ndarray:
        """Token ids (a 1-D integer sequence within the vocabulary) as an intp array; ValueError
        otherwise."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"token ids must be a 1-D sequence of integers, got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), "
                             f"got [{ids.min()}, {ids.max()}]")
        return ids.astype(np.intp, copy=False)

    def _project(self, x: np.ndarray, w) -> np.ndarray:
        if isinstance(w, QTensor):
            return linear(x, w, backend=self.backend, act_block=ACT_BLOCK,
                          act_scale=self.static_scales(w))
        return x @ w.T

    def _project_all(self, x: np.ndarray, matrices: tuple) -> np.ndarray:
        if len(matrices) == 1:
            return self._project(x, matrices[0])
        return np.concatenate([self._project(x, w) for w in matrices], axis=1)

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        """float32 (T, dim) residual stream of token ids (turned by the rotation, if any)."""
        e = self.embedding
        x = take_rows(e, ids).dequantize() if isinstance(e, QTensor) else np.asarray(e[ids], dtype=np.float32)
        return x if self.rotation is None else rows_times(x, self.rotation)

    def _rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
        """Rotate x (T, heads, head_dim) in place; cos, sin (T, 1, rope_dim/2)."""
        rd = self.config.rope_dim
        if self.config.rope_type == "norm":
            a, b = x[..., 0:rd:2], x[..., 1:rd:2]
        else:
            a, b = x[..., :rd // 2], x[..., rd // 2:rd]
        a_new = a * cos - b * sin
        b[...] = a * sin + b * cos
        a[...] = a_new

    def _attention(self, q: np.ndarray, keys: np.ndarray, values: np.ndarray, start: int) -> np.ndarray:
        """Causal attention of queries q (T, n_heads, hd) at positions start.. over
        keys, values (n_kv, start + T, hd) float32 -> (T, n_heads * hd).

        One query position at a time, over exactly the keys it sees: a position then goes
        through the same BLAS calls, with the same shapes, whether it is decoded alone or is
        part of a prompt, so both give bit-identical results (one-ulp differences would
        otherwise be amplified by the int8 activation rounding downstream)."""
        t, n_heads, hd = q.shape
        n_kv = keys.shape[0]
        # query heads sharing one key/value head go together: (T, n_kv, hd, g)
        qg = (q * self._scale).reshape(t, n_kv, self._group, hd).transpose(0, 1, 3, 2)
        out = np.empty((t, n_kv, self._group, hd), dtype=np.float32)
        for i in range(t):
            seen = start + i + 1
            # K q (not q K^T): BLAS is about twice as fast with K untransposed
            scores = np.matmul(keys[:, :seen], qg[i]).transpose(0, 2, 1).copy()   # (n_kv, g, seen)
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            np.matmul(scores, values[:, :seen], out=out[i])
        return out.reshape(t, n_heads * hd)

    def forward(self, ids, cache: KVCache, *, all_logits: bool = False) -> np.ndarray:
        """Run token ids at positions [cache.length, cache.length + T) and append them to the
        cache. Returns float32 logits of the last position (vocab,), or of every position
        (T, vocab) with all_logits. At most BATCH_SIZE positions per call keep the attention
        scores small; generate() and logits() split longer inputs."""
        ids = self.check_ids(ids)
        t = ids.shape[0]
        if t == 0:
            raise ValueError("forward needs at least one token id")
        cache.check_room(t)
        c = self.config
        cos, sin = self.rope_angles(cache.length, cache.length + t)
        if self.fast_path and self._whole_pass is not None and cache.dtype == "float16":
            x = np.ascontiguousarray(self.embed_tokens(ids), dtype=np.float32)
            logits = self._whole_pass.run(x, cache, cos, sin, t if all_logits else 1)
            cache.advance(t)
            return logits if all_logits else logits[0]
        if self.fast_path and cache.dtype == "float16":
            return self._forward_steps(ids, cache, cos, sin, all_logits)
        x = self.embed_tokens(ids)
        for i in range(len(self.blocks)):
            # --- hot loop: one block per iteration ---
            x = self.block_forward(i, x, cache, cos, sin)
        cache.advance(t)
        if not all_logits:
            x = x[-1:]
        if self._unrotation is not None:
            x = rows_times(x, self._unrotation)
        logits = self._project(rms_norm(x, self.output_norm, c.rms_eps), self.output)
        return logits if all_logits else logits[0]

    def rope_angles(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin (end - start, rope_dim/2) float32 of positions [start, end)."""
        angles = np.arange(start, end, dtype=np.float64)[:, None] * self._inv_freq[None, :]
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

    def block_forward(self, i: int, x: np.ndarray, cache: KVCache, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """Block i of the numpy path: residual stream x (T, dim) at positions [cache.length,
        cache.length + T) -> the next block's input. Stores the block's keys and values in
        the cache (which it does not advance); cos, sin from rope_angles. Calibration runs
        the blocks one at a time through it (edgeq.calibrate.sequential)."""
        c, b = self.config, self.blocks[i]
        t, start = x.shape[0], cache.length
        n_qk = c.n_heads + c.n_kv_heads
        qk_width = n_qk * c.head_dim
        h = rms_norm(x, b.attn_norm, c.rms_eps)
        qkv = self._project_all(h, b.qkv)                       # (T, [q | k | v])
        if b.qkv_bias is not None:
            qkv += b.qkv_bias
        heads = qkv[:, :qk_width].reshape(t, n_qk, c.head_dim)   # q and k heads, a view
        self._rope(heads, cos[:, None, :], sin[:, None, :])
        v = qkv[:, qk_width:].reshape(t, c.n_kv_heads, c.head_dim)
        cache.store(i, heads[:, c.n_heads:].transpose(1, 0, 2), v.transpose(1, 0, 2))
        keys, values = cache.read(i, start + t)
        x = x + self._project(self._attention(heads[:, :c.n_heads], keys, values, start), b.wo)
        h = rms_norm(x, b.ffn_norm, c.rms_eps)
        gate_up = self._project_all(h, b.gate_up)               # (T, [gate | up])
        h = silu(gate_up[:, :c.ffn_dim]) * gate_up[:, c.ffn_dim:]
        if self.ffn_rotation is not None:
            h = rotate_ffn_rows(h, *self.ffn_rotation)
        return x + self._project(h, b.w_down)

    def _forward_steps(self, ids: np.ndarray, cache: KVCache, cos: np.ndarray, sin: np.ndarray,
                       all_logits: bool) -> np.ndarray:
        """forward() through the fused steps (self._steps): per block, norm_quantize ->
        q|k|v -> attend_quantize -> o -> norm_quantize -> gate|up -> swiglu_quantize (and the
        ffn rotation) -> down, each activation quantized once into buffers shared by the whole
        pass."""
        c, steps, mm = self.config, self._steps, self._matmul
        t, start = ids.shape[0], cache.length
        d, qw, kvw = c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        bd, bq, bf = self._activation_blocks()
        xq_d, xs_d = np.empty((t, d), np.int8), np.empty((t, d // bd), np.float32)
        xq_q, xs_q = np.empty((t, qw), np.int8), np.empty((t, qw // bq), np.float32)
        xq_f, xs_f = np.empty((t, c.ffn_dim), np.int8), np.empty((t, c.ffn_dim // bf), np.float32)
        layers = self._cache_layers(cache)
        neox, eps = c.rope_type == "neox", c.rms_eps
        signs, mix = self.ffn_rotation or (None, None)
        x = np.ascontiguousarray(self.embed_tokens(ids), dtype=np.float32)
        self._pin(x, xq_d, xs_d, xq_q, xs_q, xq_f, xs_f, cos, sin)
        delta = np.empty((0, d), np.float32)

        def check(finite: bool, what: str) -> None:
            if not finite:
                raise ValueError(f"{what} contains NaN or inf")

        def project(xq, xs, block, matrices, widths):
            if len(matrices) == 1:
                y = mm[id(matrices[0])](matrices[0], xq, xs, block)
                if len(widths) == 1:
                    return (y,)
                edges = np.cumsum(widths)[:-1]
                return tuple(np.ascontiguousarray(part) for part in np.split(y, edges, axis=1))
            return tuple(mm[id(w)](w, xq, xs, block) for w in matrices)

        for i, b in enumerate(self.blocks):
            # --- hot loop: one block per iteration, four steps and the matrix products ---
            check(steps.norm_quantize(x, delta, b.attn_norm, eps, bd, xq_d, xs_d), f"block {i} input")
            q, k, v = project(xq_d, xs_d, bd, b.qkv, (qw, kvw, kvw))
            if b.qkv_bias is not None:
                q += b.qkv_bias[:qw]
                k += b.qkv_bias[qw:qw + kvw]
                v += b.qkv_bias[qw + kvw:]
            keys, values = layers[i]
            check(steps.attend_quantize(q, k, v, start, cos, sin, c.rope_dim, neox, self._scale,
                                        keys, values, bq, xq_q, xs_q), f"block {i} attention")
            (o,) = project(xq_q, xs_q, bq, (b.wo,), (d,))
            check(steps.norm_quantize(x, o, b.ffn_norm, eps, bd, xq_d, xs_d), f"block {i} residual")
            gate, up = project(xq_d, xs_d, bd, b.gate_up, (c.ffn_dim, c.ffn_dim))
            check(steps.swiglu_quantize(gate, up, bf, xq_f, xs_f, signs, mix), f"block {i} MLP")
            (delta,) = project(xq_f, xs_f, bf, (b.w_down,), (d,))
        cache.advance(t)
        rows = slice(0, t) if all_logits else slice(t - 1, t)
        last = delta[rows]
        if self._unrotation is not None:
            steps.unrotate(x[rows], last, self._unrotation)
            last = delta[:0]
        check(steps.norm_quantize(x[rows], last, self.output_norm, eps, bd, xq_d[rows],
                                  xs_d[rows]), "final hidden state")
        logits = mm[id(self.output)](self.output, xq_d[rows], xs_d[rows], bd)
        return logits if all_logits else logits[0]

    def _cache_layers(self, cache: KVCache) -> list:
        """[(keys, values)] of each layer of a float16 cache as uint16 views (see
        KVCache.half_bits), made and pinned once per cache."""
        layers = self._layer_views.get(cache)
        if layers is None:
            keys, values = cache.half_bits()
            layers = [(keys[i], values[i]) for i in range(keys.shape[0])]
            self._pin(*(a for pair in layers for a in pair))
            self._layer_views[cache] = layers
        return layers

    def logits(self, token_ids) -> np.ndarray:
        """float32 (len, vocab): the logits after each prefix of token_ids, from an empty
        context (one pass over the sequence, BATCH_SIZE positions at a time)."""
        ids = self.check_ids(token_ids)
        if ids.shape[0] == 0:
            return np.zeros((0, self.config.vocab_size), dtype=np.float32)
        cache = self.new_cache(min(ids.shape[0], self.context_length))
        cache.check_room(ids.shape[0])
        out = np.empty((ids.shape[0], self.config.vocab_size), dtype=np.float32)
        for start in range(0, ids.shape[0], BATCH_SIZE):
            part = slice(start, start + BATCH_SIZE)
            out[part] = self.forward(ids[part], cache, all_logits=True)
        return out

    def prefill(self, token_ids, cache: KVCache) -> np.ndarray:
        """Append token_ids to the cache in batches; logits (vocab,) after the last one."""
        ids = self.check_ids(token_ids)
        if ids.shape[0] == 0:
            raise ValueError("the prompt has no tokens")
        cache.check_room(ids.shape[0])
        for start in range(0, ids.shape[0], BATCH_SIZE):
            logits = self.forward(ids[start:start + BATCH_SIZE], cache)
        return logits

    # --- text ----------------------------------------------------------------------------
    def generate(self, prompt, **options) -> str:
        """Text continuing `prompt` (str, or a list of token ids); see edgeq.generate.generate."""
        from edgeq.generate import generate
        return generate(self, prompt, **options)

    def stream(self, prompt, **options):
        """Like generate, yielding text pieces (whole UTF-8 characters) as they are made."""
        from edgeq.generate import stream
        return stream(self, prompt, **options)

    def chat(self, messages, **options) -> str:
        """The assistant's reply to `messages` ([{"role", "content"}]) using the model's chat
        template; options as for generate."""
        from edgeq.generate import chat
        return chat(self, messages, **options)

    def chat_stream(self, messages, **options):
        from edgeq.generate import chat_stream
        return chat_stream(self, messages, **options)

    def __repr__(self) -> str:
        c = self.config
        return (f"LlamaModel({str(self.path)!r}, {c.architecture}, {c.n_layers} layers, dim {c.dim}, "
                f"heads {c.n_heads}/{c.n_kv_heads}, vocab {c.vocab_size}, context {self.context_length})")


def _tokenizer(packed):
    header = packed.tokenizer
    if header is None:
        return None
    from edgeq.tokenizer.bpe import BPETokenizer
    return BPETokenizer.from_header(header)


@register("llama", "qwen2")
def build(packed, **options) -> LlamaModel:
    return LlamaModel(packed, **options)
