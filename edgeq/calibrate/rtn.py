"""Round to nearest: the baseline every other weight algorithm is measured against.

Each group's grid covers its own min and max; every weight takes the nearest code (half to
even). No calibration data. This is edgeq.quantize, named here so that a recipe's algorithm
"rtn" has the same signature as the others.
"""

from edgeq.calibrate.grid import Grid
from edgeq.qtypes import QTensor


def rtn(w, grid: Grid = Grid()) -> QTensor:
    """Quantize w (rows, k) to the grid's type by round to nearest."""
    return grid.rtn(w)
