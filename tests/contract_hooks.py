"""The contract harness's only hooks into qkernels internals (tests/test_contract.py and the samples use the public
API otherwise). When the package's internal layout changes, this file is the one to update:

* ``ENTRY_POINTS``: where the public functions find the C++ entry point (``qkernels._C``,
  csrc/ops/python_entry.cpp): ``qkernels._shared._entry``, which every family reads at call time.
* ``EmulatedCudaLaunchers``: a family's launchers (its launcher contract, qkernels/_launchers.py) on the CUDA
  kernels under the CPU emulator (tests/cuda_emulator.py), forced to the CUDA flavour.
* ``emulated_cuda()``: patches ``qkernels.backends.select`` (the one dispatch point: family name -> launchers) to
  return those launchers; ``on(target)``: inside, the public ops run on a backend by name or, for
  ``EMULATED_CUDA``, on the emulated CUDA kernels (the targets of ``targets(device)``).
"""

from __future__ import annotations

import contextlib
import importlib

import pytest

import cuda_emulator
import qkernels
from qkernels.enums import Flavour

ENTRY_POINTS = ((qkernels._shared, "_entry"),)


def disable_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every public call takes the Python path, as without a built qkernels._C."""
    for holder, name in ENTRY_POINTS:
        monkeypatch.setattr(holder, name, None)


class EmulatedCudaLaunchers:
    """The native backend's launchers of one family on the emulated CUDA library's ops (torch.ops.qkernels_emu,
    CPU tensors), with the arguments ``flavour`` and ``use_fma`` (found by the contract's parameter names) forced
    to Cuda and True: the CUDA glue rejects the CPU flavour and use_fma=False, as the CUDA kernels implement only
    aten-CUDA's rules. It has none of the native backend's eager forwards, so the public functions take their
    Python paths (autograd in Python, backward through these launchers)."""

    def __init__(self, family: str):
        contract = importlib.import_module(f"qkernels.{family}").LAUNCHERS
        native = cuda_emulator.launchers(family)
        forced = {"flavour": Flavour.Cuda, "use_fma": True}
        for name in contract.launchers:
            positions = {i: forced[p] for i, p in enumerate(contract.parameters(name)) if p in forced}

            def launch(*args, _op=getattr(native, name), _positions=positions):
                return _op(*(_positions.get(i, a) for i, a in enumerate(args)))

            setattr(self, name, launch)


_emulated: dict[str, EmulatedCudaLaunchers] = {}


def _emulated_launchers(x, quant_min, quant_max, family="fake_quant"):
    if family not in _emulated:
        _emulated[family] = EmulatedCudaLaunchers(family)
    return _emulated[family]


@contextlib.contextmanager
def emulated_cuda():
    """Inside: the public ops on CPU tensors run the emulated CUDA kernels, every family. The backend asked for
    is "reference", which the C++ entry point leaves to Python (where the patched dispatch point is)."""
    with pytest.MonkeyPatch.context() as patch, qkernels.use_backend("reference"):
        patch.setattr(qkernels.backends, "select", _emulated_launchers)
        yield


EMULATED_CUDA = "cuda-emulated"


def targets(device: str = "cpu") -> list[str]:
    """The backends that run on ``device`` here (conftest.backends_for), and the emulated CUDA kernels."""
    from conftest import backends_for

    return backends_for(device) + [EMULATED_CUDA]


def on(target: str):
    """A context in which the public ops run on ``target`` (a backend name, or EMULATED_CUDA)."""
    return emulated_cuda() if target == EMULATED_CUDA else qkernels.use_backend(target)
