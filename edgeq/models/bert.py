"""BERT encoder (BertModel, sentence-transformers BERT) and its sentence embeddings.

Forward pass, per sequence of token ids (post-LN BERT):
    x = LayerNorm(word[ids] + position[offset + i] + token_type[0])
    per layer:  q, k, v = split(x @ Wqkv.T + bqkv)               (heads of size d = dim/heads)
                a = softmax(q k^T / sqrt(d) + padding mask) v
                x = LayerNorm(x + a @ Wo.T + bo)
                x = LayerNorm(x + GELU(x @ Wup.T + bup) @ Wdown.T + bdown)
    embedding = pool(x over real tokens) (then L2-normalized if the config says so)
GELU is the exact one, x * Phi(x) with erf (see `erf`), unless hidden_act names another.

Linear layers run on `edgeq.linear` (integer weights, int8 activations quantized per token
and per block of `act_block` values) when the file holds QTensors, or as float32 matmuls when
it holds float arrays (the "float path"); the two can be mixed per tensor.

In static mode (calibrated activation scales, edgeq.calibrate.static) a layer may carry an
integer FFN (Layer.integer_ffn, edgeq.models.bert_integer_ffn): ffn_up -> GELU -> ffn_down
on integer codes, its float32 output then goes to the residual and LayerNorm as usual.

Padding never reaches a per-token computation: token states are packed (real tokens only,
see edgeq.embed), so activation scales, norms and GELU only ever see real tokens. Attention,
layer norm and GELU run as fused steps (edgeq.models.bert_numba_steps): attention loops
over each sequence's own tokens in float32, in an order that does not depend on the batch.
When every linear layer is int8 with dynamic activation scales, the forward is
`token_states_q8`: each fused step also adds the bias of the matmul before it and quantizes
its output for the matmul after it (the reference rule, bit for bit), so a layer is four
matmuls and four step calls with no float pass, bias add or quantize call in between. On
the native backend those steps are C (edgeq.models.bert_native_steps: the same formulas,
equal to the Numba steps within float rounding), and Numba is never imported; elsewhere
they are Numba (`steps_backend` says which).
Its buffers are kept between calls (Q8Workspace), and on the native backend each matmul
reads its weight's panels packed once (Dense.prepared): at batch 1 a sentence is a few
tokens, and repacking the weights or checking arrays on every call would cost more than the
arithmetic.
The NumPy reference path (no Numba, or backend="numpy") scatters the packed states into a
(batch, width) grid, masks the padded keys and computes attention in float64, rounded once
to float32: there too a text's result does not depend on its batch.

Tensors in the .eqm file (weights are (out, in); QTensor or float array):
    token_embd.weight            (vocab, dim)        float (or int8 per row)
    position_embd.weight         (max_positions, dim)
    token_types.weight           (type_vocab, dim)
    token_embd_norm.weight/.bias (dim,)
    blk.{i}.attn_qkv.weight      (3*dim, dim)        rows: query, key, value
    blk.{i}.attn_qkv.bias        (3*dim,)
    blk.{i}.attn_output.weight   (dim, dim)          and .bias (dim,)
    blk.{i}.attn_output_norm.weight/.bias
    blk.{i}.ffn_up.weight        (ffn, dim)          and .bias (ffn,)
    blk.{i}.ffn_down.weight      (dim, ffn)          and .bias (dim,)
    blk.{i}.layer_output_norm.weight/.bias

Config keys (header "config"):
    architecture "bert"; hidden_size, num_layers, num_heads, intermediate_size, vocab_size,
    max_position_embeddings, type_vocab_size (ints); layer_norm_eps (float); hidden_act
    ("gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu"); pooling ("mean" | "cls" | "max");
    normalize (bool); max_seq_length (int or null: tokens kept per text, specials included);
    position_offset (int, 0 for BERT: the first token's position id).
The tokenizer header is a WordPiece one (edgeq.tokenizer.wordpiece).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgeq.embed import POOLING_MODES, l2_normalize, length_batches, pool
from edgeq.errors import FormatError, UnsupportedError
from edgeq.kernels import backends
from edgeq.kernels.table import lookup, weight_kind
from edgeq.linear import activation_block, linear
from edgeq.models import register
from edgeq.qtypes import QTensor, take_rows
from edgeq.tokenizer.wordpiece import WordPieceTokenizer

log = logging.getLogger(__name__)

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
#: added to the attention scores of padded keys: exp() of it underflows to exactly 0
MASK_VALUE = np.float32(-1e30)
#: values per slice the activation function works on: its ~25 passes then stay in cache
#: (about 30% faster than whole-batch passes on a 900 x 1536 batch)
ACTIVATION_CHUNK = 1 << 16

# --- erf and GELU ---------------------------------------------------------------------------
#: erf(x) = 1 - exp(-x^2) * P(t) for x >= 0, t = 1 / (1 + ERF_P x), P of degree 7. The
#: coefficients were fitted for this module (weighted minimax on [0, 5] against mpmath, by
#: Lawson iterations); the error |erf - math.erf| is below 1.1e-9 in float64 everywhere
#: (beyond 5, exp(-x^2) < 1.4e-11 makes the term vanish). In float32 the rounding of x^2 and
#: exp dominates: below 6e-7.
ERF_P = 0.4
ERF_COEFFS = (-0.010035594241940176, 0.33111290518794434, -0.2509281336265494,
              1.4077106036443199, -1.6361774830308429, 1.718953431757185,
              -0.6429520252973976, 0.08231629456086044)


def _erfc_abs(a: np.ndarray, scale: float = 1.0, factor: float = 1.0) -> np.ndarray:
    """factor * erfc(scale * a) for a >= 0, computed in a's dtype (a is left unchanged)."""
    dt = a.dtype.type
    t = a * dt(ERF_P * scale)
    t += dt(1)
    np.reciprocal(t, out=t)
    p = t * dt(ERF_COEFFS[-1] * factor)
    p += dt(ERF_COEFFS[-2] * factor)
    for c in ERF_COEFFS[-3::-1]:
        p *= t
        p += dt(c * factor)
    np.multiply(a, a, out=t)
    t *= dt(-scale * scale)
    np.exp(t, out=t)
    p *= t
    return p


