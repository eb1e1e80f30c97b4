"""Weight fake quantization with oscillation tracking and freezing, fused (Nagel et al. 2022): argument checks,
torch.library registration, fake kernels, autograd.

    state = qkernels.new_oscillation_state(w)            # the per-weight state, 12 bytes per element
    y = qkernels.oscillation_fake_quantize(w, scale, zero_point, axis, quant_min, quant_max, state,
                                           momentum=1e-3, freeze_threshold=th, tracking=flag)

One pass over the weight computes the integer ``x = clamp(rne(w / s) + z)``, substitutes frozen integers,
writes ``s · (x − z)`` and, when ``tracking`` is on, updates the oscillation state and freezes. The math is
``qkernels.reference.oscillation_fake_quant``. ``freeze_threshold`` (float32, 0-dim; ≤ 0: no freezing) and
``tracking`` (any dtype, 0-dim; nonzero: on) are tensors read on the device: no host sync, and a compiled graph
does not change when they do. Gradients go to the weight (straight-through inside the range, 0 for frozen
elements) and to the scale (LSQ, ``dy · (k − z)`` for a frozen integer k; times ``grad_factor``), the scale's
as a deterministic fixed-order sum.

Registered ops (namespace ``qkernels``):

* ``oscillation_fake_quant(Tensor weight, Tensor scale, Tensor zero_point, int? axis, int quant_min,
  int quant_max, Tensor(a!) prev_x_int, Tensor(b!) prev_switch_dir, Tensor(c!) ema_oscillation,
  Tensor(d!) frozen, Tensor(e!) frozen_x_int, Tensor(f!) ema_x_int, Tensor(g!) started,
  Tensor(h!) num_oscillations, Tensor freeze_threshold, Tensor tracking, float momentum, bool use_ema_x_int,
  bool need_grad) -> (Tensor out, Tensor x_int, Tensor grad_mask)``: the step (no autograd of its own;
  ``x_int``/``grad_mask`` are what the backward needs, empty when ``need_grad`` is false);
* ``oscillation_fake_quant_backward(Tensor grad, Tensor weight, Tensor x_int, Tensor grad_mask, Tensor scale,
  Tensor zero_point, int? axis, float grad_factor, bool need_dscale) -> (Tensor dweight, Tensor dscale)``.

``oscillation_fake_quantize`` applies the step under one autograd definition (``_OscillationFakeQuant``), in
eager mode and under ``torch.compile``. fp32/fp16/bf16 weights, math in fp32.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import backends
from ._launchers import LauncherContract
from ._shared import _check_input, _check_qparam_tensor, _check_scale_tensor_values, _fail, _flat_qparam
from .reference.oscillation_fake_quant import STATE_FIELDS

__all__ = ["OscillationState", "new_oscillation_state", "oscillation_fake_quantize", "oscillation_fake_quant",
           "oscillation_fake_quant_backward"]

_FAMILY = "oscillation_fake_quant"
_OP = "oscillation_fake_quantize"

# The family's launcher contract (qkernels/_launchers.py). The weight, out, x_int (int8), mask (bool), the state
# tensors and dy/dw are contiguous and walked as [B, O, C, I] (B == 1; quantizer c); scale and zero point are
# float32 [C] (the zero point integral). forward updates the state in place (when tracking is on) and returns
# the number of oscillations of the call as int64 [1]; x_int and mask are written only when need_grad. started is
# uint8 [2], threshold float32 [] and tracking uint8 [] (0 or 1), all read on the device.
# backward writes dw and returns dscale float32 [C] (empty when need_dscale is false), from the fixed blocks of
# make_blocks(dims, REDUCE_TARGET) finished in float64.
LAUNCHERS = LauncherContract(_FAMILY, {
    "forward": "(Tensor w, Tensor(a!) out, Tensor(b!) x_int, Tensor(c!) mask, Tensor scale, Tensor zero_point, "
               "int B, int O, int C, int I, int quant_min, int quant_max, Tensor(d!) prev_x_int, "
               "Tensor(e!) prev_switch_dir, Tensor(f!) ema_oscillation, Tensor(g!) frozen, Tensor(h!) frozen_x_int, "
               "Tensor(i!) ema_x_int, Tensor started, Tensor threshold, Tensor tracking, float momentum, "
               "bool use_ema_x_int, bool need_grad) -> Tensor",
    "backward": "(Tensor dy, Tensor w, Tensor x_int, Tensor mask, Tensor(a!) dw, Tensor scale, Tensor zero_point, "
                "int B, int O, int C, int I, float grad_factor, bool need_dscale) -> Tensor",
})

_STATE_DTYPES = {"prev_x_int": torch.int8, "prev_switch_dir": torch.int8, "ema_oscillation": torch.float32,
                 "frozen": torch.bool, "frozen_x_int": torch.int8, "ema_x_int": torch.float32}


class OscillationState(NamedTuple):
    """The per-weight oscillation state (each the weight's shape, contiguous) and two small counters:
    ``started`` uint8 [2] (the tracker has seen a call; the integer EMA has started) and ``num_oscillations``
    int64 [2] (the total over all tracked calls, and the count of the last call)."""

    prev_x_int: Tensor
    prev_switch_dir: Tensor
    ema_oscillation: Tensor
    frozen: Tensor
    frozen_x_int: Tensor
    ema_x_int: Tensor
    started: Tensor
    num_oscillations: Tensor


def new_oscillation_state(weight: Tensor) -> OscillationState:
    """A fresh state for ``weight`` (zeros; nothing frozen; on its device)."""
    per_weight = [torch.zeros(weight.shape, dtype=_STATE_DTYPES[name], device=weight.device)
                  for name in STATE_FIELDS]
    return OscillationState(*per_weight, torch.zeros(2, dtype=torch.uint8, device=weight.device),
                            torch.zeros(2, dtype=torch.int64, device=weight.device))


# ----------------------------------------------------------------------------------------------------------
# Checks (messages name the argument), all before any work.
# ----------------------------------------------------------------------------------------------------------
def _check_qparams(op, weight, scale, zero_point, axis, quant_min, quant_max):
    """The weight, its quantizer's qparams and range (shared with qkernels.oscillation_dampening)."""
    _check_input(op, weight)
    if weight.dtype == torch.float64:
        _fail(f"{op}: `weight` must be float32, float16 or bfloat16, got {weight.dtype}")
    if not weight.is_contiguous():
        _fail(f"{op}: `weight` must be contiguous")
    _check_qparam_tensor("scale", scale, weight)
    _check_qparam_tensor("zero_point", zero_point, weight)
    if not scale.is_floating_point():
        _fail(f"{op}: `scale` must be a floating-point tensor, got {scale.dtype}")
    if zero_point.is_complex() or zero_point.dtype == torch.bool:
        _fail(f"{op}: `zero_point` must be an integer or floating-point tensor, got {zero_point.dtype}")
    if axis is None:
        if scale.numel() != 1 or zero_point.numel() != 1:
            _fail(f"{op}: `scale` and `zero_point` must have exactly one element per tensor, got shapes "
                  f"{tuple(scale.shape)} and {tuple(zero_point.shape)}")
    else:
        if weight.dim() == 0 or not -weight.dim() <= axis < weight.dim():
            _fail(f"{op}: `axis` must be in [{-weight.dim()}, {weight.dim() - 1}] for a {weight.dim()}-D "
                  f"`weight`, got {axis}")
        want = weight.size(axis)
        if scale.shape != (want,) or zero_point.shape != (want,):
            _fail(f"{op}: `scale` and `zero_point` must be 1-D with {want} elements (`weight.size({axis})`), got "
                  f"shapes {tuple(scale.shape)} and {tuple(zero_point.shape)}")
    if not -128 <= quant_min <= 0 <= quant_max <= 127:
        _fail(f"{op}: the range must contain 0 and fit int8 (-128 <= `quant_min` <= 0 <= `quant_max` <= 127), got "
              f"[{quant_min}, {quant_max}]")
    _check_scale_tensor_values(scale)


def _check(weight, scale, zero_point, axis, quant_min, quant_max, state, freeze_threshold, tracking, momentum):
    _check_qparams(_OP, weight, scale, zero_point, axis, quant_min, quant_max)
    if not isinstance(state, OscillationState):
        _fail(f"{_OP}: `state` must be an OscillationState (qkernels.new_oscillation_state), got "
              f"{type(state).__name__}")
    for name in STATE_FIELDS:
        t = getattr(state, name)
        if not isinstance(t, Tensor) or t.dtype != _STATE_DTYPES[name] or t.shape != weight.shape or \
                t.device != weight.device or not t.is_contiguous():
            got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, Tensor) else type(t).__name__
            _fail(f"{_OP}: `state.{name}` must be a contiguous {_STATE_DTYPES[name]} tensor of `weight`'s shape "
                  f"{tuple(weight.shape)} on {weight.device}, got {got}")
    for name, dtype in (("started", torch.uint8), ("num_oscillations", torch.int64)):
        t = getattr(state, name)
        if not isinstance(t, Tensor) or t.dtype != dtype or t.shape != (2,) or t.device != weight.device:
            _fail(f"{_OP}: `state.{name}` must be a {dtype} tensor of shape (2,) on {weight.device}")
    for name, t in (("freeze_threshold", freeze_threshold), ("tracking", tracking)):
        _check_qparam_tensor(name, t, weight, numel=1)
    if not freeze_threshold.is_floating_point():
        _fail(f"{_OP}: `freeze_threshold` must be a floating-point tensor, got {freeze_threshold.dtype}")
    if not (isinstance(momentum, (int, float)) and 0.0 < momentum <= 1.0):
        _fail(f"{_OP}: `momentum` must be in (0, 1], got {momentum}")


