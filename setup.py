"""Build hook for the optional C extension edgeq._native (everything else is in pyproject.toml).

The extension is compiled with cffi where a C compiler exists; without one (or if compiling
fails) the build logs a warning and the package installs without it: edgeq then runs on the
Numba or NumPy backend. SIMD files get their own -m flags (native/build_native.py).
"""

import importlib.util
import logging
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

log = logging.getLogger("edgeq.setup")
_HERE = os.path.dirname(os.path.abspath(__file__))


def _build_script():
    spec = importlib.util.spec_from_file_location(
        "edgeq_build_native", os.path.join(_HERE, "native", "build_native.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OptionalNativeBuild(build_ext):
    """build_ext that adds per-file SIMD flags and never fails the install."""

    def build_extension(self, ext):
        source_flags = _build_script().source_flags
        compile_one = self.compiler._compile

        def compile_with_flags(obj, src, ext_, cc_args, extra_postargs, pp_opts):
            flags = list(extra_postargs or []) + source_flags(src)
            return compile_one(obj, src, ext_, cc_args, flags, pp_opts)

        self.compiler._compile = compile_with_flags
        try:
            super().build_extension(ext)
        except (BaseError, CCompilerError, OSError) as e:  # no compiler, or it failed
            msg = (f"edgeq: not building the C extension {ext.name} ({type(e).__name__}: {e}); "
                   f"the numba/numpy backends will be used")
            log.warning(msg)
            print(f"WARNING: {msg}")  # setuptools' logging is often silent under pip
        finally:
            self.compiler._compile = compile_one


setup(cffi_modules=["native/build_native.py:ffibuilder"],
      cmdclass={"build_ext": OptionalNativeBuild})
