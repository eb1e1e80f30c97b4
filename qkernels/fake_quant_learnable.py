"""Learnable (LSQ) fake quantization: argument checks, torch.library registration, fake kernels, autograd.

Public functions (aten's arguments, plus per-group and a zero-point rounding choice):

* ``fake_quantize_learnable_per_tensor_affine(x, scale, zero_point, quant_min, quant_max, grad_factor=1.0)``
* ``fake_quantize_learnable_per_channel_affine(x, scale, zero_point, axis, quant_min, quant_max, grad_factor=1.0)``
* ``fake_quantize_learnable_per_group_affine(x, scale, zero_point, axis, group_size, quant_min, quant_max,
  grad_factor=1.0)``: one quantizer per ``group_size`` consecutive elements along ``axis``; scale/zero_point
  have ``x``'s shape with ``size(axis) // group_size`` at ``axis``.

All take a keyword ``zero_point_rounding="torch" | "consistent"``. The math (forward, per-element gradients,
both rounding modes) is ``qkernels.reference.fake_quant_learnable``; ``dscale``/``dzero_point`` are float32
sums over each quantizer's elements, cast to the qparams' dtypes.

Registered ops (namespace ``qkernels``; ``axis=None`` is per-tensor, ``group_size=None`` per-channel):

* ``fake_quantize_learnable(Tensor self, Tensor scale, Tensor zero_point, int? axis, int? group_size,
  int quant_min, int quant_max, float grad_factor=1.0, str zero_point_rounding="torch") -> Tensor``
* ``fake_quantize_learnable_backward(Tensor grad, Tensor self, Tensor scale, Tensor zero_point, int? axis,
  int? group_size, int quant_min, int quant_max, float grad_factor, str zero_point_rounding,
  bool need_qgrads=True) -> (Tensor dx, Tensor dscale, Tensor dzero_point)``: one fused pass over x and dy
  (dx plus float32 partial sums, each formed in a fixed order, then summed in float64: deterministic, and
  more accurate than a float32 ``torch.sum``); with ``need_qgrads=False`` only dx (the qparam grads are then
  empty).

Scale and zero point are read on the device (no host sync) except by the value checks on CPU tensors.
Outputs keep ``x``'s dense layout (per-group: contiguous). fp32/fp16/bf16 run on the kernels, math in fp32.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import _shared, backends
from ._launchers import LauncherContract
from ._shared import (
    _backend_override,
    _check_input,
    _check_qparam_tensor,
    _check_range,
    _check_scale_tensor_values,
    _fail,
    _failing_values,
    _flat_qparam,
    _flavour_of,
    _inner_stride,
    _is_compiling,
    _plain_eager,
    _values_checkable,
)
from .enums import ZpRule
from .reference.fake_quant import default_flavour, uses_fma
from .reference.fake_quant_learnable import ZERO_POINT_ROUNDINGS, lsq_grad_factor, qparam_shape

__all__ = [
    "fake_quantize_learnable_per_tensor_affine",
    "fake_quantize_learnable_per_channel_affine",
    "fake_quantize_learnable_per_group_affine",
    "fake_quantize_learnable",
    "fake_quantize_learnable_backward",
    "lsq_grad_factor",
]

_FAMILY = "fake_quant_learnable"

# The family's launcher contract (qkernels/_launchers.py): x, out, dy and dx share one dense layout, walked in
# storage order as [B, O, C, I]; scale and zero point are float32 [B * C] (the zero point unrounded);
# csrc/include/qkernels/fake_quant_learnable_kernels.h. backward writes dx and returns (dscale, dzero_point) per
# quantizer in ds_dtype / dz_dtype, from fixed-order partial sums finished in float64 (empty tensors when
# need_qgrads is false). The C++ eager forward (ARCHITECTURE.md) adds the layout and the autograd node.
LAUNCHERS = LauncherContract(_FAMILY, {
    "forward": "(Tensor x, Tensor(a!) out, Tensor scale, Tensor zero_point, int B, int O, int C, int I, "
               "int quant_min, int quant_max, int flavour, bool per_tensor) -> ()",
    "backward": "(Tensor dy, Tensor x, Tensor(a!) dx, Tensor scale, Tensor zero_point, int B, int O, int C, int I, "
                "int quant_min, int quant_max, float grad_factor, int flavour, int rule, bool use_fma, "
                "bool need_qgrads, ScalarType ds_dtype, ScalarType dz_dtype) -> (Tensor, Tensor)",
}, eager=("forward",))
# Backward zero-point rules of the kernels (qkernels.enums.ZpRule), as plain ints: compared on every call.
_RULE_TORCH_PER_TENSOR, _RULE_TORCH, _RULE_CONSISTENT = (int(ZpRule.TorchPerTensor), int(ZpRule.Torch),
                                                         int(ZpRule.Consistent))


# ----------------------------------------------------------------------------------------------------------
# Checks (messages name the argument; aten's wording where aten checks the same thing).
# ----------------------------------------------------------------------------------------------------------
def _check(x, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor, zero_point_rounding):
    op = ("fake_quantize_learnable_per_tensor_affine" if axis is None else
          "fake_quantize_learnable_per_channel_affine" if group_size is None else
          "fake_quantize_learnable_per_group_affine")
    _check_input(op, x)
    _check_qparam_tensor("scale", scale, x)
    _check_qparam_tensor("zero_point", zero_point, x)
    if not scale.is_floating_point():
        _fail(f"{op}: `scale` must be a floating-point tensor, got {scale.dtype}")
    if zero_point.is_complex() or zero_point.dtype == torch.bool:
        _fail(f"{op}: `zero_point` must be an integer or floating-point tensor, got {zero_point.dtype}")
    if scale.shape != zero_point.shape:
        _fail(f"{op}: `scale` and `zero_point` must have the same shape, got {tuple(scale.shape)} and "
              f"{tuple(zero_point.shape)}")
    if axis is None:
        if scale.numel() != 1:
            _fail(f"{op}: `scale` and `zero_point` must have exactly one element, got shape {tuple(scale.shape)}")
    else:
        if x.dim() == 0:
            _fail(f"{op}: `input` must have at least one dimension")
        if not -x.dim() <= axis < x.dim():
            _fail(f"{op}: `axis` must be in [{-x.dim()}, {x.dim() - 1}] for a {x.dim()}-D input, got {axis}")
        size = x.size(axis)
        if group_size is None:
            if scale.dim() != 1 or scale.numel() != size:
                _fail(f"{op}: `scale` and `zero_point` must be 1-D with {size} elements (`input.size({axis})`), "
                      f"got shape {tuple(scale.shape)}")
        else:
            if group_size < 1:
                _fail(f"{op}: `group_size` must be positive, got {group_size}")
            if size % group_size:
                _fail(f"{op}: `group_size` ({group_size}) must divide `input.size({axis})` ({size})")
            want = qparam_shape(x.shape, axis, group_size)
            if tuple(scale.shape) != want:
                _fail(f"{op}: `scale` and `zero_point` must have shape {want} for groups of {group_size} along "
                      f"axis {axis}, got {tuple(scale.shape)}")
    _check_range(quant_min, quant_max)
    if not quant_min <= 0 <= quant_max:
        _fail(f"{op}: `quant_min` should be less than or equal to `quant_max`, and the quantization range should "
              f"include 0, got [{quant_min}, {quant_max}]")
    if not math.isfinite(grad_factor):
        _fail(f"{op}: `grad_factor` must be finite, got {grad_factor}")
    if zero_point_rounding not in ZERO_POINT_ROUNDINGS:
        _fail(f"{op}: `zero_point_rounding` must be one of {ZERO_POINT_ROUNDINGS}, got {zero_point_rounding!r}")
    _check_scale_tensor_values(scale)
    if zero_point.is_floating_point() and _values_checkable(zero_point):
        # torch raises for a NaN zero point (it rounds into no range); elsewhere the kernels take it as quant_min
        bad = _failing_values(zero_point, lambda v: v == v, lambda z: ~torch.isnan(z).any())
        if bad is not None:
            _fail(f"{op}: `zero_point` must not be NaN, got {bad}")


# ----------------------------------------------------------------------------------------------------------
# Layout: x in the kernels' dense layout, viewed as [B, O, C, I] (fake_quant_learnable_kernels.h).
# ----------------------------------------------------------------------------------------------------------
def _layout(x: Tensor, axis: Optional[int], group_size: Optional[int]):
    """(x in its output layout, a fresh output of that layout, dims). Dense inputs keep their layout (a
    non-dense one is copied into empty_like's contiguous layout); per-group works on contiguous x."""
    if group_size is not None:
        x = x.detach().contiguous()
    out = torch.empty_like(x)
    if out.stride() != x.stride():  # (a copy of x without its history: the kernels' inputs carry none)
        x = torch.empty_like(out).copy_(x.detach())
    n = x.numel()
    if axis is None or n == 0:
        return x, out, (1, 1, 1, max(n, 1))
    axis %= x.dim()
    if group_size is None:
        C = x.size(axis)
        I = _inner_stride(x, axis)
        dims = (1, n // (C * I), C, I)
    else:
        inner = math.prod(x.shape[axis + 1:])
        dims = (n // group_size, 1, 1, group_size) if inner == 1 else (n // (group_size * inner), group_size, inner, 1)
    if dims[2] == 1:  # one quantizer per b: its O * I elements are one run
        dims = (dims[0], 1, 1, dims[1] * dims[3])
    return x, out, dims


def _flat_qparams(scale: Tensor, zero_point: Tensor):
    """Both as contiguous float32 (the launchers read them as flat [B * C] arrays): as they are when they
    already are (no call into torch, which costs more than a small kernel), else converted copies without
    history."""
    return _flat_qparam(scale), _flat_qparam(zero_point)


# ----------------------------------------------------------------------------------------------------------
# Implementations (registered for every device; the backend is chosen in qkernels.backends).
# ----------------------------------------------------------------------------------------------------------
def _forward_impl(self, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor=1.0,
                  zero_point_rounding="torch"):
    _check(self, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor, zero_point_rounding)
    return _forward_launch(self, scale, zero_point, axis, group_size, quant_min, quant_max)[0]


def _forward_launch(self, scale, zero_point, axis, group_size, quant_min, quant_max):
    """The forward on checked arguments: (out, x in the kernels' layout, dims, flat float32 scale, zero point)."""
    x, out, dims = _layout(self, axis, group_size)
    s, z = _flat_qparams(scale, zero_point)
    if x.numel():
        backends.select(x, quant_min, quant_max, _FAMILY).forward(
            x, out, s, z, *dims, quant_min, quant_max, _flavour_of(x), axis is None)
    return out, x, dims, s, z


def _forward_fake(self, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor=1.0,
                  zero_point_rounding="torch"):
    _check(self, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor, zero_point_rounding)
    return torch.empty_like(self.contiguous() if group_size is not None else self)


def _qgrad_like(t: Tensor, need: bool) -> Tensor:
    return t.new_zeros(t.shape, dtype=t.dtype if t.is_floating_point() else torch.float32) if need else t.new_empty(
        (0,), dtype=torch.float32)


def _backward_impl(grad, self, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor,
                   zero_point_rounding, need_qgrads=True):
    _check(self, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor, zero_point_rounding)
    if grad.shape != self.shape:
        _fail(f"`X` and `dY` are not the same size: `X` has shape {tuple(self.shape)} and `dY` "
              f"{tuple(grad.shape)}")
    return _backward_checked(grad, self, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor,
                             zero_point_rounding, need_qgrads)


def _rule(axis, zero_point_rounding: str) -> int:
    """The kernels' backward zero-point rule (qkernels::ZpRule)."""
    if zero_point_rounding == "consistent":
        return _RULE_CONSISTENT
    return _RULE_TORCH_PER_TENSOR if axis is None else _RULE_TORCH


def _grad_dtypes(scale: Tensor, zero_point: Tensor):
    return (scale.dtype if scale.is_floating_point() else torch.float32,
            zero_point.dtype if zero_point.is_floating_point() else torch.float32)


def _backward_checked(grad, self, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor,
                      zero_point_rounding, need_qgrads):
    """The backward on arguments the forward call already checked (autograd hands over dy of x's shape)."""
    x, dx, dims = _layout(self, axis, group_size)
    if x.numel() == 0:
        return dx, _qgrad_like(scale, need_qgrads), _qgrad_like(zero_point, need_qgrads)
    dy = grad if grad.stride() == x.stride() and grad.dtype == x.dtype else (
        torch.empty_like(x).copy_(grad))
    s, z = _flat_qparams(scale, zero_point)
    grads = backends.select(x, quant_min, quant_max, _FAMILY).backward(
        dy, x, dx, s, z, *dims, quant_min, quant_max, grad_factor, _flavour_of(x), _rule(axis, zero_point_rounding),
        uses_fma(default_flavour(x), torch.float32), need_qgrads, *_grad_dtypes(scale, zero_point))
    if not need_qgrads:
        return dx, _qgrad_like(scale, False), _qgrad_like(zero_point, False)
    # The launcher sums its fixed-order partials in float64 and rounds once to each gradient's dtype (for the
    # native backends inside the C++ op: no further launches from Python).
    ds, dz = (g if g.shape == t.shape else g.view(t.shape) for g, t in zip(grads, (scale, zero_point)))
    return dx, ds, dz


def _backward_fake(grad, self, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor,
                   zero_point_rounding, need_qgrads=True):
    _check(self, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor, zero_point_rounding)
    x = self.contiguous() if group_size is not None else self
    return torch.empty_like(x), _qgrad_like(scale, need_qgrads), _qgrad_like(zero_point, need_qgrads)


# ----------------------------------------------------------------------------------------------------------
# Autograd, defined once: used by the registered op and by the eager fast path (_Learnable).
# ----------------------------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    x, scale, zero_point = inputs[:3]
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = tuple(inputs[3:])


def _grads(ctx, grad_out, backward):
    """(dx, dscale, dzero_point) for the inputs that need them, else None."""
    x, scale, zero_point = ctx.saved_tensors
    needs = ctx.needs_input_grad[:3]
    dx, ds, dz = backward(grad_out, x, scale, zero_point, *ctx.args, needs[1] or needs[2])
    return dx if needs[0] else None, ds if needs[1] else None, dz if needs[2] else None


def _backward(ctx, grad_out):
    return _grads(ctx, grad_out, torch.ops.qkernels.fake_quantize_learnable_backward) + (None,) * len(ctx.args)


_lib = torch.library.Library("qkernels", "FRAGMENT")
_lib.define(
    "fake_quantize_learnable(Tensor self, Tensor scale, Tensor zero_point, int? axis, int? group_size, "
    "int quant_min, int quant_max, float grad_factor=1.0, str zero_point_rounding=\"torch\") -> Tensor"
)
_lib.define(
    "fake_quantize_learnable_backward(Tensor grad, Tensor self, Tensor scale, Tensor zero_point, int? axis, "
    "int? group_size, int quant_min, int quant_max, float grad_factor, str zero_point_rounding, "
    "bool need_qgrads=True) -> (Tensor, Tensor, Tensor)"
)
_lib.impl("fake_quantize_learnable", _forward_impl, "CompositeExplicitAutograd")
_lib.impl("fake_quantize_learnable_backward", _backward_impl, "CompositeExplicitAutograd")
torch.library.register_fake("qkernels::fake_quantize_learnable", _forward_fake, lib=_lib)
torch.library.register_fake("qkernels::fake_quantize_learnable_backward", _backward_fake, lib=_lib)
torch.library.register_autograd("qkernels::fake_quantize_learnable", _backward, setup_context=_setup_context,
                                lib=_lib)

fake_quantize_learnable = torch.ops.qkernels.fake_quantize_learnable
fake_quantize_learnable_backward = torch.ops.qkernels.fake_quantize_learnable_backward


class _Learnable(torch.autograd.Function):
    """The registered op's autograd for direct eager calls on checked arguments (the dispatcher's Python layers
    cost more than a small kernel), on the backends without a C++ eager forward."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, *args):
        out = _forward_launch(x, scale, zero_point, *args[:4])[0]
        _setup_context(ctx, (x, scale, zero_point) + args, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _grads(ctx, grad_out, _backward_checked) + (None,) * len(ctx.args)


def _call(x, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor, zero_point_rounding) -> Tensor:
    """The registered op under compile, export, modes and subclasses; in plain eager mode the C++ entry point for
    valid calls on the native backends (csrc/ops/python_entry.cpp), else the checks, then on the native backends
    one C++ call (layout, launch, and the C++ autograd node when a gradient is needed), on the others the launch
    (under _Learnable when a gradient is needed)."""
    if _shared._entry is not None and not _is_compiling():
        out = _shared._entry.fake_quantize_learnable(x, scale, zero_point, axis, group_size, quant_min, quant_max,
                                                 grad_factor, zero_point_rounding, _backend_override())
        if out is not None:
            return out
    args = (axis, group_size, quant_min, quant_max, grad_factor, zero_point_rounding)
    if not _plain_eager(x, scale, zero_point):
        return fake_quantize_learnable(x, scale, zero_point, *args)
    _check(x, scale, zero_point, *args)
    need = torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or zero_point.requires_grad)
    eager = getattr(backends.select(x, quant_min, quant_max, _FAMILY), "forward_eager", None)
    if eager is not None and (x.numel() or not need):
        return eager(x, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor,
                     _rule(axis, zero_point_rounding), uses_fma(default_flavour(x), torch.float32), need)
    if not need:
        return _forward_launch(x, scale, zero_point, axis, group_size, quant_min, quant_max)[0]
    return _Learnable.apply(x, scale, zero_point, *args)


# ----------------------------------------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------------------------------------
def fake_quantize_learnable_per_tensor_affine(input: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                                              quant_max: int, grad_factor: float = 1.0, *,
                                              zero_point_rounding: str = "torch") -> Tensor:
    """Drop-in for ``torch._fake_quantize_learnable_per_tensor_affine``: ``y = fake_quant(x, s, z)`` with
    ``z = clamp(rne(zero_point), quant_min, quant_max)``; gradients to x (straight-through), scale and
    zero_point (LSQ), the latter two scaled by ``grad_factor`` (see ``lsq_grad_factor``)."""
    return _call(input, scale, zero_point, None, None, quant_min, quant_max, float(grad_factor),
                 zero_point_rounding)


def fake_quantize_learnable_per_channel_affine(input: Tensor, scale: Tensor, zero_point: Tensor, axis: int,
                                               quant_min: int, quant_max: int, grad_factor: float = 1.0, *,
                                               zero_point_rounding: str = "torch") -> Tensor:
    """Drop-in for ``torch._fake_quantize_learnable_per_channel_affine``; ``scale``/``zero_point`` are
    ``[input.size(axis)]``, ``axis`` may be negative."""
    return _call(input, scale, zero_point, axis, None, quant_min, quant_max, float(grad_factor),
                 zero_point_rounding)


def fake_quantize_learnable_per_group_affine(input: Tensor, scale: Tensor, zero_point: Tensor, axis: int,
                                             group_size: int, quant_min: int, quant_max: int,
                                             grad_factor: float = 1.0, *,
                                             zero_point_rounding: str = "torch") -> Tensor:
    """Learnable fake quantization with one quantizer per ``group_size`` consecutive elements along ``axis``
    (per-channel rules per group); ``scale``/``zero_point`` have ``input``'s shape with
    ``input.size(axis) // group_size`` at ``axis``. Output and dx are contiguous."""
    return _call(input, scale, zero_point, axis, group_size, quant_min, quant_max, float(grad_factor),
                 zero_point_rounding)
