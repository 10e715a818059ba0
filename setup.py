"""Build script: the pure-Python package (always) plus the optional C++ CPU extension.

The extension ``adaptive_prune._C`` (sources in ``csrc/``, design in ``docs/cpp.md``) holds
the CPU kernels of the selection ops. It needs torch at build time, which pip's isolated build
environment does not have, so install torch first and build without isolation::

    pip install torch                                  # any CPU or CUDA build, >= 2.5
    pip install --no-build-isolation .                 # or -e . for an editable install

``ADAPTIVE_PRUNE_BUILD_EXT`` controls the extension:

- unset / ``auto`` (default): build it when torch is importable, a C++ compiler and the Python
  headers are found; otherwise, or if compiling fails, install the pure-Python package (the
  ops then run the pure-PyTorch reference) and print one warning (``pip install -v`` shows
  it; ``python -m adaptive_prune info`` tells afterwards whether the extension is there).
- ``1``: build it or fail (CI uses this).
- ``0``: never build it.

torch is deliberately *not* a build requirement in pyproject.toml: an unpinned torch there
would download a CUDA build of several GB into every isolated build.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_py import build_py

PACKAGES = {
    "packages": [
        "adaptive_prune",
        "adaptive_prune.data",
        "adaptive_prune.kernels",
        "adaptive_prune.integrations",
        "adaptive_prune.integrations.vllm",
    ],
    "package_dir": {"adaptive_prune.kernels": "kernels"},
    "package_data": {"adaptive_prune.data": ["*.npz"]},
}
EXT_NAME = "adaptive_prune._C"
SOURCES = [
    "csrc/ops.cpp",
    "csrc/cpu/vec.cpp",
    "csrc/cpu/maxmin.cpp",
    "csrc/cpu/budget_scores.cpp",
    "csrc/cpu/allocate_budgets.cpp",
    "csrc/cpu/greedy_select.cpp",
    "csrc/cpu/global_greedy.cpp",
    "csrc/cpu/token_alignment.cpp",
    "csrc/cpu/pareto_select.cpp",
]
HOW_TO = (
    "install torch first, then `pip install --no-build-isolation .` (see docs/cpp.md); "
    "set ADAPTIVE_PRUNE_BUILD_EXT=0 to skip the extension on purpose"
)


def _mode() -> str:
    value = os.environ.get("ADAPTIVE_PRUNE_BUILD_EXT", "auto").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("1", "true", "yes", "on"):
        return "force"
    if value in ("0", "false", "no", "off"):
        return "off"
    raise SystemExit(f"ADAPTIVE_PRUNE_BUILD_EXT={value!r}: expected 0, 1 or auto")


_SKIPPED: list[str] = []  # why the extension is not built (printed once, at build time)


def _warn_skipped() -> None:
    if _SKIPPED:
        sys.stderr.write(
            "\n" + "=" * 78 + "\nWARNING: adaptive_prune is installed WITHOUT its C++ CPU "
            f"extension: {_SKIPPED[0]}.\nEverything works; the CPU ops run the pure-PyTorch "
            f"reference, which is much slower.\nTo build it: {HOW_TO}.\n" + "=" * 78 + "\n"
        )
        _SKIPPED.clear()


class BuildPy(build_py):
    """Prints the "no extension" warning once, during the build."""

    def run(self):
        super().run()
        _warn_skipped()


def _compiler_problem() -> str | None:
    if sys.platform == "win32":
        return None  # MSVC is located by setuptools itself
    cxx = os.environ.get("CXX", "c++").split()[0]
    if shutil.which(cxx) is None:
        return f"no C++ compiler found (looked for {cxx!r}; set CXX to use another one)"
    include = sysconfig.get_paths().get("include") or ""
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"the Python headers are missing ({include}/Python.h; install python3-dev)"
    return None


def _extension(mode: str):
    """(ext_modules, cmdclass) for the C++ extension, or ([], {}) with the reason recorded."""
    if mode == "off":
        _SKIPPED.append("disabled by ADAPTIVE_PRUNE_BUILD_EXT=0")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as exc:
        reason = (
            f"torch is not importable at build time ({exc}); pip's isolated build "
            "environment does not contain it"
        )
        if mode == "force":
            raise SystemExit(f"ADAPTIVE_PRUNE_BUILD_EXT=1 but {reason}: {HOW_TO}") from exc
        _SKIPPED.append(reason)
        return [], {}
    problem = _compiler_problem()
    if problem is not None:
        if mode == "force":
            raise SystemExit(f"ADAPTIVE_PRUNE_BUILD_EXT=1 but {problem}")
        _SKIPPED.append(problem)
        return [], {}

    # -O3: vectorise the fixed-order loops; -ffp-contract=off: no FMA contraction, so every
    # sum keeps the order written in the source (bitwise-reproducible results on any ISA);
    # -fopenmp: ATen's parallel_for is header code that needs it (torch uses OpenMP on Linux).
    cxx = ["-O3", "-g0", "-ffp-contract=off", "-fno-math-errno", "-fvisibility=hidden"]
    link = []
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if sys.platform == "win32":
        cxx = ["/O2", "/fp:precise", "/openmp"]
    # py_limited_api=True: torch defines Py_LIMITED_API (CPython 3.10 ABI) itself.
    macros = [("ADAPTIVE_PRUNE_TORCH_VERSION", f'"{torch.__version__}"')]

    class BuildExt(BuildExtension):
        """torch's BuildExtension; in auto mode a failed build falls back to pure Python."""

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as exc:  # noqa: BLE001 (any compiler/linker/toolchain failure)
                if mode == "force":
                    raise
                self.extensions = []
                self.distribution.ext_modules = []
                _SKIPPED.append(f"building it failed ({type(exc).__name__}: {exc})")
                _warn_skipped()

    ext = CppExtension(
        EXT_NAME,
        SOURCES,
        define_macros=macros,
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
        py_limited_api=True,
    )
    print(
        f"adaptive_prune: building the C++ CPU extension against torch {torch.__version__} "
        f"({platform.machine()})",
        file=sys.stderr,
    )
    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = _extension(_mode())
setup(
    **PACKAGES,
    ext_modules=ext_modules,
    cmdclass={"build_py": BuildPy, **cmdclass},
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
