"""Backend ``reference``: qkernels.reference behind the launcher interface of the other backends."""

from __future__ import annotations

import torch

from .enums import QParamsMode, ZpRule
from .reference import fake_quant as ref
from .reference import fake_quant_learnable as lref
from .reference import fused_observer as oref

_RULES = {ZpRule.TorchPerTensor: "torch", ZpRule.Torch: "torch", ZpRule.Consistent: "consistent"}


def _write(out, mask, y, m):
    out.copy_(y)
    if mask is None:
        return
    if mask.dtype == torch.bool:
        mask.copy_(m)
    else:  # packed, in out's storage order
        dense = torch.empty_like(out, dtype=torch.bool).copy_(m)
        mask.copy_(ref.pack_bits(ref.storage_view(dense)))


def per_tensor(x, out, mask, scale, zero_point, enabled, quant_min, quant_max, flavour):
    y, m = ref.fake_quant_per_tensor(
        x, scale, zero_point, quant_min, quant_max, enabled=True if enabled is None else enabled, flavour=flavour
    )
    _write(out, mask, y, m)


def per_channel(x, out, mask, scale, zero_point, axis, inner, quant_min, quant_max, flavour, use_fma):
    y, m = ref.fake_quant_per_channel(
        x, scale, zero_point, axis, quant_min, quant_max, flavour=flavour, use_fma=use_fma
    )
    _write(out, mask, y, m)


def backward(grad, mask, out):
    out.copy_(ref.fake_quant_backward(grad, mask))


def _views(dims, *tensors):
    """Tensors in x's dense layout as [B, O, C, I] views of their storage."""
    return [ref.storage_view(t).view(dims) for t in tensors]


def learnable_forward(x, out, scale, zero_point, dims, quant_min, quant_max, flavour, per_tensor):
    B, _, C, _ = dims
    (x4,) = _views(dims, x)
    y = lref.forward_broadcast(x4, scale.view(B, 1, C, 1), zero_point.view(B, 1, C, 1), quant_min, quant_max,
                               per_tensor=per_tensor, flavour=flavour)
    ref.storage_view(out).copy_(y.flatten())


def learnable_backward(dy, x, dx, scale, zero_point, dims, quant_min, quant_max, grad_factor, flavour, rule,
                       use_fma, need_qgrads, ds_dtype, dz_dtype):
    B, _, C, _ = dims
    dy4, x4 = _views(dims, dy, x)
    g, ds, dz = lref.backward_elements_broadcast(
        dy4, x4, scale.view(B, 1, C, 1), zero_point.view(B, 1, C, 1), quant_min, quant_max, grad_factor,
        per_tensor=rule == ZpRule.TorchPerTensor, zero_point_rounding=_RULES[rule], flavour=flavour, use_fma=use_fma,
    )
    ref.storage_view(dx).copy_(g.flatten())
    if not need_qgrads:
        return None
    partials = torch.stack([ds, dz]).sum((2, 4), dtype=torch.float64).float().view(2, B, 1, C)
    return lref.reduce_partials(partials, ds_dtype, dz_dtype)


def fused_observer_update(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                          averaging_const, quant_min, quant_max, ch_axis, inner, symmetric, mode, eps,
                          symmetric_zero_point, flavour):
    """The spec's update as PyTorch ops on x's device, flags read there (no host sync): the min/max
    reduction therefore runs even while the observer is off."""
    xf = x.detach().float()
    if ch_axis >= 0:
        cur_min, cur_max = torch.aminmax(oref.channel_rows(xf, ch_axis), dim=1)
    else:
        cur_min, cur_max = torch.aminmax(xf)
    observe = oref.flag_on_device(observer_on)
    for running, cur in ((running_min, cur_min), (running_max, cur_max)):
        running.copy_(torch.where(observe, oref.update_running(running, cur.view(running.shape), averaging_const,
                                                               flavour), running))
    if mode == QParamsMode.Fused:
        s, z = oref.choose_qparams_fused(running_min, running_max, quant_min, quant_max, symmetric, flavour)
        recompute = oref.flag_on_device(fake_quant_on)
    else:
        s, z = oref.choose_qparams_observer(running_min, running_max, quant_min, quant_max, symmetric, eps=eps,
                                            symmetric_zero_point=symmetric_zero_point)
        recompute = observe
    scale.copy_(torch.where(recompute, s.view(scale.shape), scale))
    zero_point.copy_(torch.where(recompute, z.view(zero_point.shape).to(zero_point.dtype), zero_point))
