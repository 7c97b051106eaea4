"""Build hook: everything is declared in pyproject.toml; this file only adds the optional
C++/CUDA extension (see cuda_ext/build.py)."""
from setuptools import setup

setup()
