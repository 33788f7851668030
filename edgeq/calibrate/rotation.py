"""Rotating a llama decoder's residual stream: the same function, weights easier to quantize.

RMSNorm only rescales a vector, so a decoder computes the same function when its residual
stream x is turned by an orthogonal R (x' = x R) and its weights are turned to match
(computational invariance: Ashkboos et al. 2024, "QuaRot"; Liu et al. 2024, "SpinQuant"):

    the norms' weights w fold into the matrices that read them and become ones
        W_in  ->  W_in diag(w) R           attn_q, attn_k, attn_v, ffn_gate, ffn_up
    the matrices that write into the stream turn their outputs
        W_out ->  R^T W_out                attn_output, ffn_down
    and, per head, the values and what reads them turn by a second rotation R_h (head_dim)
        W_v   ->  R_h^T W_v   (each head's rows; and its bias)
        W_o   ->  W_o R_h     (each head's columns)
    and the input of every ffn_down, the SwiGLU output h (ffn_dim wide), by a third, H_f, which
    the runtime applies (h -> h H_f: nothing before ffn_down is linear in h to fold it into)
        W_down -> R^T W_down H_f

The token embedding stays as it is (tied to the output, and often already quantized
exactly): the runtime turns each embedded token by R and turns the final hidden state back
by R^T before output_norm. The file stores R as "residual_rotation.weight" (dim, dim)
float32, with config "residual_rotation": true, and H_f as its factors (below)
"ffn_rotation.signs" (ffn_dim,) and "ffn_rotation.mix" (m, m) float32, with config
"ffn_rotation": true (edgeq.models.llama).

Why: GPTQ spreads each column's rounding error over the columns still to come, which works
best when no column's weights dwarf the rest. Folding the norms gives some input channels
weights 10-100x the others; the rotation mixes every channel into every other ("incoherence",
Chee et al. 2023, "QuIP"). On SmolLM2-135M (weights only, 2040 held-out tokens) GPTQ int3 g64
went from perplexity 47.9 to 28.5 with R and R_h and to 26.2 with H_f too (QuaRot's R4), while
round to nearest got worse (157 -> 562): the rotation is for GPTQ. Mixed precision at 2.5
bits per weight (GPTQ+, probed allocation, 16k tokens): 2550 unrotated (output-error
allocation), 159 with R and R_h, 84 with H_f too (tests/perf/calibration_quality.py --rotate).

R (hadamard): a random-signed Walsh-Hadamard matrix of the largest power of two dividing
dim, Kronecker a random orthogonal matrix of the rest (576 = 64 x 9), from `seed`; it spreads
an outlier channel evenly over all, like QuaRot's randomized Hadamard transform. H_f is
built the same way (1536 = 512 x 3 in SmolLM2), from seed + 2; its structure lets the runtime
apply it in O(ffn_dim log ffn_dim) per row (hadamard_factors).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from edgeq.errors import UnsupportedError

log = logging.getLogger(__name__)

#: the architectures whose blocks rotate_llama knows
ARCHITECTURES = ("llama", "qwen2")
MODES = ("none", "hadamard")


def hadamard_factors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The factors (signs, mix, p) of hadamard_rotation(n, seed): signs float64 (n,) of +-1,
    mix a random orthogonal float64 (m, m), p the largest power of two dividing n, m = n / p.
    Applying the rotation to a row h costs O(n log n): h * signs, a fast Walsh-Hadamard
    transform of each of the m chunks of p values divided by sqrt(p), then
    out[a' p + b] = sum_a y[a p + b] mix[a, a'] (edgeq.models.llama.rotate_ffn_rows)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"rotation size must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    power = int(n & -n)
    q, r = np.linalg.qr(rng.standard_normal((n // power, n // power)))
    q *= np.sign(np.diag(r))  # Haar-distributed, not biased by the QR's sign convention
    signs = rng.choice([-1.0, 1.0], n)
    return signs, q, power


def hadamard_rotation(n: int, seed: int) -> np.ndarray:
    """An orthogonal float64 (n, n): diag(random signs) (Q (x) H / sqrt(2^k)), H the Sylvester
    Hadamard matrix of the largest 2^k dividing n, Q a random orthogonal (n / 2^k)
    (the factors of hadamard_factors)."""
    return _dense(*hadamard_factors(n, seed))


def _dense(signs: np.ndarray, mix: np.ndarray, power: int) -> np.ndarray:
    """The matrix diag(signs) (mix (x) H / sqrt(power)) of hadamard_factors' factors."""
    h = np.ones((1, 1))
    while h.shape[0] < power:
        h = np.block([[h, h], [h, -h]])
    return signs[:, None] * np.kron(mix, h / np.sqrt(power))


