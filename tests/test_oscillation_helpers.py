"""qkernels.nn.OscillationFakeQuantize and qkernels.oscillation: the module (state dict, compile, the threshold
setter, tracking in eval), the schedule, the dampening loss against autograd on its formula, attach, stats and
the BatchNorm re-estimation. (The DDP check is tests/test_train.py::test_ddp_oscillation_state_same_on_ranks.)"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from qkernels.nn import OscillationFakeQuantize
from qkernels.oscillation import (
    CosineSchedule,
    attach,
    bn_reestimate,
    dampening_loss,
    float_copy,
    initial_scale,
    model_dampening_loss,
    stats,
)

from conftest import assert_bitwise_equal

BUFFERS = ("prev_x_int", "prev_switch_dir", "ema_oscillation", "frozen", "frozen_x_int", "ema_x_int", "started",
           "num_oscillations", "freeze_threshold")


def _buffers(module) -> dict:
    return {name: getattr(module, name).clone() for name in BUFFERS}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _walk(module, weight, steps, seed=0, size=0.04):
    """``steps`` tracked calls on a weight random-walking across bin thresholds; returns the last output."""
    g = torch.Generator().manual_seed(seed)
    w = weight.clone()
    for _ in range(steps):
        w += size * torch.randn(w.shape, generator=g)
        out = module(w)
    return w, out


@pytest.mark.parametrize("per_channel", [False, True])
def test_state_dict_round_trip_into_a_fresh_module(per_channel):
    kwargs = dict(momentum=0.3, freeze_threshold=0.2, ch_axis=0 if per_channel else None,
                  channels=6 if per_channel else None, scale=0.1)
    module = OscillationFakeQuantize(-4, 3, **kwargs)
    w, _ = _walk(module, torch.randn(6, 5) * 0.2, 30)
    assert bool(module.frozen.any()) and int(module.num_oscillations[0]) > 0
    fresh = OscillationFakeQuantize(-4, 3, **dict(kwargs, freeze_threshold=0.0))
    assert fresh.prev_x_int.numel() == 0  # sized lazily
    fresh.load_state_dict(module.state_dict())
    assert _same(_buffers(fresh), _buffers(module)) and torch.equal(fresh.scale, module.scale)
    assert torch.equal(fresh(w), module(w)) and _same(_buffers(fresh), _buffers(module))
    sized = OscillationFakeQuantize(-4, 3, **kwargs, weight_shape=(6, 5))
    assert sized.prev_x_int.shape == (6, 5) and sized.ema_oscillation.dtype == torch.float32
    with pytest.raises(ValueError, match="weight: shape"):
        sized(torch.randn(6, 4))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(8, 6) * 0.3)
        self.quantizer = OscillationFakeQuantize(-4, 3, momentum=0.2, freeze_threshold=0.15, scale=0.1)

    def forward(self, x):
        return F.linear(x, self.quantizer(self.weight))


def _train(model, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    outs = []
    for _ in range(steps):
        x = torch.randn(4, 6, generator=g)
        out = model(x)
        opt.zero_grad()
        (out - torch.randn(out.shape, generator=g)).square().mean().backward()  # noisy targets: weights flip
        opt.step()
        outs.append(out.detach())
    return outs


def test_compile_fullgraph_equals_eager_state_included():
    torch.manual_seed(0)
    eager = _Net()
    eager.quantizer(eager.weight.detach())  # sizes the state (one eager call)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    for a, b in zip(_train(eager, 12), _train(compiled, 12)):
        assert_bitwise_equal(a, b)
    assert _same(_buffers(eager.quantizer), _buffers(compiled_model.quantizer))
    assert_bitwise_equal(eager.quantizer.scale.detach(), compiled_model.quantizer.scale.detach())
    assert int(eager.quantizer.num_oscillations[0]) > 0


def test_compile_fullgraph_of_an_attached_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                torch.nn.ReLU(), torch.nn.Linear(8, 3))
    attach(model, 3, momentum=0.2)
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    for a, b in zip(_train(model, 5), _train(compiled, 5)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert _same(model.state_dict(), twin.state_dict())


def test_freeze_threshold_setter_fills_the_buffer_in_place():
    module = OscillationFakeQuantize(-4, 3, freeze_threshold=0.1)
    buffer = module.freeze_threshold
    assert buffer.dtype == torch.float32 and buffer.dim() == 0 and buffer.item() == pytest.approx(0.1)
    module.freeze_threshold = 0.05
    assert module.freeze_threshold is buffer and buffer.item() == pytest.approx(0.05)
    module.freeze_threshold = torch.tensor(0.25)
    assert module.freeze_threshold is buffer and buffer.item() == 0.25
    assert "freeze_threshold" in module.state_dict()
    for bad in (-0.1, "high", True):
        with pytest.raises(ValueError, match="freeze_threshold"):
            module.freeze_threshold = bad


@pytest.mark.parametrize("track_in_eval", [False, True])
def test_tracking_in_eval_mode(track_in_eval):
    module = OscillationFakeQuantize(-4, 3, momentum=0.3, track_in_eval=track_in_eval, scale=0.1)
    w, _ = _walk(module, torch.randn(5, 4) * 0.2, 10)
    module.eval()
    before = _buffers(module)
    _walk(module, w, 10, seed=1)
    after = _buffers(module)
    # num_oscillations[1] is the count of the last call, 0 for an untracked one (the op's definition)
    assert torch.equal(after.pop("num_oscillations")[:1], before.pop("num_oscillations")[:1]) != track_in_eval
    assert _same(before, after) != track_in_eval
    module.train()
    _walk(module, w, 3, seed=2)
    assert not _same(before, _buffers(module))


def test_track_false_never_tracks_but_quantizes():
    module = OscillationFakeQuantize(-4, 3, scale=0.1, track=False, weight_shape=(3,))
    before = _buffers(module)
    out = module(torch.tensor([0.04, 0.26, -1.0]))
    assert torch.equal(out, torch.tensor([0.0, 0.3, -0.4])) and _same(before, _buffers(module))


@pytest.mark.parametrize("kwargs,name", [(dict(quant_min=1, quant_max=3), "quant_min"),
                                         (dict(momentum=0.0), "momentum"), (dict(ch_axis=0), "ch_axis"),
                                         (dict(scale=-1.0), "scale"), (dict(zero_point=9), "zero_point")])
def test_bad_module_arguments_are_named(kwargs, name):
    args = dict(quant_min=-4, quant_max=3) | kwargs
    with pytest.raises(ValueError, match=name):
        OscillationFakeQuantize(**args)


def test_cosine_schedule_official_semantics():
    total = 100
    damp = CosineSchedule(total, 0.25, 0.0, 0.1)
    freeze = CosineSchedule(total, 0.25, 0.1, 0.01, before=0.0)
    assert damp(1) == damp(24) == 0.0 and freeze(24) == 0.0
    assert freeze(25) == pytest.approx(0.1) and freeze(100) == pytest.approx(0.01)
    t = 60
    expected = 0.01 + 0.5 * (0.1 - 0.01) * (1 + math.cos(math.pi * (t - 25) / 75))
    assert freeze(t) == pytest.approx(expected) and damp(100) == pytest.approx(0.1)
    whole = CosineSchedule(10, 0.0, 1.0, 0.0)
    assert whole(0) == pytest.approx(1.0) and whole(10) == pytest.approx(0.0)
    for kwargs, name in ((dict(total_steps=0), "total_steps"), (dict(start_frac=1.0), "start_frac"),
                         (dict(end=float("nan")), "end")):
        with pytest.raises(ValueError, match=name):
            CosineSchedule(**(dict(total_steps=10) | kwargs))


def _explicit_dampening(w, s, z, target, qmin, qmax, axis, divisor):
    """The note's §4 formula written with autograd: (target - min(max(w, s(qmin - z)), s(qmax - z)))² / K."""
    if axis is not None:
        shape = [1] * w.dim()
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    clipped = torch.min(torch.max(w, s * (qmin - z)), s * (qmax - z))
    return (target - clipped).square().sum() / divisor


