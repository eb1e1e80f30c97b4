"""Contract samples of the learnable (LSQ) family (qkernels.fake_quantize_learnable_per_{tensor,channel,group}_affine
and the registered ops fake_quantize_learnable and fake_quantize_learnable_backward), checked by
tests/test_contract.py against qkernels.reference.fake_quant_learnable.

Inputs lie around each quantizer's own grid (conftest.make_input: ties, boundaries, +-0, NaN, +-inf); zero
points sit at and near ties (2.5: forward 2, backward 3 under the "torch" rounding). dscale/dzero_point are sums
per quantizer (contract.Sums); x and dx, y exact.
"""

import math

import torch

import qkernels
from contract import BadInput, Sample, Sums
from conftest import make_input
from qkernels.reference import fake_quant_learnable as lref
from qkernels.reference.fake_quant import uses_fma

FAMILY = "fake_quant_learnable"

_OP = torch.ops.qkernels.fake_quantize_learnable
_BACKWARD = torch.ops.qkernels.fake_quantize_learnable_backward
_ODD_ZERO_POINTS = [2.5, -0.6, -3.7, 0.5, 1.5, -2.5, 0.49999997, 7.0]


def _learnable(x, scale, zero_point, axis, group_size, quant_min, quant_max, grad_factor, rounding):
    """The public function of the granularity."""
    if axis is None:
        return qkernels.fake_quantize_learnable_per_tensor_affine(x, scale, zero_point, quant_min, quant_max,
                                                                  grad_factor, zero_point_rounding=rounding)
    if group_size is None:
        return qkernels.fake_quantize_learnable_per_channel_affine(x, scale, zero_point, axis, quant_min, quant_max,
                                                                   grad_factor, zero_point_rounding=rounding)
    return qkernels.fake_quantize_learnable_per_group_affine(x, scale, zero_point, axis, group_size, quant_min,
                                                             quant_max, grad_factor, zero_point_rounding=rounding)


class _Quantizer:
    """One learnable call: granularity, range, grad factor and zero-point rounding."""

    def __init__(self, axis, group_size, quant_min, quant_max, grad_factor=0.37, rounding="torch"):
        self.axis, self.group_size = axis, group_size
        self.quant_min, self.quant_max = quant_min, quant_max
        self.grad_factor, self.rounding = grad_factor, rounding

    def qparams(self, x_shape, seed, device):
        """float32 scale and zero point: odd zero points, some outside the range by one."""
        shape = lref.qparam_shape(x_shape, self.axis, self.group_size)
        g = torch.Generator().manual_seed(seed)
        scale = torch.rand(shape, generator=g) * 0.5 + 0.01
        picks = torch.tensor(_ODD_ZERO_POINTS)[torch.randint(0, len(_ODD_ZERO_POINTS), shape, generator=g)]
        offsets = torch.randint(self.quant_min, self.quant_max + 1, shape, generator=g) * (self.quant_min < 0)
        zp = (picks + offsets).clamp(self.quant_min - 1, self.quant_max + 1)
        return scale.to(device), zp.to(device)

    def inputs(self, seed, shape, dtype, device):
        """x (each quantizer's grid times its scale, around its zero point) and its qparams."""
        scale, zp = self.qparams(shape, seed, device)
        z_mid = int(round(float(zp.float().mean().clamp(self.quant_min, self.quant_max))))
        u = make_input(seed + 1, shape, 1.0, z_mid, self.quant_min, self.quant_max, torch.float64, "cpu")
        x = (u * lref.broadcast_qparam(scale.cpu().double(), u, self.axis, self.group_size)).to(dtype).to(device)
        return x, scale, zp

    def __call__(self, x, scale, zero_point):
        return _learnable(x, scale, zero_point, self.axis, self.group_size, self.quant_min, self.quant_max,
                          self.grad_factor, self.rounding)

    def reference(self, x, scale, zero_point, dy, target):
        """(y in the op's output layout, dx, Sums of dscale, Sums of dzero_point) for the target's flavours."""
        q = (self.quant_min, self.quant_max)
        kw = dict(axis=self.axis, group_size=self.group_size)
        y = lref.learnable_forward(x.float(), scale, zero_point, *q, flavour=target.flavour, **kw).to(x.dtype)
        layout = x if self.group_size is None else x.contiguous()  # per group: contiguous outputs
        dx, ds, dz = lref.learnable_backward_elements(
            dy.float(), x.float(), scale, zero_point, *q, self.grad_factor, zero_point_rounding=self.rounding,
            flavour=target.flavour, use_fma=uses_fma(target.launch_flavour, torch.float32), **kw)
        reduce = lambda v: lref.reduce_to_qparam(v, self.axis, self.group_size, scale.shape)  # noqa: E731
        return (torch.empty_like(layout).copy_(y), dx.to(x.dtype), Sums(ds, reduce, scale.dtype),
                Sums(dz, reduce, zero_point.dtype))

    def args(self):
        return (self.axis, self.group_size, self.quant_min, self.quant_max, self.grad_factor, self.rounding)


