"""edgeq: quantized models on the CPU, from Python.

    w_q = edgeq.quantize(w, "int4", group_size=32)      # a QTensor
    y = edgeq.linear(x, w_q)                            # integer kernels, float32 out
    edgeq.save("m.eqm", {"w": w_q}); f = edgeq.open("m.eqm")   # memory-mapped views
    edgeq.convert("model.gguf", "model.eqm"); m = edgeq.load("model.eqm")   # a runnable model
"""

from edgeq.converters.convert import convert
from edgeq.errors import FormatError, UnsupportedError
from edgeq.format import PackedFile, save
from edgeq.format import open_packed as open  # noqa: A001  (edgeq.open mirrors the file API)
from edgeq.linear import linear
from edgeq.loader import load
from edgeq.qtypes import QTensor, QuantSpec, quantize

__version__ = "0.1.0"

__all__ = ["FormatError", "UnsupportedError", "PackedFile", "QTensor", "QuantSpec", "convert",
           "linear", "load", "open", "quantize", "save", "__version__"]
