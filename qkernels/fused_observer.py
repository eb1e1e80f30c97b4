"""Fused moving-average observer + fake quantization (``torch.fused_moving_avg_obs_fake_quant``).

``qkernels.fused_moving_avg_obs_fake_quant(x, observer_on, fake_quant_on, running_min, running_max, scale,
zero_point, averaging_const, quant_min, quant_max, ch_axis, per_row_fake_quant=False, symmetric_quant=False,
*, qparams="fused", eps=float32 eps, symmetric_zero_point=0)``: torch's arguments; the math is
``qkernels.reference.fused_observer`` (``qparams="fused"``: torch's fused op, ``"observer"``: the unfused
torch.ao observer). Unlike torch's op it takes fp32, fp16 and bf16 ``x`` (stats and qparams in fp32), any
``ch_axis``, and reads the flags where they live (nonzero after truncation toward zero = on): no host
sync for CUDA tensors, and no data-dependent Python branch under compile/export or on CUDA tensors (on
CPU tensors in eager mode the per-channel fake-quant flag is read on the host, ``fake_quant._host_flag``).

Two registered ops make it up, so that compile/export see a functional, differentiable fake-quant step:

* ``_fused_observer_update(Tensor x, Tensor observer_on, Tensor fake_quant_on, Tensor(a!) running_min,
  Tensor(b!) running_max, Tensor(c!) scale, Tensor(d!) zero_point, float averaging_const, int quant_min,
  int quant_max, int ch_axis, bool per_row, bool symmetric, str qparams, float eps, int symmetric_zero_point)
  -> ()``: the observer and qparam steps, in place;
* then the fake-quant ops of ``qkernels.fake_quant`` with the tensor qparams and the ``fake_quant_on`` flag (per
  tensor: the tensor-qparams op's own flag; per channel: the per-channel op, then ``where(on, y, x)``).

The update runs on the backend ``qkernels.backends`` picks (family ``fused_observer``): the C++ kernel for CPU
tensors (flags read on the host, which is no sync; no pass over x while the observer is off), the CUDA or
Triton kernels for CUDA tensors (a min/max pass whose CTAs/programs read the observer flag on the device and
skip x while it is off, then one per-channel step that folds the partial results and writes the state), or
PyTorch ops on the device (reference; its reduction runs even while the observer is off). Flags are read
the same way everywhere, nonzero after truncation toward zero (torch's CUDA op counts only exactly 1 as on;
the flags torch.ao's modules keep are 0 or 1, where the two readings agree). On CUDA tensors the moving
average is one FMA, as nvcc compiles aten's CUDA kernel under its default ``--fmad=true`` (an assumption until
``test_op_matches_torch_fused_op_on_cuda`` runs on a GPU; ``qkernels.reference.fused_observer.update_running``).

Per-channel running stats that start empty (torch.ao's per-channel observers) are sized on the first eager
call, as torch does; under compile or export they must already have ``x.size(ch_axis)`` elements.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _shared, backends, fake_quant
from ._launchers import LauncherContract
from ._shared import (
    _backend_override,
    _check_input,
    _check_range,
    _fail,
    _flavour_of,
    _inner_stride,
    _is_compiling,
    _plain_eager,
)
from .fake_quant import (  # the fused observer's fake quantization is the fake-quant family's
    _call,
    _check_qparams_not_differentiable,
    _host_flag,
    _mask_request,
    _PER_TENSOR_TENSOR,
    fake_quantize_per_channel_affine,
)
from .enums import QParamsMode
from .reference.fused_observer import QPARAMS_MODES, flag_on_device

# The kernels' QParamsMode of each `qparams` name ("fused" -> Fused, "observer" -> Observer).
_MODES = {name: int(QParamsMode[name.capitalize()]) for name in QPARAMS_MODES}

_FAMILY = "fused_observer"
# The family's launcher contract (qkernels/_launchers.py): the observer and qparam step in place on contiguous
# state (float32 running_min/max and scale, int32 or int64 zero point, C = running_min.numel() values each), x
# (dense, numel > 0) in storage order as [outer, C, inner]; the flags are one-element tensors read where they
# live; mode a QParamsMode. The C++ eager forward per tensor (ARCHITECTURE.md) adds the fake quantization.
LAUNCHERS = LauncherContract(_FAMILY, {
    "update": "(Tensor x, Tensor observer_on, Tensor fake_quant_on, Tensor(a!) running_min, Tensor(b!) running_max, "
              "Tensor(c!) scale, Tensor(d!) zero_point, float averaging_const, int quant_min, int quant_max, "
              "int inner, bool symmetric, int mode, float eps, int symmetric_zero_point, int flavour) -> ()",
}, eager=("per_tensor",))

__all__ = ["fused_moving_avg_obs_fake_quant", "observer_update"]

_F32_EPS = torch.finfo(torch.float32).eps
# flag dtypes the kernels read (csrc/include/qkernels/fused_observer_kernels.h, FlagType): the real ones
_FLAG_DTYPES = (torch.bool, torch.int8, torch.uint8, torch.int16, torch.uint16, torch.int32, torch.uint32,
                torch.int64, torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, quant_min, quant_max,
           ch_axis, per_row, qparams, sized=True):
    """Every argument check; with sized=False all but the state's sizes (before sizing empty state)."""
    op = "fused_moving_avg_obs_fake_quant"
    _check_input(op, x)
    device = x.device
    for name, t in (("observer_on", observer_on), ("fake_quant_on", fake_quant_on), ("running_min", running_min),
                    ("running_max", running_max), ("scale", scale), ("zero_point", zero_point)):
        if not isinstance(t, Tensor):
            _fail(f"{op}: `{name}` must be a Tensor, got {type(t).__name__}")
        if t.device != device:
            _fail(f"{op}: `{name}` must be on the same device as `input` ({device}), got {t.device}")
    for name, t in (("observer_on", observer_on), ("fake_quant_on", fake_quant_on)):
        if t.numel() != 1 or t.dtype not in _FLAG_DTYPES:
            _fail(f"{op}: `{name}` must be a one-element bool, integer or floating-point tensor (not complex or "
                  f"float8), got {t.dtype} {tuple(t.shape)}")
    for name, t in (("running_min", running_min), ("running_max", running_max), ("scale", scale)):
        if t.dtype != torch.float32:
            _fail(f"{op}: `{name}` must be float32, got {t.dtype}")
    if zero_point.dtype not in (torch.int32, torch.int64):
        _fail(f"{op}: `zero_point` must be int32 or int64, got {zero_point.dtype}")
    _check_range(quant_min, quant_max)
    if qparams not in QPARAMS_MODES:
        _fail(f"{op}: `qparams` must be one of {QPARAMS_MODES}, got {qparams!r}")
    if per_row:
        _check_ch_axis(x, ch_axis)
    if not sized:
        return
    want = x.size(ch_axis) if per_row else 1
    for name, t in (("running_min", running_min), ("running_max", running_max), ("scale", scale),
                    ("zero_point", zero_point)):
        if t.numel() != want:
            _fail(f"{op}: `{name}` must have {want} element(s) for "
                  f"{'per-channel quantization along ch_axis' if per_row else 'per-tensor quantization'}, "
                  f"got {t.numel()}")


