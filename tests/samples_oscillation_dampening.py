"""Contract samples of the oscillation dampening family (qkernels.oscillation_dampening: the loss and its gradients
to the weight and the scale), checked by tests/test_contract.py against qkernels.reference.oscillation_dampening.

The weights lie around the grid and past both clip bounds (conftest.make_input: ties, boundaries, +-0; NaN and
+-inf in the per-channel samples, whose NaN makes the loss NaN), some of them frozen to integers inside and
outside [QMIN, QMAX], so that the clip passes and blocks the weight's gradient and frozen weights outside the range
pull on the scale. Outputs: the loss (a sum: contract.Sums), dw (exact: dw_unit * float32(dy / K)) and dscale (a sum
per quantizer). The bad inputs are tested in tests/test_oscillation_dampening.py: the family has no C++ entry point
for the harness to compare against.
"""

import torch

import qkernels
from contract import Sample, Sums
from conftest import make_input
from qkernels.oscillation_fake_quant import _dims
from qkernels.reference import oscillation_dampening as ref

FAMILY = "oscillation_dampening"

QMIN, QMAX = -4, 3


def _make(shape, axis, seed, specials):
    def make(device, dtype):
        g = torch.Generator().manual_seed(seed)
        channels = 1 if axis is None else shape[axis]
        return dict(w=make_input(seed, shape, 0.1, 0, QMIN, QMAX, dtype, device, specials=specials),
                    scale=(0.1 * (1 + torch.rand(channels, generator=g) * 0.2)).to(device),
                    zero_point=torch.randint(-1, 2, (channels,), generator=g).to(device),
                    frozen=(torch.rand(shape, generator=g) < 0.3).to(device),
                    frozen_x_int=torch.randint(-8, 8, shape, generator=g, dtype=torch.int8).to(device),
                    dy=torch.tensor(0.7, device=device))
    return make


def _call(axis, aggregation):
    def call(inputs):
        return dict(y=qkernels.oscillation_dampening(inputs["w"], inputs["scale"], inputs["zero_point"], axis, QMIN,
                                                     QMAX, inputs["frozen"], inputs["frozen_x_int"], aggregation))
    return call


def _expected(axis, aggregation):
    def expected(inputs, target):
        w = inputs["w"]
        k = ref.divisor(w.shape, aggregation)
        e, dw, ds = ref.elements(w, inputs["scale"].float(), inputs["zero_point"].float(), _dims(w, axis), QMIN, QMAX,
                                 inputs["frozen"], inputs["frozen_x_int"])
        factor = inputs["dy"].float() / k  # the backward's float32(go / K)
        return dict(y=Sums(e, lambda v: v.sum() / k, torch.float32), dw=(dw * factor).to(w.dtype).reshape(w.shape),
                    dscale=Sums(ds * factor.double(), lambda v: v.sum((0, 1, 3)), torch.float32))
    return expected


def _sample(name, shape, axis, aggregation, seed, specials=False):
    return Sample(name, _make(shape, axis, seed, specials), _call(axis, aggregation), _expected(axis, aggregation),
                  grads=("w", "scale"), compile=True, narrowed=())


SAMPLES = [
    _sample("per_tensor", (3, 7, 11), None, "kernel_mean", 1),
    _sample("per_channel_run", (6, 40), 0, "sum", 2, specials=True),
    _sample("per_channel_row", (50, 8), 1, "mean", 3, specials=True),
]

BAD_INPUTS = []