def erf(x) -> np.ndarray:
    """Vectorized erf in float64 (float32 input stays float32); see ERF_COEFFS for the error."""
    x = np.asarray(x)
    x = x.astype(np.float32 if x.dtype == np.float32 else np.float64)
    e = _erfc_abs(np.abs(x))
    np.subtract(x.dtype.type(1), e, out=e)
    return np.copysign(e, x, out=e)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, in place on float32 x.

    With e = erfc(|x| / sqrt 2) / 2, Phi(x) is 1 - e for x >= 0 and e for x < 0, so
    x * Phi(x) = max(x, 0) - |x| e: no branch, and few passes over the array.
    """
    a = np.abs(x)
    e = _erfc_abs(a, scale=1 / math.sqrt(2), factor=0.5)
    e *= a
    np.maximum(x, np.float32(0), out=x)
    x -= e
    return x


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation (gelu_new, gelu_pytorch_tanh), in place on float32 x."""
    inner = x * x
    inner *= np.float32(0.044715)
    inner += np.float32(1)
    inner *= x
    inner *= np.float32(math.sqrt(2 / math.pi))
    np.tanh(inner, out=inner)
    inner += np.float32(1)
    inner *= np.float32(0.5)
    x *= inner
    return x


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0), out=x)


_ACTIVATION_FN = {"gelu": gelu, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "relu": relu}


def add_layer_norm(x: np.ndarray, residual: np.ndarray | None, weight: np.ndarray, bias: np.ndarray,
                   eps: float) -> np.ndarray:
    """LayerNorm(x + residual) over the last axis, float32; overwrites x.

    Plain ufunc calls (no np.mean wrapper): at batch 1 the per-call cost is what counts.
    """
    if residual is not None:
        x += residual
    n = x.shape[1]
    mean = np.add.reduce(x, axis=1, keepdims=True)
    mean *= np.float32(1 / n)
    x -= mean
    var = np.einsum("ij,ij->i", x, x)[:, None]
    var *= np.float32(1 / n)
    var += np.float32(eps)
    np.sqrt(var, out=var)
    x /= var
    x *= weight
    x += bias
    return x


# --- fused steps ------------------------------------------------------------------------------
# In Numba (edgeq.models.bert_numba_steps) or, for the int8 forward on the native backend, in C
# (edgeq.models.bert_native_steps); each is imported on first use: Numba costs 65-125 MiB.
def _numba_steps():
    """The module edgeq.models.bert_numba_steps, or None where Numba is missing (e.g. 32-bit
    ARM: the NumPy reference functions run instead)."""
    try:
        from edgeq.models import bert_numba_steps
    except ImportError:
        return None
    return bert_numba_steps


def _native_steps():
    """A new BertNativeSteps (C steps with their own scratch), or None where the extension is
    missing or predates them."""
    try:
        from edgeq.models.bert_native_steps import BertNativeSteps
    except ImportError:
        return None
    return BertNativeSteps()


