"""cffi build script (API mode) for the C kernels: produces the module ``edgeq._native``.

Used by setup.py (``cffi_modules=["native/build_native.py:ffibuilder"]``), so ``pip install``
compiles it where a compiler exists. Every file gets COMMON_FLAGS; the SIMD files get their
own -m flags on top (setup.py adds them per file through ``source_flags``) and are compiled
only on their architecture; dispatch.c picks among them at run time.
Build in place for development with ``pip install -e .`` (or ``python setup.py build_ext -i``).
"""

import os
import platform
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

#: -ffp-contract=off: no fused multiply-add, so float results match the reference's operations
COMMON_FLAGS = ["-O2", "-std=gnu11", "-ffp-contract=off"]
PORTABLE_SOURCES = ["kernels_scalar.c", "engine.c", "dispatch.c", "threadpool.c", "steps.c",
                    "llama_forward.c", "bert_steps.c", "bert_forward.c"]
_AVX2 = ["-mavx2", "-mf16c", "-mpopcnt"]
SIMD_SOURCES = {
    "x86_64": {
        "kernels_avx2.c": _AVX2,
        "kernels_avx512.c": _AVX2 + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"],
    },
    "aarch64": {
        "kernels_neon.c": ["-march=armv8-a"],
        "kernels_neon_dotprod.c": ["-march=armv8.2-a+dotprod"],
    },
}
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}

CDEF = """
typedef struct {
    int32_t kind;
    int32_t scale_f16;
    int64_t rows;
    int64_t k;
    int64_t pack_group;
    int64_t row_bytes;
    int64_t scale_block;
    int64_t scale_rows;
    const uint8_t *codes;
    const void *scales;
    const uint16_t *mins;
    const uint8_t *zeros;
} eq_qmatrix;

const char *eq_variant(void);
const char *eq_variants(void);
int eq_select_variant(const char *name);
size_t eq_qmatrix_size(void);
int32_t eq_pool_workers(void);

int eq_quantize_q8(const float *x, int64_t m, int64_t k, int64_t block, int8_t *q, float *scales);
int eq_xnor_gemm_binary(const uint8_t *w, int64_t n, const uint8_t *x, int64_t m, int64_t kb,
                        int64_t k, int32_t *out, int32_t threads);

"""


def _declarations(header: str) -> str:
    """A header's declarations as cffi's cdef takes them: without comments and preprocessor
    lines (the plain headers: prepared matrices, the fused steps; edgeq_native.h, with its
    inline functions and macros, is declared by hand above)."""
    with open(os.path.join(HERE, header), encoding="utf-8") as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


for _header in ("prepared.h", "steps.h", "llama_forward.h", "bert_steps.h", "bert_forward.h"):
    CDEF += _declarations(_header)
KINDS = ("int8", "int8_asym", "int4", "int4_asym", "ternary_2bit", "ternary_base3", "binary",
         "pow2", "int3", "int3_asym", "int2", "int2_asym")
for _kind in KINDS:
    CDEF += f"""
int eq_block_sums_{_kind}_q8(const eq_qmatrix *w, const int8_t *xq, int64_t m, int64_t sub,
                             int32_t *out, int32_t threads);
int eq_vec_dot_{_kind}_q8(const eq_qmatrix *w, const int8_t *xq, const float *xs,
                          int64_t act_block, float *out, int32_t threads);
int eq_gemm_{_kind}_q8(const eq_qmatrix *w, const int8_t *xq, const float *xs, int64_t m,
                       int64_t act_block, float *out, int32_t threads);
"""


def machine() -> str:
    return _MACHINES.get(platform.machine().lower(), "")


def simd_sources(arch: str | None = None) -> dict[str, list[str]]:
    """SIMD file -> its extra flags, for this machine (or `arch`)."""
    return SIMD_SOURCES.get(machine() if arch is None else arch, {})


def source_flags(path: str) -> list[str]:
    """Extra compiler flags of one source file (empty for the portable files)."""
    return simd_sources().get(os.path.basename(path), [])


def _rel(name: str) -> str:
    path = os.path.join(HERE, name)
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "edgeq._native",
    '#include "edgeq_native.h"\n#include "steps.h"\n#include "llama_forward.h"\n#include "bert_steps.h"\n'
    '#include "bert_forward.h"',
    sources=[_rel(name) for name in PORTABLE_SOURCES + list(simd_sources())],
    include_dirs=[_rel(".")],
    # headers too: an edit to one (kernels_x86_fused.h is a template) must rebuild its users
    depends=[_rel(name) for name in sorted(os.listdir(HERE)) if name.endswith(".h")],
    extra_compile_args=COMMON_FLAGS,
    libraries=["pthread", "m"],  # libm: steps.c calls expf
)
