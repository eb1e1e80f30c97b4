"""Public fake-quant ops: argument checks (one place), torch.library registration, fake kernels, autograd.

Registered ops (namespace ``qkernels``, same arguments and defaults as aten's, plus ``need_mask`` and
``pack_mask``):

* ``fake_quantize_per_tensor_affine_cachemask(self, float scale, int zero_point, int quant_min, int quant_max,
  bool need_mask=True, bool pack_mask=False) -> (Tensor output, Tensor mask)``
* ``_fake_quantize_per_tensor_affine_cachemask_tensor_qparams(self, Tensor scale, Tensor zero_point,
  Tensor? fake_quant_enabled, int quant_min, int quant_max, bool need_mask=True, bool pack_mask=False)
  -> (Tensor, Tensor)``
* ``fake_quantize_per_channel_affine_cachemask(self, Tensor scale, Tensor zero_point, int axis, int quant_min,
  int quant_max, bool need_mask=True, bool pack_mask=False) -> (Tensor, Tensor)``
* ``fake_quantize_cachemask_backward(Tensor grad, Tensor mask) -> Tensor``; ``mask`` is bool like ``grad``, or
  bit-packed uint8 whose bits follow the storage order of ``torch.empty_like(grad)``

The math is ``qkernels.reference.fake_quant`` (the spec). Outputs take ``x``'s dtype and, for dense inputs,
its strides (channels-last and transposed layouts are kept; other inputs give the layout ``torch.empty_like``
picks: contiguous, or channels-last for a sliced channels-last input).
``need_mask=False`` skips writing the mask (an empty bool tensor is returned); such a call cannot be
differentiated. ``pack_mask=True`` returns the mask bit-packed: uint8 of ``ceil(numel / 8)`` bytes, bit
``k`` of byte ``j`` for element ``8j + k`` of the output in storage order. Gradients flow to ``self`` only:
``dx = dy * mask``.

Qparams held in tensors are never read on the host for CUDA inputs (no device sync); checks that need their
values run only for CPU tensors, or everywhere with ``QKERNELS_CHECK_VALUES=1``. Tensor qparams passed with a
``fake_quant_enabled`` flag (the fused observer's step) are not value-checked, as aten's op does not check
them: a NaN scale gives NaN outputs.

The public functions (``fake_quantize_per_tensor_affine``, ``fake_quantize_per_channel_affine``) call the
registered ops under ``torch.compile``, export, torch.func transforms (``vmap`` works through the batching
fallback; ``grad`` raises, as the registered autograd does not support torch.func), tensor subclasses or any
torch-function/dispatch mode. In plain eager mode (plain tensors or ``nn.Parameter``s), where the dispatcher's
Python layers would cost several times a small kernel, a call on the cpu/cuda backend with valid arguments of
the expected types is one call of the C++ entry point ``qkernels._C`` (csrc/ops/python_entry.cpp: checks,
allocation, launch and a C++ autograd node, csrc/ops/fake_quant_glue.h). Every other plain eager call is checked
here (the errors are raised here) and then runs the native backends' eager op, or the implementations' runs
inside ``_StraightThrough`` (the registered ops' autograd code as an ``autograd.Function``) on the other
backends.
"""

import contextlib
from typing import Callable, NamedTuple, Optional

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
    _check_scale_value,
    _fail,
    _FEW_VALUES,
    _flavour_of,
    _inner_stride,
    _is_compiling,
    _plain_eager,
    _values_checkable,
)
from .reference.fake_quant import default_flavour, uses_fma
from .reference.fused_observer import flag_is_on


