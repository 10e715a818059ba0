"""Build script: the pure-Python package (always) plus the optional C++ CPU core.

The extension ``adaptive_prune._core`` (sources ``csrc/*.cpp``, design in ``docs/cpp.md``)
holds the CPU kernels of the selection ops. It works on raw buffers and is bound with pybind11:
it needs no torch at build time, so pip's default isolated build (build requirements:
setuptools, wheel, pybind11) builds it, and one wheel works with any supported torch::

    pip install .            # or -e . for an editable install, or python -m build --wheel

``ADAPTIVE_PRUNE_BUILD_EXT`` controls the extension:

- unset / ``auto`` (default): build it when a C++ compiler and the Python headers are found;
  otherwise, or if compiling fails, install the pure-Python package (the ops then run the
  pure-PyTorch reference) and print one warning (``pip install -v`` shows it; ``python -m
  adaptive_prune info`` and the first CPU call tell afterwards that the extension is missing).
- ``1``: build it or fail (CI uses this).
- ``0``: never build it.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import sys
import sysconfig

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

PACKAGES = {
    # every package under adaptive_prune/, plus the top-level kernels/ folder installed as
    # adaptive_prune.kernels
    "packages": [
        *find_packages(include=["adaptive_prune", "adaptive_prune.*"]),
        "adaptive_prune.kernels",
    ],
    "package_dir": {"adaptive_prune.kernels": "kernels"},
    "package_data": {"adaptive_prune.data": ["*.npz"]},
}
EXT_NAME = "adaptive_prune._core"
HERE = os.path.dirname(os.path.abspath(__file__))
# one file per op plus the shared engine and module init: adding an op adds a file, not a line
SOURCES = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*.cpp")))
DEPENDS = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*.h")))
HOW_TO = (
    "install a C++ compiler (g++ or clang) and the Python headers (python3-dev), then "
    "reinstall: pip install --force-reinstall --no-deps adaptive_prune (see docs/cpp.md); "
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
        import pybind11
    except ImportError as exc:  # only without build isolation, where pybind11 is not installed
        reason = f"pybind11 is not importable at build time ({exc}): pip install pybind11"
        if mode == "force":
            raise SystemExit(f"ADAPTIVE_PRUNE_BUILD_EXT=1 but {reason}") from exc
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
    # -fno-math-errno: sqrt/exp without errno bookkeeping (no change to any value);
    # -fvisibility=hidden: only PyInit__core is exported. No OpenMP: the kernels run their own
    # std::threads (torch.get_num_threads() of them, passed by the Python wrapper).
    if sys.platform == "win32":
        cxx = ["/O2", "/fp:precise", "/std:c++17", "/EHsc"]
        link = []
    else:
        cxx = ["-std=c++17", "-O3", "-g0", "-ffp-contract=off", "-fno-math-errno"]
        cxx.append("-fvisibility=hidden")
        link = ["-pthread"] if sys.platform.startswith("linux") else []
        cxx += link

    class BuildExt(build_ext):
        """In auto mode a failed build falls back to pure Python (one warning)."""

        def build_extensions(self):
            if not self.parallel:  # one compiler process per core (one file per op)
                self.parallel = os.cpu_count() or 1
            try:
                super().build_extensions()
            except Exception as exc:  # noqa: BLE001 (any compiler/linker/toolchain failure)
                if mode == "force":
                    raise
                self.extensions = []
                self.distribution.ext_modules = []
                _SKIPPED.append(f"building it failed ({type(exc).__name__}: {exc})")
                _warn_skipped()

    ext = Extension(
        EXT_NAME,
        SOURCES,
        include_dirs=[pybind11.get_include(), "csrc"],
        depends=DEPENDS,
        language="c++",
        extra_compile_args=cxx,
        extra_link_args=link,
    )
    print(
        f"adaptive_prune: building the C++ CPU core ({len(SOURCES)} files, pybind11 "
        f"{pybind11.__version__}, {platform.machine()})",
        file=sys.stderr,
    )
    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = _extension(_mode())
setup(
    **PACKAGES,
    ext_modules=ext_modules,
    cmdclass={"build_py": BuildPy, **cmdclass},
)
