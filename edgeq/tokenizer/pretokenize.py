"""Pre-tokenizers of byte-level BPE vocabularies, as llama.cpp runs them.

Before BPE merges, text is cut into words ("pre-tokens") by regular expressions. GGUF names
the rule set in ``tokenizer.ggml.pre``; the regexes below are the ones llama.cpp
(``src/llama-vocab.cpp``) runs for each name, and BPE never merges across a cut.

| style       | regexes applied in turn (each later one splits the pieces of the former)      |
|-------------|-------------------------------------------------------------------------------|
| ``gpt2``    | GPT2 = ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`` |
| ``smollm``  | ``\\p{N}`` (every digit alone), then GPT2                                        |
| ``llama3``  | ``(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`` |
| ``qwen2``   | as ``llama3`` with ``\\p{N}`` instead of ``\\p{N}{1,3}``                         |

Splitting rules shared by all: a piece is never empty, the pieces concatenate to the input,
text a regex does not match stays as pieces of its own, and a lookahead such as ``(?!\\S)``
sees the end of the current piece as the end of text (so in ``smollm`` the space before a
digit is a piece by itself: ``"a 1"`` -> ``"a"``, ``" "``, ``"1"``).

Character classes, exactly as llama.cpp defines them (``unicode.cpp``, ``unicode-data.cpp``):

- ``\\p{L}``: general category L* (Lu, Ll, Lt, Lm, Lo); ``\\p{N}``: category N* (Nd, Nl, No);
- ``\\s``: the 25 code points with the Unicode White_Space property (U+0009-U+000D, U+0020,
  U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000); note that
  U+001C-U+001F, which Python's ``str.isspace`` accepts, are not white space here;
- the case-insensitive contractions of ``llama3``/``qwen2`` match ASCII letters only (llama.cpp
  rewrote ``(?i:'s|...)`` of the Hugging Face file that way, so ``"'ſ"`` is not a contraction).

Categories come from this Python's ``unicodedata`` (its ``unidata_version``); llama.cpp ships
its own table, so code points assigned in a newer Unicode version may differ.

The regexes run on Python's ``re`` with the classes spelled out as code point ranges, which
gives the same leftmost-first alternation semantics as the regex engines of llama.cpp and
Hugging Face tokenizers.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeq.errors import UnsupportedError

WHITESPACE_CODEPOINTS: tuple[int, ...] = (
    *range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
)


#: \p{L} and \p{N} as code point ranges for one Unicode version (written by category_ranges)
CLASS_TABLE = Path(__file__).with_name("unicode_classes.json")


def category_ranges() -> dict[str, object]:
    """Inclusive code point ranges of the letters (L*) and numbers (N*) of this Python's
    unicodedata: a scan of every code point (about 0.3 s)."""
    ranges: dict[str, list[list[int]]] = {"L": [], "N": []}
    category = unicodedata.category
    for code in range(sys.maxunicode + 1):
        runs = ranges.get(category(chr(code))[0])
        if runs is None:
            continue
        if runs and runs[-1][1] == code - 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return {"unidata_version": unicodedata.unidata_version, **ranges}


def _shipped_ranges() -> dict[str, object] | None:
    """The packaged table, if it was made from this Python's Unicode version."""
    try:
        table = json.loads(CLASS_TABLE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return table if table.get("unidata_version") == unicodedata.unidata_version else None


def _class_body(ranges) -> str:
    """Regex character-class body (no brackets) for inclusive code point ranges."""
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


@functools.cache
def _classes() -> tuple[str, str, str]:
    """Class bodies for \\p{L}, \\p{N} and \\s (from the packaged table when it matches)."""
    table = _shipped_ranges() or category_ranges()
    spaces = [[code, code] for code in WHITESPACE_CODEPOINTS]
    return _class_body(table["L"]), _class_body(table["N"]), _class_body(spaces)


def _compile(template: str) -> re.Pattern[str]:
    letter, number, space = _classes()
    return re.compile(template.format(L=letter, N=number, S=space))


# {L}, {N}, {S} are class bodies: "[{L}]" is \p{L}, "[^{S}]" is \S.
_GPT2 = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"
)
_LLAMA3_FAMILY = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n{L}{N}]?[{L}]+|[{N}]DIGITS"
    r"| ?[^{S}{L}{N}]+[\r\n]*|[{S}]*[\r\n]+|[{S}]+(?![^{S}])|[{S}]+"
)