def _sample(name, quantizer, shape, seed, grads=("x", "scale", "zero_point"), layout=lambda t: t, opcheck=False):
    """A sample of one public call on x of ``shape`` (viewed through ``layout``); gradients of ``grads``."""

    def make(device, dtype):
        x, scale, zp = quantizer.inputs(seed, shape, dtype, device)
        x = layout(x)
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 2)).to(dtype).to(device)
        return {"x": x, "dy": dy, "scale": scale, "zero_point": zp}

    def expected(inp, target):
        y, dx, ds, dz = quantizer.reference(inp["x"], inp["scale"], inp["zero_point"], inp["dy"], target)
        out = {"y": y, "dx": dx, "dscale": ds, "dzero_point": dz}
        return {name: out[name] for name in ("y",) + tuple(f"d{n}" for n in grads)}

    def ops(inp):
        x, s, z = (inp[n] for n in ("x", "scale", "zero_point"))
        detached = (inp["dy"], x.detach(), s.detach(), z.detach())
        return [(_OP, (x, s, z) + quantizer.args()), (_BACKWARD, detached + quantizer.args()),
                (_BACKWARD, detached + quantizer.args() + (False,))]

    return Sample(name, make, lambda inp: {"y": quantizer(inp["x"], inp["scale"], inp["zero_point"])}, expected,
                  grads=grads, ops=ops if opcheck else None)


# ------------------------------------------------------------------------------------------------------------
# The three public functions chained (compiled as one graph)
# ------------------------------------------------------------------------------------------------------------
_CHAIN = (_Quantizer(None, None, -128, 127, 0.5), _Quantizer(1, None, -8, 7, 1.0, "consistent"),
          _Quantizer(1, 4, 0, 15, 1.0))
_CHAIN_SHAPE = (6, 8)


def _make_chain(device, dtype):
    x, *_ = _CHAIN[0].inputs(40, _CHAIN_SHAPE, dtype, device)
    inp = {"x": x, "dy": torch.randn(_CHAIN_SHAPE, generator=torch.Generator().manual_seed(41)).to(dtype).to(device)}
    for i, quantizer in enumerate(_CHAIN):
        inp[f"scale{i}"], inp[f"zero_point{i}"] = quantizer.qparams(_CHAIN_SHAPE, 42 + i, device)
    return inp


def _chain_call(inp):
    a = _CHAIN[0](inp["x"], inp["scale0"], inp["zero_point0"])
    b = _CHAIN[1](a * 2, inp["scale1"], inp["zero_point1"])
    return {"y": _CHAIN[2](b, inp["scale2"], inp["zero_point2"])}


def _expected_chain(inp, target):
    """Each stage's reference on the reference's output of the one before, the gradients back through them."""
    xs, out = [inp["x"]], {}
    for i, quantizer in enumerate(_CHAIN):
        y = quantizer.reference(xs[-1], inp[f"scale{i}"], inp[f"zero_point{i}"], torch.zeros_like(xs[-1]), target)[0]
        xs.append(y * 2 if i == 0 else y)
    dy = inp["dy"]
    for i in reversed(range(len(_CHAIN))):
        _, dy, out[f"dscale{i}"], out[f"dzero_point{i}"] = _CHAIN[i].reference(
            xs[i], inp[f"scale{i}"], inp[f"zero_point{i}"], dy, target)
        dy = dy * 2 if i == 1 else dy
    out.update(y=xs[-1], dx=dy)
    return out


_CHAIN_GRADS = ("x",) + tuple(f"{p}{i}" for i in range(len(_CHAIN)) for p in ("scale", "zero_point"))

