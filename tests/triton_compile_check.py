"""Compiles every Triton kernel specialization the launchers make for a GPU that need not be there.

    python tests/triton_compile_check.py ARCH      (e.g. 90 for sm_90; run without TRITON_INTERPRET)

The interpreter (the CPU test runs) executes the kernels' Python, which does not catch what only the compiler
rejects: types, layouts, constexpr branches, lowering for an architecture. Here triton's active driver is
replaced by one that names the target and never launches, and every launch of the launchers becomes a
compile (``warmup``); one architecture per process, as a kernel keeps the target it first compiled for. The
launchers run on CPU tensors with each combination of the constexpr arguments they pass (dtypes, qparam forms,
masks, blocking plans, zero-point rules, the cpu/cuda flavours); outputs are not written. Prints one line;
exits non-zero when a kernel fails to compile or one of the modules' kernels was never compiled. Used by
tests/test_triton_compile.py.
"""

import itertools
import os
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from qkernels.triton_kernels import fake_quant, fake_quant_learnable, fused_observer

MODULES = (fake_quant, fake_quant_learnable, fused_observer)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def fake_quant_launches():
    for dtype in DTYPES:
        x = torch.randn(3, 700, dtype=dtype)
        masks = (None, torch.empty_like(x, dtype=torch.bool), torch.empty((x.numel() + 7) // 8, dtype=torch.uint8))
        for mask in masks:
            out = torch.empty_like(x)
            fake_quant.per_tensor(x, out, mask, 0.1, 3, None, -128, 127, "cuda")
            for flag in (None, torch.ones(1, dtype=torch.int32)):
                fake_quant.per_tensor(x, out, mask, torch.ones(1), torch.zeros(1, dtype=torch.int32), flag, -128, 127,
                                      "cuda")
            for zp in (torch.zeros(700, dtype=torch.int32), torch.zeros(700)):
                fake_quant.per_channel(x, out, mask, torch.ones(700), zp, 1, 1, -128, 127, "cuda", True)
            if mask is not None:
                fake_quant.backward(x, mask, out)


def learnable_launches():
    # [B, O, C, I] of the three blocking plans: segments (per tensor, small), rows (C channels, inner 1), runs.
    plans = ((1, 1, 1, 1000), (1, 40, 24, 1), (1, 3, 2, 5000))
    for dtype, dims in itertools.product(DTYPES, plans):
        n = dims[0] * dims[1] * dims[2] * dims[3]
        x, out = torch.randn(n, dtype=dtype), torch.empty(n, dtype=dtype)
        q = dims[0] * dims[2]
        s, z = torch.ones(q), torch.zeros(q)
        for per_tensor in (True, False):
            fake_quant_learnable.learnable_forward(x, out, s, z, dims, -128, 127, "cuda", per_tensor)
        rules = (0, 1, 2) if dtype == torch.float32 else (1,)
        for rule, use_fma, need in itertools.product(rules, (True, False), (True, False)):
            fake_quant_learnable.learnable_backward(x, x, out, s, z, dims, -128, 127, 1.0, "cuda", rule, use_fma,
                                                    need, torch.float32, torch.float32)


def observer_launches():
    on = torch.ones(1, dtype=torch.long)
    # (x shape, channels, inner): per tensor, per channel along the last axis (rows), along the first (runs)
    for dtype, (shape, C, inner) in itertools.product(DTYPES, (((64, 50), 1, 3200), ((64, 50), 50, 1),
                                                               ((6, 900), 6, 900))):
        x = torch.randn(shape, dtype=dtype)
        flavours = ("cpu", "cuda") if dtype == torch.float32 else ("cuda",)
        for flavour, symmetric, mode in itertools.product(flavours, (False, True), (0, 1)):
            state = [torch.zeros(C), torch.zeros(C), torch.ones(C), torch.zeros(C, dtype=torch.int32)]
            fused_observer.fused_observer_update(x, on, on, *state, 0.01, -128, 127, -1 if C == 1 else 0, inner,
                                                 symmetric, mode, 1e-5, 0, flavour)


def main():
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"
    (arch,) = (int(a) for a in sys.argv[1:])
    kernels = {name for m in MODULES for name, v in vars(m).items()
               if isinstance(v, JITFunction) and name.endswith("_kernel")}
    compiled: set = set()
    driver.set_active(CompileOnlyDriver(arch))
    JITFunction.run = compile_only(compiled)
    fake_quant_launches()
    learnable_launches()
    observer_launches()
    missing = kernels - compiled
    if missing:
        sys.exit(f"sm_{arch}: never compiled: {sorted(missing)}")
    print(f"sm_{arch}: compiled {len(compiled)} kernels ({', '.join(sorted(compiled))}) with triton "
          f"{triton.__version__}")


if __name__ == "__main__":
    main()
