"""Backend ``cpu``/``cuda``: the csrc kernels through their private ops (qkernels::_<family>_*_{cpu,cuda}).

Every backend module offers the same launchers, writing into preallocated outputs that share x's dense
layout: ``per_tensor``, ``per_channel`` and ``backward`` (contract: qkernels/ops.py; ``enabled`` is None or a
one-element int32 tensor; a mask is None, bool in x's layout, or packed uint8), and ``learnable_forward`` /
``learnable_backward`` (contract: qkernels/learnable.py and csrc/include/qkernels/fake_quant_learnable_kernels.h),
and ``fused_observer_update`` (contract: qkernels/fused_observer.py). Only the native backends also offer the
eager forwards with autograd nodes in C++ (csrc/ops/eager_autograd.h): ``per_tensor_eager``,
``per_tensor_tensor_eager`` and ``per_channel_eager`` (allocation, launch, node: one call),
``learnable_eager`` (layout, launch and node) and ``fused_observer_per_tensor_eager`` (observer step and fake
quantization).
"""

from __future__ import annotations

import torch

from .enums import Flavour
from .reference.fake_quant import uses_fma

FLAVOURS = {name: int(Flavour.of(name)) for name in ("cpu", "cuda")}  # (a dict: read on every call)


_ops: dict = {}


def _op(name: str, x: torch.Tensor):
    """The private op ``qkernels::_<name>_{cpu,cuda}`` for x's device, cached on x.is_cuda (building x.device
    costs more than the rest of the lookup; the backend choice has already matched x's device to cpu or cuda).

    Returned as the C++ callable of its one overload: an OpOverloadPacket resolves the overload on every call
    and the OpOverload adds a Python frame, 3 us in all, which is more than a small kernel's launch."""
    key = (name, x.is_cuda)
    op = _ops.get(key)
    if op is None:
        overload = getattr(torch.ops.qkernels, f"_{name}_{'cuda' if x.is_cuda else 'cpu'}").default
        op = _ops[key] = getattr(overload, "_op", overload)
    return op


def per_tensor(x, out, mask, scale, zero_point, enabled, quant_min, quant_max, flavour):
    tensors = isinstance(scale, torch.Tensor)
    _op("fake_quant_per_tensor", x)(
        x,
        out,
        mask,
        0.0 if tensors else scale,
        0 if tensors else zero_point,
        scale if tensors else None,
        zero_point if tensors else None,
        enabled,
        quant_min,
        quant_max,
        FLAVOURS[flavour],
    )


def per_channel(x, out, mask, scale, zero_point, axis, inner, quant_min, quant_max, flavour, use_fma):
    _op("fake_quant_per_channel", x)(
        x, out, mask, scale, zero_point, inner, quant_min, quant_max, FLAVOURS[flavour], use_fma
    )


def backward(grad, mask, out):
    _op("fake_quant_backward", grad)(grad, mask, out)


# The public functions' eager forward in one C++ call (arguments checked in Python; qkernels/ops.py, `_call`):
# allocation, the launch and, when requires_grad, the C++ straight-through node. Same arguments as the runs.
def per_tensor_eager(x, scale, zero_point, quant_min, quant_max, requires_grad, pack_mask):
    return _op("fake_quant_per_tensor_eager", x)(
        x, scale, zero_point, None, None, None, quant_min, quant_max, requires_grad, pack_mask)


def per_tensor_tensor_eager(x, scale, zero_point, enabled, quant_min, quant_max, requires_grad, pack_mask):
    return _op("fake_quant_per_tensor_eager", x)(
        x, 0.0, 0, scale, zero_point, enabled, quant_min, quant_max, requires_grad, pack_mask)


def per_channel_eager(x, scale, zero_point, axis, quant_min, quant_max, requires_grad, pack_mask):
    return _op("fake_quant_per_channel_eager", x)(
        x, scale, zero_point, axis, quant_min, quant_max, uses_fma("cuda" if x.is_cuda else "cpu", zero_point.dtype),
        requires_grad, pack_mask)


def learnable_eager(x, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor, rule, use_fma,
                    requires_grad):
    """The learnable op's eager call in one C++ call (qkernels/learnable.py, `_call`): layout, launch and, when
    requires_grad, the C++ autograd node that runs learnable_backward; returns out."""
    return _op("fake_quant_learnable_eager", x)(
        x, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor, rule, use_fma, requires_grad)


def learnable_forward(x, out, scale, zero_point, dims, quant_min, quant_max, flavour, per_tensor):
    _op("fake_quant_learnable_forward", x)(x, out, scale, zero_point, *dims, quant_min, quant_max,
                                                  FLAVOURS[flavour], per_tensor)


def learnable_backward(dy, x, dx, scale, zero_point, dims, quant_min, quant_max, grad_factor, flavour, rule,
                       use_fma, need_qgrads, ds_dtype, dz_dtype):
    grads = _op("fake_quant_learnable_backward", x)(
        dy, x, dx, scale, zero_point, *dims, quant_min, quant_max, grad_factor, FLAVOURS[flavour], rule, use_fma,
        need_qgrads, ds_dtype, dz_dtype,
    )
    return grads if need_qgrads else None


def fused_observer_update(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                          averaging_const, quant_min, quant_max, ch_axis, inner, symmetric, mode, eps,
                          symmetric_zero_point, flavour):
    _op("fused_observer_update", x)(
        x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const, quant_min,
        quant_max, inner, symmetric, mode, eps, symmetric_zero_point, FLAVOURS[flavour],
    )


def fused_observer_per_tensor_eager(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                                    averaging_const, quant_min, quant_max, symmetric, mode, eps, symmetric_zero_point,
                                    requires_grad, pack_mask):
    """The fused observer op per tensor in one C++ call (qkernels/fused_observer.py): fused_observer_update, then
    the per-tensor fake quantization with the new qparams and fake_quant_on, with the straight-through node when
    requires_grad."""
    return _op("fused_observer_per_tensor_eager", x)(
        x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const, quant_min,
        quant_max, symmetric, mode, eps, symmetric_zero_point, requires_grad, pack_mask,
    )