@pytest.mark.parametrize("aggregation", ["kernel_mean", "sum", "mean"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_dampening_value_and_gradients_against_autograd(aggregation, per_channel):
    torch.manual_seed(0)
    shape = (4, 3, 3, 3)
    scale = torch.tensor([0.05, 0.08, 0.06, 0.07]) if per_channel else torch.tensor([0.06])
    quantizer = OscillationFakeQuantize(-4, 3, scale=scale, ch_axis=0 if per_channel else None,
                                        channels=4 if per_channel else None, zero_point=1, weight_shape=shape)
    w = (torch.randn(shape) * 0.15).requires_grad_()
    with torch.no_grad():  # a frozen element outside the range: the only path of a gradient to the scale
        w[0, 0, 0, 0] = 2.0
        w[1, 2, 0, 1] = -2.0
        quantizer.frozen[0, 0, 0, 0] = quantizer.frozen[1, 2, 0, 1] = True
        quantizer.frozen_x_int[0, 0, 0, 0], quantizer.frozen_x_int[1, 2, 0, 1] = 1, -2
    before = _buffers(quantizer)
    loss = dampening_loss(w, quantizer, aggregation)
    loss.backward()
    assert _same(before, _buffers(quantizer))  # the target is computed without tracking

    divisor = {"kernel_mean": 27, "sum": 1, "mean": 108}[aggregation]
    w2 = w.detach().clone().requires_grad_()
    s2 = quantizer.scale.detach().clone().requires_grad_()
    target = quantizer(w2.detach(), track=False).detach()
    assert target[0, 0, 0, 0] == quantizer.scale[0] * 0  # frozen integer 1, zero point 1
    expected = _explicit_dampening(w2, s2, quantizer.zero_point.float(), target, -4, 3,
                                   0 if per_channel else None, divisor)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(quantizer.scale.grad, s2.grad, rtol=1e-5, atol=1e-9)
    assert bool((quantizer.scale.grad != 0).any()) and w.grad[0, 0, 0, 0] == 0


def test_dampening_bad_arguments():
    quantizer = OscillationFakeQuantize(-4, 3)
    with pytest.raises(ValueError, match="quantizer: its state is sized"):
        dampening_loss(torch.randn(3, 3), quantizer)
    quantizer(torch.randn(3, 3))
    with pytest.raises(RuntimeError, match="aggregation"):
        dampening_loss(torch.randn(3, 3), quantizer, "median")
    with pytest.raises(TypeError, match="quantizer"):
        dampening_loss(torch.randn(3, 3), torch.nn.Identity())


def _small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 5))


