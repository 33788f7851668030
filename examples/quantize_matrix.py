"""Quantize a weight matrix into every edgeq type, save it, load it back memory-mapped and run
an integer linear layer; print the size and the error of each.

    python examples/quantize_matrix.py
"""

import os
import tempfile

import numpy as np

import edgeq

TYPES = [
    ("int8", dict()),
    ("int8", dict(group_size=32)),
    ("int4", dict(group_size=32)),
    ("int4", dict(group_size=32, symmetric=False)),
    ("int4", dict(group_size=128)),
    ("ternary", dict()),
    ("ternary", dict(packing="base3")),
    ("binary", dict()),
    ("pow2", dict()),
]


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1024, 1024)).astype(np.float32)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    exact = x @ w.T
    tensors = {f"{q}_{i}": edgeq.quantize(w, q, **opts) for i, (q, opts) in enumerate(TYPES)}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "matrices.eqm")
        edgeq.save(path, tensors, metadata={"made_by": "examples/quantize_matrix.py"})
        packed = edgeq.open(path)
        print(f"saved {len(packed)} matrices to one file of {os.path.getsize(path):,} bytes "
              f"(float32: {w.nbytes:,} bytes each)\n")
        print(f"{'type':<44}{'bits/w':>8}{'bytes':>12}{'weight err':>12}{'output err':>12}")
        for name, (q, opts) in zip(tensors, TYPES):
            t = packed[name]
            y = edgeq.linear(x, t)
            label = f"{q} {opts}" if opts else q
            print(f"{label:<44}{t.bits_per_weight:>8.3f}{t.nbytes:>12,}"
                  f"{rel_err(t.dequantize(), w):>12.4f}{rel_err(y, exact):>12.4f}")
        print("\nerrors are relative L2 norms; outputs use int8 activations in blocks of 32")


if __name__ == "__main__":
    main()
