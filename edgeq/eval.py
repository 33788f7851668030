"""Perplexity of a language model on a text, by non-overlapping windows.

    result = perplexity(model)            # the default corpus, 256-token windows
    result.ppl, result.mean_nll, result.tokens

The rule (the golden script tests/golden/make_llamacpp_golden.py applies the same rule to
llama.cpp's logits, so the two perplexities are comparable):

1. The text is tokenized once, as plain text: no BOS/EOS are added and special-token texts
   are not parsed (model.tokenizer.encode(text, add_special=False, parse_special=False)).
   With max_tokens, only the first max_tokens ids are kept.
2. The ids are cut into consecutive, non-overlapping windows of `window` tokens; a tail
   shorter than a window is dropped (as llama.cpp's perplexity tool drops it). A text shorter
   than one window is scored as a single window of its own length.
3. Each window is evaluated from an empty KV cache (model.logits). The logits at position i
   predict token i + 1, for i = 0 .. window - 2: a window contributes window - 1 predictions,
   including the early ones with little context.
4. nll = -log_softmax(logits)[true next token], computed in float64 from the float32 logits;
   mean_nll is the mean over every prediction of every window, ppl = exp(mean_nll).

llama.cpp's own `llama-perplexity` differs in step 3: it scores only the second half of each
window (so every scored token has at least window/2 tokens of context) and, for models that
add one, puts BOS first. Its numbers are therefore lower than this rule's on the same text.

Default corpus: Python's own documentation, present on every installation (CORPUS_RULE).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

CORPUS_RULE = ('"\\n".join(topics[k] for k in sorted(topics)) over pydoc_data.topics.topics: '
               "each topic text ends in one newline, so topics are separated by one blank line")


@dataclass(frozen=True)
class PerplexityResult:
    """tokens: predictions scored; mean_nll: mean negative log-likelihood (nats); ppl: exp(mean_nll)."""

    tokens: int
    mean_nll: float
    ppl: float


def default_corpus() -> str:
    """The pydoc topic texts joined as CORPUS_RULE states (about 465k characters)."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax along the last axis of float logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def next_token_logprobs(logits: np.ndarray, ids) -> np.ndarray:
    """Log-probability of each true next token: logits (n, vocab) of a window of ids (n,)
    -> float64 (n - 1,), entry i = log_softmax(logits[i])[ids[i + 1]]."""
    ids = np.asarray(ids)
    if logits.ndim != 2 or logits.shape[0] != ids.shape[0]:
        raise ValueError(f"logits {logits.shape} do not match {ids.shape[0]} token ids")
    lp = log_softmax(logits[:-1])
    return lp[np.arange(ids.shape[0] - 1), ids[1:]]


def windows(ids, window: int) -> list[np.ndarray]:
    """The non-overlapping windows of the rule above (step 2)."""
    ids = np.asarray(ids)
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if ids.shape[0] < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {ids.shape[0]}")
    if ids.shape[0] < window:
        return [ids]
    return [ids[start:start + window] for start in range(0, ids.shape[0] - window + 1, window)]


def perplexity_of_ids(model, ids, window: int = 256) -> PerplexityResult:
    """Perplexity of token ids under `model` (anything with .logits(ids) -> (n, vocab))."""
    total, count = 0.0, 0
    parts = windows(ids, window)
    for i, part in enumerate(parts):
        nll = -next_token_logprobs(model.logits(part), part)
        total += float(nll.sum())
        count += nll.shape[0]
        log.info("perplexity window %d/%d: running ppl %.3f", i + 1, len(parts), math.exp(total / count))
    mean = total / count
    return PerplexityResult(tokens=count, mean_nll=mean, ppl=math.exp(mean))


def perplexity(model, text: str | None = None, window: int = 256,
               max_tokens: int | None = None) -> PerplexityResult:
    """Perplexity of `text` (default: default_corpus()) under `model`, by the rule above.

    model: a loaded language model (model.tokenizer.encode and model.logits), e.g.
    edgeq.load("model.gguf"). max_tokens: keep only the first max_tokens tokens of the text.
    """
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; use perplexity_of_ids with token ids")
    if text is None:
        text = default_corpus()
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    ids = model.tokenizer.encode(text, add_special=False, parse_special=False)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return perplexity_of_ids(model, ids, window)
