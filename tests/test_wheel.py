"""The wheel: build it from a copy of the repository, install it into a scratch virtual
environment and use it there, from a directory where the source tree cannot be imported.

The venv sees the running interpreter's packages (numpy, cffi, gguf ...) through
--system-site-packages plus a .pth line, so nothing is downloaded; edgeq itself must come
from the wheel, which the child process checks through edgeq.__file__.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy

from edgeq.qtypes import layouts

REPO = Path(__file__).resolve().parents[1]
#: what a build needs from the checkout; caches, tests and in-place build products stay out
_IGNORE = shutil.ignore_patterns(".git", ".hypothesis", ".pytest_cache", ".benchmarks", ".ci", "tests",
                                 "build", "dist", "*.egg-info", "__pycache__", ".venv*", "*.so",
                                 "*.o", "examples")

CHILD = r"""
import json, sys
import numpy as np
import edgeq, edgeq.converters, edgeq.qtypes

w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
qt = edgeq.quantize(w, "int4", group_size=32)
y = edgeq.linear(x, qt)
err = float(np.abs(y - x @ qt.dequantize().T).max())
print(json.dumps({"edgeq": edgeq.__file__, "converters": edgeq.converters.__file__,
                  "qtypes": sorted(edgeq.qtypes.layouts()), "shape": list(y.shape), "err": err,
                  "bits": qt.bits_per_weight, "version": edgeq.__version__}))
"""


def run(cmd, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def build_wheel(src: Path, dist: Path) -> Path:
    """pip wheel without build isolation (no downloads); with isolation only if this
    environment lacks the build requirements (e.g. a venv with an old setuptools)."""
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(dist)]
    done = subprocess.run(cmd + ["--no-build-isolation"], capture_output=True, text=True)
    if done.returncode != 0:
        run(cmd)
    (wheel,) = dist.glob("edgeq-*.whl")
    return wheel


def test_wheel_installs_and_runs(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=_IGNORE)
    wheel = build_wheel(src, tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgeq/converters/__init__.py" in names and "edgeq/qtypes/int4.py" in names
    assert "edgeq/tokenizer/unicode_classes.json" in names  # package data travels too
    assert not any(n.startswith(("tests/", "converters/")) for n in names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # this environment's dependencies (a CI venv is not the base interpreter's site)
    deps = {str(Path(numpy.__file__).parents[1]), sysconfig.get_path("purelib")}
    (site / "_edgeq_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)])

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONNOUSERSITE="1", EDGEQ_BACKEND="numpy")
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = json.loads(run([str(python), "-c", CHILD], cwd=work, env=env).stdout.strip().splitlines()[-1])
    for module in ("edgeq", "converters"):
        assert Path(out[module]).is_relative_to(site), f"{module} imported from {out[module]}, not the wheel"
    assert out["qtypes"] == sorted(layouts())
    assert out["shape"] == [2, 8] and out["bits"] == 4.5 and out["err"] < 0.5
    assert (venv / "bin" / "edgeq").exists(), "the console script is installed"
