"""Build hook: everything is declared in pyproject.toml; this file only adds the optional
C++/CUDA extension (see cuda_ext/build.py for the FEDCORE_BUILD_CUDA / FEDCORE_BUILD_EXT
switches). build.py is loaded by path so that cuda_ext/__init__ (which imports torch) is
not run here."""
import importlib.util
from pathlib import Path

from setuptools import setup

_spec = importlib.util.spec_from_file_location(
    "_fedcore_cuda_ext_build", Path(__file__).resolve().parent / "cuda_ext" / "build.py")
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)
ext_modules, cmdclass = _build.get_extensions()

setup(ext_modules=ext_modules, cmdclass=cmdclass)
