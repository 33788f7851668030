"""Calibration text: where it comes from, and how it is kept apart from evaluation text.

Sources (load_text):
    "pydoc"          the built-in corpus present on every Python: the values of
                     pydoc_data.topics.topics in key order, joined by a blank line
    a .jsonl / .json file    JSON lines: each non-blank line a string, or an object with a
                     string field "text"; documents are joined by a blank line
    any other file   plain UTF-8 text

Held apart by construction. The text is tokenized once into one token stream t[0:N]:
    evaluation    t[0 : EVAL_TOKENS]                      (the first 16384 tokens)
    calibration   t[max(N // 2, EVAL_TOKENS) : N]         (the second half, and never the
                                                           evaluation tokens even when N < 32768)
The rule protects the built-in corpus, which evaluation also reads. A calibration file of
the user's is calibration text only (holdout=False): its windows come from all of it.
Calibration samples are `samples` non-overlapping windows of `seq_len` tokens, cut from the
calibration region at offsets multiple of seq_len, chosen at random without replacement with
numpy.random.default_rng(seed), in increasing offset order. The same text, tokenizer and seed
give the same samples everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeq.errors import FormatError

EVAL_TOKENS = 16384
BUILTIN = "pydoc"


def builtin_corpus() -> str:
    """The pydoc topics text (see the module docstring)."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics.values())


def load_text(source: str | Path = BUILTIN) -> str:
    """The calibration text of a source: "pydoc", a JSON-lines file or a plain text file."""
    if str(source) == BUILTIN:
        return builtin_corpus()
    path = Path(source)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FormatError(f"{path}: cannot read calibration text ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: calibration text is not UTF-8 (byte {e.start})") from None
    if path.suffix in (".jsonl", ".json"):
        return "\n\n".join(_json_lines(text, path))
    return text


def _json_lines(text: str, path: Path) -> list[str]:
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}:{number}: not a JSON value ({e.msg})") from None
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str):
            raise FormatError(f"{path}:{number}: expected a string or an object with a string "
                              f"'text' field")
        docs.append(value)
    if not docs:
        raise FormatError(f"{path}: no documents")
    return docs


def tokenize(text: str, encode: Callable[[str], Sequence[int]]) -> np.ndarray:
    """The whole text as one int32 token stream (encode: e.g. a tokenizer's encode without
    special tokens)."""
    return np.asarray(encode(text), dtype=np.int32).reshape(-1)


def evaluation_tokens(tokens, n: int = EVAL_TOKENS) -> np.ndarray:
    """The evaluation region: the first min(n, EVAL_TOKENS) tokens."""
    tokens = np.asarray(tokens)
    if not 0 < n <= EVAL_TOKENS:
        raise ValueError(f"evaluation uses at most the first {EVAL_TOKENS} tokens, asked for {n}")
    return tokens[:n]


def calibration_region(tokens) -> np.ndarray:
    """The tokens calibration may use: t[max(N // 2, EVAL_TOKENS):]."""
    tokens = np.asarray(tokens)
    return tokens[max(tokens.shape[0] // 2, EVAL_TOKENS):]


def calibration_samples(tokens, samples: int, seq_len: int, seed: int = 0, *,
                        holdout: bool = True) -> np.ndarray:
    """int32 (samples, seq_len) windows of the calibration region (see the module docstring;
    holdout=False: of all the tokens)."""
    for name, value in (("samples", samples), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    region = calibration_region(tokens) if holdout else np.asarray(tokens)
    windows = region.shape[0] // seq_len
    if samples > windows:
        raise ValueError(f"the calibration region holds {region.shape[0]} tokens: {windows} windows "
                         f"of {seq_len}, fewer than the {samples} samples asked for "
                         f"(use more text, fewer samples or shorter ones)")
    chosen = np.sort(np.random.default_rng(seed).choice(windows, size=samples, replace=False))
    starts = chosen * seq_len
    return np.stack([region[s:s + seq_len] for s in starts]).astype(np.int32)
