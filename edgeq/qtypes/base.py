"""QTensor, quantization specs and the registry of layouts.

A QTensor is a quantized weight matrix of shape (rows, k) = (out_features, in_features):
a handful of named numpy arrays ("components": packed codes, scales, zero points or mins)
plus the spec that says how to read them. Each layout module (int8, int4, ternary, binary,
pow2) subclasses Layout and registers itself by name; nothing else knows their byte formats.

Granularity of the scales along k:
    "tensor"  one scale for the whole matrix, scales shape (1, 1), float32
    "row"     one scale per output row,       scales shape (rows, 1), float32
    "group"   one scale per group_size codes, scales shape (rows, k/group_size), float16
              (float16 as in ggml: a 32-wide int4 group then costs 4.5 bits per weight)
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Mapping

import numpy as np

from edgeq.errors import FormatError, UnsupportedError

GRANULARITIES = ("tensor", "row", "group")


@dataclass(frozen=True)
class QuantSpec:
    """How a matrix is quantized: everything but the numbers."""

    qtype: str
    granularity: str = "row"
    group_size: int = 0  # codes per scale along k; 0 unless granularity == "group"
    symmetric: bool = True
    packing: str = ""  # ternary only: "2bit" or "base3"

    def groups_per_row(self, k: int) -> int:
        return k // self.group_size if self.granularity == "group" else 1

    def scale_block(self, k: int) -> int:
        """Codes sharing one weight scale along a row of k codes (the packing group)."""
        return self.group_size if self.granularity == "group" else k

    def scale_rows(self, rows: int) -> int:
        return 1 if self.granularity == "tensor" else rows

    def scale_dtype(self) -> np.dtype:
        return np.dtype(np.float16 if self.granularity == "group" else np.float32)

    def scale_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        return (self.scale_rows(shape[0]), self.groups_per_row(shape[1]))

    def to_json(self) -> dict:
        return {"qtype": self.qtype, "granularity": self.granularity,
                "group_size": self.group_size, "symmetric": self.symmetric,
                "packing": self.packing}


@dataclass(frozen=True, eq=False)
class QTensor:
    """A quantized (rows, k) matrix. Components are numpy arrays, often views of a memory map."""

    spec: QuantSpec
    shape: tuple[int, int]
    data: Mapping[str, np.ndarray] = field(repr=False)

    @property
    def qtype(self) -> str:
        return self.spec.qtype

    @property
    def layout(self) -> "Layout":
        return get_layout(self.spec.qtype)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.data.values())

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    def dequantize(self) -> np.ndarray:
        """float32 (rows, k)."""
        return self.layout.dequantize(self)

    def int_codes(self) -> np.ndarray:
        """Integer weight values c (rows, k) int16 with w = scale * c (+ min for scale-min layouts)."""
        return self.layout.int_codes(self)

    def scales(self) -> np.ndarray:
        """float32 scales, broadcastable to (rows, groups_per_row)."""
        return self.data["scales"].astype(np.float32)

    def mins(self) -> np.ndarray | None:
        """float32 per-group offsets added after scaling (scale-min layouts), else None."""
        m = self.data.get("mins")
        return None if m is None else m.astype(np.float32)

    @property
    def scale_block(self) -> int:
        """Codes sharing one weight scale along k."""
        return self.spec.scale_block(self.shape[1])

    def __repr__(self) -> str:
        s = self.spec
        gran = f"group {s.group_size}" if s.granularity == "group" else s.granularity
        sym = "sym" if s.symmetric else "asym"
        pack = f", {s.packing}" if s.packing else ""
        return (f"QTensor({s.qtype}{pack}, {sym}, {gran}, shape={self.shape}, "
                f"{self.bits_per_weight:.3f} bits/weight)")


class Layout:
    """One quantized layout. Subclasses define the class attributes and the four methods."""

    name: ClassVar[str]
    granularities: ClassVar[tuple[str, ...]]
    default_granularity: ClassVar[str] = "row"
    default_group_size: ClassVar[int] = 0
    #: group sizes (or the row, without groups) must be a multiple of this: codes per byte
    group_multiple: ClassVar[int] = 1
    packings: ClassVar[tuple[str, ...]] = ("",)
    supports_asymmetric: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        """Registers one instance per layout; a layout that leaves a method below
        unimplemented fails here, when its module is imported, not at first use."""
        super().__init_subclass__(**kwargs)
        missing = [name for name in dir(cls) if getattr(getattr(cls, name), "__isabstractmethod__", False)]
        if missing:
            raise TypeError(f"layout {cls.__name__} does not implement {', '.join(missing)}")
        _REGISTRY[cls.name] = cls()

    # --- to implement -------------------------------------------------------------
    @abstractmethod
    def components(self, spec: QuantSpec, shape: tuple[int, int]) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Name -> (dtype, shape) of every stored array; used to validate files."""

    @abstractmethod
    def quantize(self, w: np.ndarray, spec: QuantSpec, **options) -> dict[str, np.ndarray]:
        """The stored arrays of w (rows, k) float32 quantized by spec."""

    @abstractmethod
    def int_codes(self, qt: QTensor) -> np.ndarray:
        """Signed integer codes (rows, k), as the integer dot products use them."""

    @abstractmethod
    def max_abs_code(self, spec: QuantSpec) -> int:
        """Largest |int_codes| the layout can hold: bounds the integer accumulators."""

    # --- shared -------------------------------------------------------------------
    def dequantize(self, qt: QTensor) -> np.ndarray:
        rows, k = qt.shape
        codes = qt.int_codes().astype(np.float32).reshape(rows, -1, qt.scale_block)
        scales = np.broadcast_to(qt.scales(), (rows, k // qt.scale_block))[:, :, None]
        w = codes * scales
        mins = qt.mins()
        if mins is not None:
            w = w + mins[:, :, None]
        return w.reshape(rows, k)

    def make_spec(self, k: int, group_size: int | None, symmetric: bool,
                  granularity: str | None, packing: str) -> QuantSpec:
        if packing not in self.packings:
            raise UnsupportedError(f"{self.name} packings are {self.packings}, not {packing!r}")
        if granularity is None:
            granularity = "group" if group_size is not None else self.default_granularity
        if granularity not in self.granularities:
            raise UnsupportedError(
                f"{self.name} supports granularity {', '.join(self.granularities)}, not {granularity!r}")
        if granularity == "group":
            group_size = group_size if group_size is not None else self.default_group_size
            if not isinstance(group_size, (int, np.integer)) or group_size <= 0:
                raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
            multiple = self.packing_multiple(packing)
            if group_size % multiple or k % group_size:
                raise ValueError(f"{self.name}: group size {group_size} must divide the row length {k} "
                                 f"and be a multiple of {multiple}")
        elif group_size is not None:
            raise ValueError(f"group_size given with granularity {granularity!r}")
        if not symmetric and not self.supports_asymmetric:
            raise UnsupportedError(f"{self.name} has no asymmetric form")
        return QuantSpec(self.name, granularity, int(group_size or 0), bool(symmetric), packing)

    def check_shape(self, spec: QuantSpec, shape: tuple[int, int]) -> None:
        """Raise ValueError when `shape` cannot hold this spec (row length vs group size)."""
        rows, k = shape
        if rows <= 0 or k <= 0:
            raise ValueError(f"{self.name}: shape {tuple(shape)} has no weights")
        if spec.granularity not in self.granularities or spec.packing not in self.packings:
            raise UnsupportedError(f"{self.name} has no {spec.granularity!r} granularity "
                                   f"with packing {spec.packing!r}")
        if not spec.symmetric and not self.supports_asymmetric:
            raise UnsupportedError(f"{self.name} has no asymmetric form")
        multiple = self.packing_multiple(spec.packing)
        if spec.granularity == "group" and (spec.group_size <= 0 or k % spec.group_size
                                            or spec.group_size % multiple):
            raise ValueError(f"{self.name}: group size {spec.group_size} does not fit rows of {k}")
        if spec.granularity != "group" and k % multiple:
            raise ValueError(f"{self.name}: row length {k} must be a multiple of {multiple}")

    def packing_multiple(self, packing: str) -> int:
        return self.group_multiple


_REGISTRY: dict[str, Layout] = {}


def get_layout(name: str) -> Layout:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedError(f"unknown qtype {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def layouts() -> dict[str, Layout]:
    return dict(_REGISTRY)


def as_matrix(w) -> np.ndarray:
    """Validate a weight matrix: 2-D, finite, non-empty; returned as float32."""
    w = np.asarray(w)
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"expected a non-empty 2-D weight matrix, got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating) and not np.issubdtype(w.dtype, np.integer):
        raise ValueError(f"expected a float matrix, got dtype {w.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, reported below
        w = w.astype(np.float32, copy=False)
    if not np.isfinite(w).all():
        bad = np.argwhere(~np.isfinite(w))[0]
        raise FormatError(f"weight matrix contains NaN or inf (first at row {bad[0]}, column {bad[1]})")
    return w


def quantize(w, qtype: str, *, group_size: int | None = None, symmetric: bool = True,
             granularity: str | None = None, packing: str = "", **options) -> QTensor:
    """Quantize a float (rows, k) matrix to `qtype` by round-to-nearest (half to even).

    group_size: codes per scale along k (selects per-group scales); None takes the type's
    default granularity (per row for int8, ternary, binary and pow2; groups of 32 for int4).
    granularity: "tensor", "row" or "group" to choose explicitly.
    packing: ternary only, "2bit" (default) or "base3".
    """
    layout = get_layout(qtype)
    w = as_matrix(w)
    spec = layout.make_spec(w.shape[1], group_size, symmetric, granularity, packing)
    layout.check_shape(spec, w.shape)
    data = layout.quantize(w, spec, **options)
    return QTensor(spec, tuple(int(d) for d in w.shape), data)


def describe(t) -> str:
    """Short form of a stored tensor: "int4 asym g32", "ternary 2bit sym row", "float32"."""
    if not isinstance(t, QTensor):
        return str(np.asarray(t).dtype)
    s = t.spec
    gran = f"g{s.group_size}" if s.granularity == "group" else s.granularity
    return " ".join(filter(None, [s.qtype, s.packing, "sym" if s.symmetric else "asym", gran]))


def take_rows(qt: QTensor, rows: np.ndarray) -> QTensor:
    """The QTensor made of rows `rows` of qt (every layout stores rows along axis 0 of each
    component; per-tensor scales, shape (1, 1), are shared)."""
    n = qt.shape[0]
    data = {name: (a[rows] if a.shape[0] == n else a) for name, a in qt.data.items()}
    return QTensor(qt.spec, (len(rows), qt.shape[1]), data)


def from_components(spec: QuantSpec, shape: tuple[int, int], data: Mapping[str, np.ndarray],
                    where: str = "tensor") -> QTensor:
    """Build a QTensor from stored arrays, checking every component's dtype and shape."""
    try:
        layout = get_layout(spec.qtype)
    except UnsupportedError as e:
        raise UnsupportedError(f"{where}: {e}") from None
    try:
        layout.check_shape(spec, shape)
        expected = layout.components(spec, shape)
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from None
    if set(expected) != set(data):
        raise FormatError(f"{where}: components {sorted(data)} but {spec.qtype} needs {sorted(expected)}")
    for name, (dtype, cshape) in expected.items():
        a = data[name]
        if a.dtype != dtype or tuple(a.shape) != tuple(cshape):
            raise FormatError(f"{where}: component {name!r} is {a.dtype}{tuple(a.shape)}, "
                              f"expected {np.dtype(dtype)}{tuple(cshape)}")
    return QTensor(spec, (int(shape[0]), int(shape[1])), dict(data))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)
