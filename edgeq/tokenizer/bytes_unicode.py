"""The GPT-2 byte-to-unicode table used by byte-level BPE vocabularies.

A byte-level BPE vocabulary never stores raw bytes: every byte 0..255 is written as one
printable code point, so token texts and merges contain no spaces or control characters.

| bytes                                   | code point                                  |
|-----------------------------------------|---------------------------------------------|
| 0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF (188)   | the same value (``'!'`` .. ``'~'``, ``'¡'``..) |
| the other 68 bytes, in increasing order | U+0100, U+0101, ... U+0143                  |

So a space (0x20) is ``'Ġ'`` (U+0120) and a newline (0x0A) is ``'Ċ'`` (U+010A).
"""

from __future__ import annotations


def _byte_to_char_table() -> tuple[str, ...]:
    kept = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    table = []
    shifted = 0x100
    for byte in range(256):
        if byte in kept:
            table.append(chr(byte))
        else:
            table.append(chr(shifted))
            shifted += 1
    return tuple(table)


BYTE_TO_CHAR: tuple[str, ...] = _byte_to_char_table()
"""``BYTE_TO_CHAR[b]`` is the one-character string that stands for byte ``b``."""

CHAR_TO_BYTE: dict[str, int] = {char: byte for byte, char in enumerate(BYTE_TO_CHAR)}
"""Inverse of :data:`BYTE_TO_CHAR`."""

# str.translate tables: latin-1 decoding turns byte b into chr(b), which is then mapped.
_LATIN1_TO_SYMBOL = {byte: char for byte, char in enumerate(BYTE_TO_CHAR)}
# The way back maps every symbol to chr(byte). The 68 code points below U+0100 that are not
# symbols map to their own UTF-8 bytes (as latin-1 text), so that latin-1 encoding of the
# result is right for them too; only characters above U+00FF need the slow path.
_SYMBOL_TO_LATIN1: dict[int, str] = {
    code: chr(code).encode("utf-8").decode("latin-1") for code in range(256) if chr(code) not in CHAR_TO_BYTE
}
_SYMBOL_TO_LATIN1.update({ord(char): chr(byte) for byte, char in enumerate(BYTE_TO_CHAR)})


def bytes_to_symbols(data: bytes) -> str:
    """Write ``data`` in the byte-level alphabet: one code point per byte."""
    return data.decode("latin-1").translate(_LATIN1_TO_SYMBOL)


def symbols_to_bytes(text: str) -> bytes:
    """Inverse of :func:`bytes_to_symbols`.

    A character outside the 256-symbol alphabet (possible in hand-made vocabularies) stands
    for its own UTF-8 bytes, as the Hugging Face ByteLevel decoder does.
    """
    try:
        return text.translate(_SYMBOL_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        return b"".join(
            bytes((CHAR_TO_BYTE[char],)) if char in CHAR_TO_BYTE else char.encode("utf-8", "surrogatepass")
            for char in text
        )
