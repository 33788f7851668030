"""Quantized tensor types: one module per layout, each documenting its bytes."""

from edgeq.qtypes.base import QTensor, QuantSpec, describe, from_components, get_layout, layouts, quantize, take_rows
from edgeq.qtypes import binary, int4, int8, lowbit, pow2, ternary  # noqa: F401  (register the layouts)

__all__ = ["QTensor", "QuantSpec", "describe", "quantize", "from_components", "get_layout", "layouts", "take_rows"]
