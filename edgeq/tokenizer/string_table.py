"""A read-only list of many short strings, held compactly, with a text -> index lookup.

A vocabulary of 49k tokens as Python strings plus a ``{text: id}`` dict costs about 6 MiB of
small objects; this table keeps the same information in four flat buffers:

| buffer    | type            | holds                                                          |
|-----------|-----------------|----------------------------------------------------------------|
| blob      | bytes           | every string, UTF-8 (lone surrogates as their 3-byte form), joined |
| ends      | array I (or Q)  | ends[i] is where string i stops in blob; it starts at ends[i-1] (0 for i = 0) |
| hashes    | array q         | hash() of every string, sorted                                 |
| order     | array i         | order[k]: the index of the string whose hash is hashes[k]      |

``table[i]`` decodes string ``i`` (a new str each time); ``table.find(text)`` bisects the sorted
hashes, then compares the texts of the few entries with that hash. Python's str hash is
randomized per process, which is fine: the table lives in the process that built it.
"""

from __future__ import annotations

from array import array
import operator
from bisect import bisect_left
from collections.abc import Iterable, Sequence

import numpy as np


#: strings handled at once while building
CHUNK = 4096


class StringTable(Sequence[str]):
    """Strings by index, and index by string (see the module docstring)."""

    def __init__(self, strings: Iterable[str]) -> None:
        texts = strings if isinstance(strings, Sequence) else list(strings)
        blob = bytearray()
        ends = np.empty(len(texts), dtype=np.int64)
        # in chunks, so the transient bytes objects reuse the same memory instead of piling up
        for start in range(0, len(texts), CHUNK):
            encoded = [text.encode("utf-8", "surrogatepass") for text in texts[start:start + CHUNK]]
            lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
            ends[start:start + len(encoded)] = len(blob) + np.cumsum(lengths)
            blob += b"".join(encoded)
        self._blob = bytes(blob)
        wide = len(self._blob) >= 2**32
        self._ends = array("Q" if wide else "I", ends.astype(np.uint64 if wide else np.uint32).tobytes())
        hashes = np.fromiter(map(hash, texts), dtype=np.int64, count=len(texts))
        order = np.argsort(hashes, kind="stable")  # equal texts: the lowest index first
        self._hashes = array("q", hashes[order].tobytes())
        self._order = array("i", order.astype(np.int32).tobytes())

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self._ends):
            raise IndexError("StringTable index out of range")
        start = self._ends[index - 1] if index else 0
        return self._blob[start:self._ends[index]].decode("utf-8", "surrogatepass")

    def nbytes(self, index: int) -> int:
        """Length of string ``index`` in UTF-8 bytes."""
        return self._ends[index] - (self._ends[index - 1] if index else 0)

    def find(self, text: str) -> int | None:
        """The lowest index holding ``text``, or None."""
        h = hash(text)
        hashes = self._hashes
        k = bisect_left(hashes, h)
        while k < len(hashes) and hashes[k] == h:
            if self[self._order[k]] == text:
                return self._order[k]
            k += 1
        return None

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self.find(text) is not None

    def has_duplicates(self) -> bool:
        """Whether some string occurs twice."""
        hashes = np.frombuffer(self._hashes, dtype=np.int64)
        at = np.flatnonzero(hashes[1:] == hashes[:-1])  # equal hashes are rare: compare those
        seen = set()
        for k in sorted({*at.tolist(), *(at + 1).tolist()}):
            text = self[self._order[k]]
            if text in seen:
                return True
            seen.add(text)
        return False

    def find_many(self, queries: Sequence[str], strings: Sequence[str] | None = None) -> np.ndarray:
        """int32 array: the lowest index holding each query, -1 where none does.

        strings: the strings this table was built from, if still at hand (a faster check of
        each hash match than decoding from the blob)."""
        if not len(self):
            return np.full(len(queries), -1, dtype=np.int32)
        strings = self if strings is None else strings
        hashes = np.frombuffer(self._hashes, dtype=np.int64)
        wanted = np.fromiter(map(hash, queries), dtype=np.int64, count=len(queries))
        at = np.minimum(np.searchsorted(hashes, wanted), len(hashes) - 1)
        found = np.frombuffer(self._order, dtype=np.int32)[at]
        sure = list(map(operator.eq, map(strings.__getitem__, found.tolist()), queries))
        found = np.where(sure, found, -1).astype(np.int32)
        for k in np.flatnonzero(~np.asarray(sure, dtype=bool) & (hashes[at] == wanted)).tolist():
            index = self.find(queries[k])  # another string with the same hash: rare
            found[k] = -1 if index is None else index
        return found

    def memory_bytes(self) -> int:
        """Bytes held by the four buffers."""
        return len(self._blob) + sum(a.itemsize * len(a) for a in (self._ends, self._hashes, self._order))
