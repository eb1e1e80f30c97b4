"""The contract harness's only hooks into qkernels internals (tests/test_contract.py and the samples use the public
API otherwise). When the package's internal layout changes, this file is the one to update:

* ``ENTRY_POINTS``: where the public functions hold the C++ entry point (``qkernels._C``,
  csrc/ops/python_entry.cpp). Today one attribute, ``qkernels.ops._entry``, which qkernels/learnable.py and
  qkernels/fused_observer.py read as well.
* ``EmulatedCudaLaunchers``: the launcher functions of the backend adapters (qkernels/_backend_native.py:
  ``per_tensor``, ``per_channel``, ``backward``, ``learnable_forward``, ``learnable_backward``,
  ``fused_observer_update``), implemented on the CUDA kernels under the CPU emulator (tests/cuda_emulator.py).
* ``emulated_cuda()``: patches ``qkernels.backends.select`` (the one dispatch point: family name -> launcher
  module) to return those launchers.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import cuda_emulator
import qkernels
from qkernels.reference.fake_quant import uses_fma

ENTRY_POINTS = ((qkernels.ops, "_entry"),)


def disable_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every public call takes the Python path, as without a built qkernels._C."""
    for holder, name in ENTRY_POINTS:
        monkeypatch.setattr(holder, name, None)


class EmulatedCudaLaunchers:
    """The launchers of the native backend on the emulated CUDA library's ops (torch.ops.qkernels_emu._<op>_cuda,
    CPU tensors), forced to the CUDA flavour: the CUDA glue rejects the CPU flavour and use_fma=False, as the
    CUDA kernels implement only aten-CUDA's rules. It has none of the native backend's eager forwards, so the
    public functions take their Python paths (autograd in Python, backward through these launchers)."""

    def __init__(self):
        self._native = cuda_emulator.launchers()

    def per_tensor(self, x, out, mask, scale, zero_point, enabled, quant_min, quant_max, flavour):
        self._native.per_tensor(x, out, mask, scale, zero_point, enabled, quant_min, quant_max, "cuda")

    def per_channel(self, x, out, mask, scale, zero_point, axis, inner, quant_min, quant_max, flavour, use_fma):
        self._native.per_channel(x, out, mask, scale, zero_point, axis, inner, quant_min, quant_max, "cuda",
                                 uses_fma("cuda", zero_point.dtype))

    def backward(self, grad, mask, out):
        self._native.backward(grad, mask, out)

    def learnable_forward(self, x, out, scale, zero_point, dims, quant_min, quant_max, flavour, per_tensor):
        self._native.learnable_forward(x, out, scale, zero_point, dims, quant_min, quant_max, "cuda", per_tensor)

    def learnable_backward(self, dy, x, dx, scale, zero_point, dims, quant_min, quant_max, grad_factor, flavour, rule,
                           use_fma, need_qgrads, ds_dtype, dz_dtype):
        return self._native.learnable_backward(dy, x, dx, scale, zero_point, dims, quant_min, quant_max, grad_factor,
                                               "cuda", rule, uses_fma("cuda", torch.float32), need_qgrads, ds_dtype,
                                               dz_dtype)

    def fused_observer_update(self, x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                              averaging_const, quant_min, quant_max, ch_axis, inner, symmetric, mode, eps,
                              symmetric_zero_point, flavour):
        self._native.fused_observer_update(x, observer_on, fake_quant_on, running_min, running_max, scale,
                                           zero_point, averaging_const, quant_min, quant_max, ch_axis, inner,
                                           symmetric, mode, eps, symmetric_zero_point, "cuda")


_emulated: list[EmulatedCudaLaunchers] = []


@contextlib.contextmanager
def emulated_cuda():
    """Inside: the public ops on CPU tensors run the emulated CUDA kernels, every family. The backend asked for
    is "reference", which the C++ entry point leaves to Python (where the patched dispatch point is)."""
    if not _emulated:
        _emulated.append(EmulatedCudaLaunchers())
    launchers = _emulated[0]
    with pytest.MonkeyPatch.context() as patch, qkernels.use_backend("reference"):
        patch.setattr(qkernels.backends, "select", lambda *args, **kwargs: launchers)
        yield
