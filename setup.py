"""Build of qkernels: pure Python always; native extensions when they can be built, never a failed install.

QKERNELS_BUILD=auto|none|cpu|cuda   auto (default): the CPU extension when torch imports, plus the CUDA one when
                                    torch has CUDA and nvcc is found; cpu/cuda force those (and fail loudly).
QKERNELS_STRICT_BUILD=1             a failed extension fails the install (CI).
TORCH_CUDA_ARCH_LIST                CUDA archs (default "8.0;9.0+PTX").

Native builds need torch at build time: install with `pip install --no-build-isolation .`.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
MODE = os.environ.get("QKERNELS_BUILD", "auto").lower()
STRICT = os.environ.get("QKERNELS_STRICT_BUILD") == "1" or MODE in ("cpu", "cuda")
if MODE not in ("auto", "none", "cpu", "cuda"):
    sys.exit(f"QKERNELS_BUILD must be auto, none, cpu or cuda, got {MODE!r}")

# Sources by pattern (a family adds files, never a line here): the CPU extension takes the CPU kernels and every
# CPU glue file (csrc/ops/<family>_cpu.cpp) plus the eager entry points' Python module; the CUDA extension the
# CUDA kernels and every CUDA glue file (csrc/ops/<family>_cuda.cpp).
CPU_SOURCES = sorted(glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/ops/*_cpu.cpp")) + ["csrc/ops/python_entry.cpp"]
CUDA_SOURCES = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/ops/*_cuda.cpp"))
INCLUDE = [os.path.join(ROOT, "csrc", "include")]
# IEEE arithmetic exactly as written: no contraction into FMA, no fast-math (bit-exactness with aten);
# -fno-trapping-math only lets the vectorizer compute both sides of a select (no flag is ever read).
# The C++ standard is torch's choice. Warnings-as-errors is CMakeLists.txt's job: it compiles the torch-free
# sources alone, while these builds also see torch's headers, which are not warning-clean.
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
# at::parallel_for is a header template: without OpenMP here it would run every range on one thread.
OPENMP = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--extended-lambda", "--fmad=false"]

info = {"build_mode": MODE, "extensions": {}}


def git_sha():
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, stderr=subprocess.DEVNULL,
                                       text=True).strip()
    except Exception:
        return None


def native_extensions():
    """The extensions to try, and a reason for each one left out."""
    if MODE == "none":
        info["extensions"]["qkernels._C"] = "skipped: QKERNELS_BUILD=none"
        info["extensions"]["qkernels._C_cuda"] = "skipped: QKERNELS_BUILD=none"
        return []
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if MODE != "auto":
            sys.exit(f"QKERNELS_BUILD={MODE} needs torch importable at build time (use --no-build-isolation)")
        info["extensions"]["qkernels._C"] = "skipped: torch was not importable at build time"
        info["extensions"]["qkernels._C_cuda"] = "skipped: torch was not importable at build time"
        return []
    info["torch"] = torch.__version__
    exts = [
        cpp_extension.CppExtension(
            "qkernels._C",
            CPU_SOURCES,
            include_dirs=INCLUDE,
            extra_compile_args={"cxx": CXX_FLAGS + OPENMP},
            extra_link_args=OPENMP,
        )
    ]
    nvcc = cpp_extension.CUDA_HOME and os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    if MODE == "cuda" or (MODE == "auto" and torch.version.cuda and nvcc and os.path.exists(nvcc)):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        info["cuda_arch_list"] = os.environ["TORCH_CUDA_ARCH_LIST"]
        exts.append(
            cpp_extension.CUDAExtension(
                "qkernels._C_cuda",
                CUDA_SOURCES,
                include_dirs=INCLUDE,
                extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
            )
        )
    else:
        why = "torch has no CUDA" if not torch.version.cuda else "nvcc not found (CUDA_HOME)"
        info["extensions"]["qkernels._C_cuda"] = f"skipped: {why}"
    return exts


EXTENSIONS = native_extensions()


def build_ext_class():
    if not EXTENSIONS:
        return build_ext
    from torch.utils.cpp_extension import BuildExtension

    class DegradingBuildExtension(BuildExtension):
        """Builds each extension on its own; a failure drops that extension unless the build is strict."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
                info["extensions"][ext.name] = "built"
            except Exception as exc:  # compiler errors surface as several exception types
                if STRICT:
                    raise
                info["extensions"][ext.name] = f"failed: {type(exc).__name__}: {exc}"[:2000]
                print(f"qkernels: building {ext.name} failed; continuing without it ({exc})", file=sys.stderr)

        def run(self):
            super().run()
            info["git_sha"] = git_sha()
            out_dir = os.path.dirname(self.get_ext_fullpath("qkernels._C"))
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "_build_info.json"), "w") as f:
                json.dump(info, f, indent=2, sort_keys=True)

    return DegradingBuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


class BuildPyWithEnums(build_py):
    """Installs the enum table the C++ code includes (csrc/include/qkernels/enums.h) as qkernels/enums.h, where
    qkernels/enums.py reads it (in a source tree it reads the original)."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "qkernels", "enums.h")
        self.mkpath(os.path.dirname(target))
        self.copy_file(os.path.join(ROOT, "csrc", "include", "qkernels", "enums.h"), target)


setup(
    packages=["qkernels", "qkernels.reference", "qkernels.train", "qkernels.bench", "qkernels.bench.ops",
              "qkernels.triton_kernels"],
    package_dir={"qkernels.triton_kernels": "triton_kernels"},
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": build_ext_class(), "build_py": BuildPyWithEnums},
)