def test_attach_quantizes_every_conv_and_linear_weight():
    model = _small_cnn()
    floats = {name: m.weight.detach().clone() for name, m in model.named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    quantizers = attach(model, 3, scale_init="minmax")
    assert list(quantizers) == ["0", "3", "6", "10"]  # the depthwise conv 3 included
    assert [(q.quant_min, q.quant_max, q.track) for q in quantizers.values()] == [
        (-128, 127, False), (-4, 3, True), (-4, 3, True), (-128, 127, False)]
    for name, q in quantizers.items():
        layer = model.get_submodule(name)
        assert torch.equal(layer.parametrizations.weight.original, floats[name])
        torch.testing.assert_close(q.scale, initial_scale(floats[name], q.quant_min, q.quant_max, "minmax"))
        assert q.prev_x_int.shape == floats[name].shape
        assert ((layer.weight / q.scale) - (layer.weight / q.scale).round()).abs().max() < 1e-4  # on the grid
    plain = float_copy(model)
    assert all(not hasattr(m, "parametrizations") for m in plain.modules())
    assert torch.equal(plain[3].weight, floats["3"]) and hasattr(model[3], "parametrizations")
    per_channel = attach(_small_cnn(), 4, exclude=("6",), first_last_bits=32, per_channel=True)
    assert list(per_channel) == ["3"] and per_channel["3"].scale.shape == (8,)
    with pytest.raises(ValueError, match="already"):
        attach(model, 3)
    with pytest.raises(ValueError, match="exclude"):
        attach(_small_cnn(), 3, exclude=("nope",))


def test_model_dampening_loss_sums_the_layers():
    model = _small_cnn()
    quantizers = attach(model, 3)
    total = model_dampening_loss(model, "sum")
    parts = [dampening_loss(model.get_submodule(n).parametrizations.weight.original, q, "sum")
             for n, q in quantizers.items()]
    torch.testing.assert_close(total, torch.stack(parts).sum())
    total.backward()
    assert model[3].parametrizations.weight.original.grad is not None
    with pytest.raises(ValueError, match="model"):
        model_dampening_loss(torch.nn.Linear(2, 2))


def test_stats_fractions():
    model = _small_cnn()
    quantizers = attach(model, 3)
    model(torch.randn(2, 3, 6, 6))
    q3, q6 = quantizers["3"], quantizers["6"]
    q3.ema_oscillation.view(-1)[:9] = 0.02
    q6.frozen.view(-1)[:16] = True
    q6.num_oscillations[1] = 5
    result = stats(model, 0.01)
    assert set(result["layers"]) == {"3", "6"}  # the 8-bit first and last layers are not tracked
    assert result["layers"]["3"]["oscillating"] == pytest.approx(9 / 72)
    assert result["layers"]["6"]["frozen"] == pytest.approx(16 / 64) and result["layers"]["6"]["flips"] == 5
    assert result["overall"] == {"oscillating": pytest.approx(9 / 136), "frozen": pytest.approx(16 / 136),
                                 "flips": 5, "weights": 136}


def test_bn_reestimate_averages_per_batch_statistics():
    model = _small_cnn()
    attach(model, 3)
    batches = [torch.randn(6, 3, 5, 5) * (1 + i) for i in range(4)]
    inputs = {1: [], 4: []}
    hooks = [model[i].register_forward_pre_hook(lambda m, a, i=i: inputs[i].append(a[0].detach()))
             for i in inputs]
    model.train()
    used = bn_reestimate(model, [(x, None) for x in batches], num_batches=3)
    for hook in hooks:
        hook.remove()
    assert used == 3 and not model.training and all(model[i].momentum == 0.1 for i in inputs)
    for i, seen in inputs.items():
        assert len(seen) == 3
        mean = torch.stack([x.mean((0, 2, 3)) for x in seen]).mean(0)
        var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in seen]).mean(0)
        torch.testing.assert_close(model[i].running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model[i].running_var, var, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_batches"):
        bn_reestimate(model, batches, num_batches=0)