def _check_ch_axis(x: Tensor, ch_axis: int):
    if not -x.dim() <= ch_axis < x.dim():
        _fail(f"fused_moving_avg_obs_fake_quant: `ch_axis` must be in [{-x.dim()}, {x.dim() - 1}] for a "
              f"{x.dim()}-D input, got {ch_axis}")


def _is_dense(x: Tensor) -> bool:
    """Whether x's elements fill its storage span exactly once (any dimension order)."""
    if x.is_contiguous():  # the common case, without the sort below
        return True
    expected = 1
    for size, stride in sorted(((sz, st) for sz, st in zip(x.shape, x.stride()) if sz != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def _update_impl(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const,
                 quant_min, quant_max, ch_axis, per_row, symmetric, qparams, eps, symmetric_zero_point):
    _check(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, quant_min, quant_max,
           ch_axis, per_row, qparams)
    if x.numel() == 0:
        return
    # The kernels walk x in storage order as [outer, channels, inner] and update contiguous state.
    x = x.detach()
    if not _is_dense(x):
        x = x.contiguous()
    inner = _inner_stride(x, ch_axis % x.dim()) if per_row else x.numel()
    state = (running_min, running_max, scale, zero_point)
    work = [t if t.is_contiguous() else t.contiguous() for t in state]
    backends.select(x, quant_min, quant_max, _FAMILY).update(
        x, observer_on, fake_quant_on, *work, float(averaging_const), quant_min, quant_max, inner, symmetric,
        _MODES[qparams], float(eps), symmetric_zero_point, _flavour_of(x))
    for t, w in zip(state, work):
        if w is not t:
            t.copy_(w)


def _update_fake(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const,
                 quant_min, quant_max, ch_axis, per_row, symmetric, qparams, eps, symmetric_zero_point):
    _check(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, quant_min, quant_max,
           ch_axis, per_row, qparams)


_lib = torch.library.Library("qkernels", "FRAGMENT")
_lib.define(
    "_fused_observer_update(Tensor x, Tensor observer_on, Tensor fake_quant_on, Tensor(a!) running_min, "
    "Tensor(b!) running_max, Tensor(c!) scale, Tensor(d!) zero_point, float averaging_const, int quant_min, "
    "int quant_max, int ch_axis, bool per_row, bool symmetric, str qparams, float eps, int symmetric_zero_point) "
    "-> ()"
)
_lib.impl("_fused_observer_update", _update_impl, "CompositeExplicitAutograd")
torch.library.register_fake("qkernels::_fused_observer_update", _update_fake, lib=_lib)
_fused_observer_update = torch.ops.qkernels._fused_observer_update


def _size_per_channel_state(x, ch_axis, running_min, running_max, scale, zero_point):
    """torch.ao's per-channel buffers start as stats [0] and qparams [1]: the first eager call sizes them to [C],
    stats at (+inf, -inf), as torch's op does (its qparams stay uninitialised; here 1.0 and 0). Under compile
    or export they must be sized already; wrong non-empty sizes are left to the update op's check. Called only
    when some size differs, after the other argument checks."""
    channels = x.size(ch_axis)
    if torch.compiler.is_compiling():
        _fail("fused_moving_avg_obs_fake_quant: size the per-channel running stats and qparams to "
              f"`input.size(ch_axis)` ({channels}) before compiling")
    with torch.no_grad():
        if running_min.numel() == 0 and running_max.numel() == 0:
            running_min.resize_(channels).fill_(float("inf"))
            running_max.resize_(channels).fill_(float("-inf"))
        if scale.numel() != channels:
            scale.resize_(channels).fill_(1.0)
        if zero_point.numel() != channels:
            zero_point.resize_(channels).zero_()


def observer_update(input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                    averaging_const, quant_min, quant_max, ch_axis, per_row_fake_quant, symmetric_quant, *,
                    qparams="fused", eps=_F32_EPS, symmetric_zero_point=0) -> None:
    """The observer and qparam step of ``fused_moving_avg_obs_fake_quant`` alone (no fake quantization),
    in place; sizes empty per-channel state on the first eager call."""
    if _shared._entry is not None and not _is_compiling() and _shared._entry.fused_observer_update(
            input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const,
            quant_min, quant_max, ch_axis, per_row_fake_quant, symmetric_quant, qparams, eps, symmetric_zero_point,
            _backend_override()):
        return  # plain eager, sized state, native backend: one C++ call
    if per_row_fake_quant:
        _check_ch_axis(input, ch_axis)
        if not all(t.numel() == input.size(ch_axis) for t in (running_min, running_max, scale, zero_point)):
            _check(input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, quant_min,
                   quant_max, ch_axis, True, qparams, sized=False)  # fail before resizing anything
            _size_per_channel_state(input, ch_axis, running_min, running_max, scale, zero_point)
    # The registered op for compile, export and modes; in plain eager mode its implementation directly (the
    # dispatcher's Python layers cost more than the update of a small tensor).
    update = _update_impl if _plain_eager(input, observer_on, fake_quant_on, running_min, running_max, scale,
                                          zero_point) else _fused_observer_update
    update(input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, float(averaging_const),
           quant_min, quant_max, ch_axis, bool(per_row_fake_quant), bool(symmetric_quant), qparams, float(eps),
           int(symmetric_zero_point))


def _per_tensor_eager(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, quant_min,
                      quant_max, ch_axis, qparams):
    """The native backends' one-call per-tensor step (their launchers' ``per_tensor_eager``) for plain eager calls,
    after every argument check; else None."""
    if not _plain_eager(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point):
        return None
    _check(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, quant_min, quant_max,
           ch_axis, False, qparams)
    _check_qparams_not_differentiable(scale, zero_point)
    return getattr(backends.select(x, quant_min, quant_max, _FAMILY), "per_tensor_eager", None)


def fused_moving_avg_obs_fake_quant(
    input: Tensor,
    observer_on: Tensor,
    fake_quant_on: Tensor,
    running_min: Tensor,
    running_max: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    averaging_const: float,
    quant_min: int,
    quant_max: int,
    ch_axis: int,
    per_row_fake_quant: bool = False,
    symmetric_quant: bool = False,
    *,
    qparams: str = "fused",
    eps: float = _F32_EPS,
    symmetric_zero_point: int = 0,
) -> Tensor:
    """Drop-in for ``torch.fused_moving_avg_obs_fake_quant`` (see the module docstring); updates
    running_min/max, scale and zero_point in place and returns the fake-quantized input (gradient: the
    straight-through mask)."""
    if _shared._entry is not None and not _is_compiling():  # plain eager per-tensor calls: one C++ call
        out = _shared._entry.fused_moving_avg_obs_fake_quant(
            input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const,
            quant_min, quant_max, ch_axis, per_row_fake_quant, symmetric_quant, qparams, eps, symmetric_zero_point,
            _backend_override(), fake_quant._PACK_MASKS)
        if out is not None:
            return out
    if input.numel() == 0:
        return input.clone()
    if not per_row_fake_quant:
        eager = _per_tensor_eager(input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                                  quant_min, quant_max, ch_axis, qparams)
        if eager is not None:  # the native backends in plain eager mode: the whole step in one C++ call
            return eager(input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                         float(averaging_const), quant_min, quant_max, bool(symmetric_quant),
                         _MODES[qparams], float(eps), int(symmetric_zero_point),
                         *_mask_request(input))
    observer_update(input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                    averaging_const, quant_min, quant_max, ch_axis, per_row_fake_quant, symmetric_quant,
                    qparams=qparams, eps=eps, symmetric_zero_point=symmetric_zero_point)
    # The fake-quant ops through their public entry (fake_quant._call): in plain eager mode their implementations
    # directly, with the C++ autograd node on the native backends; otherwise the registered ops. As in torch's
    # op, the per-tensor step (the tensor-qparams op with its flag) does not check the qparams it computed (a NaN
    # input gives a NaN scale and NaN outputs), while the per-channel step checks them (a NaN input makes its
    # zero point INT32_MIN: an error).
    if not per_row_fake_quant:
        return _call(_PER_TENSOR_TENSOR, input, (scale, zero_point, fake_quant_on, quant_min, quant_max),
                     (input, scale, zero_point, fake_quant_on), scale, zero_point)
    # The per-channel op has no enable flag: read on the host where that is free (skipping the fake
    # quantization while it is off), else where(on, y, x).
    on = _host_flag(fake_quant_on, input)
    if on is False:
        return input.clone()
    y = fake_quantize_per_channel_affine(input, scale, zero_point.to(torch.int32), ch_axis, quant_min, quant_max)
    return y if on else torch.where(flag_on_device(fake_quant_on), y, input)
