"""The compact tables behind the BPE tokenizer: StringTable answers as a list plus a
{text: lowest index} dict would, and MergeTable gives each pair its first rank."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeq.tokenizer.merge_table import MergeTable
from edgeq.tokenizer.string_table import StringTable

# short texts from a small alphabet (so duplicates and shared prefixes are common), with a
# lone surrogate and a character outside the BMP
TEXTS = st.lists(st.text(st.sampled_from("ab é\ud800😀"), max_size=4), max_size=30)


@settings(max_examples=100, deadline=None)
@given(strings=TEXTS, queries=TEXTS)
def test_string_table_equals_list_and_dict(strings: list[str], queries: list[str]) -> None:
    table = StringTable(strings)
    assert list(table) == strings and len(table) == len(strings)
    first: dict[str, int] = {}
    for i, text in enumerate(strings):
        first.setdefault(text, i)
        assert table.nbytes(i) == len(text.encode("utf-8", "surrogatepass"))
    for q in queries + strings:
        assert table.find(q) == first.get(q)
    assert table.find_many(queries + strings).tolist() == [first.get(q, -1) for q in queries + strings]
    assert table.find_many(queries, strings).tolist() == [first.get(q, -1) for q in queries]
    assert table.has_duplicates() == (len(first) != len(strings))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_merge_table_ranks_are_first_ranks(data: st.DataObject) -> None:
    vocab = ["a", "b", "c", "ab"]
    pairs = data.draw(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "ab", "ca"]),
                                         st.sampled_from(["a", "b", "bc"])), max_size=20))
    tokens = StringTable(vocab)
    table = MergeTable(tokens, vocab, [([a for a, _ in pairs], [b for _, b in pairs])], ["a", "b", "c"])
    first: dict[tuple[str, str], int] = {}
    for rank, pair in enumerate(pairs):
        first.setdefault(pair, rank)
    symbol = {table.text(s, tokens): s for s in range(table.n_vocab + len(table.virtual))}
    assert len(symbol) == table.n_vocab + len(table.virtual)  # one id per text
    for left in symbol:
        for right in symbol:
            assert table.rank(symbol[left], symbol[right]) == first.get((left, right), -1)
    for rank, (a, b) in enumerate(pairs):
        assert table.text(table.result[rank], tokens) == a + b
