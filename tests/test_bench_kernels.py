"""edgeq bench kernels covers every weight kind of the op table (figures are reported by the
benchmark, never asserted)."""

import numpy as np
import pytest

from edgeq import bench_kernels
from edgeq.kernels.table import WEIGHT_KINDS


def test_every_weight_kind_has_a_benchmark_layout():
    assert set(bench_kernels.KIND_SPECS) == set(WEIGHT_KINDS)


@pytest.mark.parametrize("kind", WEIGHT_KINDS)
def test_random_weights_are_valid_tensors_of_the_kind(kind):
    qt = bench_kernels.random_weight(kind, (16, 128), np.random.default_rng(0))
    assert qt.shape == (16, 128) and qt.spec == bench_kernels.KIND_SPECS[kind]


def test_cli_names_an_unknown_backend(capsys):
    from edgeq.cli import main
    assert main(["bench", "kernels", "--backend", "fortran"]) == 2
    assert "unknown backend 'fortran'" in capsys.readouterr().err