# ----------------------------------------------------------------------------------------------------------
# The family's launcher contract (qkernels/_launchers.py): the kernels write into preallocated outputs that
# share x's dense layout, in storage order. A mask is None, bool in x's layout, or packed uint8 (bit k of byte j:
# element 8j + k). per_tensor: Python-number qparams, replaced by the one-element float32 / int32 tensors scale_t
# and zero_point_t when given; enabled_t None or an int32 flag (0: out = x, mask all true). per_channel: storage
# offset i is in channel (i // inner) % C; scale float32 [C], zero point int32 or float32 [C]. backward: out =
# grad * mask. The C++ eager forwards (ARCHITECTURE.md) add allocation and the straight-through node.
# ----------------------------------------------------------------------------------------------------------
LAUNCHERS = LauncherContract("fake_quant", {
    "per_tensor": "(Tensor x, Tensor(a!) out, Tensor(b!)? mask, float scale, int zero_point, Tensor? scale_t, "
                  "Tensor? zero_point_t, Tensor? enabled_t, int quant_min, int quant_max, int flavour) -> ()",
    "per_channel": "(Tensor x, Tensor(a!) out, Tensor(b!)? mask, Tensor scale, Tensor zero_point, int inner, "
                   "int quant_min, int quant_max, int flavour, bool use_fma) -> ()",
    "backward": "(Tensor grad, Tensor mask, Tensor(a!) out) -> ()",
}, eager=("per_tensor", "per_channel"))


# ----------------------------------------------------------------------------------------------------------
# Argument checks (qkernels._shared has those every family makes).
# ----------------------------------------------------------------------------------------------------------
def _check_per_tensor_scalar(x, scale, zero_point, quant_min, quant_max):
    _check_input("fake_quantize_per_tensor_affine", x)
    _check_range(quant_min, quant_max)
    if not (quant_min <= zero_point <= quant_max):
        _fail(f"`zero_point` must be between `quant_min` and `quant_max`, got {zero_point} not in "
              f"[{quant_min}, {quant_max}].")
    _check_scale_value(scale)


def _check_per_tensor_tensor(x, scale, zero_point, enabled, quant_min, quant_max):
    _check_input("fake_quantize_per_tensor_affine", x)
    _check_qparam_tensor("scale", scale, x, 1)
    _check_qparam_tensor("zero_point", zero_point, x, 1)
    if not scale.is_floating_point():
        _fail(f"`scale` must be a floating-point tensor, got {scale.dtype}")
    if zero_point.is_complex() or zero_point.dtype == torch.bool:
        _fail(f"`zero_point` must be an integer or floating-point tensor, got {zero_point.dtype}")
    _check_range(quant_min, quant_max)
    if enabled is not None:
        _check_qparam_tensor("fake_quant_enabled", enabled, x, 1)
    else:  # with a flag these are an observer's qparams (the fused op's step): unchecked, as in aten's op
        _check_scale_tensor_values(scale)


def _check_per_channel(x, scale, zero_point, axis, quant_min, quant_max):
    _check_input("fake_quantize_per_channel_affine", x)
    _check_qparam_tensor("scale", scale, x)
    _check_qparam_tensor("zero_point", zero_point, x)
    if scale.dtype not in (torch.float32, torch.bfloat16):
        _fail(f"`scale` must be Float or BFloat16, found {scale.dtype}")
    if zero_point.dtype not in (torch.int32, torch.float32, torch.float16):
        _fail(f"`zero_point` must be Int32, Float or Half, found {zero_point.dtype}")
    if scale.dim() != 1:
        _fail(f"`scale` should be a 1-D tensor, got shape {tuple(scale.shape)}")
    if zero_point.dim() != 1:
        _fail(f"`zero_point` should be a 1-D tensor, got shape {tuple(zero_point.shape)}")
    if scale.numel() != zero_point.numel():
        _fail(f"`scale` and `zero_point` need to have the same number of elements, got {scale.numel()} and "
              f"{zero_point.numel()}")
    if x.dim() == 0:
        _fail("`input` must have at least one dimension for per-channel fake quantization")
    if not -x.dim() <= axis < x.dim():
        _fail(f"`axis` must be in [{-x.dim()}, {x.dim() - 1}] for a {x.dim()}-D input, got {axis}")
    if scale.numel() != x.size(axis):
        _fail(f"`scale` and `zero_point` have {scale.numel()} elements but `input` has {x.size(axis)} channels "
              f"along axis {axis}")
    _check_range(quant_min, quant_max)
    if not zero_point.is_floating_point() and _values_checkable(zero_point) and zero_point.numel():
        if zero_point.numel() <= _FEW_VALUES:
            values = zero_point.tolist()
            lo, hi = min(values), max(values)
        else:
            lo, hi = (v.item() for v in torch.aminmax(zero_point))
        if lo < quant_min or hi > quant_max:
            _fail(f"`zero_point` must be between `quant_min` and `quant_max`, got values in "
                  f"[{lo}, {hi}] outside [{quant_min}, {quant_max}].")
    _check_scale_tensor_values(scale)


