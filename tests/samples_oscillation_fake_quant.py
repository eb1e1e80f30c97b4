"""Contract samples of the oscillation fake-quant family (qkernels.oscillation_fake_quantize: the step with its state
update, and its backward), checked by tests/test_contract.py against qkernels.reference.oscillation_fake_quant.

The inputs lie around the grid (conftest.make_input: ties, boundaries, +-0, NaN, +-inf) and the state is a
mid-training one: started, directions of every sign, EMAs around the threshold, some elements frozen, so that one
call oscillates, freezes and substitutes. Outputs: y, every state tensor and the counters (exact), dw (exact) and
dscale (a sum per quantizer: contract.Sums).
"""

import torch

import qkernels
from contract import BadInput, Sample, Sums
from conftest import make_input
from qkernels.oscillation_fake_quant import STATE_FIELDS, OscillationState, _dims
from qkernels.reference import oscillation_fake_quant as ref

FAMILY = "oscillation_fake_quant"

QMIN, QMAX, MOMENTUM, GRAD_FACTOR, THRESHOLD = -8, 7, 0.25, 0.37, 0.3


def _make(shape, axis, seed):
    def make(device, dtype):
        g = torch.Generator().manual_seed(seed)
        channels = 1 if axis is None else shape[axis]
        w = make_input(seed, shape, 0.1, 0, QMIN, QMAX, dtype, device)
        n = w.numel()

        def ints(lo, hi):
            return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8).to(device)

        frozen = torch.rand(shape, generator=g) < 0.2
        state = dict(prev_x_int=ints(QMIN, QMAX), prev_switch_dir=ints(-1, 1),
                     ema_oscillation=(torch.rand(shape, generator=g) * 2 * THRESHOLD).to(device),
                     frozen=frozen.to(device), frozen_x_int=ints(QMIN, QMAX),
                     ema_x_int=(torch.rand(shape, generator=g) * (QMAX - QMIN) + QMIN).to(device))
        return dict(w=w, scale=(0.1 * (1 + torch.rand(channels, generator=g) * 0.2)).to(device),
                    zero_point=torch.randint(-1, 2, (channels,), generator=g).to(device), **state,
                    started=torch.ones(2, dtype=torch.uint8, device=device),
                    num_oscillations=torch.tensor([5, 1], device=device),
                    threshold=torch.tensor(THRESHOLD, device=device), tracking=torch.tensor(True, device=device),
                    dy=torch.randn(n, generator=g).reshape(shape).to(dtype).to(device))
    return make


def _call(axis, use_ema):
    def call(inputs):
        state = OscillationState(*(inputs[name] for name in STATE_FIELDS + ("started", "num_oscillations")))
        y = qkernels.oscillation_fake_quantize(inputs["w"], inputs["scale"], inputs["zero_point"], axis, QMIN, QMAX,
                                               state, freeze_threshold=inputs["threshold"],
                                               tracking=inputs["tracking"], momentum=MOMENTUM,
                                               use_ema_x_int=use_ema, grad_factor=GRAD_FACTOR)
        return dict(y=y, **{name: getattr(state, name) for name in OscillationState._fields})
    return call


def _expected(axis, use_ema):
    def expected(inputs, target):
        w = inputs["w"]
        dims = _dims(w, axis)
        scale, zero_point = inputs["scale"].float(), inputs["zero_point"].float()
        state = {name: inputs[name] for name in STATE_FIELDS}
        y, x_int, mask, count = ref.step(w, scale, zero_point, dims, QMIN, QMAX, state, inputs["started"],
                                         inputs["threshold"], inputs["tracking"], MOMENTUM, use_ema)
        dw, ds = ref.backward_elements(inputs["dy"], w, x_int, mask, scale, zero_point, dims, GRAD_FACTOR)
        total = inputs["num_oscillations"]
        started = inputs["started"] | torch.stack([inputs["tracking"], inputs["tracking"] & (
            inputs["threshold"] > 0) & use_ema]).to(torch.uint8)
        return dict(y=y, **state, started=started, num_oscillations=torch.stack([total[0] + count, count]),
                    dw=dw, dscale=Sums(ds, lambda v: v.sum((0, 1, 3)), torch.float32))
    return expected


def _sample(name, shape, axis, use_ema, seed):
    return Sample(name, _make(shape, axis, seed), _call(axis, use_ema), _expected(axis, use_ema),
                  grads=("w", "scale"), compile=True)


SAMPLES = [
    _sample("per_tensor", (3, 7, 11), None, True, 1),
    _sample("per_channel_run", (6, 40), 0, True, 2),
    _sample("per_channel_row", (50, 8), 1, False, 3),
]


def _bad(**overrides):
    w = torch.randn(4, 3)
    args = dict(weight=w, scale=torch.ones(4), zero_point=torch.zeros(4), axis=0, quant_min=-4, quant_max=3,
                state=qkernels.new_oscillation_state(w), freeze_threshold=torch.tensor(0.),
                tracking=torch.tensor(True))
    args.update(overrides)
    return lambda: qkernels.oscillation_fake_quantize(**args)


BAD_INPUTS = [
    BadInput("momentum", _bad(momentum=0.0)),
    BadInput("quant_max", _bad(quant_max=200)),
    BadInput("freeze_threshold", _bad(freeze_threshold=torch.zeros(2))),
]
