"""The fused moving-average observer + fake-quant spec (qkernels.reference.fused_observer) against torch.

Bit-exact (torch.equal, dtypes included) over several steps with the observer and fake-quant flags toggled:
``qparams="fused"`` against ``torch.fused_moving_avg_obs_fake_quant`` (CPU; torch's CPU op observes
per-channel stats on axis 0 only), ``qparams="observer"`` against the unfused torch.ao
``FakeQuantize(MovingAverage*MinMaxObserver)``.
"""

import math
import warnings

import pytest
import torch
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

from qkernels.reference import fused_observer as ref

FLAGS = [(1, 1), (1, 1), (0, 1), (1, 0), (1, 1), (0, 0), (1, 1)]  # (observer_on, fake_quant_on) per step
RANGES = [(0, 255), (-128, 127), (0, 127), (-8, 7)]


def fresh_state(per_row: bool):
    if per_row:  # torch's per-channel buffers start empty and are resized on the first call
        return [torch.empty(0), torch.empty(0), torch.tensor([1.0]), torch.tensor([0], dtype=torch.int32)]
    return [torch.tensor(math.inf), torch.tensor(-math.inf), torch.tensor([1.0]), torch.tensor([0], dtype=torch.int32)]


def step_input(step: int, shape=(4, 6, 5)):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(shape, generator=g) * (step + 1) + (0.5 if step % 2 else -0.3)
    return x.abs() * 1e-3 if step == 4 else x  # step 4: a tiny non-negative range (the CPU's scale floor)


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("quant_min,quant_max", RANGES)
@pytest.mark.parametrize("averaging_const", [0.01, 0.37, 1.0])
def test_fused_mode_matches_torch_fused_op(per_row, symmetric, quant_min, quant_max, averaging_const):
    torch_state, ref_state = fresh_state(per_row), fresh_state(per_row)
    for step, (observe, fake_quant) in enumerate(FLAGS):
        x = step_input(step)
        flags = torch.tensor([observe]), torch.tensor([fake_quant])
        want = torch.fused_moving_avg_obs_fake_quant(x, *flags, *torch_state, averaging_const, quant_min, quant_max,
                                                     0, per_row, symmetric)
        got = ref.fused_moving_avg_obs_fake_quant(x, *flags, *ref_state, averaging_const, quant_min, quant_max, 0,
                                                  per_row, symmetric)
        for name, a, b in zip(("y", "running_min", "running_max", "scale", "zero_point"), [got] + ref_state,
                              [want] + torch_state):
            assert a.dtype == b.dtype and torch.equal(a, b), f"step {step}: {name} differs"


OBSERVER_CASES = [
    (MovingAverageMinMaxObserver, dict(dtype=torch.quint8, qscheme=torch.per_tensor_affine), 0, 255, None, 0),
    (MovingAverageMinMaxObserver, dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric), -128, 127, None, 0),
    # quint8 symmetric: 128 for the default range, (qmin + qmax) // 2 for a range given explicitly, as here
    (MovingAverageMinMaxObserver, dict(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric), 0, 255, None, 127),
    (MovingAveragePerChannelMinMaxObserver, dict(dtype=torch.qint8, qscheme=torch.per_channel_symmetric), -128, 127,
     1, 0),
    (MovingAveragePerChannelMinMaxObserver, dict(dtype=torch.quint8, qscheme=torch.per_channel_affine), 0, 255, 2, 0),
]


