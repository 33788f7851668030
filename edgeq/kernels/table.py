"""The op table: (operation, weight kind) -> {backend name: function}.

Operations and their signatures (every backend's entry has the same one):
    "quantize_act"  fn(x float32 (m, k), block) -> (int8 (m, k), float32 (m, k/block))
    "block_sums"    fn(qt, xq int8 (m, k), sub_block) -> int32 (m, n, k/sub_block)
    "matmul"        fn(qt, xq, xs, act_block) -> float32 (m, n)   block sums with scales applied
    "xnor"          fn(w_bits uint8 (n, kb), x_bits uint8 (m, kb), k) -> int32 (m, n)
Weight kinds come from weight_kind(spec); "quantize_act" uses the kind "*".
The numpy entries are the reference; tests are generated from this table, so a kernel is
checked against the reference the moment it registers.
"""

from typing import Callable

OPERATIONS = ("quantize_act", "block_sums", "matmul", "xnor")
WEIGHT_KINDS = ("int8", "int8_asym", "int4", "int4_asym", "int3", "int3_asym", "int2", "int2_asym",
                "ternary_2bit", "ternary_base3", "binary", "pow2")

KERNELS: dict[tuple[str, str], dict[str, Callable]] = {}


def weight_kind(spec) -> str:
    if spec.qtype == "ternary":
        return f"ternary_{spec.packing}"
    return spec.qtype if spec.symmetric else f"{spec.qtype}_asym"


def register(op: str, kind: str, backend: str):
    if op not in OPERATIONS:
        raise ValueError(f"unknown operation {op!r}")

    def add(fn: Callable) -> Callable:
        KERNELS.setdefault((op, kind), {})[backend] = fn
        return fn

    return add


def lookup(op: str, kind: str, backend: str) -> Callable | None:
    return KERNELS.get((op, kind), {}).get(backend)


def entries(backend: str) -> list[tuple[str, str]]:
    """Every (operation, kind) the backend implements."""
    return sorted(key for key, impls in KERNELS.items() if backend in impls)
