"""Oscillation tracking fused into weight fake quantization: every backend against the official code's tracker
step by step, the toy regression of Nagel et al., frozen-weight gradients, checks."""

import pytest
import torch

import cuda_emulator
import qkernels
from conftest import assert_bitwise_equal, assert_sums_close, backends_for, interpreted
from qkernels.oscillation_fake_quant import LAUNCHERS, STATE_FIELDS, _dims, new_oscillation_state
from qkernels.reference import oscillation_fake_quant as ref
from qkernels.reference.oscillation_fake_quant import OfficialTracker

# The backends run by name here (the CUDA kernels: under the emulator below).
BACKENDS = backends_for("cpu")


def _integers(w, scale, zero_point, axis, qmin, qmax):
    """The clamped integer of the issue's formula, clamp(rne(w * (1/s)) + z, qmin, qmax), as float32."""
    shape = [1] * w.dim()
    if axis is not None:
        shape[axis] = -1
    s = scale.reshape(shape).float()
    return (torch.round(w.float() * torch.reciprocal(s)) + zero_point.reshape(shape).float()).clamp(qmin, qmax), s


def _flag(on: bool):
    return torch.tensor(1 if on else 0, dtype=torch.uint8)


SCHEDULES = {
    # step -> (threshold, tracking); unlisted steps keep the previous values
    "tracking only": {0: (0.0, True), 60: (0.0, False), 70: (0.0, True)},
    "freeze, EMA integer": {0: (0.0, True), 50: (0.3, True), 120: (0.22, True), 150: (0.22, False),
                            160: (0.22, True)},
    "freeze, current integer": {0: (0.0, True), 40: (0.25, True), 100: (0.0, True), 130: (0.2, True),
                                170: (0.2, False), 180: (0.2, True)},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_fused_step_equals_the_official_tracker_every_step(backend, schedule, axis):
    torch.manual_seed(0)
    qmin, qmax, momentum = -4, 3, 0.1
    w = torch.randn(6, 5, 3) * 0.3
    channels = 1 if axis is None else w.size(axis)
    scale = torch.full((channels,), 0.1) * (1 + torch.rand(channels))
    zero_point = torch.zeros(channels, dtype=torch.int32) if axis is None else torch.randint(-1, 2, (channels,))
    state = qkernels.new_oscillation_state(w)
    use_ema = schedule != "freeze, current integer"
    official = OfficialTracker(momentum, use_ema_x_int=use_ema)
    threshold, tracking = 0.0, True
    steps = 220
    frozen_seen = 0
    for t in range(steps):
        threshold, tracking = SCHEDULES[schedule].get(t, (threshold, tracking))
        official.freeze_threshold = threshold
        x_int, s = _integers(w, scale, zero_point, axis, qmin, qmax)
        with qkernels.use_backend(backend):
            out = qkernels.oscillation_fake_quantize(
                w, scale, zero_point, axis, qmin, qmax, state, freeze_threshold=torch.tensor(threshold),
                tracking=_flag(tracking), momentum=momentum, use_ema_x_int=use_ema)
        x = official(x_int, tracking)
        z = zero_point.reshape([-1 if d == (axis or 0) and axis is not None else 1 for d in range(w.dim())]).float()
        assert torch.equal(out, (x - z) * s), t
        if official.prev_x_int is not None:
            assert torch.equal(state.prev_x_int.float(), official.prev_x_int), t
            assert torch.equal(state.prev_switch_dir.float(), official.prev_switch_dir), t
            assert torch.equal(state.ema_oscillation, official.ema_oscillation), t
            if tracking:
                assert int(state.num_oscillations[1]) == official.oscillated_sum, t
        if official.frozen is not None:
            assert torch.equal(state.frozen, official.frozen), t
            assert torch.equal(state.frozen_x_int.float()[state.frozen], official.frozen_x_int[official.frozen]), t
            if use_ema:
                assert torch.equal(state.ema_x_int, official.ema_x_int), t
            frozen_seen = max(frozen_seen, int(official.frozen.sum()))
        else:
            assert not state.frozen.any()
        # a random walk across the bin thresholds, and a changing scale
        w = w + 0.6 * s * torch.randn_like(w)
        scale = scale * torch.exp(0.02 * torch.randn_like(scale))
    assert int(state.num_oscillations[0]) > 100
    if schedule != "tracking only":
        assert 0 < frozen_seen < w.numel()


def _toy(steps, threshold=0.0, momentum=0.01, backend="reference"):
    """Nagel et al.'s toy regression (note §6.4): w <- w - 0.15 (q(w) - w*), s = 1/15, w* = 0.711, w0 = 0.737,
    the gradient taken through the op's backward (loss (q(w) - w*)^2 / 2)."""
    w = torch.tensor([0.737], requires_grad=True)
    scale, zero_point = torch.tensor([1 / 15]), torch.zeros(1, dtype=torch.int32)
    state = qkernels.new_oscillation_state(w)
    values = []
    for _ in range(steps):
        with qkernels.use_backend(backend):
            q = qkernels.oscillation_fake_quantize(w, scale, zero_point, None, -16, 15, state, momentum=momentum,
                                                   freeze_threshold=torch.tensor(threshold), tracking=_flag(True))
            (0.5 * (q - 0.711) ** 2).sum().backward()
        with torch.no_grad():
            w -= 0.15 * w.grad
            w.grad = None
        values.append(round(float(q) * 15))
    return values, state


@pytest.mark.parametrize("backend", BACKENDS)
def test_toy_regression_oscillates_two_up_one_down_and_freezing_settles_on_0_733(backend):
    values, state = _toy(900, backend=backend)
    first = values.index(10)
    # w falls by 0.15 (11/15 - 0.711) = 0.00335 a step from 0.737 to the threshold 0.7: 12 steps at 0.733 first
    assert first == 12 and values[:first] == [11] * first
    after = values[first:]
    # then mostly two steps at 0.733 and one at 0.667 (mean q(w) = w*): never two steps at 0.667 in a row,
    # never three at 0.733, and a third of the steps at 0.667
    assert all(after[i:i + 2] != [10, 10] and after[i:i + 3] != [11, 11, 11] for i in range(len(after) - 3))
    assert sum(v == 10 for v in after) / len(after) == pytest.approx(1 / 3, abs=0.01)
    assert float(state.ema_oscillation) == pytest.approx(2 / 3, abs=0.02)

    values, state = _toy(900, threshold=0.5, backend=backend)
    assert bool(state.frozen) and int(state.frozen_x_int) == 11
    assert values[-100:] == [11] * 100  # 11/15 = 0.733


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_frozen_weights_get_no_task_gradient_and_follow_the_scale(backend, dtype):
    torch.manual_seed(1)
    w = (torch.randn(4, 8) * 0.4).to(dtype).requires_grad_()
    scale = torch.tensor([0.1, 0.2, 0.15, 0.05], requires_grad=True)
    zero_point = torch.zeros(4, dtype=torch.int32)
    state = qkernels.new_oscillation_state(w)
    state.frozen[:, ::3] = True
    state.frozen_x_int[:, ::3] = torch.randint(-4, 4, (4, 3), dtype=torch.int8)
    dy = torch.randn(4, 8).to(dtype).float()  # exactly representable in the weight's dtype
    with qkernels.use_backend(backend):
        y = qkernels.oscillation_fake_quantize(w, scale, zero_point, 0, -4, 3, state, freeze_threshold=torch.tensor(0.),
                                               tracking=_flag(False))
        y.backward(dy.to(dtype))
    k = state.frozen_x_int.float()
    frozen = state.frozen
    # The interpreter narrows float32 to bfloat16 by truncation: 1 ulp (README, "Numerics contract").
    ulp = 1 if interpreted(backend, "cpu") and dtype == torch.bfloat16 else 0
    assert_bitwise_equal(y.detach()[frozen], (k * scale.detach()[:, None])[frozen].to(dtype), ulp=ulp, what="y")
    assert torch.all(w.grad[frozen] == 0)
    # LSQ's scale gradient: frozen elements give dy * k; the others (x - z) - w/s inside, the level outside
    x, s = _integers(w.detach(), scale.detach(), zero_point, 0, -4, 3)
    q = torch.round(w.detach().float() / s)
    inside = (q >= -4) & (q <= 3) & ~frozen
    ds = torch.where(frozen, dy * k, torch.where(inside, dy * (x - w.detach().float() / s), dy * x))
    torch.testing.assert_close(scale.grad, ds.sum(1), rtol=1e-5, atol=1e-5)  # sums in another order, w/s vs w*inv
    assert torch.equal(w.grad[~frozen].float(), torch.where(inside, dy, torch.zeros_like(dy))[~frozen].to(
        dtype).float())


def test_tracking_off_leaves_the_state_untouched_and_grad_factor_scales_dscale():
    torch.manual_seed(2)
    w = torch.randn(16, requires_grad=True)
    scale = torch.tensor([0.2], requires_grad=True)
    state = qkernels.new_oscillation_state(w)
    before = [t.clone() for t in state]
    with qkernels.use_backend("reference"):
        y = qkernels.oscillation_fake_quantize(w, scale, torch.zeros(1), None, -8, 7, state,
                                               freeze_threshold=torch.tensor(0.5), tracking=_flag(False),
                                               grad_factor=0.25)
        y.sum().backward()
        g = scale.grad.clone()
        scale.grad = None
        qkernels.oscillation_fake_quantize(w, scale, torch.zeros(1), None, -8, 7, state,
                                           freeze_threshold=torch.tensor(0.5), tracking=_flag(False)).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, state))
    assert torch.equal(g, scale.grad * 0.25)


