"""The two errors edgeq raises for bad input.

Both subclass ValueError so callers that already catch ValueError keep working.
"""


class FormatError(ValueError):
    """A file or array is malformed: truncated, corrupt, lying sizes, wrong shapes."""


class UnsupportedError(ValueError):
    """The input is well formed but names something edgeq does not handle
    (a tensor type, an architecture, a format version)."""
