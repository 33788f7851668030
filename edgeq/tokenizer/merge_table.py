"""BPE merges over integer symbol ids, in flat arrays.

BPE joins adjacent symbols by text, but every text a word can ever hold is a byte symbol or
the result of a merge, so each such text gets one integer id and merging works on ids:

- symbol ids: token ``i`` of the vocabulary is symbol ``i``; every other text named by a merge
  (operand or result) or by the byte alphabet is a "virtual" symbol ``n_vocab + k``, its text
  kept in ``virtual[k]``. Texts and ids correspond one to one, so merging ids gives exactly
  the symbols merging texts gives.
- per merge rank ``r`` (its index in the merge list): ``left[r]``, ``right[r]``, ``result[r]``.
- pair -> rank, grouped by left symbol (compressed sparse rows): the pairs whose left symbol is
  ``a`` are ``starts[a]:starts[a+1]``, sorted by right symbol in ``right_sorted`` with their
  rank in ``rank_sorted``; a lookup is one bisection in that slice. A pair listed twice keeps
  its first (lowest) rank.

For SmolLM2's 49k merges this is about 1.3 MiB, against about 12 MiB for a dict of string
pairs.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence

import numpy as np

from edgeq.tokenizer.string_table import StringTable


def _int32(values) -> array:
    return array("i", np.asarray(values, dtype=np.int32).tobytes())


class MergeTable:
    """Merge ranks over symbol ids (see the module docstring).

    ``tokens``: the vocabulary (``texts``: the same strings as a plain sequence, used only
    while building); ``halves``: the two texts of each merge as (lefts, rights) lists, in rank
    order, in chunks; ``alphabet``: the texts a word starts as (one per byte).
    ``byte_symbols[b]`` is the symbol id of byte ``b``.
    """

    def __init__(self, tokens: StringTable, texts: Sequence[str],
                 halves: Iterable[tuple[list[str], list[str]]], alphabet: Sequence[str]) -> None:
        self.n_vocab = n_vocab = len(tokens)
        virtual: dict[str, int] = {}

        def symbols(queries: Sequence[str]) -> np.ndarray:
            found = tokens.find_many(queries, texts)
            for k in np.flatnonzero(found < 0).tolist():  # few
                found[k] = virtual.setdefault(queries[k], n_vocab + len(virtual))
            return found

        self.byte_symbols: tuple[int, ...] = tuple(symbols(alphabet).tolist())
        columns: tuple[list, list, list] = ([], [], [])
        for lefts, rights in halves:  # chunks keep the transient strings few
            columns[0].append(symbols(lefts))
            columns[1].append(symbols(rights))
            columns[2].append(symbols([a + b for a, b in zip(lefts, rights)]))
        self.left, self.right, self.result = (_int32(np.concatenate(c) if c else []) for c in columns)
        del columns
        self.virtual = StringTable(virtual)  # dicts keep insertion order: id order
        n_symbols = n_vocab + len(self.virtual)

        left = np.frombuffer(self.left, dtype=np.int32)
        right = np.frombuffer(self.right, dtype=np.int32)
        pair = left.astype(np.int64) * n_symbols + right
        order = np.argsort(pair, kind="stable")  # by left, right, then rank
        first = np.ones(len(order), dtype=bool)
        first[1:] = (left[order[1:]] != left[order[:-1]]) | (right[order[1:]] != right[order[:-1]])
        kept = order[first]
        self.starts = _int32(np.searchsorted(left[kept], np.arange(n_symbols + 1)))
        self.right_sorted = _int32(right[kept])
        self.rank_sorted = _int32(kept)

    def text(self, symbol: int, tokens: Sequence[str]) -> str:
        """Text of a symbol id (``tokens``: the vocabulary's texts)."""
        return tokens[symbol] if symbol < self.n_vocab else self.virtual[symbol - self.n_vocab]

    def rank(self, a: int, b: int) -> int:
        """Rank of merging symbols a and b, or -1 if they never merge."""
        starts = self.starts
        lo, hi = starts[a], starts[a + 1]
        if lo == hi:
            return -1
        k = bisect_left(self.right_sorted, b, lo, hi)
        return self.rank_sorted[k] if k < hi and self.right_sorted[k] == b else -1

    def merge(self, symbols: list[int]) -> list[int]:
        """Merge a word (its symbol ids) until no adjacent pair has a rank.

        Each step joins the pair of lowest rank, the leftmost one on a tie. A heap holds
        candidates as rank * n + left position; a popped candidate is stale when the symbol at
        its left or right position changed since it was pushed (positions only grow, so a
        changed symbol never returns to its old id). O(n log n) for n symbols.
        """
        n = len(symbols)
        if n < 2:
            return symbols
        rank, left_of, right_of, result_of = self.rank, self.left, self.right, self.result
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            r = rank(symbols[i], symbols[i + 1])
            if r >= 0:
                heap.append(r * n + i)
        heapq.heapify(heap)
        while heap:
            r, left = divmod(heapq.heappop(heap), n)
            right = nxt[left]
            if right < 0 or symbols[left] != left_of[r] or symbols[right] != right_of[r]:
                continue
            merged = symbols[left] = result_of[r]
            symbols[right] = -1
            after = nxt[left] = nxt[right]
            if after >= 0:
                prv[after] = left
                r = rank(merged, symbols[after])
                if r >= 0:
                    heapq.heappush(heap, r * n + left)
            before = prv[left]
            if before >= 0:
                r = rank(symbols[before], merged)
                if r >= 0:
                    heapq.heappush(heap, r * n + before)
        return [s for s in symbols if s >= 0]