def _call(**overrides):
    w = torch.randn(4, 3)
    args = dict(weight=w, scale=torch.ones(4), zero_point=torch.zeros(4), axis=0, quant_min=-4, quant_max=3,
                state=qkernels.new_oscillation_state(w), freeze_threshold=torch.tensor(0.), tracking=_flag(True),
                momentum=0.01)
    args.update(overrides)
    return args


BAD = [
    (dict(momentum=0.0), "momentum"),
    (dict(momentum=1.5), "momentum"),
    (dict(quant_min=1), "quant_min"),
    (dict(quant_max=200), "quant_max"),
    (dict(scale=torch.ones(3)), "scale"),
    (dict(axis=2), "axis"),
    (dict(axis=None), "scale"),
    (dict(scale=-torch.ones(4)), "scale"),
    (dict(weight=torch.randn(4, 3, dtype=torch.float64)), "weight"),
    (dict(weight=torch.randn(3, 4).t()), "weight"),
    (dict(freeze_threshold=torch.zeros(2)), "freeze_threshold"),
    (dict(freeze_threshold=torch.tensor(1)), "freeze_threshold"),
    (dict(tracking=torch.ones(2)), "tracking"),
    (dict(grad_factor=float("nan")), "grad_factor"),
]


@pytest.mark.parametrize("overrides,name", BAD, ids=[n + str(i) for i, (_, n) in enumerate(BAD)])
def test_bad_input_names_the_argument_and_leaves_the_state(overrides, name):
    args = _call(**overrides)
    before = [t.clone() for t in args["state"]]
    with pytest.raises(RuntimeError, match=name):
        qkernels.oscillation_fake_quantize(**args)
    assert all(torch.equal(a, b) for a, b in zip(before, args["state"]))