def rotate_llama(tensors: Mapping[str, object], config: Mapping, seed: int = 0) -> dict[str, np.ndarray]:
    """The float32 tensors that change when `config`'s decoder is rotated (module docstring):
    every block's norms, matrices (and value bias), "residual_rotation.weight",
    "ffn_rotation.signs" and "ffn_rotation.mix".

    tensors: name -> float array or QTensor (dequantized here). The other tensors (embedding,
    output, output_norm) are unchanged and are not returned.
    """
    from edgeq.qtypes import QTensor

    arch = config.get("architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedError(f"the residual rotation is defined for llama-family decoders "
                               f"({', '.join(ARCHITECTURES)}), not {arch!r}")
    if config.get("residual_rotation") or config.get("ffn_rotation"):
        raise UnsupportedError("this model's residual stream is already rotated")
    d, hd, f = config["dim"], config["head_dim"], config["ffn_dim"]
    n_heads, n_kv = config["n_heads"], config["n_kv_heads"]

    def get(name):
        t = tensors[name]
        return (t.dequantize() if isinstance(t, QTensor) else np.asarray(t)).astype(np.float64)

    r = hadamard_rotation(d, seed)
    r_head = hadamard_rotation(hd, seed + 1)
    ffn_factors = hadamard_factors(f, seed + 2)
    signs, mix, _ = ffn_factors
    r_ffn = _dense(*ffn_factors)
    out = {"residual_rotation.weight": r, "ffn_rotation.signs": signs, "ffn_rotation.mix": mix}
    for i in range(config["n_layers"]):
        b = f"blk.{i}."
        for norm, readers in (("attn_norm", ("attn_q", "attn_k", "attn_v")), ("ffn_norm", ("ffn_gate", "ffn_up"))):
            w = get(b + norm + ".weight")
            for name in readers:
                out[b + name + ".weight"] = (get(b + name + ".weight") * w) @ r
            out[b + norm + ".weight"] = np.ones(d)
        v = out[b + "attn_v.weight"].reshape(n_kv, hd, d)
        out[b + "attn_v.weight"] = np.einsum("ji,hjd->hid", r_head, v).reshape(n_kv * hd, d)
        if config.get("has_qkv_bias"):
            bias = get(b + "attn_v.bias").reshape(n_kv, hd)
            out[b + "attn_v.bias"] = (bias @ r_head).reshape(-1)
        wo = get(b + "attn_output.weight").reshape(d, n_heads, hd)
        out[b + "attn_output.weight"] = r.T @ np.einsum("dhj,ji->dhi", wo, r_head).reshape(d, n_heads * hd)
        out[b + "ffn_down.weight"] = r.T @ get(b + "ffn_down.weight") @ r_ffn
    return {name: a.astype(np.float32) for name, a in out.items()}


def save_rotated(packed, path, seed: int = 0) -> Path:
    """The model of PackedFile `packed`, rotated (rotate_llama), saved as the .eqm `path`: the
    changed tensors float32, the others as they are, config "residual_rotation" and
    "ffn_rotation" true."""
    from edgeq.format import save

    changed = rotate_llama(packed, packed.config or {}, seed)
    log.info("rotated the residual stream (%d tensors changed)", len(changed))
    tensors = {name: changed.get(name, packed[name]) for name in packed}
    tensors.update({name: changed[name] for name in
                    ("residual_rotation.weight", "ffn_rotation.signs", "ffn_rotation.mix")})
    config = {**packed.config, "residual_rotation": True, "ffn_rotation": True}
    return save(Path(path), tensors, config=config,
                tokenizer=packed.tokenizer, metadata=packed.metadata)
