"""Contract samples of the fused observer family (qkernels.fused_moving_avg_obs_fake_quant and its registered
update op _fused_observer_update), checked by tests/test_contract.py against qkernels.reference.fused_observer.

Each sample is one step from a given state: never observed (+inf, -inf), observed (the moving average), or
torch.ao's empty per-channel buffers (sized by the first eager call). Outputs: y, the updated running_min/max,
scale and zero_point, and dx. The update follows the flavour the op asks the launchers for (Target.launch_flavour),
the fake quantization with the new qparams the flavour of the fake-quant kernels (Target.flavour).
"""

import math
import zlib

import torch

import qkernels
from contract import BadInput, Sample
from qkernels.reference import fake_quant as fq_ref
from qkernels.reference import fused_observer as ref

FAMILY = "fused_observer"

STATE = ("running_min", "running_max", "scale", "zero_point")
_UPDATE = torch.ops.qkernels._fused_observer_update
_EPS = torch.finfo(torch.float32).eps


class _Step:
    """One call's arguments besides the tensors."""

    def __init__(self, ch_axis=None, qparams="fused", symmetric=False, quant_min=0, quant_max=255,
                 averaging_const=0.37, symmetric_zero_point=0):
        self.per_row = ch_axis is not None
        self.ch_axis = ch_axis if self.per_row else 0
        self.qparams, self.symmetric = qparams, symmetric
        self.quant_min, self.quant_max = quant_min, quant_max
        self.averaging_const, self.symmetric_zero_point = averaging_const, symmetric_zero_point

    def call(self, inp):
        y = qkernels.fused_moving_avg_obs_fake_quant(
            inp["x"], inp["observer_on"], inp["fake_quant_on"], *(inp[n] for n in STATE), self.averaging_const,
            self.quant_min, self.quant_max, self.ch_axis, self.per_row, self.symmetric, qparams=self.qparams,
            symmetric_zero_point=self.symmetric_zero_point)
        return {"y": y, **{n: inp[n] for n in STATE}}

    def expected(self, inp, target, grads):
        x, state = inp["x"], [inp[n] for n in STATE]
        ref.fused_moving_avg_obs_fake_quant(
            x, inp["observer_on"], inp["fake_quant_on"], *state, self.averaging_const, self.quant_min,
            self.quant_max, self.ch_axis, self.per_row, self.symmetric, qparams=self.qparams,
            symmetric_zero_point=self.symmetric_zero_point, flavour=target.launch_flavour)
        scale, zero_point = state[2].reshape(-1), state[3].reshape(-1)
        q = (self.quant_min, self.quant_max)
        if not ref.flag_is_on(inp["fake_quant_on"]) or x.numel() == 0:
            y, mask = x, torch.ones_like(x, dtype=torch.bool)
        elif self.per_row:
            y, mask = fq_ref.fake_quant_per_channel(x, scale, zero_point.to(torch.int32), self.ch_axis, *q,
                                                    flavour=target.flavour)
        else:
            y, mask = fq_ref.fake_quant_per_tensor(x, scale[0], zero_point[0], *q, flavour=target.flavour)
        out = {"y": torch.empty_like(x).copy_(y), **dict(zip(STATE, state))}
        if grads:
            out["dx"] = fq_ref.fake_quant_backward(inp["dy"], mask)
        return out

    def ops(self, inp):
        args = (*(inp[n] for n in ("x", "observer_on", "fake_quant_on") + STATE), self.averaging_const,
                self.quant_min, self.quant_max, self.ch_axis, self.per_row, self.symmetric, self.qparams, _EPS,
                self.symmetric_zero_point)
        return [(_UPDATE, args)]


def _state(channels, kind, zp_dtype, device):
    """Never observed ("fresh": 0-dim stats per tensor, as torch.ao keeps them), "observed" (finite stats and
    qparams), or torch.ao's per-channel buffers before the first call ("empty")."""
    if kind == "empty":
        stats = [torch.empty(0), torch.empty(0)]
        qparams = [torch.ones(1), torch.zeros(1, dtype=zp_dtype)]
    else:
        if kind == "fresh":
            shape = () if channels is None else (channels,)
            stats = [torch.full(shape, math.inf), torch.full(shape, -math.inf)]
        else:
            g = torch.Generator().manual_seed(channels or 1)
            lo = -torch.rand(channels or 1, generator=g) * 2 - 0.25
            stats = [lo, lo + torch.rand(channels or 1, generator=g) * 4 + 0.5]
        qparams = [torch.full((channels or 1,), 0.02), torch.full((channels or 1,), 3, dtype=zp_dtype)]
    return [t.to(device) for t in stats + qparams]


