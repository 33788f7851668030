"""Model-output loss of replaced weights, for mixed precision by probing (llama family).

    windows = probe_windows(samples)                 # a few short calibration windows
    loss = OutputLoss(model, floats, windows)        # the float reference: one pass per window
    loss({"blk.3.ffn_down.weight": w})               # KL of the model with that matrix replaced
    errors, record = probed_sensitivities(model, floats, units, relative, samples, candidates)
                                                     # mixed.probed_errors with that loss

Reference: the decoder with every block matrix named in `floats` (float32 (out, in) arrays)
put into its blocks, run on the numpy path (the fused fast path reads its own copies of the
weights, so it is off while the loss runs). Tensors outside the blocks (embedding, output,
norms) stay as the model holds them: they are the same in the reference and in every probe.

Loss: the mean over the windows' positions of the KL divergence of the replaced model's
next-token distribution q from the reference's p,

    KL(p || q) = sum_v p(v) (log p(v) - log q(v))      in nats, log-softmax in float64

computed as sum_v p log p (kept per position) - sum_v p log q: 0 for the reference weights
themselves (the same computation gives the same log q, so both sums are the same bits). The
reference's probabilities p are kept (float32, windows x tokens x vocab: 2 x 128 x 49152 x
4 bytes = 48 MiB for SmolLM2), so a call normalizes only its own logits.

Windows (probe_windows): PROBE_WINDOWS rows spread evenly over the calibration samples the
user gave, each cut to its first PROBE_TOKENS tokens. The loss costs one forward pass per
window and unit; two windows of 128 tokens rank SmolLM2-135M's layers well enough for the
allocation (tests/perf/calibration_quality.py, "mixed-probed" rows) at ~1.3 s per unit on
one core (about 5 minutes for its 210 layers).

Probe grid (probe_grid): the first of PROBE_GRIDS that every unit lists among its candidates
(int2 g96 on SmolLM2, whose widths 576 and 1536 it divides; int2 g64 on most other llamas).
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import numpy as np

from edgeq.errors import UnsupportedError
from edgeq.eval import log_softmax

log = logging.getLogger(__name__)

PROBE_WINDOWS = 2
PROBE_TOKENS = 128
#: preferred probe grids (candidate names of edgeq.calibrate.mixed), coarsest group first
PROBE_GRIDS = ("int2 g96", "int2 g64", "int2 g32")

#: tensor kind (the third part of "blk.<i>.<kind>.weight") -> (Block field, index in its tuple or None)
BLOCK_SLOTS = {"attn_q": ("qkv", 0), "attn_k": ("qkv", 1), "attn_v": ("qkv", 2), "attn_output": ("wo", None),
               "ffn_gate": ("gate_up", 0), "ffn_up": ("gate_up", 1), "ffn_down": ("w_down", None),
               "attn_norm": ("attn_norm", None), "ffn_norm": ("ffn_norm", None)}


def swap_weights(model, replaced: Mapping[str, np.ndarray]) -> Callable[[], None]:
    """Put matrices, norm weights and q/k/v biases ("blk.<i>.<kind>.weight" or
    "blk.<i>.attn_<q|k|v>.bias" -> array) into an unfused LlamaModel's blocks; returns the
    undo. The caller keeps the model on its numpy path while they are in (see OutputLoss)."""
    _check_decoder(model)
    saved = list(model.blocks)
    try:
        for name, w in replaced.items():
            i, kind, bias = _slot(model, name)
            block = model.blocks[i]
            if bias:
                values = block.qkv_bias.copy()
                values[_bias_rows(model.config, kind)] = w
                model.blocks[i] = dataclasses.replace(block, qkv_bias=values)
                continue
            field, pos = BLOCK_SLOTS[kind]
            value = w if pos is None else tuple(w if j == pos else m for j, m in enumerate(getattr(block, field)))
            model.blocks[i] = dataclasses.replace(block, **{field: value})
    except BaseException:
        model.blocks[:] = saved
        raise
    return lambda: model.blocks.__setitem__(slice(None), saved)


def _slot(model, name: str) -> tuple[int, str, bool]:
    """"blk.<i>.<kind>.weight|bias" -> (i, kind, is a bias); ValueError for any other name."""
    parts = name.split(".")
    ok = len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < len(model.blocks)
    if ok and parts[3] == "weight":
        ok = parts[2] in BLOCK_SLOTS
    elif ok and parts[3] == "bias":
        ok = parts[2] in _BIAS_SLOTS and model.blocks[int(parts[1])].qkv_bias is not None
    else:
        ok = False
    if not ok:
        raise ValueError(f"{name!r} is not a block weight of this model "
                         f"(blk.<0..{len(model.blocks) - 1}>.<{'|'.join(BLOCK_SLOTS)}>.weight, or a q/k/v bias)")
    return int(parts[1]), parts[2], parts[3] == "bias"


_BIAS_SLOTS = ("attn_q", "attn_k", "attn_v")


def _bias_rows(c, kind: str) -> slice:
    """Where q's, k's or v's bias lies in a block's qkv_bias [q | k | v]."""
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    return {"attn_q": slice(0, q), "attn_k": slice(q, q + kv), "attn_v": slice(q + kv, q + 2 * kv)}[kind]


def probe_windows(samples, count: int = PROBE_WINDOWS, tokens: int = PROBE_TOKENS) -> np.ndarray:
    """`count` rows spread evenly over `samples` (token id rows (n, seq_len)), cut to their
    first `tokens` tokens (fewer rows when there are fewer samples)."""
    samples = np.asarray(samples)
    if samples.ndim != 2 or samples.shape[0] == 0 or samples.shape[1] == 0:
        raise ValueError(f"samples must be a non-empty (n, seq_len) array of token ids, got {samples.shape}")
    rows = np.unique(np.linspace(0, samples.shape[0] - 1, min(count, samples.shape[0])).round().astype(int))
    return samples[rows, :tokens]


def probe_grid(relative: Mapping[str, Mapping[str, float]], preferred=PROBE_GRIDS) -> str:
    """The first of `preferred` that every unit of `relative` (unit -> candidate -> error) lists."""
    for name in preferred:
        if all(name in errors for errors in relative.values()):
            return name
    raise UnsupportedError(f"no probe grid of {list(preferred)} fits every layer (their input widths "
                           f"must be multiples of its group size)")


def probed_sensitivities(model, floats: Mapping[str, np.ndarray], units: list[tuple[str, ...]],
                         relative: Mapping[str, Mapping[str, float]], samples, candidates, *,
                         windows: int = PROBE_WINDOWS, on_unit: Callable[[], None] | None = None
                         ) -> tuple[dict[str, dict[str, float]], dict]:
    """mixed.probed_errors of `units` with OutputLoss(model, floats, probe_windows(samples,
    windows)) at probe_grid(relative); relative: mixed.relative_errors over `candidates`;
    floats: every block matrix of the reference. Returns the errors and what was probed
    ({"grid", "windows", "tokens"}: for the file's metadata). on_unit() after each unit."""
    from edgeq.calibrate import mixed

    grid = probe_grid(relative)
    rows = probe_windows(samples, windows)
    loss = OutputLoss(model, floats, rows)

    def loss_with(replaced):
        value = loss(replaced)
        if on_unit is not None:
            on_unit()
        return value

    errors = mixed.probed_errors(loss_with, floats, units, relative, grid, candidates)
    log.info("probed %d units with %s on %d windows of %d tokens", len(units), grid, *rows.shape)
    return errors, {"grid": grid, "windows": int(rows.shape[0]), "tokens": int(rows.shape[1])}


class OutputLoss:
    """loss(replaced) -> mean KL divergence from the float reference (module docstring).

    model: a LlamaModel loaded with fuse_projections=False; floats: the reference's block
    matrices by name (float32 (out, in)); windows: token id rows (probe_windows).
    """

    def __init__(self, model, floats: Mapping[str, np.ndarray], windows):
        _check_decoder(model)
        self.model = model
        self.floats = dict(floats)
        self.windows = [np.asarray(w) for w in windows]
        if not self.windows or any(w.ndim != 1 or w.size == 0 for w in self.windows):
            raise ValueError("the probe needs at least one non-empty window of token ids")
        self._reference = []   # per window: p (tokens, vocab) float32, sum_v p log p (tokens,)
        with self._installed({}):
            for ids in self.windows:
                p_log = log_softmax(self.model.logits(ids))
                p = np.exp(p_log).astype(np.float32)
                self._reference.append((p, np.sum(p * p_log, axis=-1)))

    @contextmanager
    def _installed(self, replaced: Mapping[str, np.ndarray]) -> Iterator[None]:
        fast = self.model.fast_path
        undo = swap_weights(self.model, {**self.floats, **replaced})
        self.model.fast_path = False
        try:
            yield
        finally:
            self.model.fast_path = fast
            undo()

    def __call__(self, replaced: Mapping[str, np.ndarray]) -> float:
        kl = []
        with self._installed(replaced):
            for ids, (p, p_log_p) in zip(self.windows, self._reference):
                q_log = log_softmax(self.model.logits(ids))
                kl.append(np.mean(p_log_p - np.sum(p * q_log, axis=-1)))
        return float(np.mean(kl))


def _check_decoder(model) -> None:
    if not hasattr(model, "blocks"):
        raise UnsupportedError(f"probed allocation measures a llama-family decoder's next-token "
                               f"distributions; {type(model).__name__} is not one "
                               f"(use the output-error allocation)")
    if model.fuse_projections:
        raise UnsupportedError("probing needs the separate projections: load the model with "
                               "fuse_projections=False")