@functools.cache
def _pattern(name: str) -> re.Pattern[str]:
    templates = {
        "gpt2": _GPT2,
        "digit": "([{N}])",  # captured, so re.split keeps the digits
        "llama3": _LLAMA3_FAMILY.replace("DIGITS", "{{1,3}}"),
        "qwen2": _LLAMA3_FAMILY.replace("DIGITS", ""),
    }
    return _compile(templates[name])


def _find_pieces(pattern: re.Pattern[str], text: str) -> list[str]:
    # Every code point is a letter, a number, white space or "other", and each of these
    # starts a match of every regex here, so the matches tile the text without gaps.
    return pattern.findall(text)


def split_gpt2(text: str) -> list[str]:
    """GPT-2 pre-tokenizer (``tokenizer.ggml.pre`` = ``gpt-2``)."""
    return _find_pieces(_pattern("gpt2"), text)


def split_smollm(text: str) -> list[str]:
    """Each \\p{N} code point alone, then GPT-2 on the text between (SmolLM, StarCoder)."""
    gpt2 = _pattern("gpt2")
    pieces: list[str] = []
    for part in _pattern("digit").split(text):
        if part:
            pieces.extend(_find_pieces(gpt2, part))
    return pieces


def split_llama3(text: str) -> list[str]:
    """Llama 3 pre-tokenizer: numbers in groups of at most three digits."""
    return _find_pieces(_pattern("llama3"), text)


def split_qwen2(text: str) -> list[str]:
    """Qwen2 pre-tokenizer: as Llama 3 but every digit alone."""
    return _find_pieces(_pattern("qwen2"), text)


@dataclass(frozen=True)
class PreTokenizer:
    """A ``tokenizer.ggml.pre`` name resolved to llama.cpp's behaviour for it.

    ``ignore_merges``: a pre-token that is itself in the vocabulary becomes that token without
    running merges. ``add_bos``: llama.cpp's default when the file has no
    ``tokenizer.ggml.add_bos_token``.
    """

    name: str
    style: str
    split: Callable[[str], list[str]]
    ignore_merges: bool = False
    add_bos: bool = False


_STYLES: dict[str, Callable[[str], list[str]]] = {
    "gpt2": split_gpt2,
    "smollm": split_smollm,
    "llama3": split_llama3,
    "qwen2": split_qwen2,
}

# tokenizer.ggml.pre value -> (style, ignore_merges, add_bos), from llama.cpp's llama_vocab::load.
# Names whose only llama.cpp difference is clean_spaces (a detokenizer option edgeq does not
# apply) share a row with their style. "gpt2" is accepted as a spelling of llama.cpp's "gpt-2".
_NAMES: dict[str, tuple[str, bool, bool]] = {
    "gpt2": ("gpt2", False, False),
    "gpt-2": ("gpt2", False, False),
    "phi-2": ("gpt2", False, False),
    "roberta-bpe": ("gpt2", False, False),
    "gigachat": ("gpt2", False, False),
    "jina-es": ("gpt2", False, False),
    "jina-de": ("gpt2", False, False),
    "jina-v1-en": ("gpt2", False, False),
    "mpt": ("gpt2", False, False),
    "olmo": ("gpt2", False, False),
    "jais": ("gpt2", False, False),
    "smollm": ("smollm", False, False),
    "starcoder": ("smollm", False, False),
    "refact": ("smollm", False, False),
    "command-r": ("smollm", False, False),
    "codeshell": ("smollm", False, False),
    "exaone": ("smollm", False, False),
    "minerva-7b": ("smollm", False, False),
    "llama-bpe": ("llama3", True, True),
    "llama3": ("llama3", True, True),
    "llama-v3": ("llama3", True, True),
    "falcon3": ("llama3", True, True),
    "dbrx": ("llama3", False, False),
    "smaug-bpe": ("llama3", False, False),
    "qwen2": ("qwen2", False, False),
    "stablelm2": ("qwen2", False, False),
    "megrez": ("qwen2", False, False),
}

SUPPORTED_NAMES: tuple[str, ...] = tuple(sorted(_NAMES))


def get_pretokenizer(name: object) -> PreTokenizer:
    """Resolve a ``tokenizer.ggml.pre`` value; unknown names (and ``default``) are unsupported."""
    if not isinstance(name, str) or name not in _NAMES:
        raise UnsupportedError(
            f"tokenizer.ggml.pre {name!r} is not a supported byte-level BPE pre-tokenizer; "
            f"supported: {', '.join(SUPPORTED_NAMES)}"
        )
    style, ignore_merges, add_bos = _NAMES[name]
    return PreTokenizer(name=name, style=style, split=_STYLES[style], ignore_merges=ignore_merges, add_bos=add_bos)
