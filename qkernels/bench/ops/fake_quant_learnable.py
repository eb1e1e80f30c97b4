"""Learnable (LSQ) fake quantization (``qkernels.fake_quantize_learnable_per_{tensor,channel,group}_affine``): int8
grid [-128, 127], gradients to x, scale and zero point, scaled by LSQ's ``grad_factor = 1 / sqrt(n · qmax)`` (n:
the elements per quantizer, ``qkernels.lsq_grad_factor``). Per tensor: x any shape (sweep: 1-D), scale 0.02,
zero point 2.4; per channel: x [C, ...] (sweep: [256, n / 256]), axis 0, scales in [0.01, 0.03], zero points in
[-16, 16) with fractions, float32 [C]; per group: x [R, K] (K a multiple of 128; sweep: [n / 1024, 1024]),
groups of 128 consecutive elements of a row (axis 1), qparams [R, K / 128] drawn as per channel. Per group is
per channel on the [R · K / 128, 128] view (aten's provider and the eager formulation run it so).

Math (aten's, ``qkernels.reference.fake_quant_learnable``), float32 throughout (16-bit x widened), ``inv =
float32(1 / s)``: forward ``z = clamp(rne(zp), qmin, qmax)``, ``y = (clamp(rne(x · inv) + z) − z) · s``.
Backward with the zero point ``zb`` (per tensor ``trunc(clamp(zp + 0.5))``, per channel ``z``) and the level
``q = rne(x · inv + zb)`` (one FMA on AVX2/AVX512 CPUs; on CUDA ``rne(x · inv) + zb``):
inside the grid ``dx = dy``, ``ds = ((dy · d) · inv) · gf`` with ``d = fma(q − zb, s, −x)``, ``dz = 0``;
outside ``dx = 0``, ``ds = (dy · (qmin|qmax − zb)) · gf``, ``dz = ((dy · −1) · s) · gf``; ``ds``/``dz`` summed
per quantizer in float64 and rounded once to float32.

eager: that, written with autograd: the value ``y`` computed without grad, plus terms that are zero in value
and whose autograd chains give those gradients in aten's order of operations (the straight-through mask for
x; for scale and zero point, float64 broadcasts, so that autograd's reduction is the float64 sum). The two
FMAs are float64 expressions rounded once to float32: ``(q − zb) · s − x`` is exact in float64 for every
element inside the grid, so it is the FMA; ``x · inv + zb`` is a float64 product (exact) and sum (which can
round when |x · inv| < |zb| / 64), equal to the FMA's level unless that sum rounds onto a float32 midpoint
next to a half-integer (about 2^-29 of such elements; none in these inputs).

aten: ``torch._fake_quantize_learnable_per_{tensor,channel}_affine``, float32 and bfloat16 (float16: its
forward runs, its backward raises "Expected dY_.scalar_type() == ScalarType::Float").

Checks: y and dx exact for every provider. The scale and zero-point gradients are sums: exact for eager (its
float64 sums are the reference's); for aten (float32 sums in its order) and the qkernels kernels (fixed blocks
of float32 partials) the family's contract, ``qkernels.reference.reduce.sum_bound`` of the per-element values
(``learnable_backward_elements``), as tests/test_fake_quant_learnable.py states it.

Minimal traffic (b = element size; qparams and their partial sums negligible): fwd reads x, writes y (2b);
bwd reads dy and x (the scale gradient needs x itself, not a mask), writes dx (3b); fwdbwd is both (5b).
"""

from __future__ import annotations

import torch

from qkernels import (
    fake_quantize_learnable_per_channel_affine,
    fake_quantize_learnable_per_group_affine,
    fake_quantize_learnable_per_tensor_affine,
    lsq_grad_factor,
)

from qkernels.reference import fake_quant_learnable as lref
from qkernels.reference.reduce import sum_bound

from ..spec import Op, Tolerance, exact

QMIN, QMAX, SCALE, ZERO_POINT, CHANNELS = -128, 127, 0.02, 2.4, 256
AXIS, GROUP, ROW = 0, 128, 1024


def traffic(mode: str, numel: int, itemsize: int) -> int:
    return {"fwd": 2 * itemsize, "bwd": 3 * itemsize, "fwdbwd": 5 * itemsize}[mode] * numel


def _x(dims, dtype, device):
    generator = torch.Generator(device).manual_seed(0)
    return torch.randn(dims, generator=generator, device=device).to(dtype)


def _tensor_inputs(dims, dtype, device) -> dict:
    x = _x(dims, dtype, device)
    return {"x": x, "scale": torch.tensor([SCALE], device=device),
            "zero_point": torch.tensor([ZERO_POINT], device=device), "grad_factor": lsq_grad_factor(x.numel(), QMAX)}


