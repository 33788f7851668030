"""Byte-level BPE tokenizer (GPT-2 style) that gives the same ids as llama.cpp.

Encoding ``text`` (llama.cpp ``llama_tokenize``):

1. Special tokens written in the text are cut out first. The candidates are the tokens of
   type CONTROL, UNKNOWN and USER_DEFINED, longest UTF-8 text first (ties: lower id first);
   each one splits every remaining text fragment at all its non-overlapping occurrences, left
   to right. With ``parse_special=False`` only USER_DEFINED tokens are cut out.
2. Each remaining fragment is cut into pre-tokens by the pre-tokenizer named in
   ``tokenizer.ggml.pre`` (:mod:`edgeq.tokenizer.pretokenize`).
3. Each pre-token is UTF-8 encoded (lone surrogates pass through as their 3-byte form) and
   written one symbol per byte (:mod:`edgeq.tokenizer.bytes_unicode`). If the pre-tokenizer
   ignores merges and the whole word is a token, that token is the result. Otherwise, while
   some adjacent pair of symbols is in the merge list, the pair with the lowest rank (its index
   in ``tokenizer.ggml.merges``; on a tie the leftmost pair) is joined into one symbol.
4. Each final symbol becomes the token with that text. A symbol that is not a token becomes
   the single-byte tokens of its ASCII bytes and loses the others, as llama.cpp does. This
   happens when the vocabulary lacks a byte symbol: SmolLM2 has none for bytes 0x04, 0x06,
   0x13, 0x14, 0x16, 0x1D, 0xF1 and 0xF2 (nor for the bytes UTF-8 never uses), so those
   control characters and the UTF-8 bytes of U+40000-U+BFFFF are dropped.
5. BOS is prepended if ``add_bos`` and EOS appended if ``add_eos`` (``add_special``).

Token types (``tokenizer.ggml.token_type``): 1 normal, 2 unknown, 3 control, 4 user-defined,
5 unused, 6 byte; 0 (undefined) is accepted. Like llama.cpp, tokens whose text names an
end-of-turn or fill-in-the-middle marker (``<|im_end|>``, ``<|endoftext|>``...) are treated
as control tokens even when the file says otherwise.

Decoding (llama.cpp ``llama_token_to_piece``): a normal token gives the bytes its symbols stand
for; control and unknown tokens give their text (or nothing when special tokens are skipped);
user-defined tokens give their text as UTF-8; unused, byte and undefined tokens give nothing.
Unlike llama.cpp's ``detokenize``, no "clean up tokenization spaces" pass is applied, so
``decode(encode(text)) == text`` whenever every UTF-8 byte of ``text`` has a token (step 4)
and ``text`` has no lone surrogates.

End of generation (llama.cpp's ``special_eog_ids``): EOS, EOT and EOM; every token whose text
is in :data:`EOG_TEXTS`; and the FIM pad, repo and file-separator tokens (from metadata, or
found by the texts in :data:`SPECIAL_TEXTS`). llama.cpp's model-specific exceptions for
gpt-oss, solar-open, gemma4 and paddleocr vocabularies are not reproduced.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from edgeq.errors import FormatError, UnsupportedError
from edgeq.tokenizer.bytes_unicode import BYTE_TO_CHAR, bytes_to_symbols, symbols_to_bytes
from edgeq.tokenizer.merge_table import MergeTable
from edgeq.tokenizer.pretokenize import get_pretokenizer
from edgeq.tokenizer.string_table import StringTable

logger = logging.getLogger(__name__)

TOKEN_UNDEFINED = 0
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# Role of a special id -> its GGUF metadata key (note the key's historical "seperator").
SPECIAL_ID_KEYS: dict[str, str] = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "fim_pre": "tokenizer.ggml.fim_pre_token_id",
    "fim_suf": "tokenizer.ggml.fim_suf_token_id",
    "fim_mid": "tokenizer.ggml.fim_mid_token_id",
    "fim_pad": "tokenizer.ggml.fim_pad_token_id",
    "fim_rep": "tokenizer.ggml.fim_rep_token_id",
    "fim_sep": "tokenizer.ggml.fim_sep_token_id",
}
# Older files name three FIM ids differently; llama.cpp reads both (the new name wins).
_DEPRECATED_ID_KEYS = {
    "fim_pre": "tokenizer.ggml.prefix_token_id",
    "fim_suf": "tokenizer.ggml.suffix_token_id",
    "fim_mid": "tokenizer.ggml.middle_token_id",
}

# Texts by which llama.cpp finds a role that the metadata does not give (lowest id wins here).
SPECIAL_TEXTS: dict[str, tuple[str, ...]] = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
            "<EOT>", "_<EOT>", "[EOT]", "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}

# Token texts that end generation (llama.cpp's list).
EOG_TEXTS: frozenset[str] = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
})

_HEADER_KIND = "bpe"
_WORD_CACHE_LIMIT = 1 << 17  # pre-token cache entries kept before the cache is cleared
MERGE_CHUNK = 4096  # merges split into strings at a time while building


class BPETokenizer:
    """Byte-level BPE tokenizer matching llama.cpp (see the module docstring for the rules).

    Build one with :meth:`from_gguf_fields`, :meth:`from_tokenizer_json` or
    :meth:`from_header`; the constructor takes the already-parsed parts.

    Memory: token texts live in a :class:`~edgeq.tokenizer.string_table.StringTable` and
    merges in a :class:`~edgeq.tokenizer.merge_table.MergeTable` (flat buffers, about 2.5 MiB
    for SmolLM2's 49k tokens and merges); the arguments' strings are not kept.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        merges: Sequence[str],
        token_types: Sequence[int] | None,
        pre: str,
        *,
        special_ids: Mapping[str, int] | None = None,
        add_bos: bool | None = None,
        add_eos: bool = False,
        chat_template: str | None = None,
        source: str = "tokenizer",
    ) -> None:
        self._pre = get_pretokenizer(pre)
        texts = _check_tokens(tokens, source)
        n_vocab = len(texts)
        self._types = bytes(_check_types(token_types, n_vocab, source))
        self._tokens = StringTable(texts)
        if self._tokens.has_duplicates():
            raise FormatError(f"{source}: tokenizer.ggml.tokens holds duplicate token texts")
        self._merges = MergeTable(self._tokens, texts, _merge_halves(merges, source), BYTE_TO_CHAR)
        del texts
        # ASCII byte -> the token whose text is that character (step 4 of the module docstring)
        self._ascii_ids = tuple(i if i >= 0 else None for i in
                                self._tokens.find_many([chr(byte) for byte in range(0x80)]).tolist())

        self._special_ids = _check_special_ids(special_ids or {}, n_vocab, source)
        self._add_bos = self._pre.add_bos if add_bos is None else bool(add_bos)
        self._add_eos = bool(add_eos)
        if self._add_bos and "bos" not in self._special_ids:
            raise FormatError(f"{source}: add_bos_token is set but there is no valid bos_token_id")
        if self._add_eos and "eos" not in self._special_ids:
            raise FormatError(f"{source}: add_eos_token is set but there is no valid eos_token_id")
        if chat_template is not None and not isinstance(chat_template, str):
            raise FormatError(f"{source}: tokenizer.chat_template must be a string")
        self.chat_template = chat_template

        self._attrs = bytearray(self._types)  # types as llama.cpp uses them (overrides below)
        self._roles = self._find_roles()
        self._eog_ids = self._find_eog()
        kinds = (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED)
        special = np.flatnonzero(np.isin(np.frombuffer(self._attrs, dtype=np.uint8), kinds)).tolist()
        specials = sorted(special, key=lambda i: (-self._tokens.nbytes(i), i))
        self._specials = [(i, self._tokens[i]) for i in specials]  # (id, text) in cutting order
        self._pieces: dict[int, bytes] = {}  # filled as tokens are decoded: building all costs ~0.1 s
        self._word_cache: dict[str, tuple[int, ...]] = {}

    # ----------------------------------------------------------------- constructors

    @classmethod
    def from_gguf_fields(cls, fields: Mapping[str, object], source: str = "GGUF metadata") -> BPETokenizer:
        """Build from GGUF metadata given as a plain dict of key -> Python value.

        Needs ``tokenizer.ggml.model`` = ``gpt2``, ``tokenizer.ggml.tokens``,
        ``tokenizer.ggml.merges`` and ``tokenizer.ggml.pre``; reads ``token_type``, the special
        ids (:data:`SPECIAL_ID_KEYS`), ``add_bos_token``, ``add_eos_token`` and
        ``tokenizer.chat_template`` when present.
        """
        model = fields.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise UnsupportedError(
                f"{source}: tokenizer.ggml.model is {model!r}; the byte-level BPE tokenizer needs 'gpt2'"
            )
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in fields:
                raise FormatError(f"{source}: missing {key}")
        if "tokenizer.ggml.pre" not in fields:
            raise UnsupportedError(f"{source}: tokenizer.ggml.pre is missing; the pre-tokenizer is unknown")
        special_ids = {}
        for role, key in SPECIAL_ID_KEYS.items():
            value = fields.get(key, fields.get(_DEPRECATED_ID_KEYS.get(role, ""), None))
            if value is not None:
                special_ids[role] = value
        add_bos = fields.get("tokenizer.ggml.add_bos_token")
        add_eos = fields.get("tokenizer.ggml.add_eos_token", False)
        for key, flag in (("tokenizer.ggml.add_bos_token", add_bos), ("tokenizer.ggml.add_eos_token", add_eos)):
            if flag is not None and not isinstance(flag, bool):
                raise FormatError(f"{source}: {key} must be a bool, got {type(flag).__name__}")
        return cls(
            tokens=_as_list(fields["tokenizer.ggml.tokens"], "tokenizer.ggml.tokens", source),
            merges=_as_list(fields["tokenizer.ggml.merges"], "tokenizer.ggml.merges", source),
            token_types=(
                _as_list(fields["tokenizer.ggml.token_type"], "tokenizer.ggml.token_type", source)
                if "tokenizer.ggml.token_type" in fields else None
            ),
            pre=fields["tokenizer.ggml.pre"],  # type: ignore[arg-type]  # checked by get_pretokenizer
            special_ids=special_ids,
            add_bos=add_bos,
            add_eos=add_eos,
            chat_template=fields.get("tokenizer.chat_template"),  # type: ignore[arg-type]
            source=source,
        )

    @classmethod
    def from_tokenizer_json(
        cls,
        source: str | os.PathLike[str] | Mapping[str, object],
        tokenizer_config: Mapping[str, object] | None = None,
    ) -> BPETokenizer:
        """Build from a Hugging Face ``tokenizer.json`` (a path or the parsed dict).

        The file must hold a byte-level BPE model whose pre-tokenizer is one of those of
        :mod:`edgeq.tokenizer.pretokenize` (see :func:`pre_name_from_hf`). Added tokens become
        control tokens when ``special`` is set, user-defined tokens otherwise; ids missing
        from the vocabulary become unused ``[PAD<id>]`` tokens, as llama.cpp's converter
        writes them. ``tokenizer_config`` (the parsed ``tokenizer_config.json``; read from
        beside the file when a path is given and it exists) supplies ``bos_token``,
        ``eos_token``, ``unk_token``, ``pad_token``, ``add_bos_token``, ``add_eos_token`` and
        ``chat_template``.
        """
        name = "tokenizer.json"
        if isinstance(source, Mapping):
            data: object = source
        else:
            path = Path(source)
            name = str(path)
            data = _read_json(path)
            config_path = path.with_name("tokenizer_config.json")
            if tokenizer_config is None and config_path.is_file():
                tokenizer_config = _read_json(config_path)  # type: ignore[assignment]
        if not isinstance(data, Mapping):
            raise FormatError(f"{name}: expected a JSON object at the top level")
        config = tokenizer_config or {}
        if not isinstance(config, Mapping):
            raise FormatError("tokenizer_config: expected a JSON object")
        return cls(**_parse_tokenizer_json(data, config, name), source=name)

    @classmethod
    def from_header(cls, header: Mapping[str, object]) -> BPETokenizer:
        """Inverse of :meth:`to_header`."""
        source = "tokenizer header"
        if not isinstance(header, Mapping):
            raise FormatError(f"{source}: expected a dict")
        if header.get("kind") != _HEADER_KIND:
            raise FormatError(f"{source}: field 'kind' must be {_HEADER_KIND!r}, got {header.get('kind')!r}")
        for key in ("tokens", "merges", "token_types", "pre", "special_ids", "add_bos", "add_eos"):
            if key not in header:
                raise FormatError(f"{source}: missing field {key!r}")
        if not isinstance(header["special_ids"], Mapping):
            raise FormatError(f"{source}: field 'special_ids' must be a dict")
        for key in ("add_bos", "add_eos"):
            if not isinstance(header[key], bool):
                raise FormatError(f"{source}: field {key!r} must be a bool")
        return cls(
            tokens=_as_list(header["tokens"], "tokens", source),
            merges=_as_list(header["merges"], "merges", source),
            token_types=_as_list(header["token_types"], "token_types", source),
            pre=header["pre"],  # type: ignore[arg-type]
            special_ids=header["special_ids"],  # type: ignore[arg-type]
            add_bos=header["add_bos"],  # type: ignore[arg-type]
            add_eos=header["add_eos"],  # type: ignore[arg-type]
            chat_template=header.get("chat_template"),  # type: ignore[arg-type]
            source=source,
        )

    def to_header(self) -> dict[str, object]:
        """JSON-serializable description that :meth:`from_header` turns back into this tokenizer.

        Fields: ``kind`` ("bpe"), ``pre``, ``tokens``, ``merges`` ("a b" strings),
        ``token_types`` (as read, before llama.cpp's overrides), ``special_ids`` (role -> id,
        metadata roles only), ``add_bos``, ``add_eos``, ``chat_template`` (string or null).
        """
        return {
            "kind": _HEADER_KIND,
            "pre": self._pre.name,
            "tokens": list(self._tokens),
            "merges": [f"{self._symbol_text(a)} {self._symbol_text(b)}"
                       for a, b in zip(self._merges.left, self._merges.right)],
            "token_types": list(self._types),
            "special_ids": dict(self._special_ids),
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            "chat_template": self.chat_template,
        }

    # ----------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def pre(self) -> str:
        """The ``tokenizer.ggml.pre`` name."""
        return self._pre.name

    @property
    def tokens(self) -> Sequence[str]:
        """Token texts as stored (byte-level symbols for normal tokens); a read-only sequence
        that decodes each text when indexed."""
        return self._tokens

    @property
    def add_bos(self) -> bool:
        """Whether ``encode`` prepends BOS (metadata, else the pre-tokenizer's llama.cpp default)."""
        return self._add_bos

    @property
    def add_eos(self) -> bool:
        return self._add_eos

    @property
    def bos_id(self) -> int | None:
        return self._roles.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self._roles.get("eos")

    @property
    def eot_id(self) -> int | None:
        """End-of-turn token: metadata ``eot_token_id``, else found by text (see module doc)."""
        return self._roles.get("eot")

    @property
    def unk_id(self) -> int | None:
        return self._roles.get("unk")

    @property
    def pad_id(self) -> int | None:
        return self._roles.get("pad")

    @property
    def special_ids(self) -> dict[str, int]:
        """Every role with an id, from metadata or found by text (bos, eos, eot, fim_rep...)."""
        return dict(self._roles)

    @property
    def eog_ids(self) -> frozenset[int]:
        """Tokens that end generation (llama.cpp's rule, see the module docstring)."""
        return self._eog_ids

    def is_eog(self, token_id: int) -> bool:
        return token_id in self._eog_ids

    def token_type(self, token_id: int) -> int:
        """Token type as llama.cpp uses it (after the control-token overrides)."""
        self._check_id(token_id)
        return self._attrs[token_id]

    # ----------------------------------------------------------------- encode

    def encode(self, text: str, add_special: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``.

        ``add_special``: None or True adds BOS/EOS as the model's ``add_bos``/``add_eos`` say
        (llama.cpp ``add_special=true``); False adds neither. ``parse_special``: special and
        control token texts in ``text`` become those tokens (llama.cpp ``parse_special``);
        user-defined tokens are always matched.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() needs a str, got {type(text).__name__}")
        ids: list[int] = []
        with_special = add_special is not False
        if with_special and self.add_bos:
            ids.append(self._roles["bos"])
        for fragment in self._partition(text, parse_special):
            if isinstance(fragment, int):
                ids.append(fragment)
            else:
                self._encode_fragment(fragment, ids)
        if with_special and self.add_eos:
            ids.append(self._roles["eos"])
        return ids

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special-token texts out of ``text`` (step 1 of the module docstring)."""
        fragments: list[str | int] = [text] if text else []
        for token_id, marker in self._specials:
            if not parse_special and self._attrs[token_id] != TOKEN_USER_DEFINED:
                continue
            if not any(isinstance(f, str) and marker in f for f in fragments):
                continue
            cut: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or marker not in fragment:
                    cut.append(fragment)
                    continue
                parts = fragment.split(marker)
                for k, part in enumerate(parts):
                    if k:
                        cut.append(token_id)
                    if part:
                        cut.append(part)
            fragments = cut
        return fragments

    def _encode_fragment(self, fragment: str, ids: list[int]) -> None:
        cache = self._word_cache
        for word in self._pre.split(fragment):
            word_ids = cache.get(word)
            if word_ids is None:
                if len(cache) >= _WORD_CACHE_LIMIT:
                    cache.clear()
                word_ids = cache[word] = self._encode_word(word)
            ids.extend(word_ids)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        """Steps 3 and 4 of the module docstring for one pre-token."""
        data = word.encode("utf-8", "surrogatepass")
        if self._pre.ignore_merges:
            whole = self._tokens.find(bytes_to_symbols(data))
            if whole is not None:
                return (whole,)
        merges = self._merges
        byte_symbols = merges.byte_symbols
        ids = []
        for symbol in merges.merge([byte_symbols[byte] for byte in data]):
            if symbol < merges.n_vocab:
                ids.append(symbol)
                continue
            for byte in self._symbol_text(symbol).encode("utf-8"):
                byte_id = self._ascii_ids[byte] if byte < 0x80 else None
                if byte_id is not None:
                    ids.append(byte_id)
        return tuple(ids)

    def _symbol_text(self, symbol: int) -> str:
        return self._merges.text(symbol, self._tokens)

    # ----------------------------------------------------------------- decode

    def decode_piece(self, token_id: int, special: bool = True) -> bytes:
        """Bytes of one token (llama.cpp ``token_to_piece``); may end inside a UTF-8 character.

        With ``special=False`` control and unknown tokens give ``b""``.
        """
        self._check_id(token_id)
        if not special and self._attrs[token_id] in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            return b""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self._piece(token_id)
        return piece

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids``: their bytes joined, then UTF-8 decoded with replacement characters."""
        return b"".join(self.decode_piece(i, not skip_special) for i in ids).decode("utf-8", "replace")

    def _piece(self, token_id: int) -> bytes:
        kind = self._attrs[token_id]
        text = self._tokens[token_id]
        if kind == TOKEN_NORMAL:
            return symbols_to_bytes(text)
        if kind in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
            return text.encode("utf-8", "surrogatepass")
        return b""

    def _check_id(self, token_id: int) -> None:
        if not isinstance(token_id, numbers.Integral) or not 0 <= token_id < len(self._tokens):
            raise FormatError(f"token id {token_id!r} is outside the vocabulary [0, {len(self._tokens)})")

    # ----------------------------------------------------------------- special roles

    def _find_roles(self) -> dict[str, int]:
        """Metadata ids plus roles found by token text; marks text-found tokens as control."""
        roles = dict(self._special_ids)
        for role, texts in SPECIAL_TEXTS.items():
            if role in roles:
                continue
            found = [i for i in map(self._tokens.find, texts) if i is not None]
            if found:
                roles[role] = min(found)
                self._make_control(roles[role])
        return roles

    def _find_eog(self) -> frozenset[int]:
        eog = {self._roles[r] for r in ("fim_pad", "fim_rep", "fim_sep") if r in self._roles}
        for text in EOG_TEXTS:
            token_id = self._tokens.find(text)
            if token_id is not None:
                eog.add(token_id)
                self._make_control(token_id)
        eog.update(self._roles[r] for r in ("eos", "eot", "eom") if r in self._roles)
        return frozenset(eog)

    def _make_control(self, token_id: int) -> None:
        if self._attrs[token_id] != TOKEN_CONTROL:
            logger.warning(
                "token %d %r looks like a control token but has type %d; treating it as control",
                token_id, self._tokens[token_id], self._attrs[token_id],
            )
            self._attrs[token_id] = TOKEN_CONTROL


# --------------------------------------------------------------------- validation helpers


def _as_list(value: object, field: str, source: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise FormatError(f"{source}: {field} must be an array, got {type(value).__name__}")
    return list(value)


def _check_tokens(tokens: Sequence[object], source: str) -> tuple[str, ...]:
    if not tokens:
        raise FormatError(f"{source}: tokenizer.ggml.tokens is empty")
    checked = []
    for i, text in enumerate(tokens):
        if not isinstance(text, str):
            raise FormatError(f"{source}: tokenizer.ggml.tokens[{i}] must be a string, got {type(text).__name__}")
        # llama.cpp renames empty tokens the same way, so that every text stays unique.
        checked.append(text if text else f"[EMPTY_{i}]")
    return tuple(checked)


def _check_types(types: Sequence[object] | None, n_vocab: int, source: str) -> tuple[int, ...]:
    if types is None:
        return (TOKEN_NORMAL,) * n_vocab
    if len(types) != n_vocab:
        raise FormatError(
            f"{source}: tokenizer.ggml.token_type has {len(types)} entries, expected one per token ({n_vocab})"
        )
    if all(type(kind) is int for kind in types) and 0 <= min(types) and max(types) <= TOKEN_BYTE:
        return tuple(types)  # the common case, checked at once
    checked = []
    for i, kind in enumerate(types):
        if isinstance(kind, bool) or not isinstance(kind, numbers.Integral) or not 0 <= kind <= TOKEN_BYTE:
            raise FormatError(f"{source}: tokenizer.ggml.token_type[{i}] = {kind!r}, expected an int in 0..6")
        checked.append(int(kind))
    return tuple(checked)


def _merge_halves(merges: Sequence[object], source: str) -> Iterator[tuple[list[str], list[str]]]:
    """The two symbols of each merge "a b", split as llama.cpp does: at the first space after
    the first character (so a symbol may itself start with a space); in chunks of
    MERGE_CHUNK merges, so that few of these short strings exist at a time."""
    for start in range(0, len(merges), MERGE_CHUNK):
        chunk = merges[start:start + MERGE_CHUNK]
        try:
            cuts = [merge.find(" ", 1) for merge in chunk]  # type: ignore[union-attr]
        except (AttributeError, TypeError):  # not a str: found below
            cuts = []
        if len(cuts) != len(chunk) or min(cuts, default=0) < 0:
            for i, merge in enumerate(chunk, start):
                if not isinstance(merge, str):
                    raise FormatError(f"{source}: tokenizer.ggml.merges[{i}] must be a string, got {type(merge).__name__}")
                if merge.find(" ", 1) < 0:
                    raise FormatError(f"{source}: tokenizer.ggml.merges[{i}] = {merge!r} is not two symbols 'a b'")
        yield ([merge[:cut] for merge, cut in zip(chunk, cuts)],  # type: ignore[index]
               [merge[cut + 1:] for merge, cut in zip(chunk, cuts)])  # type: ignore[index]


def _check_special_ids(special_ids: Mapping[str, object], n_vocab: int, source: str) -> dict[str, int]:
    checked = {}
    for role, value in special_ids.items():
        if role not in SPECIAL_ID_KEYS:
            raise FormatError(f"{source}: unknown special token role {role!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise FormatError(f"{source}: {SPECIAL_ID_KEYS[role]} must be an int, got {type(value).__name__}")
        if not 0 <= value < n_vocab:
            # llama.cpp warns and ignores such ids; some published files have them.
            logger.warning("%s: %s = %d is outside the vocabulary; ignored", source, SPECIAL_ID_KEYS[role], value)
            continue
        checked[role] = int(value)
    return checked


def _read_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise FormatError(f"{path}: cannot read: {err}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"{path}: not valid JSON: {err}") from err


# --------------------------------------------------------------------- Hugging Face tokenizer.json

# Split regexes of Hugging Face tokenizer.json files -> tokenizer.ggml.pre name. Both the
# original (?i:...) spelling and llama.cpp's ASCII rewrite are accepted.
_HF_SPLIT_REGEXES: dict[str, str] = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "llama-bpe",
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "llama-bpe",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "qwen2",
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "qwen2",
}


def _is_byte_level(step: object, use_regex: bool) -> bool:
    return (
        isinstance(step, Mapping)
        and step.get("type") == "ByteLevel"
        and not step.get("add_prefix_space", False)
        and bool(step.get("use_regex", True)) == use_regex
    )


def pre_name_from_hf(pre_tokenizer: object) -> str:
    """The ``tokenizer.ggml.pre`` name for a tokenizer.json ``pre_tokenizer`` object.

    | tokenizer.json pre_tokenizer                                             | name        |
    |--------------------------------------------------------------------------|-------------|
    | ByteLevel(add_prefix_space=false, use_regex=true)                        | ``gpt2``    |
    | Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]      | ``smollm``  |
    | Sequence[Split(llama 3 regex, Isolated), ByteLevel(use_regex=false)]     | ``llama-bpe`` |
    | Sequence[Split(qwen2 regex, Isolated), ByteLevel(use_regex=false)]       | ``qwen2``   |
    """
    if _is_byte_level(pre_tokenizer, use_regex=True):
        return "gpt2"
    if isinstance(pre_tokenizer, Mapping) and pre_tokenizer.get("type") == "Sequence":
        steps = pre_tokenizer.get("pretokenizers")
        if isinstance(steps, list) and len(steps) == 2 and isinstance(steps[0], Mapping):
            first, second = steps
            if (first.get("type") == "Digits" and first.get("individual_digits") is True
                    and _is_byte_level(second, use_regex=True)):
                return "smollm"
            pattern = first.get("pattern")
            regex = pattern.get("Regex") if isinstance(pattern, Mapping) else None
            if (first.get("type") == "Split" and regex in _HF_SPLIT_REGEXES
                    and str(first.get("behavior", "")).lower() == "isolated" and not first.get("invert", False)
                    and _is_byte_level(second, use_regex=False)):
                return _HF_SPLIT_REGEXES[regex]
    raise UnsupportedError(
        f"tokenizer.json pre_tokenizer {json.dumps(pre_tokenizer)[:300]} is not one of the supported "
        "byte-level BPE pre-tokenizers (gpt2, smollm, llama-bpe, qwen2)"
    )


def _parse_tokenizer_json(data: Mapping[str, object], config: Mapping[str, object], name: str) -> dict[str, object]:
    """Constructor arguments of :class:`BPETokenizer` from tokenizer.json (+ tokenizer_config)."""
    model = data.get("model")
    if not isinstance(model, Mapping):
        raise FormatError(f"{name}: missing 'model' object")
    if model.get("type") != "BPE":
        raise UnsupportedError(f"{name}: model type {model.get('type')!r} is not BPE")
    for key in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise UnsupportedError(f"{name}: BPE option model.{key}={model.get(key)!r} is not supported")
    normalizer = data.get("normalizer")
    if isinstance(normalizer, Mapping) and normalizer.get("type") == "NFC":
        # llama.cpp's converter drops it too, so GGUF and tokenizer.json loads agree.
        logger.warning("%s: NFC normalizer ignored, as llama.cpp does", name)
    elif normalizer is not None:
        raise UnsupportedError(f"{name}: normalizer {json.dumps(normalizer)[:200]} is not supported")
    pre = pre_name_from_hf(data.get("pre_tokenizer"))

    vocab = model.get("vocab")
    if not isinstance(vocab, Mapping):
        raise FormatError(f"{name}: model.vocab must be an object of token -> id")
    by_id: dict[int, tuple[str, int]] = {}
    for text, token_id in vocab.items():
        if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
            raise FormatError(f"{name}: model.vocab[{text!r}] = {token_id!r}, expected an id >= 0")
        by_id[token_id] = (text, TOKEN_NORMAL)
    added = data.get("added_tokens") or []
    if not isinstance(added, list):
        raise FormatError(f"{name}: added_tokens must be an array")
    for k, entry in enumerate(added):
        if not (isinstance(entry, Mapping) and isinstance(entry.get("id"), int) and isinstance(entry.get("content"), str)):
            raise FormatError(f"{name}: added_tokens[{k}] needs an integer 'id' and a string 'content'")
        by_id[entry["id"]] = (entry["content"], TOKEN_CONTROL if entry.get("special") else TOKEN_USER_DEFINED)
    if not by_id:
        raise FormatError(f"{name}: the vocabulary is empty")
    n_vocab = max(by_id) + 1
    if n_vocab > 4 * len(by_id) + 1024:
        raise FormatError(f"{name}: token ids reach {n_vocab - 1} for only {len(by_id)} tokens")
    tokens, types = [], []
    for i in range(n_vocab):
        text, kind = by_id.get(i, (f"[PAD{i}]", TOKEN_UNUSED))
        tokens.append(text)
        types.append(kind)

    merges = []
    for k, merge in enumerate(_as_list(model.get("merges", []), "model.merges", name)):
        if isinstance(merge, list) and len(merge) == 2 and all(isinstance(s, str) for s in merge):
            merges.append(f"{merge[0]} {merge[1]}")
        elif isinstance(merge, str):
            merges.append(merge)
        else:
            raise FormatError(f"{name}: model.merges[{k}] must be 'a b' or [a, b]")

    token_to_id = {text: i for i, text in enumerate(tokens)}
    special_ids = {}
    for role, key in (("bos", "bos_token"), ("eos", "eos_token"), ("unk", "unk_token"), ("pad", "pad_token")):
        value = config.get(key)
        text = value.get("content") if isinstance(value, Mapping) else value
        if text is None:
            continue
        if text not in token_to_id:
            raise FormatError(f"tokenizer_config: {key} {text!r} is not in the vocabulary of {name}")
        special_ids[role] = token_to_id[text]
    if "unk" not in special_ids and model.get("unk_token") in token_to_id:
        special_ids["unk"] = token_to_id[model["unk_token"]]

    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]: take the default one
        template = next((t.get("template") for t in template if isinstance(t, Mapping) and t.get("name") == "default"), None)
    return {
        "tokens": tokens,
        "merges": merges,
        "token_types": types,
        "pre": pre,
        "special_ids": special_ids,
        "add_bos": config.get("add_bos_token"),
        "add_eos": bool(config.get("add_eos_token", False)),
        "chat_template": template,
    }