@pytest.mark.parametrize("field,bad", [(f, b) for f in STATE_FIELDS for b in ("dtype", "shape")])
def test_bad_state_names_the_field(field, bad):
    args = _call()
    state = args["state"]
    t = getattr(state, field)
    wrong = t.to(torch.int16 if t.dtype != torch.int16 else torch.int32) if bad == "dtype" else t.reshape(-1)
    args["state"] = state._replace(**{field: wrong})
    with pytest.raises(RuntimeError, match=f"state.{field}"):
        qkernels.oscillation_fake_quantize(**args)


def test_compiles_fullgraph_and_matches_eager():
    torch.manual_seed(3)
    w = torch.randn(8, 4)
    scale, zero_point = torch.full((8,), 0.1), torch.zeros(8, dtype=torch.int32)
    eager_state, compiled_state = qkernels.new_oscillation_state(w), qkernels.new_oscillation_state(w)

    def fq(w, state, threshold):
        return qkernels.oscillation_fake_quantize(w, scale, zero_point, 0, -4, 3, state, momentum=0.2,
                                                  freeze_threshold=threshold, tracking=_flag(True))

    compiled = torch.compile(fq, fullgraph=True, backend="aot_eager")
    with qkernels.use_backend("reference"):
        for t in range(12):
            threshold = torch.tensor(0.0 if t < 6 else 0.1)
            a, b = fq(w, eager_state, threshold), compiled(w, compiled_state, threshold)
            assert torch.equal(a, b)
            w = w + 0.05 * torch.randn_like(w)
    assert all(torch.equal(a, b) for a, b in zip(eager_state, compiled_state))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_determinism(backend):
    torch.manual_seed(4)
    w = torch.randn(8, 3, 3)
    scale, zero_point = torch.rand(8) * 0.2 + 0.05, torch.zeros(8, dtype=torch.int32)
    state = qkernels.new_oscillation_state(w)
    step = torch.ops.qkernels.oscillation_fake_quant
    args = (w, scale, zero_point, 0, -4, 3, *state, torch.tensor(0.3), _flag(True), 0.5, True, True)
    with qkernels.use_backend(backend):
        torch.library.opcheck(step, args)
        out, x_int, mask = step(*args)
        dy = torch.randn_like(w)
        backward = torch.ops.qkernels.oscillation_fake_quant_backward
        bargs = (dy, w, x_int, mask, scale, zero_point, 0, 0.5, True)
        torch.library.opcheck(backward, bargs)
        first, again = backward(*bargs), backward(*bargs)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert first[1].shape == (8,) and first[0].shape == w.shape


