"""The fused moving-average observer + fake-quant spec (qkernels.reference.fused_observer) against torch.

Bit-exact (torch.equal, dtypes included) over several steps with the observer and fake-quant flags toggled:
``qparams="fused"`` against ``torch.fused_moving_avg_obs_fake_quant`` (CPU; torch's CPU op observes
per-channel stats on axis 0 only), ``qparams="observer"`` against the unfused torch.ao
``FakeQuantize(MovingAverage*MinMaxObserver)``.

One step on every backend against the reference, opcheck of the update op, a compiled step and the bad inputs:
tests/test_contract.py on tests/samples_fused_observer.py.
"""

import contextlib
import math
import warnings

import pytest
import torch
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

import qkernels
from qkernels import _shared, backends
from qkernels.enums import Flavour, QParamsMode
from qkernels.reference import fused_observer as ref

from conftest import assert_bitwise_equal, backends_for, interpreted

# The Triton interpreter evaluates the kernels' inf - inf, 0 / 0 and the like with NumPy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

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


# ------------------------------------------------------------------------------------------------------
# The qkernels op
# ------------------------------------------------------------------------------------------------------
# "cpu": the C++ observer kernel; "triton": interpreted (TRITON_INTERPRET=1), honouring the CPU flavour;
# "reference": the same update as PyTorch ops.
@pytest.mark.parametrize("backend", backends_for("cpu"))
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("quant_min,quant_max", RANGES)
def test_op_matches_torch_fused_op(backend, per_row, symmetric, quant_min, quant_max):
    torch_state, our_state = fresh_state(per_row), fresh_state(per_row)
    for step, (observe, fake_quant) in enumerate(FLAGS):
        x = step_input(step)
        x[0, 0, 0] = math.inf if step == 5 else x[0, 0, 0]  # an infinite value reaches the running stats
        flags = torch.tensor([observe]), torch.tensor([fake_quant])
        want = torch.fused_moving_avg_obs_fake_quant(x, *flags, *torch_state, 0.1, quant_min, quant_max, 0, per_row,
                                                     symmetric)
        with qkernels.use_backend(backend):
            got = qkernels.fused_moving_avg_obs_fake_quant(x, *flags, *our_state, 0.1, quant_min, quant_max, 0,
                                                           per_row, symmetric)
        for name, a, b in zip(("y", "running_min", "running_max", "scale", "zero_point"), [got] + our_state,
                              [want] + torch_state):
            assert a.dtype == b.dtype and torch.equal(a, b), f"step {step}: {name} differs"


