"""Numba kernels behind edgeq.kernels.numba_backend, one module per job.

    simd.py         three LLVM vector primitives Numba cannot express as loops it vectorizes:
                    a 32-code block dot, float16 -> float32, popcount of a 64-bit XOR
    decode.py       how each weight layout's packed bytes become unsigned codes u
                    (value = u - offset): chunk tables for in-place reads, row unpackers
    gemm.py         block sums (exact int) and the fused matmul (scales applied), m >= 1
    activations.py  int8 activation quantization, bit-identical to the reference
    xnor.py         binary x binary XNOR-popcount GEMM
"""