# ----------------------------------------------------------------------------------------------------------
# Output allocation shared by the real and the fake kernels.
# ----------------------------------------------------------------------------------------------------------
def _alloc(x: Tensor, need_mask: bool, pack_mask: bool):
    out = torch.empty_like(x)
    if not need_mask:
        mask = x.new_empty((0,), dtype=torch.bool)
    elif pack_mask:  # one bit per element, in out's storage order
        mask = x.new_empty(((x.numel() + 7) // 8,), dtype=torch.uint8)
    else:
        mask = torch.empty_like(x, dtype=torch.bool)
    return out, mask


def _launch_args(x: Tensor, need_mask: bool, pack_mask: bool):
    """(x in the outputs' dense layout, out, mask, mask or None for the kernels)."""
    out, mask = _alloc(x, need_mask, pack_mask)
    if x.stride() != out.stride():  # not dense: aten's outputs are contiguous, so the kernels read a copy
        x = torch.empty_strided(out.size(), out.stride(), dtype=x.dtype, device=x.device).copy_(x)
    return x, out, mask, (mask if need_mask else None)


# ----------------------------------------------------------------------------------------------------------
# Implementations (registered once for every device; the backend is chosen in qkernels.backends).
# ----------------------------------------------------------------------------------------------------------
# Each op's implementation is its checks, then its run (the public functions check once and call the run,
# or the native backends' one-call eager forward of the same name with `_eager` appended).
def _per_tensor_impl(self, scale, zero_point, quant_min, quant_max, need_mask=True, pack_mask=False):
    _check_per_tensor_scalar(self, scale, zero_point, quant_min, quant_max)
    return _per_tensor_run(self, scale, zero_point, quant_min, quant_max, need_mask, pack_mask)


def _per_tensor_run(self, scale, zero_point, quant_min, quant_max, need_mask, pack_mask):
    x, out, mask, kmask = _launch_args(self, need_mask, pack_mask)
    if x.numel():
        backends.select(x, quant_min, quant_max).per_tensor(
            x, out, kmask, scale, zero_point, None, None, None, quant_min, quant_max, _flavour_of(x))
    return out, mask


def _per_tensor_fake(self, scale, zero_point, quant_min, quant_max, need_mask=True, pack_mask=False):
    _check_per_tensor_scalar(self, scale, zero_point, quant_min, quant_max)
    return _alloc(self, need_mask, pack_mask)


def _device_qparams(scale: Tensor, zero_point: Tensor, enabled: Optional[Tensor]):
    """Tensor qparams as the kernels read them: float32 scale, int32 zero point (floats truncate toward zero,
    as aten's CPU kernel does) and int32 flag (nonzero after truncation = on), all one element, no sync.
    (The native eager forward converts them the same way in C++: csrc/ops/fake_quant_glue.h.)"""
    s = scale.detach().reshape(1).to(torch.float32)
    z = zero_point.detach().reshape(1)
    z = (z.trunc() if z.is_floating_point() else z).to(torch.int32)
    e = None
    if enabled is not None:
        e = enabled.detach().reshape(1)
        e = (e.trunc() if e.is_floating_point() else e).to(torch.int32)
    return s, z, e


def _per_tensor_tensor_impl(self, scale, zero_point, fake_quant_enabled, quant_min, quant_max, need_mask=True,
                            pack_mask=False):
    _check_per_tensor_tensor(self, scale, zero_point, fake_quant_enabled, quant_min, quant_max)
    return _per_tensor_tensor_run(self, scale, zero_point, fake_quant_enabled, quant_min, quant_max, need_mask,
                                  pack_mask)


def _per_tensor_tensor_run(self, scale, zero_point, fake_quant_enabled, quant_min, quant_max, need_mask, pack_mask):
    x, out, mask, kmask = _launch_args(self, need_mask, pack_mask)
    if x.numel():
        s, z, e = _device_qparams(scale, zero_point, fake_quant_enabled)
        backends.select(x, quant_min, quant_max).per_tensor(x, out, kmask, 0.0, 0, s, z, e, quant_min, quant_max,
                                                             _flavour_of(x))
    return out, mask


def _per_tensor_tensor_fake(self, scale, zero_point, fake_quant_enabled, quant_min, quant_max, need_mask=True,
                            pack_mask=False):
    _check_per_tensor_tensor(self, scale, zero_point, fake_quant_enabled, quant_min, quant_max)
    return _alloc(self, need_mask, pack_mask)


def _per_channel_impl(self, scale, zero_point, axis, quant_min, quant_max, need_mask=True, pack_mask=False):
    _check_per_channel(self, scale, zero_point, axis, quant_min, quant_max)
    return _per_channel_run(self, scale, zero_point, axis, quant_min, quant_max, need_mask, pack_mask)


def _per_channel_run(self, scale, zero_point, axis, quant_min, quant_max, need_mask, pack_mask):
    x, out, mask, kmask = _launch_args(self, need_mask, pack_mask)
    if x.numel():
        axis = axis % x.dim()
        s = scale.detach().to(torch.float32).contiguous()
        z = zero_point.detach()
        use_fma = uses_fma(default_flavour(x), z.dtype)
        z = (z.to(torch.float32) if z.is_floating_point() else z).contiguous()
        backends.select(x, quant_min, quant_max).per_channel(
            x, out, kmask, s, z, _inner_stride(out, axis), quant_min, quant_max, _flavour_of(x), use_fma)
    return out, mask


def _per_channel_fake(self, scale, zero_point, axis, quant_min, quant_max, need_mask=True, pack_mask=False):
    _check_per_channel(self, scale, zero_point, axis, quant_min, quant_max)
    return _alloc(self, need_mask, pack_mask)


def _check_backward(grad: Tensor, mask: Tensor):
    if mask.dtype not in (torch.bool, torch.uint8):
        _fail(f"fake_quantize_cachemask_backward: `mask` must be bool (or uint8, bit-packed), got {mask.dtype}")
    expected = grad.numel() if mask.dtype == torch.bool else (grad.numel() + 7) // 8
    if mask.numel() != expected:
        _fail(f"`mask` and `dY` are not the same size: `mask` is size {mask.numel()} and `dY` is size "
              f"{grad.numel()}" + ("" if mask.dtype == torch.bool else f" (a packed mask needs {expected} bytes)"))
    if mask.device != grad.device:
        _fail(f"`mask` must be on the same device as `dY` ({grad.device}), got {mask.device}")


def _backward_impl(grad, mask):
    _check_backward(grad, mask)
    out = torch.empty_like(grad)
    if grad.numel() == 0:
        return out
    packed = mask.dtype == torch.uint8
    if packed and grad.stride() != out.stride():  # bits follow the dense layout empty_like(dY) has
        grad = torch.empty_like(out).copy_(grad)
    if packed or (grad.stride() == out.stride() and mask.stride() == out.stride() and mask.shape == grad.shape):
        backends.select(grad, 0, 0).backward(grad, mask, out)
    else:  # layouts differ (autograd handed over another layout): let aten broadcast and stride
        out.copy_(grad * mask.view(grad.shape))
    return out


def _backward_fake(grad, mask):
    _check_backward(grad, mask)
    return torch.empty_like(grad)


# ----------------------------------------------------------------------------------------------------------
# Autograd: dx = dy * mask for `self`; qparams get no gradient (aten: "not differentiable").
# ----------------------------------------------------------------------------------------------------------
def _check_qparams_not_differentiable(scale, zero_point):
    # (runs on every eager call: Python-number qparams leave after two type tests)
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if isinstance(t, Tensor) and t.requires_grad and torch.is_grad_enabled():
            _fail(f"fake quantization is not differentiable with respect to `{name}`; "
                  "use the learnable fake-quant ops for learnable qparams")


def _setup_context(ctx, inputs, output):
    x = inputs[0]
    _check_qparams_not_differentiable(*inputs[1:3])
    out, mask = output
    if x.requires_grad and mask.numel() == 0 and x.numel() != 0:
        _fail("a fake-quant call with need_mask=False cannot be differentiated")
    ctx.save_for_backward(mask)
    ctx.num_inputs = len(inputs)
    ctx.out_stride = out.stride()  # packed mask bits follow the output's storage order


def _grad_input(ctx, grad_out, backward):
    """dx = backward(dy, mask); a packed mask's bits follow the output's layout, so dy is brought into it."""
    (mask,) = ctx.saved_tensors
    if mask.dtype == torch.uint8 and grad_out.stride() != ctx.out_stride:
        grad_out = torch.empty_strided(grad_out.shape, ctx.out_stride, dtype=grad_out.dtype,
                                       device=grad_out.device).copy_(grad_out)
    return backward(grad_out, mask)


def _backward(ctx, grad_out, grad_mask):
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = _grad_input(ctx, grad_out, torch.ops.qkernels.fake_quantize_cachemask_backward)
    return (grad_x,) + (None,) * (ctx.num_inputs - 1)


def _setup_backward(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.out_stride = output.stride()  # a packed mask's bits follow this layout (empty_like(grad)'s)


def _backward_of_backward(ctx, grad_grad):
    return _grad_input(ctx, grad_grad, torch.ops.qkernels.fake_quantize_cachemask_backward), None


# ----------------------------------------------------------------------------------------------------------
# Registration. A plain torch.library.Library op costs a fraction of custom_op's Python layers per call;
# the impl serves every device (CompositeExplicitAutograd), the fake kernel serves compile/export.
# ----------------------------------------------------------------------------------------------------------
_lib = torch.library.Library("qkernels", "FRAGMENT")

_OPS = [
    ("fake_quantize_per_tensor_affine_cachemask(Tensor self, float scale, int zero_point, int quant_min, "
     "int quant_max, bool need_mask=True, bool pack_mask=False) -> (Tensor output, Tensor mask)",
     _per_tensor_impl, _per_tensor_fake, (_backward, _setup_context)),
    ("_fake_quantize_per_tensor_affine_cachemask_tensor_qparams(Tensor self, Tensor scale, Tensor zero_point, "
     "Tensor? fake_quant_enabled, int quant_min, int quant_max, bool need_mask=True, bool pack_mask=False) "
     "-> (Tensor output, Tensor mask)",
     _per_tensor_tensor_impl, _per_tensor_tensor_fake, (_backward, _setup_context)),
    ("fake_quantize_per_channel_affine_cachemask(Tensor self, Tensor scale, Tensor zero_point, int axis, "
     "int quant_min, int quant_max, bool need_mask=True, bool pack_mask=False) -> (Tensor output, Tensor mask)",
     _per_channel_impl, _per_channel_fake, (_backward, _setup_context)),
    ("fake_quantize_cachemask_backward(Tensor grad, Tensor mask) -> Tensor",
     _backward_impl, _backward_fake, (_backward_of_backward, _setup_backward)),
]

for _schema, _impl, _fake, (_bwd, _setup) in _OPS:
    _name = _schema.split("(")[0]
    _lib.define(_schema)
    _lib.impl(_name, _impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"qkernels::{_name}", _fake, lib=_lib)
    torch.library.register_autograd(f"qkernels::{_name}", _bwd, setup_context=_setup, lib=_lib)

fake_quantize_per_tensor_affine_cachemask = torch.ops.qkernels.fake_quantize_per_tensor_affine_cachemask
_fake_quantize_per_tensor_affine_cachemask_tensor_qparams = (
    torch.ops.qkernels._fake_quantize_per_tensor_affine_cachemask_tensor_qparams
)
fake_quantize_per_channel_affine_cachemask = torch.ops.qkernels.fake_quantize_per_channel_affine_cachemask
fake_quantize_cachemask_backward = torch.ops.qkernels.fake_quantize_cachemask_backward


# ----------------------------------------------------------------------------------------------------------
# Public functions with torch's signatures.
# ----------------------------------------------------------------------------------------------------------
def _mask_request(x: Tensor):
    """(need_mask, pack_mask) of a public call: a mask only when x needs a gradient, packed in packed_masks()."""
    need = torch.is_grad_enabled() and x.requires_grad
    return need, need and _PACK_MASKS


def _host_flag(flag: Tensor, x: Tensor) -> Optional[bool]:
    """A one-element enable flag's value (nonzero after truncation toward zero) where reading it costs no device
    sync and no graph break: CPU tensors in plain eager mode. Else None: select with where(flag, y, x), whose
    broadcast of a 0-dim condition costs aten several times a copy on CPU tensors, forward and backward."""
    if x.is_cuda or not _plain_eager(x, flag):
        return None
    return flag_is_on(flag)


class _StraightThrough(torch.autograd.Function):
    """The registered ops' autograd (``_setup_context``/``_grad_input``) for direct eager calls of their runs
    on the backends without a C++ eager forward (triton, reference)."""

    @staticmethod
    def forward(ctx, run, x, pack_mask, *args):
        out, mask = run(x, *args, True, pack_mask)
        _setup_context(ctx, (x,) + args, (out, mask))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # create_graph: the registered backward op, which is differentiable; else its implementation directly
        backward = fake_quantize_cachemask_backward if torch.is_grad_enabled() else _backward_impl
        grad_x = _grad_input(ctx, grad_out, backward) if ctx.needs_input_grad[1] else None
        return (None, grad_x, None) + (None,) * (ctx.num_inputs - 1)


class _Variant(NamedTuple):
    """One public entry: its checks, its run on checked arguments (``(x, *args, need_mask, pack_mask) -> (out,
    mask)``), its registered op, the name of the native backends' eager forward on their launchers (the C++
    autograd node: csrc/ops/fake_quant_glue.h), and that forward's call with the entry's arguments (``(op, x,
    *args, requires_grad, pack_mask) -> out``)."""

    check: Callable
    run: Callable
    op: Callable
    eager: str
    eager_call: Callable


def _eager_per_tensor(op, x, scale, zero_point, quant_min, quant_max, requires_grad, pack_mask):
    return op(x, scale, zero_point, None, None, None, quant_min, quant_max, requires_grad, pack_mask)


def _eager_per_tensor_tensor(op, x, scale, zero_point, enabled, quant_min, quant_max, requires_grad, pack_mask):
    return op(x, 0.0, 0, scale, zero_point, enabled, quant_min, quant_max, requires_grad, pack_mask)


def _eager_per_channel(op, x, scale, zero_point, axis, quant_min, quant_max, requires_grad, pack_mask):
    return op(x, scale, zero_point, axis, quant_min, quant_max, uses_fma(default_flavour(x), zero_point.dtype),
              requires_grad, pack_mask)


_PER_TENSOR = _Variant(_check_per_tensor_scalar, _per_tensor_run, fake_quantize_per_tensor_affine_cachemask,
                       "per_tensor_eager", _eager_per_tensor)
_PER_TENSOR_TENSOR = _Variant(_check_per_tensor_tensor, _per_tensor_tensor_run,
                              _fake_quantize_per_tensor_affine_cachemask_tensor_qparams, "per_tensor_eager",
                              _eager_per_tensor_tensor)
_PER_CHANNEL = _Variant(_check_per_channel, _per_channel_run, fake_quantize_per_channel_affine_cachemask,
                        "per_channel_eager", _eager_per_channel)


_PACK_MASKS = False


@contextlib.contextmanager
def packed_masks(enabled: bool = True):
    """Inside this block the public functions keep the mask for backward bit-packed (1 bit per element instead
    of 1 byte): 8x less memory held between forward and backward, identical gradients."""
    global _PACK_MASKS
    previous, _PACK_MASKS = _PACK_MASKS, enabled
    try:
        yield
    finally:
        _PACK_MASKS = previous


def fake_quantize_per_tensor_affine(input: Tensor, scale, zero_point, quant_min: int, quant_max: int) -> Tensor:
    """Drop-in for ``torch.fake_quantize_per_tensor_affine`` (both overloads: Python-number or tensor qparams).

    ``y = (clamp(round(x * (1/scale)) + zero_point, quant_min, quant_max) - zero_point) * scale``, round half
    to even. The mask for the backward pass is written only when ``input`` requires grad (bit-packed inside
    ``packed_masks()``).
    """
    if _shared._entry is not None and not _is_compiling():
        out = _shared._entry.fake_quantize_per_tensor_affine(input, scale, zero_point, quant_min, quant_max,
                                                     _backend_override(), _PACK_MASKS)
        if out is not None:
            return out
    if isinstance(scale, Tensor) or isinstance(zero_point, Tensor):
        if not (isinstance(scale, Tensor) and isinstance(zero_point, Tensor)):
            _fail("`scale` and `zero_point` must both be Tensors or both be numbers")
        return _call(_PER_TENSOR_TENSOR, input, (scale, zero_point, None, quant_min, quant_max),
                     (input, scale, zero_point), scale, zero_point)
    return _call(_PER_TENSOR, input, (float(scale), int(zero_point), quant_min, quant_max), (input,), scale,
                 zero_point)


def fake_quantize_per_channel_affine(
    input: Tensor, scale: Tensor, zero_point: Tensor, axis: int, quant_min: int, quant_max: int
) -> Tensor:
    """Drop-in for ``torch.fake_quantize_per_channel_affine``; ``axis`` may be negative.

    Channel ``c`` uses ``scale[c]``/``zero_point[c]``; an int32 zero point is added after rounding, a float one
    before (``round(x * inv + z)``), as in aten. The mask is written only when ``input`` requires grad
    (bit-packed inside ``packed_masks()``).
    """
    if _shared._entry is not None and not _is_compiling():
        out = _shared._entry.fake_quantize_per_channel_affine(input, scale, zero_point, axis, quant_min, quant_max,
                                                      _backend_override(), _PACK_MASKS)
        if out is not None:
            return out
    return _call(_PER_CHANNEL, input, (scale, zero_point, axis, quant_min, quant_max), (input, scale, zero_point),
                 scale, zero_point)


def _call(variant: _Variant, input: Tensor, args: tuple, tensors: tuple, scale, zero_point) -> Tensor:
    """The registered op under compile, export, modes and subclasses; in plain eager mode the checks, then one
    C++ call on the native backends (allocation, launch, autograd node), else the run (under _StraightThrough
    when a gradient is needed). ``args`` end with quant_min, quant_max."""
    need, pack = _mask_request(input)
    if not _plain_eager(*tensors):
        return variant.op(input, *args, need, pack)[0]
    _check_qparams_not_differentiable(scale, zero_point)
    variant.check(input, *args)
    eager = getattr(backends.select(input, args[-2], args[-1]), variant.eager, None)
    if eager is not None:
        return variant.eager_call(eager, input, *args, need, pack)
    if not need:
        return variant.run(input, *args, False, False)[0]
    return _StraightThrough.apply(variant.run, input, pack, *args)