def _channel_inputs(dims, dtype, device) -> dict:
    x = _x(dims, dtype, device)
    generator = torch.Generator(device).manual_seed(1)
    scale = torch.rand(dims[0], generator=generator, device=device) * 0.02 + 0.01
    # fractional zero points, as LSQ learns them: the forward rounds them, the gradient passes straight through
    zero_point = torch.rand(dims[0], generator=generator, device=device) * 32 - 16
    return {"x": x, "scale": scale, "zero_point": zero_point,
            "grad_factor": lsq_grad_factor(x.numel() // dims[0], QMAX)}


def _group_inputs(dims, dtype, device) -> dict:
    x = _x(dims, dtype, device)
    generator = torch.Generator(device).manual_seed(1)
    groups = (dims[0], dims[1] // GROUP)
    scale = torch.rand(groups, generator=generator, device=device) * 0.02 + 0.01
    zero_point = torch.rand(groups, generator=generator, device=device) * 32 - 16
    return {"x": x, "scale": scale, "zero_point": zero_point, "grad_factor": lsq_grad_factor(GROUP, QMAX)}


def _as_channels(i) -> tuple:
    """Per group as per channel: (x [R · K / G, G], scale, zero point [R · K / G])."""
    return i["x"].reshape(-1, GROUP), i["scale"].reshape(-1), i["zero_point"].reshape(-1)


def _fma_hardware(device: torch.device) -> bool:
    """Whether aten's backward forms ``x · inv + zb`` and ``(q − zb) · s − x`` as FMAs: on CUDA, and on CPUs
    with AVX2/AVX512 kernels (torch's capability, fixed when it loads)."""
    return device.type == "cuda" or torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX")


def _lsq(x, scale, zero_point, grad_factor, per_tensor: bool):
    """LSQ fake quantization of x with scale/zero_point broadcast along axis 0 (per tensor: one element)."""
    shape = (1,) * x.dim() if per_tensor else (-1,) + (1,) * (x.dim() - 1)
    xf = x.detach().float()
    s, zp = scale.detach().reshape(shape), zero_point.detach().reshape(shape)
    inv = 1.0 / s  # aten multiplies by the float32 reciprocal, never divides
    z = torch.round(zp).clamp(QMIN, QMAX)
    y = ((torch.clamp(torch.round(xf * inv) + z, QMIN, QMAX) - z) * s).to(x.dtype)
    if not torch.is_grad_enabled():
        return y

    # the backward's zero point and level, as aten's backward kernel forms them (they may differ from the
    # forward's at ties: aten's behaviour, which the reference keeps)
    zb = torch.trunc((zp + 0.5).clamp(QMIN, QMAX)) if per_tensor else z
    fma = _fma_hardware(x.device)
    if x.device.type == "cuda":
        level = torch.round(xf * inv) + zb
    elif fma:  # x · inv is exact in float64; one rounding of the sum, then float32 (see the docstring)
        level = torch.round((xf.double() * inv.double() + zb.double()).float())
    else:
        level = torch.round(xf * inv + zb)
    inside = (level >= QMIN) & (level <= QMAX)
    if fma:  # exact in float64 for the elements inside the grid, the only ones that use it: the FMA
        d = ((level - zb).double() * s.double() - xf.double()).float()
    else:
        d = (level - zb) * s - xf
    edge = torch.where(level < QMIN, QMIN - zb, QMAX - zb)
    # autograd multiplies the incoming gradient by the factors of a product chain in reverse order, so
    # ((u · gf) · m2) · m1 gives the gradient ((dy · m1) · m2) · gf:
    # inside ((dy · d) · inv) · gf, outside ((dy · edge) · 1) · gf
    m1, m2 = torch.where(inside, d, edge), torch.where(inside, inv, torch.ones_like(inv))
    mz = torch.where(inside, torch.zeros_like(s), -s)  # ((dy · −1) · s) = dy · (−s) exactly

    def injected(qparam):
        """qparam broadcast to x in float64 (autograd sums its gradient there), back in float32, minus itself:
        zero, with the gradient of one per element."""
        wide = qparam.double().reshape(shape).expand(x.shape).float()
        return wide - wide.detach()

    ds_term = ((injected(scale) * grad_factor) * m2) * m1
    dz_term = (injected(zero_point) * grad_factor) * mz
    return y.detach() + (x - x.detach()) * inside + ds_term.to(x.dtype) + dz_term.to(x.dtype)


def _qparam_sums(axis, group_size=None) -> tuple:
    """The family's contract on the scale's (gradient 1) and the zero point's (gradient 2) sums, for quantizers
    along ``axis`` (None: per tensor) in groups of ``group_size``."""

    def tolerance(index: int) -> Tolerance:
        def check(want, got, inputs):
            problem = exact(want, got)
            if problem is None or got.dtype != want.dtype or got.shape != want.shape:
                return problem
            elements = lref.learnable_backward_elements(inputs["dy"][0], inputs["x"], inputs["scale"],
                                                        inputs["zero_point"], QMIN, QMAX, inputs["grad_factor"],
                                                        axis=axis, group_size=group_size)[index]
            exact_sums, bound = sum_bound(elements,
                                          lambda v: lref.reduce_to_qparam(v, axis, group_size, want.shape))
            bad = int(((got.double().cpu() - exact_sums).abs() > bound).sum())
            return None if bad == 0 else f"{bad} of {want.numel()} sums beyond twice torch's float32 error"

        return Tolerance(f"{('scale', 'zero-point')[index - 1]} gradient: sums within twice torch's float32 error "
                         "of the exact sums, or one ulp (the family's contract, tests/test_fake_quant_learnable.py)",
                         check, covers=(f"gradient {index}",))

    return tolerance(1), tolerance(2)


_PER_TENSOR_SUMS, _PER_CHANNEL_SUMS, _PER_GROUP_SUMS = _qparam_sums(None), _qparam_sums(AXIS), _qparam_sums(1, GROUP)


def _eager_group(i):
    x, scale, zero_point = _as_channels(i)
    return _lsq(x, scale, zero_point, i["grad_factor"], per_tensor=False).reshape(i["x"].shape)


def _aten_group(i):
    x, scale, zero_point = _as_channels(i)
    return torch._fake_quantize_learnable_per_channel_affine(x, scale, zero_point, 0, QMIN, QMAX,
                                                             i["grad_factor"]).reshape(i["x"].shape)

OPS = [
    Op("learnable_per_tensor", "fake_quant_learnable",
       "fake_quantize_learnable_per_tensor_affine (LSQ), int8, grad_factor 1/sqrt(n·qmax), x any shape",
       make=_tensor_inputs, sweep_shape=lambda n: (n,), traffic=traffic, grads=("x", "scale", "zero_point"),
       qkernels=lambda i: fake_quantize_learnable_per_tensor_affine(i["x"], i["scale"], i["zero_point"], QMIN, QMAX,
                                                                    i["grad_factor"]),
       aten=lambda i: torch._fake_quantize_learnable_per_tensor_affine(i["x"], i["scale"], i["zero_point"], QMIN,
                                                                       QMAX, i["grad_factor"]),
       aten_dtypes=("float32", "bfloat16"), tolerances={"aten": _PER_TENSOR_SUMS, "qkernels": _PER_TENSOR_SUMS},
       eager=lambda i: _lsq(i["x"], i["scale"], i["zero_point"], i["grad_factor"], per_tensor=True)),
    Op("learnable_per_channel", "fake_quant_learnable",
       "fake_quantize_learnable_per_channel_affine (LSQ), int8, grad_factor 1/sqrt(n/C·qmax), axis 0",
       make=_channel_inputs, sweep_shape=lambda n: (CHANNELS, n // CHANNELS) if n % CHANNELS == 0 else None,
       traffic=traffic, kinds=("weight",), grads=("x", "scale", "zero_point"),
       qkernels=lambda i: fake_quantize_learnable_per_channel_affine(i["x"], i["scale"], i["zero_point"], AXIS, QMIN,
                                                                     QMAX, i["grad_factor"]),
       aten=lambda i: torch._fake_quantize_learnable_per_channel_affine(i["x"], i["scale"], i["zero_point"], AXIS,
                                                                        QMIN, QMAX, i["grad_factor"]),
       aten_dtypes=("float32", "bfloat16"), tolerances={"aten": _PER_CHANNEL_SUMS, "qkernels": _PER_CHANNEL_SUMS},
       eager=lambda i: _lsq(i["x"], i["scale"], i["zero_point"], i["grad_factor"], per_tensor=False)),
    Op("learnable_per_group", "fake_quant_learnable",
       "fake_quantize_learnable_per_group_affine (LSQ), int8, groups of 128 along a row, grad_factor 1/sqrt(128·qmax)",
       make=_group_inputs, sweep_shape=lambda n: (n // ROW, ROW) if n % ROW == 0 else None, traffic=traffic,
       kinds=("weight",), grads=("x", "scale", "zero_point"),
       qkernels=lambda i: fake_quantize_learnable_per_group_affine(i["x"], i["scale"], i["zero_point"], 1, GROUP,
                                                                   QMIN, QMAX, i["grad_factor"]),
       aten=_aten_group, aten_dtypes=("float32", "bfloat16"),
       tolerances={"aten": _PER_GROUP_SUMS, "qkernels": _PER_GROUP_SUMS}, eager=_eager_group),
]