@pytest.mark.parametrize("backend", backends_for("cpu"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("ch_axis", [1, -1])
@pytest.mark.parametrize("qparams", ref.QPARAMS_MODES)
def test_op_any_axis_and_dtype_against_reference(backend, dtype, layout, ch_axis, qparams):
    """torch's op takes float32 and (on the CPU) axis 0 only; qkernels any axis, layout and fp16/bf16."""
    our_state, ref_state = fresh_state(True), fresh_state(True)
    for step, (observe, fake_quant) in enumerate(FLAGS):
        x = step_input(step, (3, 4, 5, 6)).to(dtype)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        flags = torch.tensor([observe]), torch.tensor([fake_quant])
        with qkernels.use_backend(backend):
            got = qkernels.fused_moving_avg_obs_fake_quant(x, *flags, *our_state, 0.1, -128, 127, ch_axis, True,
                                                           True, qparams=qparams)
        want = ref.fused_moving_avg_obs_fake_quant(x, *flags, *ref_state, 0.1, -128, 127, ch_axis, True, True,
                                                   qparams=qparams)
        # bfloat16 under the Triton interpreter: truncating narrowing (README, "Numerics contract")
        ulp = 1 if interpreted(backend, "cpu") and dtype == torch.bfloat16 else 0
        assert_bitwise_equal(got, want, ulp=ulp, what=f"step {step}")
        assert all(torch.equal(a, b) for a, b in zip(our_state, ref_state)), f"step {step}: state"


@pytest.mark.parametrize("backend", backends_for("cpu"))
def test_op_non_dense_input_and_strided_state(backend):
    """A non-dense x (read through a dense copy) and state tensors that are strided views (updated in place
    through contiguous work copies) give the reference's results."""
    buf = torch.zeros(6, 4)  # columns 0..3: running_min, running_max, scale, zero_point (as float) views
    our_state = [buf[:, 0].fill_(math.inf), buf[:, 1].fill_(-math.inf), buf[:, 2].fill_(1.0),
                 torch.zeros(6, 2, dtype=torch.int32)[:, 0]]
    ref_state = [t.clone() for t in our_state]
    assert not any(t.is_contiguous() for t in our_state)
    for step, (observe, fake_quant) in enumerate(FLAGS):
        x = step_input(step, (5, 12, 7))[:, ::2]  # [5, 6, 7], not dense
        flags = torch.tensor([observe]), torch.tensor([fake_quant])
        with qkernels.use_backend(backend):
            got = qkernels.fused_moving_avg_obs_fake_quant(x, *flags, *our_state, 0.1, -128, 127, 1, True, False)
        want = ref.fused_moving_avg_obs_fake_quant(x, *flags, *ref_state, 0.1, -128, 127, 1, True, False)
        assert torch.equal(got, want), f"step {step}"
        assert all(torch.equal(a, b) for a, b in zip(our_state, ref_state)), f"step {step}: state"
    assert torch.equal(buf[:, 0], our_state[0]) and not math.isinf(buf[0, 0].item())  # written through the view


@pytest.mark.parametrize("backend", backends_for("cpu"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_channel_innermost_with_nan_and_inf(backend, dtype):
    """The channel innermost in storage (the kernels' row mode: 8-channel vectors plus a tail at C = 13),
    with NaN and infinities in some channels: the observer step against the reference (the NaN channel's
    zero point, INT32_MIN, is one the fake-quant step then rejects on CPU tensors, see the README)."""
    our_state, ref_state = fresh_state(True), fresh_state(True)
    for step, (observe, fake_quant) in enumerate(FLAGS):
        x = step_input(step, (37, 13)).to(dtype)
        x[3, 2], x[5, 9], x[7, 12] = math.nan, math.inf, -math.inf
        x = x.t()  # [13, 37], channel 0's elements 13 apart, channels adjacent
        flags = torch.tensor([observe]), torch.tensor([fake_quant])
        with qkernels.use_backend(backend):
            qkernels.fused_observer.observer_update(x, *flags, *our_state, 0.1, 0, 255, 0, True, False)
        with torch.no_grad():
            ref.fused_moving_avg_obs_fake_quant(x, *flags, *ref_state, 0.1, 0, 255, 0, True, False)
        for a, b in zip(our_state, ref_state):
            assert_bitwise_equal(a, b, what=f"step {step}")


@pytest.mark.parametrize("backend", backends_for("cpu"))
def test_op_with_nan_input_matches_torch(backend):
    """A NaN input: per tensor, torch's op makes the scale NaN and the zero point INT32_MIN without checking them
    and returns NaNs (gradient 0 where fake quantization is on, dy where it is off); the same here, state
    included, for a non-dense input, in eager mode and through the registered ops (under a torch-function
    mode). Per channel, torch's op rejects that zero point; so does this one."""
    from torch.overrides import TorchFunctionMode

    class Passthrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x0 = step_input(3, (5, 16))
    x0[2, 4], x0[4, 2] = math.nan, math.inf
    for fake_quant, mode in ((1, None), (0, None), (1, Passthrough)):
        torch_state, our_state = fresh_state(False), fresh_state(False)
        flags = torch.tensor([1]), torch.tensor([fake_quant])
        dy = torch.randn(5, 8, generator=torch.Generator().manual_seed(fake_quant))
        xa, xb = (x0.clone().requires_grad_() for _ in range(2))
        ya = torch.fused_moving_avg_obs_fake_quant(xa[:, ::2], *flags, *torch_state, 0.1, 0, 255, 0, False, False)
        ya.backward(dy)
        with qkernels.use_backend(backend), (mode() if mode else contextlib.nullcontext()):
            yb = qkernels.fused_moving_avg_obs_fake_quant(xb[:, ::2], *flags, *our_state, 0.1, 0, 255, 0, False,
                                                          False)
            yb.backward(dy)
        what = f"fake_quant={fake_quant}, mode={mode}"
        for name, a, b in zip(("y", "dx", "running_min", "running_max", "scale", "zero_point"),
                              [yb.detach(), xb.grad] + our_state, [ya.detach(), xa.grad] + torch_state):
            assert_bitwise_equal(a, b, what=f"{what}: {name}")
    on = torch.tensor([1]), torch.tensor([1])
    with pytest.raises(RuntimeError, match="zero_point` must be between"):
        torch.fused_moving_avg_obs_fake_quant(x0, *on, *fresh_state(True), 0.1, 0, 255, 0, True, False)
    with qkernels.use_backend(backend), pytest.raises(RuntimeError, match="`zero_point` must be between"):
        qkernels.fused_moving_avg_obs_fake_quant(x0, *on, *fresh_state(True), 0.1, 0, 255, 0, True, False)


@pytest.mark.parametrize("backend", backends_for("cpu"))
def test_eager_per_tensor_step_is_one_cpp_call_on_native_backends(backend, monkeypatch):
    """Plain eager per-tensor calls on the cpu backend make one C++ call (observer step, fake quantization and
    the autograd node), not the launchers the registered ops use; every backend gives torch's outputs, gradients
    and state, step after step with the flags toggled, on a transposed input."""
    calls = []
    for family, name in (("fused_observer", "update"), ("fake_quant", "per_tensor_eager"),
                         ("fake_quant", "per_tensor")):
        native = getattr(qkernels, family).LAUNCHERS.native("cpu")
        original = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    torch_state, our_state = fresh_state(False), fresh_state(False)
    for step, (observe, fake_quant) in enumerate(FLAGS):
        x = step_input(step).transpose(0, 2)  # not contiguous, dense
        flags = torch.tensor([observe]), torch.tensor([fake_quant])
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(step))
        ya = torch.fused_moving_avg_obs_fake_quant(xa, *flags, *torch_state, 0.1, 0, 255, 0)
        ya.backward(dy)
        with qkernels.use_backend(backend):
            yb = qkernels.fused_moving_avg_obs_fake_quant(xb, *flags, *our_state, 0.1, 0, 255, 0)
            yb.backward(dy)
        for name, a, b in zip(("y", "dx", "running_min", "running_max", "scale", "zero_point"),
                              [yb.detach(), xb.grad] + our_state, [ya.detach(), xa.grad] + torch_state):
            assert_bitwise_equal(a, b, what=f"step {step}: {name}")
    if backend == "cpu":  # (the other backends never use these launchers)
        assert calls == []


# ------------------------------------------------------------------------------------------------------
# the C++ entry point (qkernels._C, csrc/ops/python_entry.cpp): plain eager per-tensor steps, else None
# ------------------------------------------------------------------------------------------------------
needs_entry = pytest.mark.skipif(_shared._entry is None, reason="qkernels._C is not built")


def _entry_step(x, flags, state, averaging_const=0.1, quant_min=0, quant_max=255, ch_axis=0, per_row=False,
                symmetric=False, qparams="fused", eps=torch.finfo(torch.float32).eps, symmetric_zero_point=0,
                backend=None, pack=False):
    return _shared._entry.fused_moving_avg_obs_fake_quant(x, *flags, *state, averaging_const, quant_min, quant_max,
                                                          ch_axis, per_row, symmetric, qparams, eps,
                                                          symmetric_zero_point, backend, pack)


@needs_entry
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_entry_runs_per_tensor_steps(symmetric, packed):
    """Step after step with the flags toggled (int64 zero point, bool flags): torch's outputs, gradients and
    state, bit for bit."""
    torch_state = fresh_state(False)
    our_state = fresh_state(False)
    our_state[3] = our_state[3].long()
    torch_state[3] = torch_state[3].long()
    for step, (observe, fake_quant) in enumerate(FLAGS):
        x = step_input(step)
        flags = torch.tensor([observe]), torch.tensor([fake_quant])
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = torch.fused_moving_avg_obs_fake_quant(xa, *flags, *torch_state, 0.25, -128, 127, 0, False, symmetric)
        yb = _entry_step(xb, [f.bool() for f in flags], our_state, 0.25, -128, 127, symmetric=symmetric, pack=packed)
        assert yb is not None and yb.grad_fn is not None
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(step))
        ya.backward(dy), yb.backward(dy)
        for name, a, b in zip(("y", "dx", "running_min", "running_max", "scale", "zero_point"),
                              [yb.detach(), xb.grad] + our_state, [ya.detach(), xa.grad] + torch_state):
            assert_bitwise_equal(a, b, what=f"step {step}: {name}")


def _observer_entry_fallbacks():
    """(what, call of the entry that must return None) for every call fused_observer.py would reject, leave to
    another backend or take another path for."""
    from torch.overrides import TorchFunctionMode

    x = torch.randn(3, 4)
    on = (torch.tensor([1]), torch.tensor([1]))

    def state(**change):
        s = dict(running_min=torch.tensor(math.inf), running_max=torch.tensor(-math.inf), scale=torch.ones(1),
                 zero_point=torch.zeros(1, dtype=torch.int32))
        s.update(change)
        return list(s.values())

    def under_mode():
        args = state()
        with TorchFunctionMode():
            return _entry_step(x, on, args)

    return [
        ("empty input", lambda: _entry_step(x[:0], on, state())),
        ("float64 input", lambda: _entry_step(x.double(), on, state())),
        ("per channel", lambda: _entry_step(x, on, state(), per_row=True)),
        ("per_row given as 0", lambda: _entry_step(x, on, state(), per_row=0)),
        ("symmetric given as 1", lambda: _entry_step(x, on, state(), symmetric=1)),
        ("reference backend", lambda: _entry_step(x, on, state(), backend="reference")),
        ("torch function mode", under_mode),
        ("two-element flag", lambda: _entry_step(x, (torch.tensor([1, 1]), on[1]), state())),
        ("complex flag", lambda: _entry_step(x, (on[0], torch.tensor([1j])), state())),
        ("float64 running_min", lambda: _entry_step(x, on, state(running_min=torch.tensor(math.inf).double()))),
        ("float16 scale", lambda: _entry_step(x, on, state(scale=torch.ones(1).half()))),
        ("float zero point", lambda: _entry_step(x, on, state(zero_point=torch.zeros(1)))),
        ("two-element scale", lambda: _entry_step(x, on, state(scale=torch.ones(2)))),
        ("empty running_max", lambda: _entry_step(x, on, state(running_max=torch.empty(0)))),
        ("scale needs grad", lambda: _entry_step(x, on, state(scale=torch.ones(1, requires_grad=True)))),
        ("state on another device", lambda: _entry_step(x, on, state(scale=torch.ones(1, device="meta")))),
        ("unknown qparams mode", lambda: _entry_step(x, on, state(), qparams="minmax")),
        ("quant_min > quant_max", lambda: _entry_step(x, on, state(), quant_min=5, quant_max=4)),
        ("bounds beyond 2^22", lambda: _entry_step(x, on, state(), quant_max=2**23)),
        ("str averaging constant", lambda: _entry_step(x, on, state(), averaging_const="0.1")),
        ("float symmetric zero point", lambda: _entry_step(x, on, state(), symmetric_zero_point=0.0)),
        ("tensor subclass input", lambda: _entry_step(x.as_subclass(_Subclass), on, state())),
    ]


class _Subclass(torch.Tensor):
    pass


def _entry_update(x, flags, state, averaging_const=0.1, quant_min=-128, quant_max=127, ch_axis=0, per_row=True,
                  symmetric=True, qparams="fused", eps=torch.finfo(torch.float32).eps, symmetric_zero_point=0,
                  backend=None):
    return _shared._entry.fused_observer_update(x, *flags, *state, averaging_const, quant_min, quant_max, ch_axis,
                                            per_row, symmetric, qparams, eps, symmetric_zero_point, backend)


def _sized_state(channels):
    return [torch.full((channels,), math.inf), torch.full((channels,), -math.inf), torch.ones(channels),
            torch.zeros(channels, dtype=torch.int32)]


@needs_entry
@pytest.mark.parametrize("ch_axis,layout", [(0, "contiguous"), (-1, "contiguous"), (1, "transposed"),
                                            (1, "sliced"), (None, "sliced")])
@pytest.mark.parametrize("qparams", ref.QPARAMS_MODES)
def test_entry_update_equals_the_python_path(ch_axis, layout, qparams, monkeypatch):
    """The observer step through the entry and through the Python path (its implementation, same launcher): the
    same state, step after step with the flags toggled, per channel on any axis and layout, and per tensor."""
    per_row = ch_axis is not None
    states = []
    for entry in (True, False):
        if not entry:
            monkeypatch.setattr(_shared, "_entry", None)
        x0 = step_input(0, (6, 5, 4))
        views = {"contiguous": lambda t: t, "transposed": lambda t: t.transpose(0, 2), "sliced": lambda t: t[:, ::2]}
        state = _sized_state(views[layout](x0).size(ch_axis) if per_row else 1)
        for step, (observe, fake_quant) in enumerate(FLAGS):
            x = views[layout](step_input(step, (6, 5, 4)))
            flags = torch.tensor([observe]), torch.tensor([fake_quant])
            qkernels.fused_observer.observer_update(x, *flags, *state, 0.25, -128, 127, ch_axis or 0, per_row, False,
                                                    qparams=qparams)
            if entry:  # the entry ran (the state is sized and contiguous): it leaves nothing to Python
                assert _entry_update(x, flags, [t.clone() for t in state], 0.25, ch_axis=ch_axis or 0,
                                     per_row=per_row, symmetric=False, qparams=qparams) is True
        states.append(state)
    for name, a, b in zip(("running_min", "running_max", "scale", "zero_point"), *states):
        assert_bitwise_equal(a, b, what=name)


def _update_entry_fallbacks():
    x = torch.randn(4, 6)
    on = (torch.tensor([1]), torch.tensor([1]))
    return [
        ("state to be sized", lambda: _entry_update(x, on, [torch.empty(0), torch.empty(0), torch.ones(1),
                                                            torch.zeros(1, dtype=torch.int32)])),
        ("wrong state size", lambda: _entry_update(x, on, _sized_state(6))),
        ("non-contiguous state", lambda: _entry_update(x, on, [t[::2] for t in _sized_state(8)])),
        ("ch_axis too large", lambda: _entry_update(x, on, _sized_state(4), ch_axis=2)),
        ("ch_axis too small", lambda: _entry_update(x, on, _sized_state(4), ch_axis=-3)),
        ("str ch_axis", lambda: _entry_update(x, on, _sized_state(4), ch_axis="0")),
        ("per_row given as 1", lambda: _entry_update(x, on, _sized_state(4), per_row=1)),
        ("triton backend", lambda: _entry_update(x, on, _sized_state(4), backend="triton")),
        ("empty input", lambda: _entry_update(x[:0], on, _sized_state(0))),
        ("meta tensors", lambda: _entry_update(x.to("meta"), [f.to("meta") for f in on],
                                               [t.to("meta") for t in _sized_state(4)])),
        ("wrong argument count", lambda: _shared._entry.fused_observer_update(x, *on, *_sized_state(4))),
    ]


@needs_entry
@pytest.mark.parametrize("what,call", _update_entry_fallbacks(), ids=[w for w, _ in _update_entry_fallbacks()])
def test_entry_update_leaves_other_calls_to_python(what, call):
    assert call() is None


@needs_entry
@pytest.mark.parametrize("what,call", _observer_entry_fallbacks(), ids=[w for w, _ in _observer_entry_fallbacks()])
def test_entry_leaves_other_calls_to_python(what, call):
    assert call() is None


def test_op_gradient_is_the_straight_through_mask():
    state = fresh_state(False)
    x = step_input(1).requires_grad_()
    y = qkernels.fused_moving_avg_obs_fake_quant(x, torch.tensor([1]), torch.tensor([1]), *state, 1.0, 0, 15, 0)
    y.backward(torch.ones_like(y))
    q = torch.round(x.detach() / state[2]) + state[3]
    assert torch.equal(x.grad, ((q >= 0) & (q <= 15)).float())


@pytest.mark.parametrize("backend", backends_for("cpu"))
@pytest.mark.parametrize("per_row", [False, True])
def test_op_gradients_match_torch_with_fake_quant_on_and_off(backend, per_row):
    """dx is dy * mask while fake quantization is on and dy while it is off, as torch's op gives."""
    torch_state, our_state = fresh_state(per_row), fresh_state(per_row)
    for step, (observe, fake_quant) in enumerate(FLAGS):
        x = step_input(step)
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(step))
        flags = torch.tensor([observe]), torch.tensor([fake_quant])
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.fused_moving_avg_obs_fake_quant(xa, *flags, *torch_state, 0.1, 0, 255, 0, per_row, False).backward(dy)
        with qkernels.use_backend(backend):
            y = qkernels.fused_moving_avg_obs_fake_quant(xb, *flags, *our_state, 0.1, 0, 255, 0, per_row, False)
            y.backward(dy)
        assert torch.equal(xb.grad, xa.grad), f"step {step}"


def test_compile_fullgraph_matches_eager():
    def step(x, observe, fake_quant, *state):
        return qkernels.fused_moving_avg_obs_fake_quant(x, observe, fake_quant, *state, 0.1, -128, 127, 1, True, True)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    sized = [torch.full((6,), math.inf), torch.full((6,), -math.inf), torch.ones(6), torch.zeros(6, dtype=torch.int32)]
    eager_state, comp_state = [t.clone() for t in sized], [t.clone() for t in sized]
    for i, (observe, fake_quant) in enumerate(FLAGS):
        x = step_input(i)
        flags = torch.tensor([observe]), torch.tensor([fake_quant])
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = step(xa, *flags, *eager_state), compiled(xb, *flags, *comp_state)
        ya.sum().backward()
        yb.sum().backward()
        assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad), f"step {i}"
        assert all(torch.equal(a, b) for a, b in zip(eager_state, comp_state)), f"step {i}: state"


