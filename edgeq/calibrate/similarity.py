"""Embedding similarity of a quantized encoder to its float reference (`edgeq eval embed-sim`).

Texts (default_texts): the paragraphs (split at blank lines, at least 40 characters) of the
first 50,000 characters of the built-in corpus (data.load_text("pydoc")): inside the
evaluation region, never in the calibration windows (those start past the middle of the
token stream). Each model embeds every text; the score is the cosine of each text's
embedding to the reference's, summarized by mean and minimum.

A model file's row (describe) also says how it was made (its recipe's algorithm, type and
group size), its bits per weight over the linear layers and its file size, the table a user
needs to choose a recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeq.calibrate import data

TEXT_CHARS = 50_000
MIN_CHARS = 40


def default_texts(n: int = 256) -> list[str]:
    """Up to n evaluation paragraphs (see the module docstring)."""
    text = data.load_text(data.BUILTIN)[:TEXT_CHARS]
    return [p.strip() for p in text.split("\n\n") if len(p.strip()) >= MIN_CHARS][:n]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, dim) arrays, float64 (a zero row gives 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), 0.0)


@dataclass(frozen=True)
class SimilarityRow:
    path: Path
    method: str
    bits_per_weight: float | None  # over the linear layers; None when they are all float
    file_mib: float
    mean_cosine: float
    min_cosine: float


def describe(path: Path) -> tuple[str, float | None]:
    """(how the file was made, bits per weight of its linear layers)."""
    from edgeq.calibrate.driver import input_groups
    from edgeq.calibrate.recipe import Recipe
    from edgeq.format import open_packed
    from edgeq.qtypes import QTensor

    packed = open_packed(path)
    recipe = (packed.metadata or {}).get("recipe")
    if recipe is None:
        method = "as converted"
    else:
        r = Recipe.from_json(recipe, f"{path}: metadata.recipe")
        w = r.weights
        method = f"{w.algorithm} {w.qtype} {'g' + str(w.group_size) if w.group_size else 'row'}" \
                 f"{'' if w.symmetric else ' asym'}"
        if r.overrides:
            method += f" (+{len(r.overrides)} overrides)"
        if r.activations.mode == "static":
            method += f", static int8 inputs ({r.activations.observer})"
        if r.activations.integer_ffn:
            method += ", integer FFN"
        if r.rotation.mode != "none":
            method += f", {r.rotation.mode}-rotated"
    names = [n for g in input_groups(packed.config or {}) for n in g.layers]
    tensors = [packed[n] for n in names]
    if not any(isinstance(t, QTensor) for t in tensors):
        return method, None
    bits = sum(8 * t.nbytes for t in tensors)
    return method, bits / sum(t.shape[0] * t.shape[1] for t in tensors)


def embed_similarity(reference, models: Sequence, texts: Sequence[str] | None = None,
                     batch_size: int = 32) -> list[SimilarityRow]:
    """One row per model file: cosine of its embeddings of `texts` to those of `reference`."""
    import edgeq

    texts = default_texts() if texts is None else list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    expected = edgeq.load(reference).embed(texts, batch_size=batch_size)
    rows = []
    for path in map(Path, models):
        got = edgeq.load(path).embed(texts, batch_size=batch_size)
        cos = cosines(got, expected)
        method, bits = describe(path)
        rows.append(SimilarityRow(path, method, bits, path.stat().st_size / 2**20,
                                  float(cos.mean()), float(cos.min())))
    return rows


def method_width(methods: Sequence[str]) -> int:
    """Width of a table's method column: 40, or the longest method (a rotated mixed file's
    "gptq int4 g64 asym (+210 overrides), hadamard-rotated" is longer)."""
    return max([40, *map(len, methods)])


def format_rows(rows: Sequence[SimilarityRow], n_texts: int) -> str:
    w = method_width([r.method for r in rows])
    header = f"{'model':<32} {'method':<{w}} {'bits/w':>6} {'MiB':>7} {'mean cos':>9} {'min cos':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        bits = "float" if r.bits_per_weight is None else f"{r.bits_per_weight:.3f}"
        lines.append(f"{r.path.name:<32} {r.method:<{w}} {bits:>6} {r.file_mib:>7.1f} "
                     f"{r.mean_cosine:>9.5f} {r.min_cosine:>8.5f}")
    lines.append(f"({n_texts} texts)")
    return "\n".join(lines)