def _dims(weight: Tensor, axis: Optional[int]):
    n = weight.numel()
    if axis is None or n == 0:
        return (1, 1, 1, max(n, 1))
    axis %= weight.dim()
    C = weight.size(axis)
    I = math.prod(weight.shape[axis + 1:])
    return (1, 1, 1, n) if C == 1 else (1, n // (C * I), C, I)


def _zero_point(zero_point: Tensor) -> Tensor:
    """The zero point as the launchers read it: ``_flat_qparam``, rounded half to even when it is a float."""
    z = _flat_qparam(zero_point)
    return z if not zero_point.is_floating_point() else torch.round(z)


# ----------------------------------------------------------------------------------------------------------
# Implementations (registered for every device; the backend is chosen in qkernels.backends).
# ----------------------------------------------------------------------------------------------------------
def _step_impl(weight, scale, zero_point, axis, quant_min, quant_max, prev_x_int, prev_switch_dir, ema_oscillation,
               frozen, frozen_x_int, ema_x_int, started, num_oscillations, freeze_threshold, tracking, momentum,
               use_ema_x_int, need_grad):
    state = OscillationState(prev_x_int, prev_switch_dir, ema_oscillation, frozen, frozen_x_int, ema_x_int,
                             started, num_oscillations)
    _check(weight, scale, zero_point, axis, quant_min, quant_max, state, freeze_threshold, tracking, momentum)
    out = torch.empty_like(weight)
    x_int, mask = _grad_buffers(weight, need_grad)
    if weight.numel() == 0:
        return out, x_int, mask
    # The flags as the contract wants them, in as few torch calls as the given dtypes allow (each costs several µs).
    tracking = tracking.detach().reshape(())
    on = tracking.view(torch.uint8) if tracking.dtype == torch.bool else tracking.ne(0).view(torch.uint8)
    threshold = freeze_threshold.detach().reshape(())
    threshold = threshold if threshold.dtype == torch.float32 else threshold.to(torch.float32)
    count = backends.select(weight, quant_min, quant_max, _FAMILY).forward(
        weight.detach(), out, x_int, mask, _flat_qparam(scale), _zero_point(zero_point), *_dims(weight, axis),
        quant_min, quant_max, prev_x_int, prev_switch_dir, ema_oscillation, frozen, frozen_x_int, ema_x_int, started,
        threshold, on, float(momentum), bool(use_ema_x_int), bool(need_grad))
    # The counters, on the device and in place: [total + count, count], and which lazy starts happened.
    num_oscillations[1:].zero_()
    num_oscillations.add_(count)
    if use_ema_x_int:
        started.bitwise_or_(torch.stack([on, on & (threshold > 0)]))
    else:
        started[:1].bitwise_or_(on)
    return out, x_int, mask


def _grad_buffers(weight: Tensor, need_grad: bool):
    if need_grad:
        return (torch.empty(weight.shape, dtype=torch.int8, device=weight.device),
                torch.empty(weight.shape, dtype=torch.bool, device=weight.device))
    return (weight.new_empty((0,), dtype=torch.int8), weight.new_empty((0,), dtype=torch.bool))


def _step_fake(weight, scale, zero_point, axis, quant_min, quant_max, prev_x_int, prev_switch_dir, ema_oscillation,
               frozen, frozen_x_int, ema_x_int, started, num_oscillations, freeze_threshold, tracking, momentum,
               use_ema_x_int, need_grad):
    return (torch.empty_like(weight),) + _grad_buffers(weight, need_grad)


def _backward_impl(grad, weight, x_int, grad_mask, scale, zero_point, axis, grad_factor, need_dscale):
    if grad.shape != weight.shape or x_int.shape != weight.shape or grad_mask.shape != weight.shape:
        _fail(f"{_OP} backward: `grad`, `x_int` and `grad_mask` must have `weight`'s shape {tuple(weight.shape)}")
    dw = torch.empty_like(weight)
    if weight.numel() == 0:
        return dw, _dscale_like(scale, need_dscale).zero_()
    dy = grad.to(weight.dtype).contiguous()
    ds = backends.select(weight, -128, 127, _FAMILY).backward(
        dy, weight.detach(), x_int, grad_mask, dw, _flat_qparam(scale), _zero_point(zero_point), *_dims(weight, axis),
        float(grad_factor), bool(need_dscale))
    return dw, ds.view(scale.shape).to(scale.dtype) if need_dscale else ds


def _dscale_like(scale: Tensor, need: bool) -> Tensor:
    return torch.empty(scale.shape if need else (0,), dtype=scale.dtype, device=scale.device)


def _backward_fake(grad, weight, x_int, grad_mask, scale, zero_point, axis, grad_factor, need_dscale):
    return torch.empty_like(weight), _dscale_like(scale, need_dscale)


_lib = torch.library.Library("qkernels", "FRAGMENT")
_lib.define(
    "oscillation_fake_quant(Tensor weight, Tensor scale, Tensor zero_point, int? axis, int quant_min, "
    "int quant_max, Tensor(a!) prev_x_int, Tensor(b!) prev_switch_dir, Tensor(c!) ema_oscillation, "
    "Tensor(d!) frozen, Tensor(e!) frozen_x_int, Tensor(f!) ema_x_int, Tensor(g!) started, "
    "Tensor(h!) num_oscillations, Tensor freeze_threshold, Tensor tracking, float momentum, bool use_ema_x_int, "
    "bool need_grad) -> (Tensor, Tensor, Tensor)"
)
_lib.define(
    "oscillation_fake_quant_backward(Tensor grad, Tensor weight, Tensor x_int, Tensor grad_mask, Tensor scale, "
    "Tensor zero_point, int? axis, float grad_factor, bool need_dscale) -> (Tensor, Tensor)"
)
_lib.impl("oscillation_fake_quant", _step_impl, "CompositeExplicitAutograd")
_lib.impl("oscillation_fake_quant_backward", _backward_impl, "CompositeExplicitAutograd")
torch.library.register_fake("qkernels::oscillation_fake_quant", _step_fake, lib=_lib)
torch.library.register_fake("qkernels::oscillation_fake_quant_backward", _backward_fake, lib=_lib)

oscillation_fake_quant = torch.ops.qkernels.oscillation_fake_quant
oscillation_fake_quant_backward = torch.ops.qkernels.oscillation_fake_quant_backward


class _OscillationFakeQuant(torch.autograd.Function):
    """The one autograd definition: the step (which mutates the state) forward, the fused backward."""

    @staticmethod
    def forward(ctx, weight, scale, zero_point, axis, quant_min, quant_max, state, freeze_threshold, tracking,
                momentum, use_ema_x_int, grad_factor):
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        out, x_int, mask = oscillation_fake_quant(weight, scale, zero_point, axis, quant_min, quant_max, *state,
                                                  freeze_threshold, tracking, momentum, use_ema_x_int, need)
        ctx.save_for_backward(weight, x_int, mask, scale, zero_point)
        ctx.axis, ctx.grad_factor = axis, grad_factor
        return out

    @staticmethod
    def backward(ctx, grad):
        weight, x_int, mask, scale, zero_point = ctx.saved_tensors
        need_w, need_s = ctx.needs_input_grad[:2]
        dw, ds = oscillation_fake_quant_backward(grad, weight, x_int, mask, scale, zero_point, ctx.axis,
                                                 ctx.grad_factor, need_s)
        return (dw if need_w else None, ds if need_s else None) + (None,) * 10


def oscillation_fake_quantize(weight: Tensor, scale: Tensor, zero_point: Tensor, axis: Optional[int], quant_min: int,
                              quant_max: int, state: OscillationState, *, freeze_threshold: Tensor, tracking: Tensor,
                              momentum: float = 1e-3, use_ema_x_int: bool = True,
                              grad_factor: float = 1.0) -> Tensor:
    """``s · (x − z)`` with ``x`` the clamped integer of ``weight`` or its frozen integer, updating ``state`` in
    place when ``tracking`` is on (see the module docstring and ``qkernels.reference.oscillation_fake_quant``).
    ``axis=None``: one scale (``scale``/``zero_point`` of one element); else one per ``weight.size(axis)``.
    Gradients to ``weight`` and ``scale`` (LSQ, times ``grad_factor``); the zero point is not learned."""
    # The registered op checks the rest before it touches the state; only what it does not take is checked here.
    if not isinstance(state, OscillationState):
        _fail(f"{_OP}: `state` must be an OscillationState (qkernels.new_oscillation_state), got "
              f"{type(state).__name__}")
    if not math.isfinite(grad_factor):
        _fail(f"{_OP}: `grad_factor` must be finite, got {grad_factor}")
    return _OscillationFakeQuant.apply(weight, scale, zero_point, axis, quant_min, quant_max, state,
                                       freeze_threshold, tracking, float(momentum), bool(use_ema_x_int),
                                       float(grad_factor))