def _sample(name, step, shape, flags, state="observed", x_values="finite", layout=lambda t: t,
            zp_dtype=torch.int32, grads=("x",), opcheck=False, compile=False):
    """One step on x of ``shape`` (viewed through ``layout``) with flags ``(observer_on, fake_quant_on)``.
    ``x_values``: "finite" (normal values around an offset), "inf" (one +inf, one -inf), "nan" (one NaN)."""

    def make(device, dtype):
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))  # each sample its own values
        x = torch.randn(shape, generator=g) * 3 + 0.5
        if x_values == "inf" and x.numel():
            x.view(-1)[1], x.view(-1)[-2] = math.inf, -math.inf
        elif x_values == "nan" and x.numel():
            x.view(-1)[x.numel() // 2] = math.nan
        x = layout(x.to(dtype).to(device))
        dy = torch.randn(x.shape, generator=g).to(dtype).to(device)
        channels = x.size(step.ch_axis) if step.per_row else None
        flag_tensors = [torch.tensor([f], device=device) for f in flags]
        return dict(x=x, dy=dy, observer_on=flag_tensors[0], fake_quant_on=flag_tensors[1],
                    **dict(zip(STATE, _state(channels, state, zp_dtype, device))))

    return Sample(name, make, step.call, lambda inp, target: step.expected(inp, target, grads), grads=grads,
                  ops=step.ops if opcheck else None, compile=compile)


SAMPLES = [
    _sample("per_tensor", _Step(), (4, 6, 5), (1, 1), opcheck=True),
    _sample("per_tensor_nan_from_fresh", _Step(quant_min=-128, quant_max=127), (5, 33), (1, 1), state="fresh",
            x_values="nan"),
    _sample("per_tensor_observer_mode_fake_quant_off", _Step(qparams="observer", symmetric=True, quant_min=-128,
                                                             quant_max=127), (70, 3), (1, 0), x_values="inf",
            zp_dtype=torch.int64, layout=lambda t: t.t()),
    _sample("per_channel_channels_last_observer_mode", _Step(1, "observer", True, 0, 255, 0.01, 127), (2, 6, 5, 7),
            (1, 1), layout=lambda t: t.contiguous(memory_format=torch.channels_last), opcheck=True),
    _sample("per_channel_rows_observer_off", _Step(-1, symmetric=True), (37, 13), (0, 1), zp_dtype=torch.int64,
            grads=()),
    _sample("per_channel_empty_state", _Step(0, averaging_const=1.0), (3, 4, 5), (1, 1), state="empty"),
    _sample("per_channel_fake_quant_off", _Step(2, quant_min=-8, quant_max=7), (3, 4, 5), (1, 0)),
    _sample("empty_input", _Step(), (0, 3), (1, 1), state="fresh"),
    _sample("per_channel_sized", _Step(1, symmetric=True, quant_min=-128, quant_max=127), (4, 6, 5), (1, 1),
            state="fresh", compile=True),
]


def _bad(match, **change):
    args = dict(input=torch.randn(3, 4), observer_on=torch.tensor([1]), fake_quant_on=torch.tensor([1]),
                running_min=torch.tensor(math.inf), running_max=torch.tensor(-math.inf), scale=torch.ones(1),
                zero_point=torch.zeros(1, dtype=torch.int32), averaging_const=0.1, quant_min=0, quant_max=255,
                ch_axis=0)
    args.update(change)
    return BadInput(match, lambda: qkernels.fused_moving_avg_obs_fake_quant(**args))


BAD_INPUTS = [
    _bad("`input` must be a strided tensor", input=torch.randn(3, 4).to_sparse()),
    _bad("`input` must be float32, float64, float16 or bfloat16", input=torch.ones(3, 4, dtype=torch.int32)),
    _bad("`observer_on` must be a one-element", observer_on=torch.tensor([1, 1])),
    _bad("`observer_on` must be a one-element bool, integer or floating-point", observer_on=torch.tensor([1j])),
    _bad("`fake_quant_on` must be a one-element bool, integer or floating-point", fake_quant_on=torch.tensor([1j])),
    _bad("`running_min` must be float32", running_min=torch.tensor(math.inf, dtype=torch.float64)),
    _bad("`scale` must be float32", scale=torch.ones(1, dtype=torch.float16)),
    _bad("`zero_point` must be int32 or int64", zero_point=torch.zeros(1)),
    _bad("`qparams` must be one of", qparams="minmax"),
    _bad(r"`scale` must have 1 element\(s\) for per-tensor", scale=torch.ones(2)),
    _bad(r"`ch_axis` must be in \[-2, 1\]", ch_axis=3, per_row_fake_quant=True, running_min=torch.full((3,), math.inf),
         running_max=torch.full((3,), -math.inf), scale=torch.ones(3), zero_point=torch.zeros(3, dtype=torch.int32)),
    _bad("`quant_min` should be less than or equal", quant_min=5, quant_max=4),
    _bad("fake quantization is not differentiable with respect to `scale`", scale=torch.ones(1, requires_grad=True)),
]
