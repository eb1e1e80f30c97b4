"""What the op families' public modules share (qkernels/<family>.py): argument checks whose messages name the
argument, the storage-layout helper, the test for the eager fast path, and the C++ entry points' module.

Checks raise ``RuntimeError`` naming the argument, before any work; where aten checks the same condition the
wording follows it. Checks that need the *values* of qparam tensors run only where reading them costs no device
sync (CPU tensors), or everywhere with ``QKERNELS_CHECK_VALUES=1``.
"""

import math
from typing import Optional

import torch
from torch import Tensor

from . import _library, backends
from .enums import Flavour

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _fail(msg: str):
    raise RuntimeError(msg)


def _check_input(op: str, x: Tensor):
    if x.dtype not in _FLOAT_DTYPES:
        _fail(f"{op}: `input` must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.layout != torch.strided or x.is_nested:
        _fail(f"{op}: `input` must be a strided tensor, got {'a nested tensor' if x.is_nested else x.layout}")


def _check_range(quant_min: int, quant_max: int):
    if quant_min > quant_max:
        _fail(f"`quant_min` should be less than or equal to `quant_max`, got {quant_min} > {quant_max}.")


def _check_scale_value(scale: float):
    if not (math.isfinite(scale) and scale > 0):
        _fail(f"`scale` must be a positive finite number, got {scale}")


_check_values_variable = backends.environment_reader("QKERNELS_CHECK_VALUES")


def _values_checkable(t: Tensor) -> bool:
    """Whether reading t's values costs no device sync (or syncing was asked for), outside tracing."""
    if torch.compiler.is_compiling() or (type(t) is not Tensor and isinstance(t, torch._subclasses.FakeTensor)):
        return False
    return t.is_cpu or _check_values_variable() == "1"


# Up to this many values, reading them as Python numbers costs less than reducing them with tensor ops (about
# 3 us for 16 values against 30 us).
_FEW_VALUES = 256


def _failing_values(t: Tensor, ok, ok_all):
    """t's values as a list if one fails ``ok`` (per value; ``ok_all`` tests a whole float32 copy at once), else
    None. Call only where _values_checkable(t)."""
    n = t.numel()
    if n <= _FEW_VALUES:  # (a plain loop: one value, on every per-tensor call, costs no generator)
        values = [t.item()] if n == 1 else (t if t.dim() == 1 else t.reshape(-1)).tolist()
        for v in values:
            if not ok(v):
                return values
        return None
    f = t.detach().float()
    return None if bool(ok_all(f)) else f.tolist()


def _check_scale_tensor_values(scale: Tensor):
    if not _values_checkable(scale):
        return
    bad = _failing_values(scale, lambda v: 0.0 < v < math.inf,  # (NaN fails both comparisons)
                          lambda s: torch.all(torch.isfinite(s) & (s > 0)))
    if bad is not None:
        _fail(f"`scale` must be positive and finite, got {bad}")


def _check_qparam_tensor(name: str, t, x: Tensor, numel: Optional[int] = None):
    if not isinstance(t, Tensor):
        _fail(f"`{name}` must be a Tensor, got {type(t).__name__}")
    if t.device != x.device:
        _fail(f"`{name}` must be on the same device as `input` ({x.device}), got {t.device}")
    if numel is not None and t.numel() != numel:
        _fail(f"`{name}` must have exactly {numel} element, got {t.numel()} (shape {tuple(t.shape)})")


_FLAVOUR_CPU, _FLAVOUR_CUDA = int(Flavour.Cpu), int(Flavour.Cuda)


def _flat_qparam(t: Tensor) -> Tensor:
    """``t`` as the launchers read a qparam, a contiguous float32 array: ``t`` itself when it already is (no call
    into torch, which costs more than a small kernel), else a converted copy without history."""
    if t.dtype == torch.float32 and t.is_contiguous():
        return t
    return t.detach().reshape(-1).to(torch.float32).contiguous()


def _flavour_of(x: Tensor) -> int:
    """The Flavour of x's device as the launchers take it (a plain int: read on every call)."""
    return _FLAVOUR_CUDA if x.is_cuda else _FLAVOUR_CPU


def _inner_stride(out: Tensor, axis: int) -> int:
    """Elements between consecutive channels in out's dense storage (product of sizes laid out inside axis)."""
    return out.stride(axis) if out.size(axis) > 1 else max(1, out.numel() // max(1, out.size(axis)))


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
_torch_function_mode_enabled = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)  # (Parameter disables __torch_function__: torch treats it as plain)


def _plain_eager(*tensors) -> bool:
    """Whether calling the implementations directly is indistinguishable from going through the dispatcher:
    eager mode, no torch-function or dispatch mode and no torch.func transform active, plain tensors or
    parameters only (as the C++ entry points decide: THPVariable_CheckExact). (Runs on every eager call: plain
    tests and a loop, no generator, the C predicates bound once.)"""
    if (torch.compiler.is_compiling() or _torch_function_mode_enabled() or _dispatch_modes()
            or _functorch_active()):
        return False
    for t in tensors:
        if type(t) not in _PLAIN_TYPES:
            return False
    return True


# The C++ entry points, or None without the CPU extension. They return None for any call they leave to Python.
# The families read it as _shared._entry at call time: one assignment switches it for all of them (tests do).
_entry = _library.python_module("_C")
_is_compiling = torch.compiler.is_compiling
_backend_override = backends.override
