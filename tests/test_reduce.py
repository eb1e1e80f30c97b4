"""The deterministic reduction layer (qkernels/reference/reduce.py, csrc/include/qkernels/reduce.h, csrc/cpu/
reduce.h, csrc/cuda/reduce.cuh, triton_kernels/_reduce.py) on every backend that runs here, against the Python
planner's reference partials and finish, bit for bit:

* the planner: every element in exactly one block, blocks of at most `target` elements (row mode: 64 rows), the
  Triton learnable plan on it;
* sum: through the learnable backward, with values whose every float32 sum is exact, so any block combine must
  give the reference's bits (a dropped, doubled or misplaced partial cannot);
* min-max (NaN, +-inf): through the observer's first observation (running = current min/max);
* all four kinds (sum, min-max, absmax, count) through the Triton helpers in a grid-stride test kernel, for
  two grids;
* the same bits for any thread count: the native CPU learnable backward and observer with 1 and 2 threads over
  sizes that span several blocks.
"""

import math

import pytest
import torch

triton = pytest.importorskip("triton")
tl = triton.language

import cuda_emulator
import qkernels
from conftest import assert_bitwise_equal
from qkernels.enums import Flavour, QParamsMode, ZpRule
from qkernels.reference import fake_quant_learnable as lref
from qkernels.reference import reduce as rr
from qkernels.triton_kernels import _reduce  # noqa: E402 (after the Triton check)
from qkernels.triton_kernels import fake_quant_learnable as tl_learnable  # noqa: E402
from qkernels.triton_kernels import fused_observer as tl_observer  # noqa: E402

# [B, O, C, I] of run mode (per tensor, per channel with inner runs, per group with I = 1 and C = 1) and row
# mode; several blocks per quantizer at the native CPU's 2^14-element blocks and the CUDA's 2^12.
DIMS = [(1, 1, 1, 70000), (1, 3, 5, 9000), (2, 40, 3, 700), (1, 1300, 48, 1), (3, 500, 1, 1)]


def _native(family):
    return getattr(qkernels, family).LAUNCHERS.native("cpu")


@pytest.fixture(scope="module", params=["cpu", "cuda-emulated", "triton"])
def backend(request):
    """(name, family -> launchers, flavour) of a backend (Triton's launchers are the family modules)."""
    if request.param == "triton":
        return request.param, {"fake_quant_learnable": tl_learnable, "fused_observer": tl_observer}.get, Flavour.Cuda
    if request.param == "cpu":
        return request.param, _native, Flavour.Cpu
    return request.param, cuda_emulator.launchers, Flavour.Cuda


@pytest.mark.parametrize("dims", DIMS + [(1, 7, 3, 1), (2, 1, 4, 3)])
@pytest.mark.parametrize("target", [64, 1000, 4096, 1 << 14])
@pytest.mark.parametrize("rows_multiple", [1, 4])
def test_planner_covers_every_element_once(dims, target, rows_multiple):
    """Every partial [b, p, c] gets elements, no more than a block holds: run mode rows x chunk, at most
    max(target, chunk) elements (rows a multiple of rows_multiple); row mode `rows` (at least 64) per column."""
    blocks = rr.make_blocks(dims, target, rows_multiple)
    B, O, C, I = dims
    counts = torch.bincount(rr.block_of(dims, blocks).reshape(-1), minlength=B * blocks.P * C)
    assert counts.numel() == B * blocks.P * C and bool((counts > 0).all())
    assert blocks.rows % rows_multiple == 0
    assert blocks.row_mode == (I == 1 and C > 1)
    if blocks.row_mode:
        assert blocks.rows >= 64 and int(counts.max()) <= blocks.rows
    else:
        assert int(counts.max()) <= blocks.rows * blocks.chunk
        assert blocks.rows * blocks.chunk <= max(target, blocks.chunk * rows_multiple)