@pytest.mark.parametrize("observer,kwargs,quant_min,quant_max,ch_axis,symmetric_zero_point", OBSERVER_CASES)
def test_observer_mode_matches_unfused_fake_quantize(observer, kwargs, quant_min, quant_max, ch_axis,
                                                     symmetric_zero_point):
    per_row = ch_axis is not None
    extra = dict(ch_axis=ch_axis) if per_row else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's warning about never-observed stats
        module = FakeQuantize(observer, quant_min=quant_min, quant_max=quant_max, averaging_constant=0.1, **kwargs,
                              **extra)
        state = fresh_state(per_row)
        symmetric = kwargs["qscheme"] in (torch.per_tensor_symmetric, torch.per_channel_symmetric)
        for step, (observe, fake_quant) in enumerate(FLAGS):
            x = step_input(step)
            module.observer_enabled[0], module.fake_quant_enabled[0] = observe, fake_quant
            want = module(x)
            got = ref.fused_moving_avg_obs_fake_quant(
                x, observe, fake_quant, *state, 0.1, quant_min, quant_max, ch_axis or 0, per_row, symmetric,
                qparams="observer", symmetric_zero_point=symmetric_zero_point)
            obs = module.activation_post_process
            for name, a, b in (("y", got, want), ("min", state[0], obs.min_val), ("max", state[1], obs.max_val),
                               ("scale", state[2], module.scale), ("zero_point", state[3], module.zero_point)):
                assert a.dtype == b.dtype and torch.equal(a.reshape(-1), b.reshape(-1)), f"step {step}: {name}"


def test_choose_qparams_edge_cases():
    """FBGEMM's rules at the edges: the reference against torch's op, and the documented values."""
    lo = torch.tensor([0.0, 0.0, -1.0, 0.5, math.inf, -2e-5, math.nan])
    hi = torch.tensor([1e-3, 0.0, 3.0, 3.0, -math.inf, 3e-5, 1.0])
    for quant_min, quant_max in ((-128, 127), (0, 255)):
        for symmetric in (False, True):
            scale, zp = ref.choose_qparams_fused(lo, hi, quant_min, quant_max, symmetric, flavour="cpu")
            for i in range(lo.numel()):
                state = [lo[i].clone(), hi[i].clone(), torch.tensor([1.0]), torch.tensor([0], dtype=torch.int32)]
                torch.fused_moving_avg_obs_fake_quant(torch.ones(2), torch.tensor([0]), torch.tensor([1]), *state,
                                                      0.1, quant_min, quant_max, 0, False, symmetric)
                assert torch.equal(scale[i:i + 1], state[2]) or (math.isnan(scale[i]) and math.isnan(state[2]))
                assert torch.equal(zp[i:i + 1], state[3]), (quant_min, quant_max, symmetric, i)
    scale, zp = ref.choose_qparams_fused(lo, hi, -128, 127, symmetric=True, flavour="cpu")
    assert scale[0].item() == 6.0999998822808266e-05  # the CPU floor
    assert (scale[2].item(), zp[2].item()) == (torch.tensor(3.0 / 127).item(), 0)  # symmetric: 3/127
    assert (scale[3].item(), zp[3].item()) == (torch.tensor(3.0 / 255).item(), -128)  # min > 0: affine
    assert scale[4].item() == torch.tensor(0.1).item()  # never observed
    cuda_scale, _ = ref.choose_qparams_fused(lo[:1], hi[:1], -128, 127, symmetric=True, flavour="cuda")
    assert cuda_scale.item() == torch.tensor(1e-3 / 255).item()  # no floor in the CUDA kernel
    _, zp_u = ref.choose_qparams_fused(torch.tensor([-1.0]), torch.tensor([1.0]), 0, 255, symmetric=True)
    assert zp_u.item() == 128  # rne(127.5)


def test_empty_input_and_bad_mode():
    state = fresh_state(False)
    x = torch.empty(0, 3)
    y = ref.fused_moving_avg_obs_fake_quant(x, 1, 1, *state, 0.1, 0, 255, 0)
    assert y.shape == (0, 3) and math.isinf(state[0].item())  # nothing observed
    with pytest.raises(ValueError, match="qparams must be one of"):
        ref.fused_moving_avg_obs_fake_quant(torch.ones(2), 1, 1, *fresh_state(False), 0.1, 0, 255, 0,
                                            qparams="minmax")
