"""Build script: the pure-Python package (always) plus the optional C++ CPU extension."""

from setuptools import setup

setup(
    packages=["adaptive_prune", "adaptive_prune.data", "adaptive_prune.kernels"],
    package_dir={"adaptive_prune.kernels": "kernels"},
    package_data={"adaptive_prune.data": ["*.npz"]},
)
