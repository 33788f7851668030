"""Sentence embeddings: batching and pooling helpers, and the functions behind the CLI.

Token states are kept *packed*: the real tokens of every sequence in a batch, back to back,
shape (total tokens, dim), with `starts` and `lengths` marking each sequence. Nothing that
works per token (linear layers, norms, activation quantization) ever sees a padding row;
only attention builds a padded (batch, width) view (see edgeq.models.bert).

Pooling (sentence-transformers' definitions, over real tokens only):
    "mean"  sum of the token states / number of tokens
    "cls"   the first token's state
    "max"   element-wise maximum over the tokens
"""

from __future__ import annotations

import json
import sys
from typing import Iterable, Sequence

import numpy as np

POOLING_MODES = ("mean", "cls", "max")


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length: longest first, each batch <= batch_size.

    Sorting before cutting keeps the padding inside each batch small.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pool(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, mode: str) -> np.ndarray:
    """Packed token states (total, dim) -> one vector per sequence (batch, dim), float32."""
    if mode == "mean":
        sums = np.add.reduceat(tokens, starts, axis=0)
        return (sums / lengths[:, None].astype(np.float32)).astype(np.float32, copy=False)
    if mode == "cls":
        return tokens[starts]
    if mode == "max":
        return np.maximum.reduceat(tokens, starts, axis=0)
    raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {mode!r}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; as torch.nn.functional.normalize, norms below 1e-12 count as 1e-12."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32))
    return (x / np.maximum(norms, np.float32(1e-12))[:, None]).astype(np.float32, copy=False)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (float64 arithmetic)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


def _read_lines(path: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file ("-" reads standard input)."""
    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    return [line for line in text.splitlines() if line.strip()]


def embed_cli(model_path: str, texts: Iterable[str] = (), file: str | None = None,
              batch_size: int = 32, out=None) -> np.ndarray:
    """`edgeq embed`: one JSON line per text, {"text": ..., "embedding": [floats]}.

    Texts come from `texts`, then from the lines of `file` (empty lines skipped). Returns the
    embeddings array as well, in input order.
    """
    from edgeq.loader import load  # here: the CLI helpers sit above the runtime

    out = out or sys.stdout
    items = list(texts) + (_read_lines(file) if file else [])
    model = load(model_path)
    vectors = model.embed(items, batch_size=batch_size)
    for text, vec in zip(items, vectors):
        out.write(json.dumps({"text": text, "embedding": [round(float(v), 7) for v in vec]},
                             ensure_ascii=False) + "\n")
    return vectors


def similarity_cli(model_path: str, a: str, b: str, out=None) -> float:
    """`edgeq similarity`: prints and returns the cosine similarity of the two texts' embeddings."""
    from edgeq.loader import load

    out = out or sys.stdout
    model = load(model_path)
    va, vb = model.embed([a, b])
    value = cosine(va, vb)
    out.write(f"{value:.6f}\n")
    return value