@pytest.mark.parametrize("dims", DIMS)
def test_triton_learnable_plan_is_the_layout(dims):
    """The Triton learnable backward's partials are the layout's blocks, rows a multiple of its row tile."""
    kernel, _, shape_args, tiles, P = tl_learnable._plan(dims)
    if kernel is tl_learnable._segment_kernel:  # one block per quantizer
        assert P == 1 and dims[1] == 1
        return
    numel = math.prod(dims)
    target = min(tl_learnable._MAX_TARGET,
                 max(tl_learnable._BLOCK, 1 << (max(1, numel // tl_learnable._PROGRAMS).bit_length() - 1)))
    blocks = rr.make_blocks(dims, target, rows_multiple=tiles["ROWS_T"])
    assert P == blocks.P
    assert blocks.rows in shape_args and blocks.rows % tiles["ROWS_T"] == 0


def _exact_sum_input(dims, seed):
    """x far above every quantizer's range (so ds = dy * (qmax - zb) * gf, dz = -dy * s * gf per element) and
    dy small integers: with s = 1, zb = 0, gf = 1 every partial and total is an exact float32 integer."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(dims)
    dy = torch.randint(-8, 9, (n,), generator=g).float()
    x = torch.full((n,), 1e6)
    return x, dy


def test_sum_through_learnable_backward(backend):
    name, launchers, flavour = backend
    for seed, dims in enumerate(DIMS):
        B, O, C, I = dims
        x, dy = _exact_sum_input(dims, seed)
        s, z = torch.ones(B * C), torch.zeros(B * C)
        dx = torch.empty_like(x)
        ds, dz = launchers("fake_quant_learnable").backward(dy, x, dx, s, z, *dims, -128, 127, 1.0, flavour,
                                                             ZpRule.Torch, True, True, torch.float32, torch.float32)
        blocks = rr.make_blocks(dims, 1 << 12)  # any layout gives the same exact partials and finish
        v = dy.view(dims)
        want_ds = rr.finish_sum(rr.reference_partials(v * 127.0, blocks, "sum"), 1, torch.float32).reshape(-1)
        want_dz = rr.finish_sum(rr.reference_partials(-v, blocks, "sum"), 1, torch.float32).reshape(-1)
        assert_bitwise_equal(ds, want_ds, what=f"{name} dscale {dims}")
        assert_bitwise_equal(dz, want_dz, what=f"{name} dzero_point {dims}")


def _specials(x: torch.Tensor, seed: int) -> torch.Tensor:
    """x with a NaN, +inf and -inf each placed in some quantizer (a different one per seed)."""
    x = x.clone().reshape(-1)
    g = torch.Generator().manual_seed(seed)
    for v in (math.nan, math.inf, -math.inf):
        x[torch.randint(0, x.numel(), (1,), generator=g)] = v
    return x


# (x shape, channel axis or None per tensor): run mode per tensor and per channel (one block per channel; several
# blocks of rows), row mode (channels last), run mode along the first axis
OBSERVER_CASES = [((70000,), None), ((3, 7, 5000), 1), ((40, 6, 900), 1), ((1300, 48), 1), ((20, 5, 3000), 0)]


def _observe(backend, x, ch_axis):
    _, launchers, flavour = backend
    C = 1 if ch_axis is None else x.shape[ch_axis]
    inner = x.numel() if ch_axis is None else math.prod(x.shape[ch_axis + 1:])
    state = [torch.full((C,), math.inf), torch.full((C,), -math.inf), torch.ones(C), torch.zeros(C, dtype=torch.int32)]
    on = torch.ones(1, dtype=torch.long)
    launchers("fused_observer").update(x, on, on, *state, 0.01, -128, 127, inner, False, QParamsMode.Fused, 1e-5, 0,
                                       flavour)
    return state


@pytest.mark.parametrize("case", range(len(OBSERVER_CASES)))
def test_minmax_through_observer(backend, case):
    """First observation: running_min/max = the current min/max, which must be the reference's exactly."""
    shape, ch_axis = OBSERVER_CASES[case]
    x = _specials(torch.randn(shape, generator=torch.Generator().manual_seed(case)), case).view(shape)
    state = _observe(backend, x, ch_axis)
    axis = ch_axis if ch_axis is not None else 0
    C = 1 if ch_axis is None else shape[ch_axis]
    dims = (1, x.numel() // (C * (x.numel() if ch_axis is None else math.prod(shape[axis + 1:]))), C,
            x.numel() if ch_axis is None else math.prod(shape[axis + 1:]))
    lo, hi = rr.finish(rr.reference_partials(x.view(dims), rr.make_blocks(dims, 1 << 12), "minmax"), 1, "minmax")
    assert_bitwise_equal(state[0], lo.reshape(-1), what=f"{backend[0]} running_min")
    assert_bitwise_equal(state[1], hi.reshape(-1), what=f"{backend[0]} running_max")


@pytest.mark.parametrize("case", range(len(OBSERVER_CASES)))
def test_observer_same_bits_for_any_thread_count(case):
    """Native CPU: the observer state with 1 and 2 threads, x holding -0.0 and +0.0 (whose min/max sign the
    layout and the finish order fix), NaN and +-inf."""
    shape, ch_axis = OBSERVER_CASES[case]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(10 + case))
    x = torch.where(x.abs() < 1.0, torch.where(x > 0, 0.0, -0.0), x)  # many signed zeros
    x = x.abs().neg() if case % 2 else x.abs()  # all of one sign: a zero is the min (or the max)
    x = _specials(x, case).view(shape) if case == 0 else x
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_observe(("cpu", _native, Flavour.Cpu), x, ch_axis))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert_bitwise_equal(a, b, what="observer state, 1 vs 2 threads")


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_learnable_backward_same_bits_for_any_thread_count(dims, dtype):
    B, O, C, I = dims
    g = torch.Generator().manual_seed(sum(dims))
    x = (torch.randn(math.prod(dims), generator=g) * 40).to(dtype)
    dy = torch.randn(math.prod(dims), generator=g).to(dtype)
    s = torch.rand(B * C, generator=g) + 0.5
    z = torch.randn(B * C, generator=g) * 3
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            dx = torch.empty_like(x)
            ds, dz = _native("fake_quant_learnable").backward(dy, x, dx, s, z, *dims, -128, 127, 0.01, Flavour.Cpu,
                                                              ZpRule.Torch, False, True, torch.float32, torch.float32)
            results.append((dx, ds, dz))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert_bitwise_equal(a, b, what="learnable backward, 1 vs 2 threads")


# ------------------------------------------------------------------------------------------------------------
# The Triton helpers, every kind, in a grid-stride kernel over the layout's work items (run mode only: one item
# per block, items (b * C + c) * P + p; row mode items (b, p) with a column loop).
# ------------------------------------------------------------------------------------------------------------

SUM, MINMAX, ABSMAX, COUNT = (tl.constexpr(k) for k in range(4))  # rr.KINDS order


@triton.jit
def _fold(acc, hi, cnt, v, m, KIND: tl.constexpr):
    """Folds the tile v (where m holds) into the lanes of KIND: acc (sum, min, absmax), hi (max), cnt (count)."""
    if KIND == SUM:
        acc += tl.where(m, v, 0.0)
    elif KIND == MINMAX:
        acc, hi = _reduce.minmax_fold(acc, hi, v, v, m)
    elif KIND == ABSMAX:
        acc = _reduce.absmax_fold(acc, v, m)
    else:
        cnt = _reduce.count_fold(cnt, v != 0.0, m)
    return acc, hi, cnt


@triton.jit
def _store(out_ptr, out2_ptr, dst, mask, acc, hi, cnt, AXIS: tl.constexpr, KIND: tl.constexpr):
    """Reduces the lanes of KIND along AXIS and stores the partials at dst (out2: the max of minmax)."""
    if KIND == SUM:
        tl.store(out_ptr + dst, _reduce.sum_lanes(acc, AXIS), mask=mask)
    elif KIND == MINMAX:
        lo_r, hi_r = _reduce.minmax_lanes(acc, hi, AXIS)
        tl.store(out_ptr + dst, lo_r, mask=mask)
        tl.store(out2_ptr + dst, hi_r, mask=mask)
    elif KIND == ABSMAX:
        tl.store(out_ptr + dst, _reduce.absmax_lanes(acc, AXIS), mask=mask)
    else:
        tl.store(out_ptr + dst, _reduce.count_lanes(cnt, AXIS), mask=mask)


@triton.jit
def _blocks_kernel(x_ptr, out_ptr, out2_ptr, O, C, I, P, n_ib, rows, chunk, n_items, ROW_MODE: tl.constexpr,
                   KIND: tl.constexpr, ROWS_T: tl.constexpr, BLOCK: tl.constexpr):
    start = float("inf") if KIND == MINMAX else 0.0  # the lanes' start: the kind's identity
    for item in range(tl.program_id(0), n_items, tl.num_programs(0)):
        if ROW_MODE:  # item (b, p): rows [p * rows, p * rows + rows) of every column c, one lane column each
            p = item % P
            b = item // P
            r = tl.arange(0, ROWS_T)[:, None]
            o_end = tl.minimum(p * rows + rows, O)
            for c0 in range(0, C, BLOCK):
                c = c0 + tl.arange(0, BLOCK)
                acc = tl.full((ROWS_T, BLOCK), start, tl.float32)
                hi = tl.full((ROWS_T, BLOCK), -float("inf"), tl.float32)
                cnt = tl.zeros((ROWS_T, BLOCK), tl.int32)
                for o in range(p * rows, o_end, ROWS_T):
                    m = (o + r < o_end) & (c[None, :] < C)
                    v = tl.load(x_ptr + (b * O + o + r) * C + c[None, :], mask=m, other=0.0)
                    acc, hi, cnt = _fold(acc, hi, cnt, v, m, KIND)
                _store(out_ptr, out2_ptr, (b * P + p) * C + c, c < C, acc, hi, cnt, 0, KIND)
        else:  # item ((b * C + c) * P + p): rows [ob * rows, +rows) and i in [ib * chunk, +chunk) of (b, c)
            p = item % P
            c = (item // P) % C
            b = item // (P * C)
            o_end = tl.minimum((p // n_ib) * rows + rows, O)
            i_end = tl.minimum((p % n_ib) * chunk + chunk, I)
            acc = tl.full((ROWS_T, BLOCK), start, tl.float32)
            hi = tl.full((ROWS_T, BLOCK), -float("inf"), tl.float32)
            cnt = tl.zeros((ROWS_T, BLOCK), tl.int32)
            for o in range((p // n_ib) * rows, o_end, ROWS_T):
                ro = o + tl.arange(0, ROWS_T)[:, None]
                for i in range((p % n_ib) * chunk, i_end, BLOCK):
                    ci = i + tl.arange(0, BLOCK)[None, :]
                    m = (ro < o_end) & (ci < i_end)
                    v = tl.load(x_ptr + ((b * O + ro) * C + c) * I + ci, mask=m, other=0.0)
                    acc, hi, cnt = _fold(acc, hi, cnt, v, m, KIND)
            _store(out_ptr, out2_ptr, (b * P + p) * C + c, item < n_items, acc, hi, cnt, None, KIND)


def _triton_partials(x4, blocks, kind, grid):
    B, O, C, I = x4.shape
    shape = (B, blocks.P, C)
    out = torch.empty(shape, dtype=torch.int64 if kind == "count" else torch.float32)
    out2 = torch.empty(shape)
    n_items = B * blocks.P * (1 if blocks.row_mode else C)
    _blocks_kernel[(grid,)](x4.reshape(-1), out, out2, O, C, I, blocks.P, blocks.n_ib, blocks.rows, blocks.chunk,
                            n_items, ROW_MODE=blocks.row_mode, KIND=rr.KINDS.index(kind), ROWS_T=4, BLOCK=16)
    return (out, out2) if kind == "minmax" else out


def _kind_input(dims, kind, seed):
    g = torch.Generator().manual_seed(seed)
    n = math.prod(dims)
    if kind == "sum":  # small integers times 1/8: every float32 sum of them is exact
        return (torch.randint(-64, 65, (n,), generator=g).float() / 8).view(dims)
    x = torch.randn(n, generator=g)
    if kind == "count":
        return torch.where(x > 0.3, x, 0.0).view(dims)
    return _specials(x, seed).view(dims)


@pytest.mark.parametrize("kind", rr.KINDS)
@pytest.mark.parametrize("dims", [(1, 1, 1, 300), (2, 9, 3, 37), (1, 70, 5, 1), (3, 40, 1, 1)])
def test_triton_combine_kinds(kind, dims):
    """Each kind's Triton helpers against the reference partials and finish, bit for bit, for two grids."""
    blocks = rr.make_blocks(dims, 100, rows_multiple=4)
    x = _kind_input(dims, kind, sum(dims))
    want = rr.reference_partials(x, blocks, kind)
    for grid in (1, 7):
        got = _triton_partials(x, blocks, kind, grid)
        pairs = zip(got, want) if kind == "minmax" else [(got, want)]
        for g, w in pairs:
            assert_bitwise_equal(g, w, what=f"{kind} partials, grid {grid}")
    if kind == "sum":
        assert_bitwise_equal(rr.finish_sum(got, 1, torch.float32), x.double().sum((1, 3)).float(), what="sum finish")
    elif kind == "count":
        assert torch.equal(rr.finish(got, 1, kind), (x != 0).sum((1, 3)))
    else:
        ref_x = x.abs() if kind == "absmax" else x
        lo = torch.amin(ref_x, (1, 3))
        hi = torch.amax(ref_x, (1, 3))
        fin = rr.finish(got, 1, kind)
        if kind == "absmax":
            assert_bitwise_equal(fin, hi, what="absmax finish")
        else:
            assert_bitwise_equal(fin[0], lo, what="min finish")
            assert_bitwise_equal(fin[1], hi, what="max finish")


def test_reference_partials_reject_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        rr.reference_partials(torch.zeros(1, 1, 1, 4), rr.make_blocks((1, 1, 1, 4), 4), "mean")


def test_reference_launcher_is_one_block():
    """The reference launcher forms each quantizer's sum as one block (P = 1), finished by the same finish."""
    dims = (1, 4, 3, 5)
    x, dy = _exact_sum_input(dims, 0)
    dx = torch.empty_like(x)
    ds, _ = lref.Launchers.backward(dy, x, dx, torch.ones(3), torch.zeros(3), *dims, -128, 127, 1.0, Flavour.Cpu,
                                    ZpRule.Torch, False, True, torch.float32, torch.float32)
    assert_bitwise_equal(ds, (dy.view(dims) * 127).double().sum((0, 1, 3)).float())
