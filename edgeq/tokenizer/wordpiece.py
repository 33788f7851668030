"""WordPiece tokenizer (BERT family) that reproduces Hugging Face `tokenizers` id for id.

Built from a Hugging Face ``tokenizer.json`` whose model is ``WordPiece``, normalizer
``BertNormalizer`` (or none), pre-tokenizer ``BertPreTokenizer`` (or none), post-processor
``TemplateProcessing`` / ``BertProcessing`` (or none) and decoder ``WordPiece`` (or none).

Encoding one text follows the order HF uses:

1. Added tokens whose ``normalized`` flag is false (``[CLS]``, ``[SEP]``, ``[MASK]`` ...) are
   split out of the raw text: leftmost-longest match, honouring ``single_word``, ``lstrip``
   and ``rstrip``. They become their id directly.
2. Each remaining piece goes through the BertNormalizer, in this order:
   clean_text (drop NUL, U+FFFD and control/format/private-use characters except tab, LF,
   CR; map every whitespace character to a space), handle_chinese_chars (surround each CJK
   ideograph with spaces), strip_accents (NFD, then drop non-spacing marks; ``None`` means
   "same as lowercase"), lowercase (per character, so no final-sigma rule).
3. Added tokens whose ``normalized`` flag is true are split out of the normalized pieces.
4. BertPreTokenizer: split on whitespace (dropped) and isolate every punctuation character
   (ASCII punctuation plus Unicode P*).
5. WordPiece, per word: a word longer than ``max_input_chars_per_word`` characters is one
   ``unk_token``; otherwise greedy longest-match-first against the vocabulary, pieces after
   the first carrying ``continuing_subword_prefix`` ("##"); if any rest of the word has no
   match the whole word becomes one ``unk_token``.
6. Truncation to ``max_length`` (room kept for the special tokens), then the post-processor
   template: ``prefix_ids + ids + suffix_ids`` ([CLS] A [SEP]).

Unicode tables. HF classifies characters with tables from an older Unicode release (8.0
era, through the ``unicode_categories`` crate), while Python's ``unicodedata`` follows a newer
one; the two disagree on a few hundred characters (e.g. U+1734 became Mc, U+166D became So,
U+0890 is a newer Cf). So the three character classes HF's BERT pipeline uses are written
below as code point ranges, measured against ``tokenizers`` over every code point (the
tests re-check them exhaustively). Lowercasing and NFD use Python's ``str.lower`` and
``unicodedata``. They agree with HF on every character Python's Unicode version knows, with
two exceptions in scripts no BERT vocabulary covers (such words are [UNK] either way): HF's
NFD tables are older (no decomposition for U+11938; marks added after Unicode 10 have
combining class 0, so they are not reordered), and characters newer than Python's Unicode
version may lowercase differently (HF's lowercase tables are newer).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgeq.errors import FormatError, UnsupportedError

logger = logging.getLogger(__name__)

HEADER_TYPE = "wordpiece"
HEADER_VERSION = 1

# Removed by clean_text: NUL, U+FFFD, and Cc/Cf/Co as HF's tables classify them, minus tab/LF/CR.
_CLEAN_TEXT_REMOVED = """
0000-0008 000B-000C 000E-001F 007F-009F 00AD 0600-0605 061C 06DD 070F 180E 200B-200F
202A-202E 2060-2064 2066-206F E000-F8FF FEFF FFF9-FFFB FFFD 110BD 1BCA0-1BCA3 1D173-1D17A
E0001 E0020-E007F F0000-FFFFD 100000-10FFFD
"""

# BertPreTokenizer punctuation: ASCII punctuation plus P* as HF's tables classify them.
_PUNCTUATION = """
0021-002F 003A-0040 005B-0060 007B-007E 00A1 00A7 00AB 00B6-00B7 00BB 00BF 037E 0387
055A-055F 0589-058A 05BE 05C0 05C3 05C6 05F3-05F4 0609-060A 060C-060D 061B 061E-061F
066A-066D 06D4 0700-070D 07F7-07F9 0830-083E 085E 0964-0965 0970 0AF0 0DF4 0E4F 0E5A-0E5B
0F04-0F12 0F14 0F3A-0F3D 0F85 0FD0-0FD4 0FD9-0FDA 104A-104F 10FB 1360-1368 1400 166D-166E
169B-169C 16EB-16ED 1735-1736 17D4-17D6 17D8-17DA 1800-180A 1944-1945 1A1E-1A1F 1AA0-1AA6
1AA8-1AAD 1B5A-1B60 1BFC-1BFF 1C3B-1C3F 1C7E-1C7F 1CC0-1CC7 1CD3 2010-2027 2030-2043
2045-2051 2053-205E 207D-207E 208D-208E 2308-230B 2329-232A 2768-2775 27C5-27C6 27E6-27EF
2983-2998 29D8-29DB 29FC-29FD 2CF9-2CFC 2CFE-2CFF 2D70 2E00-2E2E 2E30-2E42 3001-3003
3008-3011 3014-301F 3030 303D 30A0 30FB A4FE-A4FF A60D-A60F A673 A67E A6F2-A6F7 A874-A877
A8CE-A8CF A8F8-A8FA A8FC A92E-A92F A95F A9C1-A9CD A9DE-A9DF AA5C-AA5F AADE-AADF AAF0-AAF1
ABEB FD3E-FD3F FE10-FE19 FE30-FE52 FE54-FE61 FE63 FE68 FE6A-FE6B FF01-FF03 FF05-FF0A
FF0C-FF0F FF1A-FF1B FF1F-FF20 FF3B-FF3D FF3F FF5B FF5D FF5F-FF65 10100-10102 1039F 103D0
1056F 10857 1091F 1093F 10A50-10A58 10A7F 10AF0-10AF6 10B39-10B3F 10B99-10B9C 11047-1104D
110BB-110BC 110BE-110C1 11140-11143 11174-11175 111C5-111C9 111CD 111DB 111DD-111DF
11238-1123D 112A9 114C6 115C1-115D7 11641-11643 1173C-1173E 12470-12474 16A6E-16A6F 16AF5
16B37-16B3B 16B44 1BC9F 1DA87-1DA8B
"""

# Non-spacing marks (Mn) as HF's tables classify them: dropped by strip_accents after NFD.
_NONSPACING_MARKS = """
0300-036F 0483-0487 0591-05BD 05BF 05C1-05C2 05C4-05C5 05C7 0610-061A 064B-065F 0670
06D6-06DC 06DF-06E4 06E7-06E8 06EA-06ED 0711 0730-074A 07A6-07B0 07EB-07F3 0816-0819
081B-0823 0825-0827 0829-082D 0859-085B 08E3-0902 093A 093C 0941-0948 094D 0951-0957
0962-0963 0981 09BC 09C1-09C4 09CD 09E2-09E3 0A01-0A02 0A3C 0A41-0A42 0A47-0A48 0A4B-0A4D
0A51 0A70-0A71 0A75 0A81-0A82 0ABC 0AC1-0AC5 0AC7-0AC8 0ACD 0AE2-0AE3 0B01 0B3C 0B3F
0B41-0B44 0B4D 0B56 0B62-0B63 0B82 0BC0 0BCD 0C00 0C3E-0C40 0C46-0C48 0C4A-0C4D 0C55-0C56
0C62-0C63 0C81 0CBC 0CBF 0CC6 0CCC-0CCD 0CE2-0CE3 0D01 0D41-0D44 0D4D 0D62-0D63 0DCA
0DD2-0DD4 0DD6 0E31 0E34-0E3A 0E47-0E4E 0EB1 0EB4-0EB9 0EBB-0EBC 0EC8-0ECD 0F18-0F19 0F35
0F37 0F39 0F71-0F7E 0F80-0F84 0F86-0F87 0F8D-0F97 0F99-0FBC 0FC6 102D-1030 1032-1037
1039-103A 103D-103E 1058-1059 105E-1060 1071-1074 1082 1085-1086 108D 109D 135D-135F
1712-1714 1732-1734 1752-1753 1772-1773 17B4-17B5 17B7-17BD 17C6 17C9-17D3 17DD 180B-180D
18A9 1920-1922 1927-1928 1932 1939-193B 1A17-1A18 1A1B 1A56 1A58-1A5E 1A60 1A62 1A65-1A6C
1A73-1A7C 1A7F 1AB0-1ABD 1B00-1B03 1B34 1B36-1B3A 1B3C 1B42 1B6B-1B73 1B80-1B81 1BA2-1BA5
1BA8-1BA9 1BAB-1BAD 1BE6 1BE8-1BE9 1BED 1BEF-1BF1 1C2C-1C33 1C36-1C37 1CD0-1CD2 1CD4-1CE0
1CE2-1CE8 1CED 1CF4 1CF8-1CF9 1DC0-1DF5 1DFC-1DFF 20D0-20DC 20E1 20E5-20F0 2CEF-2CF1 2D7F
2DE0-2DFF 302A-302D 3099-309A A66F A674-A67D A69E-A69F A6F0-A6F1 A802 A806 A80B A825-A826
A8C4 A8E0-A8F1 A926-A92D A947-A951 A980-A982 A9B3 A9B6-A9B9 A9BC A9E5 AA29-AA2E AA31-AA32
AA35-AA36 AA43 AA4C AA7C AAB0 AAB2-AAB4 AAB7-AAB8 AABE-AABF AAC1 AAEC-AAED AAF6 ABE5 ABE8
ABED FB1E FE00-FE0F FE20-FE2F 101FD 102E0 10376-1037A 10A01-10A03 10A05-10A06 10A0C-10A0F
10A38-10A3A 10A3F 10AE5-10AE6 11001 11038-11046 1107F-11081 110B3-110B6 110B9-110BA
11100-11102 11127-1112B 1112D-11134 11173 11180-11181 111B6-111BE 111CA-111CC 1122F-11231
11234 11236-11237 112DF 112E3-112EA 11300-11301 1133C 11340 11366-1136C 11370-11374
114B3-114B8 114BA 114BF-114C0 114C2-114C3 115B2-115B5 115BC-115BD 115BF-115C0 115DC-115DD
11633-1163A 1163D 1163F-11640 116AB 116AD 116B0-116B5 116B7 1171D-1171F 11722-11725
11727-1172B 16AF0-16AF4 16B30-16B36 16F8F-16F92 1BC9D-1BC9E 1D167-1D169 1D17B-1D182
1D185-1D18B 1D1AA-1D1AD 1D242-1D244 1DA00-1DA36 1DA3B-1DA6C 1DA75 1DA84 1DA9B-1DA9F
1DAA1-1DAAF 1E8D0-1E8D6 E0100-E01EF
"""

# CJK ideograph blocks surrounded by spaces by handle_chinese_chars (HF's list).
_CHINESE = "3400-4DBF 4E00-9FFF F900-FAFF 20000-2A6DF 2A700-2B81F 2B920-2CEAF 2F800-2FA1F"

# Unicode White_Space: what Rust's char::is_whitespace (HF) and regex \s accept.
_WHITESPACE = "0009-000D 0020 0085 00A0 1680 2000-200A 2028-2029 202F 205F 3000"

_UNICODE_WORD_CATEGORIES = frozenset({"Mn", "Mc", "Me", "Nd", "Nl", "Pc"})
_CACHE_LIMIT = 200_000  # words; the cache is cleared when it grows past this


def _parse_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """'0041-005A 00AA' -> ((0x41, 0x5A), (0xAA, 0xAA)), sorted and non-overlapping."""
    ranges = []
    for item in text.split():
        first, _, last = item.partition("-")
        ranges.append((int(first, 16), int(last or first, 16)))
    return tuple(ranges)


class _RangeSet:
    """Membership test for a set of code points given as sorted inclusive ranges."""

    def __init__(self, text: str) -> None:
        self.ranges = _parse_ranges(text)
        self._starts = [first for first, _ in self.ranges]

    def __contains__(self, cp: int) -> bool:
        i = bisect.bisect_right(self._starts, cp) - 1
        return i >= 0 and cp <= self.ranges[i][1]

    def regex_class(self) -> str:
        """The ranges as the inside of a regex character class."""
        return "".join(
            f"\\U{first:08x}" if first == last else f"\\U{first:08x}-\\U{last:08x}"
            for first, last in self.ranges
        )


_REMOVED = _RangeSet(_CLEAN_TEXT_REMOVED)
_PUNCT = _RangeSet(_PUNCTUATION)
_MARKS = _RangeSet(_NONSPACING_MARKS)
_CJK = _RangeSet(_CHINESE)
_SPACE = _RangeSet(_WHITESPACE)

# A pre-token is one punctuation character or a run of characters that are neither.
_WORD_RE = re.compile(
    f"[{_PUNCT.regex_class()}]|[^{_PUNCT.regex_class()}{_SPACE.regex_class()}]+"
)
_LEADING_SPACE_RE = re.compile(f"[{_SPACE.regex_class()}]*")
_TRAILING_SPACE_RE = re.compile(f"[{_SPACE.regex_class()}]*\\Z")


class _CharMap(dict):
    """A ``str.translate`` table that computes each code point's replacement on first sight."""

    def __init__(self, rule: Callable[[int], str | None]) -> None:
        super().__init__()
        self._rule = rule

    def __missing__(self, cp: int) -> str | None:
        value = self._rule(cp)
        self[cp] = value
        return value


