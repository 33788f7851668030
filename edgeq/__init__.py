"""edgeq: quantized models on the CPU, from Python."""

from edgeq.errors import FormatError, UnsupportedError

__version__ = "0.1.0"