# ----------------------------------------------------------------------------------------------------------
# The native launchers (cpu, and the CUDA kernels under the emulator) against the reference launchers, bit for bit
# (dscale within the sum tolerance), on random-walk steps that reach every kernel path: per tensor with several
# blocks along I, per channel in run mode, per channel with I == 1 (row mode) over several row blocks.
# ----------------------------------------------------------------------------------------------------------
NATIVE = {"cpu": lambda: LAUNCHERS.native("cpu"),
          "cuda-emulated": lambda: cuda_emulator.launchers("oscillation_fake_quant")}
CASES = [((40000,), None), ((8, 3, 5), 0), ((6000, 6), 1), ((7, 33), 1), ((3, 1, 4), 2)]


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,axis", CASES, ids=[f"{s}-{a}" for s, a in CASES])
@pytest.mark.parametrize("use_ema", [True, False])
def test_native_launchers_equal_the_reference_every_step(native, dtype, shape, axis, use_ema):
    launchers = NATIVE[native]()
    g = torch.Generator().manual_seed(len(shape) * 7 + (axis or 0))
    qmin, qmax, momentum = -8, 7, 0.3
    w = (torch.randn(shape, generator=g) * 0.4).to(dtype)
    channels = 1 if axis is None else shape[axis]
    scale = (0.1 * (1 + torch.rand(channels, generator=g))).float()
    zero_point = torch.randint(-1, 2, (channels,), generator=g).float()
    dims = _dims(w, axis)
    states = {who: list(new_oscillation_state(w))[:6] for who in ("ref", "native")}
    started = {who: torch.zeros(2, dtype=torch.uint8) for who in ("ref", "native")}
    for t in range(7):
        threshold = torch.tensor(0.0 if t < 3 else 0.2)
        tracking = torch.tensor(t != 5)
        results = {}
        for who, impl in (("ref", ref.Launchers), ("native", launchers)):
            out, x_int = torch.empty_like(w), torch.empty(shape, dtype=torch.int8)
            mask = torch.empty(shape, dtype=torch.bool)
            count = impl.forward(w, out, x_int, mask, scale, zero_point, *dims, qmin, qmax, *states[who],
                                 started[who], threshold, tracking, momentum, use_ema, True)
            started[who] |= torch.stack([tracking, tracking & (threshold > 0) & use_ema]).to(torch.uint8)
            dy = torch.randn(shape, generator=torch.Generator().manual_seed(t)).to(dtype)
            dw = torch.empty_like(w)
            dscale = impl.backward(dy, w, x_int, mask, dw, scale, zero_point, *dims, 0.5, True)
            results[who] = (out, x_int, mask, count, dw, dscale, dy)
        names = ("out", "x_int", "mask", "count", "dw")
        for name, a, e in zip(names, results["native"], results["ref"]):
            assert_bitwise_equal(a, e, what=f"step {t} {name}")
        for name, a, e in zip(STATE_FIELDS, states["native"], states["ref"]):
            assert_bitwise_equal(a, e, what=f"step {t} {name}")
        assert torch.equal(started["native"], started["ref"])
        out, x_int, mask, _, _, _, dy = results["ref"]
        _, ds = ref.backward_elements(dy, w, x_int, mask, scale, zero_point, dims, 0.5)
        assert_sums_close(results["native"][5], ds, lambda v: v.sum((0, 1, 3)), f"step {t} dscale")
        w = (w.float() + 0.6 * scale.max() * torch.randn(shape, generator=g)).to(dtype)
    assert bool(states["ref"][3].any()), "the walk should freeze some elements"