def _is_word_char(ch: str) -> bool:
    """Rust regex ``\\w``: Alphabetic, marks, Nd, Pc, joiners (Alphabetic approximated by
    letters and Nl)."""
    return ch.isalpha() or ch in "\u200c\u200d" or unicodedata.category(ch) in _UNICODE_WORD_CATEGORIES


@dataclass(frozen=True)
class NormalizerFlags:
    """BertNormalizer settings; ``strip_accents`` already resolved (HF's None -> lowercase)."""

    clean_text: bool
    handle_chinese_chars: bool
    strip_accents: bool
    lowercase: bool


class _Normalizer:
    """BertNormalizer as two per-character translate tables with NFD in between."""

    def __init__(self, flags: NormalizerFlags) -> None:
        self.flags = flags
        self._first = _CharMap(self._first_rule) if flags.clean_text or flags.handle_chinese_chars else None
        self._second = _CharMap(self._second_rule) if flags.strip_accents or flags.lowercase else None

    def _first_rule(self, cp: int) -> str | None:
        if self.flags.clean_text:
            if cp in _REMOVED:
                return None
            if cp in _SPACE:
                return " "
        if self.flags.handle_chinese_chars and cp in _CJK:
            return f" {chr(cp)} "
        return chr(cp)

    def _second_rule(self, cp: int) -> str | None:
        # strip_accents runs before lowercase, so marks produced by lowercasing stay.
        if self.flags.strip_accents and cp in _MARKS:
            return None
        return chr(cp).lower() if self.flags.lowercase else chr(cp)

    def __call__(self, text: str) -> str:
        if self._first is not None:
            text = text.translate(self._first)
        if self.flags.strip_accents:
            text = unicodedata.normalize("NFD", text)
        if self._second is not None:
            text = text.translate(self._second)
        return text


