"""The Triton fused-observer launcher (triton_kernels/fused_observer.py) against the reference backend.

Bit-exact: running_min/max, scale and zero_point (dtypes included, NaNs at the same places) after several
steps of the reference launcher (``qkernels.reference.fused_observer.Launchers.update``) and the Triton launcher on
clones of the same state, with the flags toggled, for both flavours ("cpu": two-rounding moving average and the
6.1e-5 floor; "cuda": FMA, no floor) and both qparam modes. Runs compiled on CUDA tensors, or interpreted on CPU tensors
under ``TRITON_INTERPRET=1``. Inputs hold no -0.0: which zero a min/max of both signs returns is unspecified
(torch.aminmax's answer depends on the order it folds in).
"""

import math

import pytest
import torch

import qkernels
from qkernels import backends
from qkernels._shared import _inner_stride
from qkernels.enums import Flavour
from qkernels.reference import fused_observer as oref

from conftest import HAS_CUDA, assert_bitwise_equal

DEVICE = "cuda" if HAS_CUDA else "cpu"
_REASON = backends.availability("triton", DEVICE)
if _REASON is not None:
    pytest.skip(f"Triton backend unavailable: {_REASON}", allow_module_level=True)

from qkernels.triton_kernels import fused_observer as fo  # noqa: E402 (imports triton)

# The interpreter evaluates inf - inf, 0 / 0 and the like with NumPy, which warns; the kernels mean them.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

EPS = torch.finfo(torch.float32).eps
FLOAT_FLAG_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_FLAG_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
# (observer_on, fake_quant_on) per step; floats are "on" at |v| >= 1 (0.5 is off, 2.0 and -1.0 are on)
FLAGS = [(0, 1), (1, 1), (0.5, 2.0), (2.0, 0), (-1.0, 1), (1, 0.5), (0, 0), (1, -1.0), (1, 1)]


