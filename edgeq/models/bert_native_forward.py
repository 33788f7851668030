"""BERT's int8 encoder stack in one C call: native/bert_forward.c.

The per-step path (BertEncoder._layers_q8 with the C steps) returns to Python eight times
per layer; at batch 1 that is about a tenth of a sentence's time on MiniLM. NativeEncoder
runs the same C steps and matrix products in the same order inside one call, so its hidden
states are bit for bit those of the per-step path (tests/test_bert.py checks this).

It is built once per encoder, when every linear layer is a matrix the native kernels take
with dynamic int8 activations in one block size per input width (within the int32
accumulator bound): the C description points at the matrices' validated structs and
prepared panels (edgeq.kernels.native_backend), the norms and the biases, all kept alive
here. Per call, Python checks the token rows and sequences, takes scratch, and makes one call.
"""

from __future__ import annotations

import threading

import numpy as np

from edgeq._native import ffi, lib
from edgeq.kernels import native_backend
from edgeq.kernels.table import weight_kind
from edgeq.models.bert import Q8Workspace
from edgeq.models.native_memory import Kept, Scratch

if not hasattr(lib, "eq_bert_forward_q8"):
    raise ImportError("edgeq._native was built without BERT's forward pass "
                      "(native/bert_forward.c); rebuild it")

_I64 = np.dtype(np.int64)


class NativeEncoder:
    """The C description of one BertEncoder's layers, and the scratch its passes use. Calls
    from several Python threads are safe; they take turns."""

    #: scratch kept between calls is for at most this many token rows (larger batches get
    #: their own, freed after the call): the per-step path's workspace bound
    KEPT_ROWS = Q8Workspace.KEPT_ROWS

    @classmethod
    def of(cls, encoder) -> tuple["NativeEncoder | None", str | None]:
        """(NativeEncoder, None) for encoder, or (None, why it cannot run)."""
        dim, ffn = encoder.spec.hidden_size, encoder.spec.intermediate_size
        blocks = {d._block for layer in encoder.layers for d in (layer.qkv, layer.out, layer.up)}
        down_blocks = {layer.down._block for layer in encoder.layers}
        if len(blocks) != 1 or len(down_blocks) != 1:
            return None, "the layers quantize their inputs in different block sizes"
        for d in encoder._denses:
            if weight_kind(d.weight.spec) not in native_backend.KIND_IDS:
                return None, "a matrix is not of a kind the native kernels take"
            if not native_backend.fits_int32(d.weight, d._block):
                return None, f"a {weight_kind(d.weight.spec)} matrix exceeds the int32 accumulator bound"
        return cls(encoder, dim, ffn, blocks.pop(), down_blocks.pop()), None

    def __init__(self, encoder, dim: int, ffn: int, block_dim: int, block_ffn: int):
        spec = encoder.spec
        self.dim = dim
        self._keep = keep = Kept()           # everything the C structs point into
        self._lock = threading.Lock()
        self._scratch = Scratch(np.uint8)
        layers = keep.keep(ffi.new("eq_bert_layer[]", len(encoder.layers)))
        for s, layer in zip(layers, encoder.layers):
            for name in ("qkv", "out", "up", "down"):
                self._dense(getattr(s, name), getattr(layer, name))
            s.attn_norm = [keep.floats(a) for a in layer.attn_norm]
            s.ffn_norm = [keep.floats(a) for a in layer.ffn_norm]
        m = self._model = ffi.new("eq_bert_model *")
        m.n_layers, m.dim, m.heads, m.ffn = len(encoder.layers), dim, spec.num_heads, ffn
        m.block_dim, m.block_ffn, m.eps = block_dim, block_ffn, float(np.float32(spec.layer_norm_eps))
        m.embed_norm = [keep.floats(a) for a in encoder.embed_norm]
        m.layers = layers

    def _dense(self, struct, dense) -> None:
        struct.w = self._keep.matrix(dense.weight)
        prepared = self._keep.keep(dense.prepared)
        struct.prepared = ffi.NULL if prepared is None else prepared.handle
        struct.bias = ffi.NULL if dense.bias is None else self._keep.floats(dense.bias)

    def _work(self, rows: int, width: int):
        """(pointer, size) of scratch for this pass: the kept scratch (grown, never shrunk)
        up to KEPT_ROWS rows, else scratch of this call's own."""
        need = lib.eq_bert_forward_work(self._model, rows, width)
        if need < 0:
            raise ValueError("the native encoder rejected the model description")
        # a Scratch of its own past KEPT_ROWS: its pointer keeps the buffer until the call ends
        return (Scratch(np.uint8) if rows > self.KEPT_ROWS else self._scratch).get(need)

    def run(self, x: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The final hidden states of the embedding sums x (rows, dim), computed in place, for
        the sequences starts, lengths (int64 (batch,)) packed in its rows; returns x."""
        rows = x.shape[0] if x.ndim == 2 else -1
        if x.dtype != np.float32 or x.shape != (rows, self.dim) or not x.flags.c_contiguous \
                or not x.flags.writeable:
            raise ValueError(f"x must be a writable C-contiguous float32 (rows, {self.dim}) array")
        for a, what in ((starts, "starts"), (lengths, "lengths")):
            if a.dtype != _I64 or a.ndim != 1 or not a.flags.c_contiguous:
                raise ValueError(f"{what} must be a C-contiguous int64 vector")
        if starts.shape != lengths.shape or not starts.size or lengths.min() <= 0 \
                or starts.min() < 0 or (starts + lengths).max() > rows:
            raise ValueError(f"sequences must be non-empty and lie within the {rows} rows")
        with self._lock:
            work, size = self._work(rows, int(lengths.max()))
            status = lib.eq_bert_forward_q8(self._model, ffi.from_buffer("float[]", x), rows,
                                            ffi.from_buffer("int64_t[]", starts),
                                            ffi.from_buffer("int64_t[]", lengths), len(starts),
                                            work, size, native_backend.threads())
        if status == 1:
            raise ValueError("the model produced NaN or inf (do its weights hold any?)")
        native_backend.check_status(status, "BERT forward pass")
        return x