@dataclass(frozen=True)
class AddedToken:
    """A token matched verbatim in the input before the model runs (HF ``added_tokens``)."""

    id: int
    content: str
    special: bool = True
    normalized: bool = False
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


class _AddedTokenSplitter:
    """Splits text on a set of added tokens the way HF's AddedVocabulary does."""

    def __init__(self, tokens: Sequence[AddedToken], patterns: Sequence[str]) -> None:
        # Longest first: Python's alternation is leftmost-first, which then equals HF's
        # leftmost-longest. Ties (equal patterns) go to the earliest token, special ones
        # first, as in HF's pattern list; sorted() is stable.
        order = sorted(range(len(tokens)), key=lambda i: (-len(patterns[i]), not tokens[i].special))
        self._by_pattern: dict[str, AddedToken] = {}
        for i in order:
            self._by_pattern.setdefault(patterns[i], tokens[i])
        self._re = re.compile("|".join(re.escape(p) for p in self._by_pattern))

    def split(self, text: str) -> list[tuple[str, int | None]]:
        """Pieces of text in order: (piece, None) for plain text, (piece, id) for a token."""
        pieces: list[tuple[str, int | None]] = []
        done = 0
        for match in self._re.finditer(text):
            start, stop = match.span()
            token = self._by_pattern[match.group()]
            if token.single_word and (
                (start > 0 and _is_word_char(text[start - 1]))
                or (stop < len(text) and _is_word_char(text[stop]))
            ):
                continue
            if token.lstrip:
                start = max(_TRAILING_SPACE_RE.search(text, 0, start).start(), done)
            if token.rstrip:
                stop = _LEADING_SPACE_RE.match(text, stop).end()
            if done < start:
                pieces.append((text[done:start], None))
            pieces.append((text[start:stop], token.id))
            done = stop
        if done < len(text) or not pieces:
            pieces.append((text[done:], None))
        return pieces