def step_input(step, shape, dtype, seed):
    """Observed steps (see FLAGS): a tiny non-negative range first (the CPU floor, taken as is by never-observed
    stats), +inf, a constant, all zeros, negatives only, then a NaN (last: NaN sticks in the running stats)."""
    g = torch.Generator().manual_seed(seed * 100 + step)
    x = torch.randn(shape, generator=g) * (step + 1) + (0.5 if step % 2 else -0.3)
    if step == 1:
        x = x.abs() * 1e-4 + 1e-6
    elif step == 3:
        x.view(-1)[x.numel() // 3] = math.inf
    elif step == 4:
        x = torch.full(shape, 0.75)
    elif step == 5:
        x = torch.zeros(shape)
    elif step == 7:
        x = -x.abs() - 0.25
    elif step == 8:
        x.view(-1)[x.numel() // 2] = math.nan
    return x.to(dtype).to(DEVICE)


def flag(value, step):
    """A one-element flag tensor, its dtype cycling with the step (float values as floats)."""
    if isinstance(value, float) and value != int(value):
        dtype = FLOAT_FLAG_DTYPES[step % len(FLOAT_FLAG_DTYPES)]
    else:
        dtypes = INT_FLAG_DTYPES + FLOAT_FLAG_DTYPES
        dtype = dtypes[step % len(dtypes)]
        if dtype == torch.uint8 and value < 0:
            dtype = torch.int8
    return torch.tensor([value], dtype=dtype, device=DEVICE).reshape(() if step % 2 else (1,))


def fresh_state(channels, zp_dtype=torch.int32):
    if channels is None:
        return [torch.tensor(math.inf), torch.tensor(-math.inf), torch.ones(1), torch.zeros(1, dtype=zp_dtype)]
    return [torch.full((channels,), math.inf), torch.full((channels,), -math.inf), torch.ones(channels),
            torch.zeros(channels, dtype=zp_dtype)]


def layout(x, name):
    return x.contiguous(memory_format=torch.channels_last) if name == "channels_last" else x


SCHEDULE = [(step, *flags) for step, flags in enumerate(FLAGS)]


def run_steps(shape, ch_axis, mem, dtype, mode, flavour, symmetric, quant_min, quant_max, averaging_const,
              zp_dtype=torch.int32, seed=0, schedule=SCHEDULE):
    """Both launchers over the (input step, observer_on, fake_quant_on) schedule; compares the state after
    every step."""
    channels = shape[ch_axis] if ch_axis >= 0 else None
    state = [t.to(DEVICE) for t in fresh_state(channels, zp_dtype)]
    want_state = [t.clone() for t in state]
    sym_zp = 0 if quant_min < 0 else (quant_min + quant_max) // 2
    for step, observe, fake_quant in schedule:
        x = layout(step_input(step, shape, dtype, seed), mem)
        inner = _inner_stride(x, ch_axis) if ch_axis >= 0 else x.numel()
        args = (flag(observe, step), flag(fake_quant, step + 3))
        rest = (averaging_const, quant_min, quant_max, inner, symmetric, mode, EPS, sym_zp, Flavour.of(flavour))
        oref.Launchers.update(x, *args, *want_state, *rest)
        fo.update(x, *args, *state, *rest)
        for name, got, want in zip(("running_min", "running_max", "scale", "zero_point"), state, want_state):
            assert_bitwise_equal(got, want, what=f"step {step} {name}")


# (shape, ch_axis, memory format, x dtype, zero point dtype): per tensor (one run), per channel in run mode
# (I > 1 with O > 1, O == 1) and in row mode (I == 1: channels-last on axis 1, the last axis, O == 1).
LAYOUTS = [
    ((5, 7, 9), -1, "contiguous", torch.float32, torch.int32),
    ((2, 3, 5, 7), -1, "channels_last", torch.float16, torch.int64),
    ((4, 6, 5, 7), 1, "contiguous", torch.bfloat16, torch.int32),
    ((2, 5, 3, 7), 2, "channels_last", torch.float32, torch.int64),
    ((6, 35), 0, "contiguous", torch.float16, torch.int32),
    ((3, 5, 7, 6), 1, "channels_last", torch.float32, torch.int32),
    ((37, 11), 1, "contiguous", torch.bfloat16, torch.int64),
    ((33,), 0, "contiguous", torch.float32, torch.int32),
]
RANGES = [(0, 255), (-128, 127), (0, 127), (-8, 7)]


@pytest.mark.parametrize("index", range(len(LAYOUTS)))
@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_matches_reference_over_steps(index, mode, flavour):
    shape, ch_axis, mem, dtype, zp_dtype = LAYOUTS[index]
    symmetric = (index + mode) % 2 == 1  # each layout and flavour: affine in one mode, symmetric in the other
    quant_min, quant_max = RANGES[(index + mode + 2 * (flavour == "cuda")) % len(RANGES)]
    averaging_const = (0.01, 0.1, 0.37, 1.0)[(index + mode) % 4]
    run_steps(shape, ch_axis, mem, dtype, mode, flavour, symmetric, quant_min, quant_max, averaging_const,
              zp_dtype, seed=index)


@pytest.mark.parametrize("shape,ch_axis,mem", [
    ((1100,), -1, "contiguous"),  # per tensor: one run split in chunks
    ((5, 3, 70), 1, "contiguous"),  # run mode: runs split in chunks and in rows
    ((12, 40), 1, "contiguous"),  # row mode: several column tiles and row blocks
    ((3, 6, 4, 5), 1, "channels_last"),
])
def test_many_parts(monkeypatch, shape, ch_axis, mem):
    """Small plan constants split small tensors into many partials per channel (P > 1)."""
    monkeypatch.setattr(fo, "_BLOCK", 32)
    monkeypatch.setattr(fo, "_MIN_PER_PROGRAM", 32)
    monkeypatch.setattr(fo, "_FINISH_TILE", 32)  # folds up to 32 partials at once: P > 32 takes more tiles
    x = layout(torch.empty(shape), mem)
    C = shape[ch_axis] if ch_axis >= 0 else 1
    inner = _inner_stride(x, ch_axis) if ch_axis >= 0 else x.numel()
    assert fo._plan(x.numel() // (C * inner), C, inner)[4] > 1
    schedule = [(0, 1, 1), (2, 0, 1), (3, 1, 1), (8, 1, 1)]  # random, not observed, with +inf, with NaN
    for mode, flavour, symmetric, dtype in ((0, "cpu", False, torch.float32), (1, "cuda", True, torch.float16)):
        run_steps(shape, ch_axis, mem, dtype, mode, flavour, symmetric, -128, 127, 0.25, schedule=schedule)


# (min, max) a channel observes first: the CPU floor's three cases, zero and subnormal ranges (scale 0.1),
# one-sided ranges, zero points that tie (1.5, 2.5 for (0, 255)), infinities, NaN, huge ranges.
EDGE_STATS = [(1e-7, 2e-7), (-2e-7, -1e-7), (-1e-7, 3e-7), (0.0, 0.0), (-1e-39, 1e-39), (1.0, 1.0), (-5.0, -5.0),
              (0.5, 3.0), (-1.5, 253.5), (-2.5, 252.5), (-128.5, 127.5), (-math.inf, 5.0), (3.0, math.inf),
              (-math.inf, math.inf), (math.nan, math.nan), (-3e38, 3e38), (-1e30, 1e-30), (-7.0, 1e-3)]


@pytest.mark.parametrize("quant_min,quant_max", RANGES)
@pytest.mark.parametrize("mode", [0, 1])
def test_qparams_of_edge_stats(quant_min, quant_max, mode):
    """Never-observed channels take (min, max) of x as they are; their qparams against the reference."""
    x = torch.tensor(EDGE_STATS, device=DEVICE).t().contiguous()  # [2, C]: row mode
    on = torch.ones((), dtype=torch.int8, device=DEVICE)
    sym_zp = 0 if quant_min < 0 else (quant_min + quant_max) // 2
    for flavour in ("cpu", "cuda"):
        for symmetric in (False, True):
            state = [t.to(DEVICE) for t in fresh_state(len(EDGE_STATS))]
            want = [t.clone() for t in state]
            rest = (0.3, quant_min, quant_max, 1, symmetric, mode, EPS, sym_zp, Flavour.of(flavour))
            oref.Launchers.update(x, on, on, *want, *rest)
            fo.update(x, on, on, *state, *rest)
            for name, got, exp in zip(("running_min", "running_max", "scale", "zero_point"), state, want):
                assert_bitwise_equal(got, exp, what=f"{flavour} symmetric={symmetric} {name}")


@pytest.mark.parametrize("dtype", INT_FLAG_DTYPES + FLOAT_FLAG_DTYPES)
def test_flag_dtypes_truncate_toward_zero(dtype):
    values = [0, 1, -1, 2] if not dtype.is_floating_point else [0.0, 1.0, 0.5, -0.75, 2.0, -1.0, math.nan, math.inf]
    if dtype == torch.uint8:
        values = [0, 1, 255]
    if dtype.is_floating_point:
        values.append(1.0 - torch.finfo(dtype).eps / 2)  # the largest value below 1
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    for i, value in enumerate(values):
        on = torch.tensor(value, dtype=dtype, device=DEVICE)
        assert bool(oref.flag_on_device(on)) == (math.isnan(value) or abs(value) >= 1)
        for mode in ((0, 1) if i < 2 else (i % 2,)):  # 0 and 1 in both modes, the other values in one
            state = [torch.tensor([-1.0, 0.5, -2.0, math.inf], device=DEVICE),
                     torch.tensor([2.0, 0.75, -1.0, -math.inf], device=DEVICE),
                     torch.full((4,), 7.0, device=DEVICE), torch.full((4,), 3, dtype=torch.int32, device=DEVICE)]
            want = [t.clone() for t in state]
            rest = (0.5, -128, 127, 9, False, mode, EPS, 0, Flavour.Cpu)
            oref.Launchers.update(x, on, on, *want, *rest)
            fo.update(x, on, on, *state, *rest)
            for got, exp in zip(state, want):
                assert_bitwise_equal(got, exp, what=f"{dtype} {value} mode {mode}")


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_observer_off_keeps_stats_and_fused_mode_still_recomputes(flavour):
    x = torch.full((3, 4), math.nan, device=DEVICE)  # would turn every stat into NaN if it were observed
    off = torch.zeros((), dtype=torch.int32, device=DEVICE)
    on = torch.ones(1, dtype=torch.float32, device=DEVICE)
    running_min = torch.tensor([-1.0, 1e-7, math.inf, -3.0], device=DEVICE)
    running_max = torch.tensor([2.0, 2e-7, -math.inf, -0.5], device=DEVICE)
    for mode in (0, 1):
        state = [running_min.clone(), running_max.clone(), torch.full((4,), 7.0, device=DEVICE),
                 torch.full((4,), 5, dtype=torch.int64, device=DEVICE)]
        fo.update(x, off, on, *state, 0.5, 0, 255, 1, False, mode, EPS, 0, Flavour.of(flavour))
        assert_bitwise_equal(state[0], running_min, what="running_min")
        assert_bitwise_equal(state[1], running_max, what="running_max")
        if mode == 0:  # torch's fused op: fake_quant_on alone recomputes the qparams from the kept stats
            scale, zero_point = oref.choose_qparams_fused(running_min, running_max, 0, 255, False, flavour)
            zero_point = zero_point.long()
        else:  # the observer's qparams change only with the observer
            scale, zero_point = torch.full((4,), 7.0, device=DEVICE), torch.full((4,), 5, device=DEVICE)
        assert_bitwise_equal(state[2], scale, what="scale")
        assert_bitwise_equal(state[3], zero_point, what="zero_point")


@pytest.mark.parametrize("shape,ch_axis", [((3, 40), -1), ((3, 4, 5), 1), ((6, 7), 1)])
def test_minmax_pass_skips_x_while_observer_off(shape, ch_axis):
    """The loads sit in loops that run no iteration while the observer is off: the partials keep their
    (+inf, -inf) start however x looks (here all NaN)."""
    x = torch.full(shape, math.nan, device=DEVICE)
    C = shape[ch_axis] if ch_axis >= 0 else 1
    inner = _inner_stride(x, ch_axis) if ch_axis >= 0 else x.numel()
    kernel, grid, shape_args, tiles, P = fo._plan(x.numel() // (C * inner), C, inner)
    for value, want in ((0.0, (math.inf, -math.inf)), (1.0, (math.nan, math.nan))):
        partials = torch.zeros(2, C * P, device=DEVICE)
        kernel[grid](x, partials[0], partials[1], torch.tensor(value, device=DEVICE), *shape_args, INDEX_I32=True,
                     **tiles)
        assert_bitwise_equal(partials, torch.tensor(want, device=DEVICE)[:, None].expand(2, C * P).contiguous())


@pytest.mark.parametrize("per_row", [False, True])
def test_public_op_runs_on_triton(monkeypatch, per_row):
    calls = []
    launcher = fo.update
    monkeypatch.setattr(fo, "update", lambda *a: calls.append(1) or launcher(*a))
    results = {}
    for backend in ("triton", "reference"):
        state = [t.to(DEVICE) for t in fresh_state(4 if per_row else None)]
        ys = []
        with qkernels.use_backend(backend):
            for step, (observe, fake_quant) in enumerate(FLAGS[:6]):
                x = step_input(step, (3, 4, 5), torch.float32, seed=7)
                ys.append(qkernels.fused_moving_avg_obs_fake_quant(
                    x, flag(observe, step), flag(fake_quant, step), *state, 0.2, 0, 255, 1, per_row, per_row))
        results[backend] = ys + state
    assert len(calls) == 6, "the public op did not reach the Triton launcher"
    for got, want in zip(results["triton"], results["reference"]):
        assert_bitwise_equal(got, want)
