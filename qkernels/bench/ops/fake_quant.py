"""Fake quantization with fixed qparams (``qkernels.fake_quantize_per_{tensor,channel}_affine``): int8 grid
[-128, 127], zero point 3 per tensor (per channel: scales in [0.01, 0.03], zero points in [-16, 16], axis 0).

eager: what a user writes, in float32 as aten computes: ``q = round(x · (1/s)) + z`` (aten's order, the integer
zero point added after rounding: ``round(x · (1/s) + z)`` differs where x · (1/s) is a tie and z is odd, round
half to even), ``y = (clamp(q, qmin, qmax) − z) · s``, the gradient passed where ``q`` is inside the grid (a
straight-through mask). Minimal traffic (b = element size): fwd reads x, writes y (2b); bwd reads dy and a
1-byte mask, writes dx (2b + 1); fwdbwd is both, the forward also writing the mask (4b + 2).
"""

from __future__ import annotations

import torch

from qkernels import fake_quantize_per_channel_affine, fake_quantize_per_tensor_affine

from ..spec import FLOAT_DTYPES, Op

QMIN, QMAX, SCALE, ZERO_POINT, CHANNELS = -128, 127, 0.02, 3, 256


def traffic(mode: str, numel: int, itemsize: int) -> int:
    return {"fwd": 2 * itemsize, "bwd": 2 * itemsize + 1, "fwdbwd": 4 * itemsize + 2}[mode] * numel


def _x(dims, dtype, device):
    generator = torch.Generator(device).manual_seed(0)
    return torch.randn(dims, generator=generator, device=device).to(dtype)


def _tensor_inputs(dims, dtype, device) -> dict:
    return {"x": _x(dims, dtype, device)}


def _channel_inputs(dims, dtype, device) -> dict:
    generator = torch.Generator(device).manual_seed(1)
    scale = torch.rand(dims[0], generator=generator, device=device) * 0.02 + 0.01
    zero_point = torch.randint(-16, 17, (dims[0],), generator=generator, device=device, dtype=torch.int32)
    return {"x": _x(dims, dtype, device), "scale": scale, "zero_point": zero_point}


def _straight_through(x, q, scale, zero_point):
    """``(clamp(q) − z) · s`` in x's dtype, with the gradient of x where q is inside the grid."""
    y = ((torch.clamp(q, QMIN, QMAX) - zero_point) * scale).to(x.dtype)
    inside = (q >= QMIN) & (q <= QMAX)
    return y.detach() + (x - x.detach()) * inside


def _eager_tensor(i):
    x = i["x"]
    inv = 1.0 / torch.tensor(SCALE, dtype=torch.float32)
    return _straight_through(x, torch.round(x.float() * inv) + ZERO_POINT, SCALE, ZERO_POINT)


def _eager_channel(i):
    x, shape = i["x"], (-1,) + (1,) * (i["x"].dim() - 1)
    scale, zero_point = i["scale"].reshape(shape), i["zero_point"].reshape(shape).float()
    return _straight_through(x, torch.round(x.float() * (1.0 / scale)) + zero_point, scale, zero_point)


OPS = [
    Op("fake_quant_per_tensor", "fake_quant", "fake_quantize_per_tensor_affine, int8, x any shape",
       make=_tensor_inputs, sweep_shape=lambda n: (n,), traffic=traffic,
       qkernels=lambda i: fake_quantize_per_tensor_affine(i["x"], SCALE, ZERO_POINT, QMIN, QMAX),
       aten=lambda i: torch.fake_quantize_per_tensor_affine(i["x"], SCALE, ZERO_POINT, QMIN, QMAX),
       aten_dtypes=FLOAT_DTYPES, eager=_eager_tensor),
    Op("fake_quant_per_channel", "fake_quant", "fake_quantize_per_channel_affine, int8, axis 0",
       make=_channel_inputs, sweep_shape=lambda n: (CHANNELS, n // CHANNELS) if n % CHANNELS == 0 else None,
       traffic=traffic, kinds=("weight",),
       qkernels=lambda i: fake_quantize_per_channel_affine(i["x"], i["scale"], i["zero_point"], 0, QMIN, QMAX),
       aten=lambda i: torch.fake_quantize_per_channel_affine(i["x"], i["scale"], i["zero_point"], 0, QMIN, QMAX),
       aten_dtypes=FLOAT_DTYPES, eager=_eager_channel),
]