def _native_encoder(encoder, where: str):
    """The encoder's layers as one C call (NativeEncoder), or None where that cannot run."""
    try:
        from edgeq.models.bert_native_forward import NativeEncoder
    except ImportError as e:
        log.info("%s: the per-step path runs: %s", where, e)
        return None
    native, why = NativeEncoder.of(encoder)
    if native is None:
        log.info("%s: the per-step path runs: %s", where, why)
    return native


# --- configuration and weights ---------------------------------------------------------------
@dataclass(frozen=True)
class BertSpec:
    """The encoder's shape and head, read from an .eqm config dict."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    pooling: str
    normalize: bool
    max_seq_length: int | None
    position_offset: int

    @classmethod
    def from_config(cls, config: dict, where: str) -> "BertSpec":
        def field(key, kind, default=...):
            value = config.get(key, default)
            if value is ...:
                raise FormatError(f"{where}: config field {key!r} is missing")
            if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise FormatError(f"{where}: config field {key!r}: expected a non-negative integer, got {value!r}")
            if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise FormatError(f"{where}: config field {key!r}: expected a number, got {value!r}")
            if kind in (str, bool) and not isinstance(value, kind):
                raise FormatError(f"{where}: config field {key!r}: expected {kind.__name__}, got {value!r}")
            return value

        spec = cls(hidden_size=field("hidden_size", int), num_layers=field("num_layers", int),
                   num_heads=field("num_heads", int), intermediate_size=field("intermediate_size", int),
                   vocab_size=field("vocab_size", int),
                   max_position_embeddings=field("max_position_embeddings", int),
                   type_vocab_size=field("type_vocab_size", int, 2),
                   layer_norm_eps=float(field("layer_norm_eps", float, 1e-12)),
                   hidden_act=field("hidden_act", str, "gelu"), pooling=field("pooling", str, "mean"),
                   normalize=field("normalize", bool, False),
                   max_seq_length=(None if config.get("max_seq_length") is None
                                   else field("max_seq_length", int)),
                   position_offset=field("position_offset", int, 0))
        if spec.num_heads == 0 or spec.hidden_size % spec.num_heads:
            raise FormatError(f"{where}: hidden_size {spec.hidden_size} is not a multiple of "
                              f"num_heads {spec.num_heads}")
        if spec.hidden_act not in ACTIVATIONS:
            raise UnsupportedError(f"{where}: hidden_act {spec.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
        if spec.pooling not in POOLING_MODES:
            raise UnsupportedError(f"{where}: pooling {spec.pooling!r}; supported: {', '.join(POOLING_MODES)}")
        if spec.max_position_embeddings <= spec.position_offset + 1:
            raise FormatError(f"{where}: max_position_embeddings {spec.max_position_embeddings} leaves "
                              f"no room after position_offset {spec.position_offset}")
        return spec

    @property
    def max_tokens(self) -> int:
        """Tokens per text the model accepts (special tokens included)."""
        limit = self.max_position_embeddings - self.position_offset
        return min(limit, self.max_seq_length) if self.max_seq_length else limit


class Dense:
    """y = x @ W.T + b, on integer kernels for a QTensor W or a float32 matmul for an array."""

    def __init__(self, weight, bias, *, act_block: int | None, backend: str | None):
        self.shape = tuple(weight.shape)
        self.quantized = isinstance(weight, QTensor)
        # float path: W.T of a C-contiguous (out, in) array is what BLAS reads without a copy
        self.weight = weight if self.quantized else np.asarray(weight, dtype=np.float32).T
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float32)
        self.act_block, self.backend = act_block, backend
        self.act_scale = None  # static int8 input scales (edgeq.calibrate.static); None: dynamic
        if self.quantized:  # the dynamic path's kernels, looked up once (per call: ~10 us at batch 1)
            name, kind = backends.resolve(backend), weight_kind(weight.spec)
            self._block = activation_block(self.shape[1], act_block)
            self._quantize_act = lookup("quantize_act", "*", name) or lookup("quantize_act", "*", "numpy")
            self._matmul = lookup("matmul", kind, name) or lookup("matmul", kind, "numpy")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.quantized and self.act_scale is None:
            # edgeq.linear's dynamic path minus its per-call checks: x is always a C-contiguous
            # float32 (tokens, k) here, and a NaN or inf reaches the output (checked there)
            xq, xs = self._quantize_act(x, self._block)
            y = self._matmul(self.weight, xq, xs, self._block)
        elif self.quantized:
            y = linear(x, self.weight, act_block=self.act_block, backend=self.backend, act_scale=self.act_scale)
        else:
            y = x @ self.weight
        if self.bias is not None:
            y += self.bias
        return y

    def matmul_q8(self, xq: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """x @ W.T without the bias, x given as int8 codes and scales per self._block values
        (the dynamic int8 path's second half; the caller adds the bias)."""
        return self._matmul(self.weight, xq, xs, self._block)

    @functools.cached_property
    def prepared(self):
        """The weight with its panels packed once for the native backend
        (edgeq.kernels.native_backend.prepare), or None where that does not apply. Made on
        first use: it costs about the weight's size in memory again (int8), and measured 1.1x
        (300 rows) to 4.6x (7 rows) faster MiniLM matmuls, so it is kept."""
        if not self.quantized or backends.resolve(self.backend) != "native":
            return None
        from edgeq.kernels import native_backend
        return native_backend.prepare(self.weight, self._block)

    def bind_q8(self, xq: np.ndarray, xs: np.ndarray, out: np.ndarray):
        """run(m): out[:m] = x[:m] @ W.T (no bias) for x given as int8 codes xq and scales xs,
        on buffers kept between calls (the prepared weight's pointers taken once)."""
        if self.prepared is not None:
            return self.prepared.bind(xq, xs, out)

        def run(m: int) -> None:
            out[:m] = self.matmul_q8(xq[:m], xs[:m])
        return run


@dataclass
class Layer:
    qkv: Dense        # (3*dim, dim)
    out: Dense        # (dim, dim)
    attn_norm: tuple  # (weight, bias) (dim,)
    up: Dense         # (ffn, dim)
    down: Dense       # (dim, ffn)
    ffn_norm: tuple   # (weight, bias) (dim,)
    #: static mode's integer up -> activation -> down (edgeq.models.bert_integer_ffn.IntegerFFN,
    #: set by edgeq.calibrate.static.install); None: the float FFN
    integer_ffn: object = None


@dataclass
class AttentionGroup:
    """Consecutive sequences of a batch attended together in one padded (batch, width) grid."""

    rows: slice                  # their packed token rows (contiguous)
    batch: int
    width: int                   # longest of them
    index: np.ndarray | None     # grid row of each packed token (from rows.start); None: no padding
    key_bias: np.ndarray | None  # (batch, 1, 1, width) float32: 0 on real keys, MASK_VALUE on padding

    @classmethod
    def of(cls, lengths: np.ndarray, first_row: int) -> "AttentionGroup":
        width, total = int(lengths.max()), int(lengths.sum())
        rows = slice(first_row, first_row + total)
        if (lengths == width).all():
            return cls(rows, len(lengths), width, None, None)
        starts = np.cumsum(lengths) - lengths
        index = np.repeat(np.arange(len(lengths)) * width - starts, lengths) + np.arange(total)
        key_bias = np.where(np.arange(width)[None, :] < lengths[:, None], np.float32(0), MASK_VALUE)
        return cls(rows, len(lengths), width, index, key_bias.astype(np.float32)[:, None, None, :])


@dataclass
class BatchLayout:
    """A batch of packed sequences: where each starts, and how attention groups them.

    Consecutive sequences share an attention grid while its width stays within
    MAX_PADDING times each of their lengths, so one long text does not make attention
    quadratic in its length for every short text batched with it.
    """

    starts: np.ndarray            # (batch,) int64: first packed row of each sequence
    lengths: np.ndarray           # (batch,) int64

    MAX_PADDING = 2

    @classmethod
    def of(cls, lengths) -> "BatchLayout":
        lengths = np.asarray(lengths, dtype=np.int64)
        return cls(np.cumsum(lengths) - lengths, lengths)

    @functools.cached_property
    def groups(self) -> list[AttentionGroup]:
        """The attention groups (built when first asked: only the NumPy reference path uses them)."""
        lengths, starts = self.lengths, self.starts
        groups, first = [], 0
        lo = hi = int(lengths[0])
        for i in range(1, len(lengths) + 1):
            if i < len(lengths):
                n = int(lengths[i])
                if max(hi, n) <= self.MAX_PADDING * min(lo, n):
                    lo, hi = min(lo, n), max(hi, n)
                    continue
            groups.append(AttentionGroup.of(lengths[first:i], int(starts[first])))
            if i < len(lengths):
                first, lo, hi = i, int(lengths[i]), int(lengths[i])
        return groups


# --- the model --------------------------------------------------------------------------------
class BertEncoder:
    """A sentence-embedding BERT loaded from an .eqm file; see the module docstring.

    embed(texts, batch_size) -> (n, dim) float32; tokenizer.encode(text) -> ids.
    Options: act_block (activation values per int8 scale, default 32; None = whole row),
    backend (kernel backend for the integer linear layers) and steps (the int8 forward's fused
    steps: None picks C on the native backend, else Numba; "native" or "numba" asks for one).
    The C steps keep Numba out of the process (about 88 instead of 212 MiB peak in the
    benchmark) and need no JIT; the Numba steps (fastmath) are 10-20% faster at batch 1.
    """

    def __init__(self, packed, *, act_block: int | None = 32, backend: str | None = None,
                 steps: str | None = None):
        if steps not in (None, "native", "numba"):
            raise ValueError(f"steps must be None, 'native' or 'numba', not {steps!r}")
        where = str(packed.path)
        self.path = packed.path
        self.spec = spec = BertSpec.from_config(packed.config, where)
        self.metadata = packed.metadata
        if not isinstance(packed.tokenizer, dict):
            raise FormatError(f"{where}: the file holds no tokenizer")
        self.tokenizer = WordPieceTokenizer.from_header(packed.tokenizer, source=f"{where}: tokenizer")
        dim, ffn = spec.hidden_size, spec.intermediate_size

        def get(name, shape, *, matrix=False):
            if name not in packed:
                raise FormatError(f"{where}: tensor {name!r} is missing")
            t = packed[name]
            if tuple(t.shape) != shape:
                raise FormatError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
            if isinstance(t, QTensor):
                if not matrix:
                    raise FormatError(f"{where}: tensor {name!r} must be a float array")
                return t
            if not np.issubdtype(t.dtype, np.floating):
                raise FormatError(f"{where}: tensor {name!r} has dtype {t.dtype}, expected a float type")
            return t if matrix else t.astype(np.float32)

        def dense(prefix, out_f, in_f):
            return Dense(get(f"{prefix}.weight", (out_f, in_f), matrix=True), get(f"{prefix}.bias", (out_f,)),
                         act_block=act_block, backend=backend)

        def norm(prefix):
            return get(f"{prefix}.weight", (dim,)), get(f"{prefix}.bias", (dim,))

        self.word = _Embedding(get("token_embd.weight", (spec.vocab_size, dim), matrix=True))
        self.position = get("position_embd.weight", (spec.max_position_embeddings, dim))
        self.token_type0 = get("token_types.weight", (spec.type_vocab_size, dim))[0]
        self.embed_norm = norm("token_embd_norm")
        self.layers = [Layer(qkv=dense(f"blk.{i}.attn_qkv", 3 * dim, dim),
                             out=dense(f"blk.{i}.attn_output", dim, dim),
                             attn_norm=norm(f"blk.{i}.attn_output_norm"),
                             up=dense(f"blk.{i}.ffn_up", ffn, dim),
                             down=dense(f"blk.{i}.ffn_down", dim, ffn),
                             ffn_norm=norm(f"blk.{i}.layer_output_norm"))
                       for i in range(spec.num_layers)]
        self._backend = backends.resolve(backend)
        self._vocab_limit = min(spec.vocab_size, self.tokenizer.vocab_size)
        # position + token type 0 per position: one add per forward instead of two
        self._position_type0 = (self.position[spec.position_offset:] + self.token_type0).astype(np.float32)
        self._denses = [d for layer in self.layers for d in (layer.qkv, layer.out, layer.up, layer.down)]
        #: the fused int8 forward's steps (token_states_q8), when every linear layer is int8:
        #: "native" (C) on the native backend where the extension has them, else "numba";
        #: None where neither applies (NumPy backend, or Numba missing)
        self.steps_backend, self._q8_steps = None, None
        if all(d.quantized for d in self._denses):
            if self._backend == "native" and steps != "numba":
                self._q8_steps = _native_steps()
                self.steps_backend = "native" if self._q8_steps is not None else None
            if self._q8_steps is None and self._backend != "numpy" and steps != "native":
                self._q8_steps = _numba_steps()
                self.steps_backend = "numba" if self._q8_steps is not None else None
        if steps is not None and self.steps_backend != steps:
            raise UnsupportedError(f"{where}: steps={steps!r} cannot run here (backend "
                                   f"{self._backend}; every linear layer must be quantized)")
        if self.steps_backend == "native":  # passed on every call: their pointers taken once
            self._q8_steps.pin(*self.embed_norm, *(a for layer in self.layers for a in (
                *layer.attn_norm, *layer.ffn_norm, layer.qkv.bias, layer.out.bias, layer.up.bias,
                layer.down.bias) if a is not None))
        self._q8_ready = self._q8_steps is not None
        #: the layers as one C call (edgeq.models.bert_native_forward), or None: the steps
        #: are called one by one
        self._native_encoder = _native_encoder(self, where) if self.steps_backend == "native" else None
        self._q8_kept: Q8Workspace | None = None  # the fused int8 forward's buffers, kept
        self._q8_lock = threading.Lock()

    @functools.cached_property
    def _float_steps(self):
        """The Numba steps module for the float forward (token_states without the fused int8
        path), imported on first use; None: the NumPy reference runs (backend "numpy", or
        Numba missing)."""
        return None if self._backend == "numpy" else _numba_steps()

    @property
    def fast(self) -> bool:
        """The forward runs fused steps (C or Numba) rather than the NumPy reference."""
        return self._q8_ready or self._float_steps is not None

    @property
    def dim(self) -> int:
        return self.spec.hidden_size

    @property
    def activation(self):
        """The FFN's activation function of the float path, in place (float32 or float64)."""
        return _ACTIVATION_FN[self.spec.hidden_act]

    # --- tokens ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids per text, truncated to spec.max_tokens (logged once per call when it happens)."""
        limit = self.spec.max_tokens
        rows, truncated = [], 0
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__}")
            ids = self.tokenizer.encode(text)
            if len(ids) > limit:
                truncated += 1
                ids = self.tokenizer.encode(text, max_length=limit)
            rows.append(ids)
        if truncated:
            log.warning("%d of %d texts were longer than %d tokens and were truncated",
                        truncated, len(rows), limit)
        return rows

    # --- forward -----------------------------------------------------------------------------
    def token_states(self, ids: np.ndarray, layout: BatchLayout) -> np.ndarray:
        """Packed ids (total,) of one batch -> final hidden states (total, dim) float32."""
        spec = self.spec
        x = self.word.rows(ids)
        if len(layout.lengths) == 1:
            x += self._position_type0[:len(ids)]
        else:
            x += self._position_type0[np.arange(len(ids)) - np.repeat(layout.starts, layout.lengths)]
        if self._q8_ready and all(d.act_scale is None for d in self._denses):
            return self.token_states_q8(x, layout)
        fused, eps = self._float_steps, spec.layer_norm_eps
        norm = add_layer_norm if fused is None else fused.layer_norm_fast
        if fused is not None and spec.hidden_act == "gelu":
            activation, chunk = fused.gelu_fast, None
        else:  # NumPy passes work on cache-sized slices
            activation = _ACTIVATION_FN[spec.hidden_act]
            chunk = max(1, ACTIVATION_CHUNK // spec.intermediate_size)
        x = norm(x, None, *self.embed_norm, eps)
        for layer in self.layers:
            ctx = self._attention(layer.qkv(x), layout)
            x = norm(layer.out(ctx), x, *layer.attn_norm, eps)
            if layer.integer_ffn is not None and layer.up.quantized:  # not while calibration swaps W
                x = norm(layer.integer_ffn(x), x, *layer.ffn_norm, eps)
                continue
            h = layer.up(x)
            if chunk is None:
                activation(h)
            else:
                for start in range(0, len(h), chunk):
                    activation(h[start:start + chunk])
            x = norm(layer.down(h), x, *layer.ffn_norm, eps)
        return x

    def token_states_q8(self, x: np.ndarray, layout: BatchLayout) -> np.ndarray:
        """token_states after the embedding sum x (total, dim), when every linear layer takes
        dynamic int8 activations: each fused kernel quantizes its output for the next layer
        and adds the bias of the matmul before it, so a layer is four kernel calls and four
        matmuls, all on the buffers of a Q8Workspace; or, where the native encoder runs, the
        same in one C call, in place in x. Same rule and results as the generic path."""
        if self._native_encoder is not None:
            return self._native_encoder.run(x, layout.starts, layout.lengths)
        m = x.shape[0]
        ws = self._q8_workspace(m)
        try:
            return self._layers_q8(ws, x, layout)
        finally:
            if ws is self._q8_kept:
                self._q8_lock.release()

    def _q8_workspace(self, m: int) -> "Q8Workspace":
        """The kept workspace (grown to a power of two, at most Q8Workspace.KEPT_ROWS rows),
        locked for this call; a new one for more rows or while another thread holds it."""
        if m <= Q8Workspace.KEPT_ROWS and self._q8_lock.acquire(blocking=False):
            if self._q8_kept is None or self._q8_kept.rows < m:
                self._q8_kept = None  # free the old buffers first
                try:
                    rows = min(Q8Workspace.KEPT_ROWS, max(64, 1 << (m - 1).bit_length()))
                    self._q8_kept = Q8Workspace(self, rows)
                except BaseException:
                    self._q8_lock.release()
                    raise
            return self._q8_kept
        return Q8Workspace(self, m)

    def _layers_q8(self, ws: "Q8Workspace", x: np.ndarray, layout: BatchLayout) -> np.ndarray:
        spec = self.spec
        m, eps, heads = x.shape[0], spec.layer_norm_eps, spec.num_heads
        # the hidden state lives in ws.x; ws.y takes the attention block's output, then the
        # roles swap back after the FFN (views of the first m rows, taken once)
        steps = self._q8_steps
        xs, ys, q, s, qkv_out, ctx, h, qf, sf = ws.views(m, getattr(steps, "pin", None))
        xs[...] = x
        first = self.layers[0]
        ok = steps.layer_norm_q8(xs, None, None, *self.embed_norm, eps, first.qkv._block, q, s)
        last = len(self.layers) - 1
        for i, (layer, (mm_qkv, mm_out, mm_up, mm_down)) in enumerate(zip(self.layers, ws.matmuls)):
            out, up, down = layer.out, layer.up, layer.down
            mm_qkv(m)
            ok &= steps.attention_q8(qkv_out, layer.qkv.bias, layout.starts, layout.lengths, heads, ctx,
                                out._block, q, s)
            mm_out(m)
            ok &= steps.layer_norm_q8(ys, out.bias, xs, *layer.attn_norm, eps, up._block, q, s)
            mm_up(m)
            ok &= steps.gelu_q8(h, up.bias, down._block, qf, sf)
            mm_down(m)
            ok &= steps.layer_norm_q8(xs, down.bias, ys, *layer.ffn_norm, eps,
                                 0 if i == last else self.layers[i + 1].qkv._block, q, s)
        if not ok:
            raise ValueError(f"{self.path}: the model produced NaN or inf (do its weights hold any?)")
        return xs.copy()  # the workspace is reused by the next call

    def _attention(self, qkv: np.ndarray, layout: BatchLayout) -> np.ndarray:
        """Multi-head self-attention: packed qkv (total, 3*dim) -> packed context (total, dim)."""
        if self._float_steps is not None:
            ctx = np.empty((qkv.shape[0], self.spec.hidden_size), dtype=np.float32)
            return self._float_steps.attention_fast(qkv, layout.starts, layout.lengths, self.spec.num_heads, ctx)
        if len(layout.groups) == 1:
            return self._attend(qkv, layout.groups[0])
        ctx = np.empty((qkv.shape[0], self.spec.hidden_size), dtype=np.float32)
        for group in layout.groups:
            ctx[group.rows] = self._attend(qkv[group.rows], group)
        return ctx

    def _attend(self, qkv: np.ndarray, group: AttentionGroup) -> np.ndarray:
        """Attention of one group, in float64 rounded once to float32: the padded width changes
        the order BLAS sums in, and float64 sums round to the same float32 whatever that order,
        so a text gets the same context alone and padded in a batch (one-ulp differences would
        otherwise flip int8 activation codes downstream)."""
        heads, dim = self.spec.num_heads, self.spec.hidden_size
        d, batch, width = dim // heads, group.batch, group.width
        if group.index is None:
            grid = qkv
        else:
            grid = np.zeros((batch * width, 3 * dim), dtype=np.float32)
            grid[group.index] = qkv
        # one float64 copy, laid out (3, B, H, L, d): contiguous matrices for both matmuls
        q, k, v = grid.reshape(batch, width, 3, heads, d).transpose(2, 0, 3, 1, 4).astype(np.float64)
        scores = q @ k.transpose(0, 1, 3, 2)                                   # (B, H, L, L)
        scores *= 1 / math.sqrt(d)
        if group.key_bias is not None:
            scores += group.key_bias
        scores -= scores.max(axis=3, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=3, keepdims=True)
        ctx = (scores @ v).astype(np.float32)                                  # (B, H, L, d)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(batch * width, dim)             # (B*L, dim)
        return ctx if group.index is None else ctx[group.index]

    def embed_ids(self, rows: Sequence[Sequence[int]], batch_size: int = 32) -> np.ndarray:
        """Token id lists (specials included, already within max_tokens) -> (n, dim) float32."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        lengths = [len(r) for r in rows]
        if any(n == 0 for n in lengths):
            raise ValueError("every sequence needs at least one token")
        if max(lengths, default=0) > self.spec.max_tokens:
            raise ValueError(f"a sequence has {max(lengths)} tokens; this model takes at most {self.spec.max_tokens}")
        for order in length_batches(lengths, batch_size):
            ids = np.fromiter((t for i in order for t in rows[i]), dtype=np.int64,
                              count=sum(lengths[i] for i in order))
            if ids.size and (ids.min() < 0 or ids.max() >= self._vocab_limit):
                raise ValueError(f"token ids must be in [0, {self._vocab_limit})")
            layout = BatchLayout.of(np.array([lengths[i] for i in order]))
            states = self.token_states(ids, layout)
            if not np.isfinite(states).all():
                raise ValueError(f"{self.path}: the model produced NaN or inf (do its weights hold any?)")
            out[order] = pool(states, layout.starts, layout.lengths, self.spec.pooling)
        return l2_normalize(out) if self.spec.normalize else out

    def embed(self, texts: Sequence[str] | str, batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings (n, dim) float32 in input order; one str gives shape (1, dim).

        Texts are sorted by length and batched; padding changes nothing (packed tokens,
        per-sequence attention), so any batch size gives the same vectors: bit for bit in
        every run measured, within float rounding by design.
        """
        if isinstance(texts, str):
            texts = [texts]
        return self.embed_ids(self.tokenize(list(texts)), batch_size)

    def __repr__(self) -> str:
        s = self.spec
        kinds = sorted({d.weight.qtype if d.quantized else "float" for d in self._denses})
        return (f"BertEncoder({str(self.path)!r}, {s.num_layers} layers, dim {s.hidden_size}, "
                f"weights {'/'.join(kinds)}, pooling {s.pooling}{', normalized' if s.normalize else ''})")


class Q8Workspace:
    """The fused int8 forward's buffers for up to `rows` tokens, and each layer's four matmuls
    bound to them (Dense.bind_q8): a forward then allocates nothing, and at batch 1 (4-41
    tokens) the per-call cost of validating arrays and taking pointers is gone.

    Memory per row: 4 * (5 dim + ffn) float32 bytes + dim + ffn int8 codes + their scales
    (MiniLM: 17.5 KB; the kept workspace holds at most KEPT_ROWS rows, 4.5 MB)."""

    #: the largest workspace an encoder keeps between calls (longer batches get their own)
    KEPT_ROWS = 256

    def __init__(self, encoder: "BertEncoder", rows: int):
        spec, first = encoder.spec, encoder.layers[0]
        dim, ffn = spec.hidden_size, spec.intermediate_size
        self.rows = rows
        f32 = np.float32
        self.x, self.y, self.ctx = (np.empty((rows, dim), dtype=f32) for _ in range(3))
        self.qkv = np.empty((rows, 3 * dim), dtype=f32)
        self.h = np.empty((rows, ffn), dtype=f32)
        # int8 codes and scales, reused: each is consumed by one matmul before the next write
        self.q = np.empty((rows, dim), dtype=np.int8)
        self.s = np.empty((rows, dim // first.qkv._block), dtype=f32)
        self.qf = np.empty((rows, ffn), dtype=np.int8)
        self.sf = np.empty((rows, ffn // first.down._block), dtype=f32)
        self.matmuls = [(layer.qkv.bind_q8(self.q, self.s, self.qkv),
                         layer.out.bind_q8(self.q, self.s, self.y),
                         layer.up.bind_q8(self.q, self.s, self.h),
                         layer.down.bind_q8(self.qf, self.sf, self.x))
                        for layer in encoder.layers]
        self._views: dict[int, tuple] = {}

    def views(self, m: int, pin) -> tuple:
        """The first m rows of x, y, q, s, qkv, ctx, h, qf, sf: made once per m and kept, so
        that the C steps, given them again and again, check and take their pointers once
        (pin: the steps' pin, or None)."""
        views = self._views.get(m)
        if views is None:
            views = self._views[m] = tuple(a[:m] for a in (self.x, self.y, self.q, self.s, self.qkv,
                                                           self.ctx, self.h, self.qf, self.sf))
            if pin is not None:
                pin(*views)
        return views


class _Embedding:
    """Row lookup in an embedding table: float rows, or quantized rows dequantized on demand
    (int8 per row directly from codes and scales; other layouts through a QTensor of the rows)."""

    def __init__(self, table):
        self.table = table
        self.quantized = isinstance(table, QTensor)
        s = table.spec if self.quantized else None
        self.int8_rows = self.quantized and s.qtype == "int8" and s.symmetric and s.granularity == "row"

    def rows(self, ids: np.ndarray) -> np.ndarray:
        t = self.table
        if not self.quantized:
            return t[ids].astype(np.float32)
        if self.int8_rows:
            x = t.data["codes"][ids].astype(np.float32)
            x *= t.data["scales"][ids]
            return x
        return take_rows(t, ids).dequantize()


@register("bert")
def build(packed, **options) -> BertEncoder:
    return BertEncoder(packed, **options)
