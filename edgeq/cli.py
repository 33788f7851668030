"""The `edgeq` command line. Each sub-command is a small function; argparse does the rest.

Heavy modules are imported inside the commands so that `edgeq --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from edgeq.errors import FormatError, UnsupportedError

QTYPES = ("keep", "int8", "int4", "ternary", "binary", "pow2")


def cmd_inspect(args) -> int:
    from edgeq.inspect import describe
    print(describe(args.file))
    return 0


def cmd_info(args) -> int:
    from edgeq.info import report
    print(report())
    return 0


def cmd_convert(args) -> int:
    from edgeq.converters.convert import convert
    given = {"qtype": args.qtype, "group_size": args.group_size}  # None: the importer's default
    options = {name: value for name, value in given.items() if value is not None}
    if args.asymmetric:
        options["symmetric"] = False
    if args.quantize_embeddings:
        options["quantize_embeddings"] = True
    out = convert(args.src, args.output, **options)
    print(f"wrote {out}")
    return 0


def _load_model(args):
    import edgeq
    options = {}
    if getattr(args, "ctx", None):
        options["context_length"] = args.ctx
    return edgeq.load(args.model, **options)


def _sampling(args) -> dict:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "min_p": args.min_p, "repetition_penalty": args.repeat_penalty, "seed": args.seed}


def cmd_run(args) -> int:
    model = _load_model(args)
    for piece in model.stream(args.prompt, max_tokens=args.n, stop=args.stop, **_sampling(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    model = _load_model(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("edgeq chat: type a message, an empty line or Ctrl-D to quit.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line})
        reply = []
        for piece in model.chat_stream(messages, max_tokens=args.n, **_sampling(args)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
    return 0


def cmd_eval_ppl(args) -> int:
    import edgeq
    from edgeq.cache import prepare
    from edgeq.calibrate.similarity import describe, method_width
    from edgeq.eval import perplexity
    text = open(args.text, encoding="utf-8").read() if args.text else None
    prepared = [prepare(source, {"context_length": args.ctx} if args.ctx else {}) for source in args.models]
    described = [describe(path) for path, _ in prepared]
    w = method_width([method for method, _ in described])
    header = f"{'model':<32} {'method':<{w}} {'bits/w':>6} {'MiB':>7} {'tokens':>7} {'mean NLL':>9} {'ppl':>9}"
    print(header)
    print("-" * len(header))
    for source, (path, options), (method, bits) in zip(args.models, prepared, described):
        # one row as soon as each model is scored
        result = perplexity(edgeq.load(path, **options), text, window=args.window, max_tokens=args.max_tokens)
        bits_text = "float" if bits is None else f"{bits:.3f}"
        print(f"{Path(source).name:<32} {method:<{w}} {bits_text:>6} {path.stat().st_size / 2**20:>7.1f} "
              f"{result.tokens:>7d} {result.mean_nll:>9.5f} {result.ppl:>9.4f}", flush=True)
    return 0


def _param(text: str) -> tuple:
    """KEY=VALUE -> (key, value), the value read as JSON where it parses (true, 0.05), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _activations(args) -> dict | None:
    """quantize's activations option from --static-activations / --integer-ffn / --keep-dynamic."""
    if not (args.static_activations or args.integer_ffn or args.keep_dynamic):
        return None
    changes: dict = {"mode": "static"}
    if args.integer_ffn:
        changes["integer_ffn"] = True
    if args.keep_dynamic:
        changes["dynamic"] = tuple(args.keep_dynamic)
    return changes


def cmd_quantize(args) -> int:
    from edgeq.calibrate import quantize
    try:
        summary = quantize(args.src, args.output, args.recipe, bits=args.bits, allocation=args.allocation,
                           progress=not args.no_progress,
                           qtype=args.qtype, algorithm=args.algo, group_size=args.group_size,
                           params=dict(args.param or ()),
                           symmetric=False if args.asymmetric else None, calib=args.calib,
                           samples=args.samples, seq_len=args.seq_len, seed=args.seed,
                           sequential=True if args.sequential else None,
                           activations=_activations(args),
                           rotation="hadamard" if args.rotate else None)
    except (FormatError, UnsupportedError, FileNotFoundError):
        raise
    except ValueError as e:  # option values the recipe or the algorithms reject
        print(f"edgeq: error: {e}", file=sys.stderr)
        return 2
    print(summary.table())
    return 0