def test_patch_routes_fused_module():
    """torch.ao's FusedMovingAvgObsFakeQuantize (per-tensor and per-channel) runs on qkernels under the patch."""
    import torch.ao.quantization as tq

    for make in (tq.default_fused_act_fake_quant, tq.default_fused_per_channel_wt_fake_quant):
        stock, patched = make(), make()
        for step in range(4):
            x = step_input(step, (5, 8))
            want = stock(x)
            with qkernels.patched_torch():
                got = patched(x)
            assert torch.equal(got, want), f"step {step}"
            assert all(torch.equal(a, b) for a, b in zip(patched.state_dict().values(), stock.state_dict().values()))


FLAG_DTYPES = [torch.bool, torch.int8, torch.uint8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.int64,
               torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64]


FLAG_CASES = [(dtype, v) for dtype in FLAG_DTYPES for v in (0.5, 2.0, -1.0, 0.0, 1.0)] + [
    (dtype, math.nan) for dtype in FLAG_DTYPES if dtype.is_floating_point]


@pytest.mark.parametrize("backend", backends_for("cpu"))
@pytest.mark.parametrize("flag_dtype,flag", FLAG_CASES)
def test_flags_truncate_toward_zero_like_torch_cpu(backend, flag_dtype, flag):
    """torch's CPU op reads the flags with .item().toInt(): 0.5 is off, 2 and -1 are on. Every backend reads
    them where they live, in their own dtype; a float flag is on when |v| >= 1 or NaN. (torch raises on NaN
    and on values beyond int32, such as -1 wrapped into uint32/uint64: those are compared on/off only.)"""
    value = torch.tensor([flag]).to(flag_dtype)  # integer dtypes: 0.5 -> 0, -1 -> 255 for uint8
    torch_state, our_state = fresh_state(False), fresh_state(False)
    x = step_input(2)
    with qkernels.use_backend(backend):
        got = qkernels.fused_moving_avg_obs_fake_quant(x, value, value.clone(), *our_state, 0.1, 0, 255, 0)
    on = math.isnan(flag) or value.double().trunc().item() != 0
    assert math.isinf(our_state[0].item()) != on  # observed exactly when the flag reads as on
    if math.isnan(flag) or abs(value.double().item()) >= 2**31:
        assert not torch.equal(got, x)  # fake quantization ran as well
        return
    want = torch.fused_moving_avg_obs_fake_quant(x, value.double(), value.double(), *torch_state, 0.1, 0, 255, 0)
    assert torch.equal(got, want) and all(torch.equal(a, b) for a, b in zip(our_state, torch_state))