SAMPLES = [
    _sample("per_tensor", _Quantizer(None, None, -8, 7), (3, 1031), 1, opcheck=True),
    _sample("per_channel_channels_last_consistent", _Quantizer(1, None, 0, 255, 1.0, "consistent"), (2, 6, 5, 7), 4,
            layout=lambda t: t.contiguous(memory_format=torch.channels_last), opcheck=True),
    _sample("per_group_transposed", _Quantizer(-1, 4, -128, 127, 0.5), (12, 8), 7,
            layout=lambda t: t.t().contiguous().t(), opcheck=True),
    _sample("per_channel_rows_only_dx", _Quantizer(1, None, -8, 7), (300, 24), 10, grads=("x",), opcheck=True),
    _sample("per_channel_no_grad", _Quantizer(0, None, -8, 7), (5, 999), 13, grads=()),
    _sample("per_channel_empty", _Quantizer(1, None, -8, 7), (0, 4), 16),
    # (no bfloat16: a 1-ulp difference of the interpreter's narrowing would move the next stage's rounding)
    Sample("chain", _make_chain, _chain_call, _expected_chain, grads=_CHAIN_GRADS, compile=True,
           dtypes=(torch.float32, torch.float16)),
]


def _x():
    return torch.randn(4, 5)


def _per_tensor(x, scale, zp, *args, **kwargs):
    return lambda: qkernels.fake_quantize_learnable_per_tensor_affine(x, scale, zp, *args, **kwargs)


def _per_channel(scale, zp, axis, *args):
    return lambda: qkernels.fake_quantize_learnable_per_channel_affine(_x(), scale, zp, axis, *args)


def _per_group(scale, zp, axis, group_size):
    return lambda: qkernels.fake_quantize_learnable_per_group_affine(_x(), scale, zp, axis, group_size, 0, 255)


ONE, ZERO = torch.ones(1), torch.zeros(1)

BAD_INPUTS = [
    BadInput("`input` must be float32", _per_tensor(_x().int(), ONE, ZERO, 0, 255)),
    BadInput("`input` must be a strided tensor", _per_tensor(_x().to_sparse_csr(), ONE, ZERO, 0, 255)),
    BadInput("`scale` and `zero_point` must have exactly one element",
             _per_tensor(_x(), torch.ones(2), torch.zeros(2), 0, 255)),
    BadInput("`scale` and `zero_point` must have the same shape", _per_channel(torch.ones(4), torch.zeros(3), 0, 0,
                                                                                 255)),
    BadInput(r"`scale` and `zero_point` must be 1-D with 4 elements \(`input.size\(0\)`\)",
             _per_channel(torch.ones(5), torch.zeros(5), 0, 0, 255)),
    BadInput(r"`axis` must be in \[-2, 1\]", _per_channel(torch.ones(4), torch.zeros(4), 2, 0, 255)),
    BadInput(r"`group_size` \(2\) must divide `input.size\(1\)` \(5\)", _per_group(torch.ones(4, 2),
                                                                                    torch.zeros(4, 2), 1, 2)),
    BadInput("`group_size` must be positive", _per_group(torch.ones(4, 1), torch.zeros(4, 1), 1, 0)),
    BadInput(r"`scale` and `zero_point` must have shape \(4, 1\)", _per_group(torch.ones(4), torch.zeros(4), 1, 5)),
    BadInput("`quant_min` should be less than or equal to `quant_max`", _per_tensor(_x(), ONE, ZERO, 5, 4)),
    BadInput("the quantization range should include 0", _per_tensor(_x(), ONE, ZERO, 1, 4)),
    BadInput("`scale` must be positive and finite", _per_channel(torch.tensor([1.0, -1.0, 1.0, 1.0]), torch.zeros(4),
                                                                 0, 0, 255)),
    BadInput("`zero_point` must not be NaN", _per_tensor(_x(), ONE, torch.tensor([math.nan]), 0, 255)),
    BadInput("`zero_point` must not be NaN", _per_channel(torch.ones(4), torch.tensor([0.0, math.nan, 1.0, 2.0]), 0,
                                                          -128, 127)),
    BadInput("`scale` must be a floating-point tensor", _per_tensor(_x(), torch.ones(1, dtype=torch.int32), ZERO, 0,
                                                                    255)),
    BadInput("`zero_point` must be an integer or floating-point tensor", _per_tensor(_x(), ONE, ZERO.bool(), 0, 255)),
    BadInput("`grad_factor` must be finite", _per_tensor(_x(), ONE, ZERO, 0, 255, math.nan)),
    BadInput("`zero_point_rounding` must be one of", _per_tensor(_x(), ONE, ZERO, 0, 255,
                                                                 zero_point_rounding="nearest")),
    BadInput("`X` and `dY` are not the same size", lambda: _BACKWARD(_x()[:2], _x(), ONE, ZERO, None, None, 0, 255,
                                                                     1.0, "torch")),
]