def cmd_eval_embed_sim(args) -> int:
    from edgeq.calibrate.similarity import default_texts, embed_similarity, format_rows
    texts = None
    if args.texts:
        with open(args.texts, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    texts = texts if texts is not None else default_texts(args.n)
    print(format_rows(embed_similarity(args.reference, args.models, texts), len(texts)))
    return 0


def cmd_embed(args) -> int:
    from edgeq.embed import embed_cli
    embed_cli(args.model, args.texts, args.file, args.batch_size)
    return 0


def cmd_similarity(args) -> int:
    from edgeq.embed import similarity_cli
    similarity_cli(args.model, args.a, args.b)
    return 0


def cmd_bench(args) -> int:
    if args.target == "kernels":
        from edgeq.bench_kernels import format_table, run
        if not (args.quick or args.backends or args.verbose):
            print("measuring every backend on every weight kind and shape: this takes a long "
                  "while (--quick or --backend native for less, -v for progress)", file=sys.stderr)
        print(format_table(run(quick=args.quick, backends=args.backends)))
        return 0
    import edgeq
    from edgeq import cache
    is_encoder = not cache.is_gguf(args.target) and edgeq.open(args.target).config.get("architecture") == "bert"
    if is_encoder:
        from edgeq.bench_embed import main as bench_model
    else:
        from edgeq.bench_llm import main as bench_model
    bench_model([args.target] + (["--quick"] if args.quick else []))
    return 0


def _add_sampling(p) -> None:
    p.add_argument("-n", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ctx", type=int, default=None, help="context length (default: the model's)")


def build_parser() -> argparse.ArgumentParser:
    from edgeq.calibrate.driver import ALLOCATIONS
    from edgeq.calibrate.recipe import PARAMS

    parser = argparse.ArgumentParser(prog="edgeq", description="Quantized models on the CPU, from Python.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what edgeq does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("convert", help="convert a .gguf file or a Hugging Face folder into an .eqm file")
    p.add_argument("src")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--qtype", choices=QTYPES, default=None,
                   help="keep: exact import of quantized GGUF tensors (default for GGUF); "
                        "otherwise quantize linear weights round-to-nearest")
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--asymmetric", action="store_true", help="int8/int4 with zero points or mins")
    p.add_argument("--quantize-embeddings", action="store_true")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("run", help="generate text from a prompt")
    p.add_argument("model", help=".eqm or .gguf (converted once into a cache folder)")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    _add_sampling(p)
    p.set_defaults(run=cmd_run)

    p = sub.add_parser("chat", help="interactive chat with the model's own chat template")
    p.add_argument("model")
    p.add_argument("--system", default=None, help="system message")
    _add_sampling(p)
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("eval", help="evaluate a model")
    ev = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = ev.add_parser("ppl", help="perplexity per model (default corpus: Python's pydoc topics)")
    q.add_argument("models", nargs="+", help=".eqm or .gguf files, compared on the same tokens")
    q.add_argument("--text", default=None, help="a UTF-8 text file")
    q.add_argument("--window", type=int, default=256)
    q.add_argument("--max-tokens", type=int, default=None)
    q.add_argument("--ctx", type=int, default=None)
    q.set_defaults(run=cmd_eval_ppl)

    q = ev.add_parser("embed-sim", help="cosine of embeddings to a float reference, per model")
    q.add_argument("reference", help="the float model (.eqm or HF folder converted to .eqm)")
    q.add_argument("models", nargs="+", help="quantized .eqm files to compare")
    q.add_argument("--texts", default=None, help="one text per line (default: pydoc paragraphs)")
    q.add_argument("-n", type=int, default=256, help="default texts to use (default 256)")
    q.set_defaults(run=cmd_eval_embed_sim)

    p = sub.add_parser("quantize",
                       help="post-training quantization (RTN, GPTQ, AWQ, HQQ, SmoothQuant, mixed precision)")
    p.add_argument("src", help="a .gguf file, a Hugging Face folder or a float .eqm")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--recipe", default=None, help="a YAML or JSON recipe; the options below change it")
    p.add_argument("--qtype", choices=("int8", "int4", "int3", "int2", "ternary", "binary", "pow2"), default=None)
    p.add_argument("--algo", choices=tuple(PARAMS), default=None)
    p.add_argument("--param", action="append", type=_param, metavar="KEY=VALUE",
                   help="an algorithm parameter, repeatable (values as JSON: true, 0.05, ...), e.g. "
                        "--algo gptq --param act_order=true --param grid_search=true")
    p.add_argument("--group-size", type=int, default=None, help="0: the type's default (per row for int8)")
    p.add_argument("--asymmetric", action="store_true", help="per-group mins (zero points)")
    p.add_argument("--bits", type=float, default=None,
                   help="bits-per-weight budget: mixed precision over the linear layers")
    p.add_argument("--allocation", choices=ALLOCATIONS, default="output-error",
                   help="how --bits is spread: each layer's relative output error (default), or "
                        "probed: the model's KL divergence with each layer alone at int2 (better; "
                        "one forward pass per layer; llama-family models), or probed-gains: probed, "
                        "scaled by how much the algorithm (e.g. GPTQ) lowers each layer's error "
                        "(better at 2.5-3.25 bits with --rotate; slower)")
    p.add_argument("--calib", default=None, help="calibration text: plain text or JSON lines (default: pydoc)")
    p.add_argument("--samples", type=int, default=None, help="calibration windows (recipe default 64)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per window (recipe default 512)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--sequential", action="store_true",
                   help="calibrate each block on the outputs of the blocks already quantized "
                        "(GPTQ's sequential variant; llama-family models)")
    p.add_argument("--static-activations", action="store_true",
                   help="store calibrated int8 input scales (BERT encoders and llama-family decoders; "
                        "a decoder with them runs its numpy path, not the fused steps)")
    p.add_argument("--integer-ffn", action="store_true",
                   help="static activations with BERT's ffn_up -> GELU -> ffn_down on integer codes "
                        "(FFN inputs scaled per tensor; int8 per-row ffn_up weights)")
    p.add_argument("--keep-dynamic", action="append", metavar="PATTERN",
                   help="static activations, except the layers matching PATTERN (repeatable), e.g. "
                        "'*.ffn_down.weight': their inputs stay dynamic")
    p.add_argument("--rotate", action="store_true",
                   help="rotate the residual stream first (randomized Hadamard; the same function, "
                        "much better with --algo gptq at 2-3 bits; llama-family models)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_quantize)

    p = sub.add_parser("embed", help="sentence embeddings as JSON lines")
    p.add_argument("model")
    p.add_argument("texts", nargs="*")
    p.add_argument("--file", default=None, help="one text per line")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("similarity", help="cosine similarity of two texts")
    p.add_argument("model")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(run=cmd_similarity)

    p = sub.add_parser("bench", help="benchmark the kernels (`edgeq bench kernels`) or a model")
    p.add_argument("target", help="'kernels' or a model path")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--backend", action="append", dest="backends", metavar="NAME",
                   help="kernels: measure only this backend (numpy, numba, native; repeatable)")
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("inspect", help="list the tensors of an .eqm file with types, sizes and totals")
    p.add_argument("file")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("info", help="version, kernel backends found, SIMD variant, threads")
    p.set_defaults(run=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except (FormatError, UnsupportedError, FileNotFoundError) as e:
        print(f"edgeq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader left (`edgeq inspect m.eqm | head`): not an error
        # stdout's remaining buffer cannot be written either: point it at nothing for exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