def test_bad_arguments_leave_empty_per_channel_state_untouched():
    """The checks run before the first call sizes torch.ao's empty per-channel buffers."""
    state = fresh_state(True)
    with pytest.raises(RuntimeError, match="`quant_min` should be less than or equal"):
        qkernels.fused_moving_avg_obs_fake_quant(torch.randn(3, 4), torch.tensor([1]), torch.tensor([1]), *state, 0.1,
                                                 5, 4, 0, True)
    assert [t.numel() for t in state] == [0, 0, 1, 1]


def test_contracted_moving_average_is_one_fma():
    """Flavour "cuda" (aten's CUDA kernel as nvcc compiles it) averages with one FMA: the reference's
    float64 TwoSum emulation and the C++ kernel's fmaf agree bit for bit, and differ from two roundings
    somewhere, so the flavour is observable."""
    g = torch.Generator().manual_seed(7)
    running = torch.randn(4096, generator=g) * 10
    cur = running + torch.randn(4096, generator=g)
    contracted = ref.update_running(running, cur, 0.01, "cuda")
    assert not torch.equal(contracted, ref.update_running(running, cur, 0.01, "cpu"))
    if backends.availability("cpu", "cpu") is not None:
        pytest.skip(f"C++ half: {backends.availability('cpu', 'cpu')}")
    state = [running.clone(), running.clone(), torch.ones(4096), torch.zeros(4096, dtype=torch.int32)]
    x = torch.stack([cur, cur])  # [2, C]: min = max = cur per channel
    qkernels.fused_observer.LAUNCHERS.native("cpu").update(x, torch.tensor([1]), torch.tensor([0]), *state, 0.01, 0,
                                                            255, 1, False, QParamsMode.Fused, 1e-7, 0, Flavour.Cuda)
    assert torch.equal(state[0], contracted) and torch.equal(state[1], contracted)