class WordPieceTokenizer:
    """BERT WordPiece tokenizer; see the module docstring for the exact pipeline.

    Build it with :meth:`from_tokenizer_json` (HF file) or :meth:`from_header` (the compact
    dict :meth:`to_header` returns, stored in edgeq model files).
    """

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        unk_token: str,
        continuing_subword_prefix: str = "##",
        max_input_chars_per_word: int = 100,
        normalizer: NormalizerFlags | None = None,
        split_words: bool = True,
        added_tokens: Sequence[AddedToken] = (),
        prefix_ids: Sequence[int] = (),
        suffix_ids: Sequence[int] = (),
        pad_id: int | None = None,
        truncation_max_length: int | None = None,
        truncation_side: str = "right",
        decoder: tuple[str, bool] | None = ("##", True),
        source: str = "<tokenizer>",
    ) -> None:
        self._vocab_list = list(vocab)
        self._vocab = {token: i for i, token in enumerate(self._vocab_list)}
        if len(self._vocab) != len(self._vocab_list):
            raise FormatError(f"{source}: vocab: the same token appears twice")
        if unk_token not in self._vocab:
            raise FormatError(f"{source}: unk_token {unk_token!r} is not in the vocabulary")
        if not isinstance(max_input_chars_per_word, int) or max_input_chars_per_word < 0:
            raise FormatError(f"{source}: max_input_chars_per_word: expected an int >= 0")
        if truncation_side not in ("right", "left"):
            raise FormatError(f"{source}: truncation direction: expected 'right' or 'left', got {truncation_side!r}")

        self._unk_id = self._vocab[unk_token]
        self._unk_token = unk_token
        self._prefix = continuing_subword_prefix
        self._max_chars = max_input_chars_per_word
        self._longest = max((len(t) for t in self._vocab_list), default=0)
        self._flags = normalizer
        self._normalize = _Normalizer(normalizer) if normalizer is not None else None
        self._split_words = split_words
        self._added = tuple(added_tokens)
        self._decoder = decoder
        self._truncation_max_length = truncation_max_length
        self._truncation_side = truncation_side

        # id -> token: the model vocabulary, then added tokens (they win, as in HF). Like HF,
        # a normalized added token decodes to its normalized form, which also means a special
        # one whose normalized form differs from its content is not skipped by decode.
        id_to_token: dict[int, str] = dict(enumerate(self._vocab_list))
        for token in self._added:
            id_to_token[token.id] = self._normalize_text(token.content) if token.normalized else token.content
        size = len(id_to_token)
        if sorted(id_to_token) != list(range(size)):
            raise FormatError(f"{source}: added_tokens: ids must continue the vocabulary without gaps")
        self._id_to_token = [id_to_token[i] for i in range(size)]
        special_contents = {t.content for t in self._added if t.special}
        self._special_ids = frozenset(i for i, t in enumerate(self._id_to_token) if t in special_contents)

        for name, ids in (("prefix_ids", prefix_ids), ("suffix_ids", suffix_ids)):
            if any(not isinstance(i, int) or not 0 <= i < size for i in ids):
                raise FormatError(f"{source}: post_processor {name}: ids must be in [0, {size})")
        self._prefix_ids = tuple(prefix_ids)
        self._suffix_ids = tuple(suffix_ids)
        if pad_id is None:
            pad_id = self._vocab.get("[PAD]", 0)
        if not isinstance(pad_id, int) or not 0 <= pad_id < size:
            raise FormatError(f"{source}: pad_id {pad_id!r}: expected an id in [0, {size})")
        self._pad_id = pad_id

        raw = [t for t in self._added if not t.normalized and t.content]
        normalized = [t for t in self._added if t.normalized and t.content]
        self._raw_splitter = _AddedTokenSplitter(raw, [t.content for t in raw]) if raw else None
        # Normalized added tokens match their own normalized form (what HF's trie holds).
        self._normalized_splitter = (
            _AddedTokenSplitter(normalized, [self._normalize_text(t.content) for t in normalized])
            if normalized
            else None
        )
        self._cache: dict[str, tuple[int, ...]] = {}

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_tokenizer_json(cls, path_or_dict: str | os.PathLike | dict) -> WordPieceTokenizer:
        """Read a Hugging Face ``tokenizer.json`` (path, or the already-parsed dict)."""
        if isinstance(path_or_dict, dict):
            data, source = path_or_dict, "<tokenizer.json dict>"
        else:
            source = os.fspath(path_or_dict)
            try:
                with open(source, "rb") as f:
                    data = json.loads(f.read().decode("utf-8"))
            except OSError as exc:
                raise FormatError(f"{source}: cannot read tokenizer file: {exc}") from exc
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise FormatError(f"{source}: not valid UTF-8 JSON: {exc}") from exc
        return cls.from_header(_header_from_hf(data, source), source=source)

    @classmethod
    def from_header(cls, header: dict, *, source: str = "<wordpiece header>") -> WordPieceTokenizer:
        """Rebuild the tokenizer from :meth:`to_header` output."""
        h = _Fields(header, source)
        if h.get("type", str) != HEADER_TYPE:
            raise UnsupportedError(f"{source}: type: expected {HEADER_TYPE!r}, got {header.get('type')!r}")
        if h.get("version", int) != HEADER_VERSION:
            raise UnsupportedError(f"{source}: version {header.get('version')!r} (this edgeq reads {HEADER_VERSION})")
        vocab = h.get("vocab", list)
        if any(not isinstance(t, str) for t in vocab):
            raise FormatError(f"{source}: vocab: expected a list of strings")
        norm = h.get("normalizer", dict, optional=True)
        flags = None
        if norm is not None:
            nf = _Fields(norm, f"{source}: normalizer")
            flags = NormalizerFlags(**{k: nf.get(k, bool) for k in NormalizerFlags.__dataclass_fields__})
        added = []
        for i, item in enumerate(h.get("added_tokens", list)):
            af = _Fields(item, f"{source}: added_tokens[{i}]")
            added.append(
                AddedToken(
                    id=af.get("id", int),
                    content=af.get("content", str),
                    **{k: af.get(k, bool) for k in ("special", "normalized", "lstrip", "rstrip", "single_word")},
                )
            )
        trunc = h.get("truncation", dict, optional=True)
        tf = _Fields(trunc if trunc is not None else {}, f"{source}: truncation")
        dec = h.get("decoder", dict, optional=True)
        decoder = None
        if dec is not None:
            df = _Fields(dec, f"{source}: decoder")
            decoder = (df.get("prefix", str), df.get("cleanup", bool))
        return cls(
            vocab,
            unk_token=h.get("unk_token", str),
            continuing_subword_prefix=h.get("continuing_subword_prefix", str),
            max_input_chars_per_word=h.get("max_input_chars_per_word", int),
            normalizer=flags,
            split_words=h.get("split_words", bool),
            added_tokens=added,
            prefix_ids=_int_list(h.get("prefix_ids", list), f"{source}: prefix_ids"),
            suffix_ids=_int_list(h.get("suffix_ids", list), f"{source}: suffix_ids"),
            pad_id=h.get("pad_id", int),
            truncation_max_length=tf.get("max_length", int, optional=True),
            truncation_side=tf.get("direction", str, optional=True, default="right"),
            decoder=decoder,
            source=source,
        )

    def to_header(self) -> dict:
        """Everything needed to rebuild this tokenizer, as plain JSON-serializable data."""
        return {
            "type": HEADER_TYPE,
            "version": HEADER_VERSION,
            "vocab": list(self._vocab_list),
            "unk_token": self._unk_token,
            "continuing_subword_prefix": self._prefix,
            "max_input_chars_per_word": self._max_chars,
            "normalizer": asdict(self._flags) if self._flags is not None else None,
            "split_words": self._split_words,
            "added_tokens": [asdict(t) for t in self._added],
            "prefix_ids": list(self._prefix_ids),
            "suffix_ids": list(self._suffix_ids),
            "pad_id": self._pad_id,
            "truncation": (
                {"max_length": self._truncation_max_length, "direction": self._truncation_side}
                if self._truncation_max_length is not None
                else None
            ),
            "decoder": (
                {"prefix": self._decoder[0], "cleanup": self._decoder[1]} if self._decoder is not None else None
            ),
        }

    # ----------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        """Number of ids: the model vocabulary plus added tokens beyond it."""
        return len(self._id_to_token)

    @property
    def unk_id(self) -> int:
        return self._unk_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def cls_id(self) -> int | None:
        """First id the post-processor puts before the text ([CLS]), or [CLS] from the vocab."""
        return self._prefix_ids[0] if self._prefix_ids else self._vocab.get("[CLS]")

    @property
    def sep_id(self) -> int | None:
        """Last id the post-processor puts after the text ([SEP]), or [SEP] from the vocab."""
        return self._suffix_ids[-1] if self._suffix_ids else self._vocab.get("[SEP]")

    @property
    def truncation_max_length(self) -> int | None:
        """The max_length tokenizer.json asked for (callers pass it to encode if they want it)."""
        return self._truncation_max_length

    def id_to_token(self, token_id: int) -> str:
        return self._id_to_token[self._check_id(token_id)]

    def token_to_id(self, token: str) -> int | None:
        for added in self._added:
            if added.content == token:
                return added.id
        return self._vocab.get(token)

    # ----------------------------------------------------------------- encoding

    def encode(self, text: str, add_special: bool = True, max_length: int | None = None) -> list[int]:
        """Ids for one text.

        ``max_length`` (special tokens included) truncates, cutting from the side the
        tokenizer.json's truncation names (right unless it says left); None = no limit.
        """
        ids = self._encode_text(text)
        n_special = len(self._prefix_ids) + len(self._suffix_ids) if add_special else 0
        if max_length is not None:
            if not isinstance(max_length, (int, np.integer)) or max_length < n_special:
                raise ValueError(f"max_length must be an int >= {n_special} (the special tokens), got {max_length!r}")
            budget = max_length - n_special
            if len(ids) > budget:
                ids = ids[:budget] if self._truncation_side == "right" else ids[len(ids) - budget :]
        if add_special:
            return [*self._prefix_ids, *ids, *self._suffix_ids]
        return ids

    def encode_batch(self, texts: Iterable[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encode with special tokens and pad on the right to the longest in the batch.

        Returns ``(ids, attention_mask)``: int32 and uint8 arrays of shape (n, L); the mask is
        1 on real tokens and 0 on padding (``pad_id``).
        """
        rows = [self.encode(text, max_length=max_length) for text in texts]
        width = max((len(r) for r in rows), default=0)
        ids = np.full((len(rows), width), self._pad_id, dtype=np.int32)
        mask = np.zeros((len(rows), width), dtype=np.uint8)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    def _normalize_text(self, text: str) -> str:
        return self._normalize(text) if self._normalize is not None else text

    def _encode_text(self, text: str) -> list[int]:
        ids: list[int] = []
        raw_pieces = self._raw_splitter.split(text) if self._raw_splitter is not None else [(text, None)]
        for piece, token_id in raw_pieces:
            if token_id is not None:
                ids.append(token_id)
                continue
            piece = self._normalize_text(piece)
            pieces = (
                self._normalized_splitter.split(piece) if self._normalized_splitter is not None else [(piece, None)]
            )
            for sub, sub_id in pieces:
                if sub_id is not None:
                    ids.append(sub_id)
                else:
                    self._encode_words(sub, ids)
        return ids

    def _encode_words(self, text: str, out: list[int]) -> None:
        words = _WORD_RE.findall(text) if self._split_words else ([text] if text else [])
        cache = self._cache
        for word in words:
            pieces = cache.get(word)
            if pieces is None:
                pieces = self._tokenize_word(word)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[word] = pieces
            out.extend(pieces)

    def _tokenize_word(self, word: str) -> tuple[int, ...]:
        """Greedy longest-match-first; the whole word is [UNK] if any part cannot match."""
        n = len(word)
        if n > self._max_chars:
            return (self._unk_id,)
        vocab = self._vocab
        pieces = []
        start = 0
        while start < n:
            # No vocabulary entry is longer than self._longest, so longer candidates cannot match.
            end = min(n, start + self._longest)
            while end > start:
                candidate = word[start:end] if start == 0 else self._prefix + word[start:end]
                token_id = vocab.get(candidate)
                if token_id is not None:
                    pieces.append(token_id)
                    break
                end -= 1
            else:
                return (self._unk_id,)
            start = end
        return tuple(pieces)

    # ----------------------------------------------------------------- decoding

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text for ids, joined like HF's WordPiece decoder ("##" pieces glue to the left).

        Unlike HF (which skips them silently), an id outside the vocabulary raises FormatError.
        """
        tokens = []
        for token_id in ids:
            token_id = self._check_id(token_id)
            if skip_special and token_id in self._special_ids:
                continue
            tokens.append(self._id_to_token[token_id])
        if self._decoder is None:
            return " ".join(tokens)
        prefix, cleanup = self._decoder
        out = []
        for i, token in enumerate(tokens):
            if i:
                token = token[len(prefix) :] if token.startswith(prefix) else " " + token
            out.append(_cleanup(token) if cleanup else token)
        return "".join(out)

    def _check_id(self, token_id: int) -> int:
        token_id = int(token_id)
        if not 0 <= token_id < len(self._id_to_token):
            raise FormatError(f"token id {token_id} is outside the vocabulary [0, {len(self._id_to_token)})")
        return token_id


_CLEANUPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" do not", " don't"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _cleanup(token: str) -> str:
    """HF's decoder cleanup (applied per token, in this order): no space before punctuation
    and English contractions."""
    for dirty, clean in _CLEANUPS:
        token = token.replace(dirty, clean)
    return token


# --------------------------------------------------------------------- parsing helpers


class _Fields:
    """Typed access to one JSON object, with errors naming the file and the field."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        self.obj = obj
        self.where = where

    def get(self, key: str, kind: type, *, optional: bool = False, default: Any = None) -> Any:
        if key not in self.obj or self.obj[key] is None:
            if optional:
                return default
            raise FormatError(f"{self.where}: missing field {key!r}")
        value = self.obj[key]
        # bool is an int in Python; a JSON true is never a valid count or id.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise FormatError(f"{self.where}: field {key!r}: expected {kind.__name__}, got {type(value).__name__}")
        return value


def _int_list(values: list, where: str) -> list[int]:
    if any(not isinstance(v, int) or isinstance(v, bool) for v in values):
        raise FormatError(f"{where}: expected a list of ints")
    return values


def _header_from_hf(data: Any, source: str) -> dict:
    """Translate HF tokenizer.json into this module's header dict (validating as it goes)."""
    top = _Fields(data, source)
    model = _Fields(top.get("model", dict), f"{source}: model")
    if model.get("type", str) != "WordPiece":
        raise UnsupportedError(f"{source}: model.type {model.obj['type']!r}: only WordPiece is handled here")
    vocab_map = model.get("vocab", dict)
    ids = _int_list(list(vocab_map.values()), f"{source}: model.vocab ids")
    if sorted(ids) != list(range(len(ids))):
        raise FormatError(f"{source}: model.vocab: ids must be the integers 0..{len(ids) - 1}, each once")
    vocab = [""] * len(vocab_map)
    for token, token_id in vocab_map.items():
        vocab[token_id] = token

    normalizer = None
    norm = top.get("normalizer", dict, optional=True)
    if norm is not None:
        nf = _Fields(norm, f"{source}: normalizer")
        if nf.get("type", str) != "BertNormalizer":
            raise UnsupportedError(f"{source}: normalizer.type {norm['type']!r}: only BertNormalizer is handled")
        lowercase = nf.get("lowercase", bool, optional=True, default=True)
        strip = nf.get("strip_accents", bool, optional=True)
        normalizer = {
            "clean_text": nf.get("clean_text", bool, optional=True, default=True),
            "handle_chinese_chars": nf.get("handle_chinese_chars", bool, optional=True, default=True),
            "strip_accents": lowercase if strip is None else strip,
            "lowercase": lowercase,
        }

    pre = top.get("pre_tokenizer", dict, optional=True)
    if pre is not None and _Fields(pre, f"{source}: pre_tokenizer").get("type", str) != "BertPreTokenizer":
        raise UnsupportedError(f"{source}: pre_tokenizer.type {pre['type']!r}: only BertPreTokenizer is handled")

    added = []
    for i, item in enumerate(top.get("added_tokens", list, optional=True, default=[])):
        af = _Fields(item, f"{source}: added_tokens[{i}]")
        added.append(
            {
                "id": af.get("id", int),
                "content": af.get("content", str),
                "special": af.get("special", bool, optional=True, default=False),
                "normalized": af.get("normalized", bool, optional=True, default=True),
                "lstrip": af.get("lstrip", bool, optional=True, default=False),
                "rstrip": af.get("rstrip", bool, optional=True, default=False),
                "single_word": af.get("single_word", bool, optional=True, default=False),
            }
        )

    prefix_ids, suffix_ids = _post_processor_ids(top.get("post_processor", dict, optional=True), source)

    pad_id = None
    padding = top.get("padding", dict, optional=True)
    if padding is not None:
        pad_id = _Fields(padding, f"{source}: padding").get("pad_id", int, optional=True)
    if pad_id is None:
        pad_id = vocab_map.get("[PAD]", 0)

    truncation = None
    trunc = top.get("truncation", dict, optional=True)
    if trunc is not None:
        tf = _Fields(trunc, f"{source}: truncation")
        direction = tf.get("direction", str, optional=True, default="Right").lower()
        truncation = {"max_length": tf.get("max_length", int), "direction": direction}

    decoder = None
    dec = top.get("decoder", dict, optional=True)
    if dec is not None:
        df = _Fields(dec, f"{source}: decoder")
        if df.get("type", str) != "WordPiece":
            raise UnsupportedError(f"{source}: decoder.type {dec['type']!r}: only WordPiece is handled")
        decoder = {
            "prefix": df.get("prefix", str, optional=True, default="##"),
            "cleanup": df.get("cleanup", bool, optional=True, default=True),
        }

    return {
        "type": HEADER_TYPE,
        "version": HEADER_VERSION,
        "vocab": vocab,
        "unk_token": model.get("unk_token", str),
        "continuing_subword_prefix": model.get("continuing_subword_prefix", str, optional=True, default="##"),
        "max_input_chars_per_word": model.get("max_input_chars_per_word", int, optional=True, default=100),
        "normalizer": normalizer,
        "split_words": pre is not None,
        "added_tokens": added,
        "prefix_ids": prefix_ids,
        "suffix_ids": suffix_ids,
        "pad_id": pad_id,
        "truncation": truncation,
        "decoder": decoder,
    }


def _post_processor_ids(post: dict | None, source: str) -> tuple[list[int], list[int]]:
    """Ids the post-processor puts before and after a single sequence."""
    if post is None:
        return [], []
    where = f"{source}: post_processor"
    pf = _Fields(post, where)
    kind = pf.get("type", str)
    if kind == "BertProcessing":
        ids = []
        for key in ("cls", "sep"):
            pair = pf.get(key, list)
            if len(pair) != 2 or not isinstance(pair[1], int) or isinstance(pair[1], bool):
                raise FormatError(f"{where}.{key}: expected [token, id]")
            ids.append(pair[1])
        return [ids[0]], [ids[1]]
    if kind != "TemplateProcessing":
        raise UnsupportedError(f"{where}.type {kind!r}: only TemplateProcessing and BertProcessing are handled")
    specials = pf.get("special_tokens", dict)
    before: list[int] = []
    after: list[int] = []
    seen_sequence = False
    for i, item in enumerate(pf.get("single", list)):
        itf = _Fields(item, f"{where}.single[{i}]")
        if "Sequence" in item:
            if seen_sequence:
                raise FormatError(f"{where}.single: more than one Sequence in the single template")
            seen_sequence = True
            continue
        name = _Fields(itf.get("SpecialToken", dict), f"{where}.single[{i}].SpecialToken").get("id", str)
        if name not in specials:
            raise FormatError(f"{where}.single[{i}]: special token {name!r} missing from special_tokens")
        ids = _int_list(_Fields(specials[name], f"{where}.special_tokens[{name!r}]").get("ids", list), where)
        (after if seen_sequence else before).extend(ids)
    if not seen_sequence:
        raise FormatError(f"{where}.single: the template has no Sequence")
    return before, after
