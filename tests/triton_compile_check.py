"""Compiles every Triton kernel specialization the launchers make for a GPU that need not be there.

    python tests/triton_compile_check.py ARCH      (e.g. 90 for sm_90; run without TRITON_INTERPRET)

The interpreter (the CPU test runs) executes the kernels' Python, which does not catch what only the compiler
rejects: types, layouts, constexpr branches, lowering for an architecture. Here triton's active driver is
replaced by one that names the target and never launches, and every launch of the launchers becomes a
compile (``warmup``); one architecture per process, as a kernel keeps the target it first compiled for. The
launchers run on CPU tensors with each combination of the constexpr arguments they pass (dtypes, qparam forms,
masks, blocking plans, zero-point rules, the cpu/cuda flavours), as each module's ``launch_every_specialization()``
makes them; outputs are not written. Prints one line;
exits non-zero when a kernel fails to compile or one of the modules' kernels was never compiled. Used by
tests/test_triton_compile.py.
"""

import importlib
import os
import pkgutil
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

import qkernels.triton_kernels

# Every family's Triton module, found by pattern (shared helpers are private: _name); each declares the launches
# that make its specializations.
MODULES = [importlib.import_module(f"qkernels.triton_kernels.{m.name}")
           for m in pkgutil.iter_modules(qkernels.triton_kernels.__path__) if not m.name.startswith("_")]


class CompileOnlyDriver:
    """As much of triton's active driver as JITFunction.run asks for before a launch."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def compile_only(compiled: set):
    """JITFunction.run that compiles (warmup) instead of launching, recording each kernel's name."""
    run = JITFunction.run

    def warmup_run(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        assert "cubin" in kernel.asm, f"{self.__name__}: no cubin"
        compiled.add(self.__name__)
        return kernel

    return warmup_run


def main():
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"
    (arch,) = (int(a) for a in sys.argv[1:])
    kernels = {name for m in MODULES for name, v in vars(m).items()
               if isinstance(v, JITFunction) and name.endswith("_kernel")}
    compiled: set = set()
    driver.set_active(CompileOnlyDriver(arch))
    JITFunction.run = compile_only(compiled)
    for module in MODULES:
        module.launch_every_specialization()
    missing = kernels - compiled
    if missing:
        sys.exit(f"sm_{arch}: never compiled: {sorted(missing)}")
    print(f"sm_{arch}: compiled {len(compiled)} kernels ({', '.join(sorted(compiled))}) with triton "
          f"{triton.__version__}")


if __name__ == "__main__":
    main()