CUDA_BACKENDS = backends_for("cuda") if torch.cuda.is_available() else []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_op_matches_torch_fused_op_on_cuda(backend, per_row, symmetric):
    """On CUDA tensors (flavour "cuda"): torch's CUDA kernels have no 6.1e-5 floor, and nvcc contracts their
    moving average into an FMA (the research note left this unverified: this test tells)."""
    torch_state = [t.cuda() for t in fresh_state(per_row)]
    our_state = [t.cuda() for t in fresh_state(per_row)]
    for step, (observe, fake_quant) in enumerate(FLAGS):
        x = step_input(step).cuda()
        flags = torch.tensor([observe], device="cuda"), torch.tensor([fake_quant], device="cuda")
        want = torch.fused_moving_avg_obs_fake_quant(x, *flags, *torch_state, 0.1, 0, 255, 0, per_row, symmetric)
        with qkernels.use_backend(backend):
            got = qkernels.fused_moving_avg_obs_fake_quant(x, *flags, *our_state, 0.1, 0, 255, 0, per_row, symmetric)
        for name, a, b in zip(("y", "running_min", "running_max", "scale", "zero_point"), [got] + our_state,
                              [want] + torch_state):
            assert a.dtype == b.dtype and torch.equal(a, b), f"step {step}: {name} differs"
