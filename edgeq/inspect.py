"""`edgeq inspect`: a table of what a packed file holds."""

import math

from edgeq.format import open_packed
from edgeq.qtypes import describe as describe_tensor


def describe(path) -> str:
    packed = open_packed(path)
    rows = [("name", "qtype", "shape", "bits/w", "bytes")]
    total_bytes = total_weights = 0
    for name in packed:
        t = packed[name]
        count = math.prod(t.shape)
        nbytes = t.nbytes
        bits = 8 * nbytes / count if count else 0.0
        rows.append((name, describe_tensor(t), "x".join(map(str, t.shape)), f"{bits:.3f}", f"{nbytes:,}"))
        total_bytes += nbytes
        total_weights += count
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    avg = 8 * total_bytes / total_weights if total_weights else 0.0
    lines.append(f"{len(packed)} tensors, {total_weights:,} values, {total_bytes:,} bytes "
                 f"({avg:.3f} bits/value); file format {packed.version[0]}.{packed.version[1]}")
    arch = (packed.config or {}).get("architecture")
    if arch:
        lines.append(f"model: {arch}")
    return "\n".join(lines)
