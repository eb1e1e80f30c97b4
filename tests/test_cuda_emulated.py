"""The CUDA kernels and their torch glue (csrc/cuda/*.cu, csrc/ops/*_cuda.cpp) on any machine: run by the CPU
emulator of csrc/emu (built by tests/cuda_emulator.py) on CPU tensors, through the same launchers as on a GPU
(each family's launcher contract, qkernels/_launchers.py), against the reference launchers with the CUDA
flavour.

Outputs, masks, dx and the observer's state are compared bit for bit; the learnable qparam gradients (fp32
partial sums in an order of the CUDA launch) within 2x the error of a float32 torch.sum of the same values,
as on the device (conftest.assert_sums_close). The cases reach every kernel variant the launch code picks:
16-byte vectors and the element-wise path (unaligned pointers, odd sizes), channel qparams per vector and per
element, byte and packed masks, the learnable backward's run and row modes with and without vectors and over
several tiles, the observer's run and row modes, several parts, flags on and off; the index arithmetic both in
32 bits and in the 64 bits of tensors of 2^31 elements or more (a second build). Outputs are written inside
guard bytes, which must come back untouched, and inputs end at an inaccessible page: a write past an output or
a read past an input is a failure here, where on a GPU it may go unnoticed. What the emulator cannot show is
what only hardware does (timing, memory ordering between CTAs, launch limits of large grids): the GPU tests
cover that on a lent GPU.
"""

import ctypes
import math
import mmap

import pytest
import torch

import cuda_emulator
import qkernels.fake_quant_learnable as learnable
from conftest import assert_bitwise_equal, assert_sums_close, make_input
from qkernels._shared import _inner_stride
from qkernels.enums import Flavour, QParamsMode, ZpRule
from qkernels.reference import fake_quant as ref
from qkernels.reference import fake_quant_learnable as lref
from qkernels.reference import fused_observer as oref
from qkernels.reference.fake_quant import uses_fma

CUDA = Flavour.Cuda

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GUARD = 64  # bytes of guard on each side of an output


@pytest.fixture(scope="module")
def emu():
    return cuda_emulator.launchers


@pytest.fixture(scope="module", params=list(cuda_emulator.VARIANTS), ids=["index32", "index64"])
def emu_any_index(request):
    """The kernels with 32-bit index division (below 2^31 elements), and with 64-bit division everywhere (from
    2^31 elements on), for the kernels that divide indices: per channel, learnable, observer. (family ->
    launchers)"""
    return lambda family: cuda_emulator.launchers(family, request.param)


class Guarded:
    """Output buffers inside guard bytes (a recognizable pattern), checked after every launch."""

    def __init__(self):
        self.buffers = []

    def empty(self, shape, dtype, like=None, offset=0):
        """An output of `shape` (or like's layout) starting `offset` elements into its buffer."""
        like = like if like is not None else torch.empty(shape, dtype=dtype)
        n, size = like.numel(), torch.empty(0, dtype=dtype).element_size()
        raw = torch.full((2 * GUARD + (n + offset) * size,), 0xA5, dtype=torch.uint8)
        self.buffers.append((raw, GUARD + offset * size, GUARD + (n + offset) * size))
        flat = raw[GUARD:GUARD + (n + offset) * size].view(dtype)[offset:]
        return flat.as_strided(like.shape, like.stride()) if like.dim() else flat.view(())

    def check(self):
        for raw, start, end in self.buffers:
            assert bool((raw[:start] == 0xA5).all()) and bool((raw[end:] == 0xA5).all()), "write outside an output"


_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def fenced(x: torch.Tensor, misalign: int = 0) -> torch.Tensor:
    """A copy of x (values and dense layout) that ends just before an inaccessible page, so that reading past its
    last 16-byte chunk faults (kills the test) instead of reading whatever lies there; its first element is
    `misalign` elements past a 16-byte boundary (1: the kernels' element-wise path)."""
    size = x.element_size()
    nbytes = x.numel() * size
    pages = (nbytes + 16) // _PAGE + 2
    region = mmap.mmap(-1, pages * _PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    fence = base + (pages - 1) * _PAGE
    if _libc.mprotect(fence, _PAGE, 0) != 0:  # PROT_NONE
        raise OSError(ctypes.get_errno(), "mprotect failed")
    start = fence - nbytes
    start -= (start - misalign * size) % 16
    flat = torch.frombuffer(region, dtype=torch.uint8)[start - base:start - base + nbytes].view(x.dtype)
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))  # outermost first
    out = flat.view([x.shape[d] for d in order]).permute([order.index(d) for d in range(x.dim())])
    return out.copy_(x)


def masks_for(kind, x, guard, offset=0):
    if kind is None:
        return None, None
    if kind == "bool":
        return guard.empty(None, torch.bool, like=torch.empty_like(x, dtype=torch.bool), offset=offset), \
            torch.empty_like(x, dtype=torch.bool)
    n = (x.numel() + 7) // 8
    return guard.empty((n,), torch.uint8), torch.empty(n, dtype=torch.uint8)


# ------------------------------------------------------------------------------------------------------------
# Fake quantization: per tensor, per channel, backward
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qparams", ["scalar", "tensor", "tensor-disabled"])
@pytest.mark.parametrize("mask_kind", [None, "bool", "packed"])
@pytest.mark.parametrize("offset", [0, 1])
def test_per_tensor(emu, dtype, qparams, mask_kind, offset):
    guard = Guarded()
    x = fenced(make_input(1, (4099 * 3 + 5,), 0.02, 3, -128, 127, dtype, "cpu"), offset)
    if qparams == "scalar":
        s, z, enabled = 0.02, 3, None
    else:
        s, z = fenced(torch.tensor([0.02])), fenced(torch.tensor([3], dtype=torch.int32))
        enabled = fenced(torch.tensor([0 if qparams == "tensor-disabled" else 1], dtype=torch.int32))
    out, want = guard.empty(x.shape, dtype, offset=offset), torch.empty_like(x)
    mask, want_mask = masks_for(mask_kind, x, guard, offset)
    qparams = (s, z, None, None, None) if enabled is None else (0.0, 0, s, z, enabled)
    emu("fake_quant").per_tensor(x, out, mask, *qparams, -128, 127, CUDA)
    ref.Launchers.per_tensor(x, want, want_mask, *qparams, -128, 127, CUDA)
    guard.check()
    assert_bitwise_equal(out, want, what="out")
    if mask is not None:
        assert torch.equal(mask, want_mask), "mask"


# (shape, axis, channels_last): inner a multiple of every vector width, of none, 1 (last axis), and a
# channels-last activation on its channel axis.
CHANNEL_CASES = [((6, 4000), 0, False), ((4, 6, 9), 1, False), ((5, 33), 1, False), ((3, 8, 16), -2, False),
                 ((2, 8, 5, 3), 1, True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zp_dtype", [torch.int32, torch.float32])
@pytest.mark.parametrize("case", CHANNEL_CASES, ids=[f"{c[0]}-{c[1]}{'-cl' if c[2] else ''}" for c in CHANNEL_CASES])
@pytest.mark.parametrize("mask_kind,offset", [(None, 0), ("bool", 0), ("packed", 0), ("bool", 1), ("packed", 1)])
def test_per_channel(emu_any_index, dtype, zp_dtype, case, mask_kind, offset):
    shape, axis, channels_last = case
    guard = Guarded()
    x = make_input(2, shape, 0.05, 0, -128, 127, dtype, "cpu")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x = fenced(x, offset)
    C = shape[axis]
    g = torch.Generator().manual_seed(3)
    s = fenced(torch.rand(C, generator=g) * 0.1 + 0.01)
    z = torch.randint(-20, 20, (C,), generator=g).to(zp_dtype)
    z = fenced(z + torch.rand(C, generator=g) if zp_dtype == torch.float32 else z)
    out, want = guard.empty(None, dtype, like=torch.empty_like(x), offset=offset), torch.empty_like(x)
    mask, want_mask = masks_for(mask_kind, x, guard, offset)
    fma = uses_fma("cuda", z.dtype)
    emu_any_index("fake_quant").per_channel(x, out, mask, s, z, _inner_stride(x, axis), -128, 127, CUDA, fma)
    ref.Launchers.per_channel(x, want, want_mask, s, z, _inner_stride(x, axis), -128, 127, CUDA, fma)
    guard.check()
    assert_bitwise_equal(out, want, what="out")
    if mask is not None:
        assert torch.equal(mask, want_mask), "mask"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["bool", "packed"])
@pytest.mark.parametrize("offset", [0, 1])
def test_backward(emu, dtype, mask_kind, offset):
    guard = Guarded()
    n = 4099 * 2 + 3
    g = torch.Generator().manual_seed(4)
    grad = (torch.randn(n, generator=g) * 3).to(dtype)
    grad[::97] = math.nan
    grad[1::89] = -0.0
    grad = fenced(grad, offset)
    keep = torch.rand(n, generator=g) < 0.7
    mask = fenced(keep if mask_kind == "bool" else ref.pack_bits(keep))
    out, want = guard.empty((n,), dtype, offset=offset), torch.empty_like(grad)
    emu("fake_quant").backward(grad, mask, out)
    ref.Launchers.backward(grad, mask, want)
    guard.check()
    assert_bitwise_equal(out, want, what="dx")


# ------------------------------------------------------------------------------------------------------------
# Learnable fake quantization
# ------------------------------------------------------------------------------------------------------------
# (shape, axis, group_size): per tensor (one item, several items, odd length); per channel on a leading axis
# (runs with and without whole vectors), a middle axis, and the last axis (row mode: vector columns, odd
# columns, more column slots than threads); per group along the last and a leading axis.
LEARNABLE_CASES = [((70001,), None, None), ((64, 512), None, None), ((6, 1000), 0, None), ((5, 999), 0, None),
                   ((3, 4, 50), 1, None), ((300, 24), 1, None), ((200, 13), 1, None), ((40, 600), 1, None),
                   ((12, 96), 1, 32), ((64, 10), 0, 16)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LEARNABLE_CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in LEARNABLE_CASES])
@pytest.mark.parametrize("rounding", ["torch", "consistent"])
def test_learnable(emu_any_index, dtype, case, rounding):
    shape, axis, group_size = case
    qmin, qmax, gf = -8, 7, 0.37
    guard = Guarded()
    x = make_input(5, shape, 0.1, 0, qmin, qmax, dtype, "cpu")
    x, _, dims = learnable._layout(x, axis, group_size)
    x = fenced(x)
    B, O, C, I = dims
    g = torch.Generator().manual_seed(6)
    s = fenced(torch.rand(B * C, generator=g) * 0.2 + 0.02)
    z = fenced(torch.randint(qmin, qmax + 1, (B * C,), generator=g).float() +
               torch.tensor([0.0, 0.5, 0.25, -0.5]).repeat(B * C)[: B * C])
    per_tensor = axis is None
    rule = learnable._rule(axis, rounding)
    fma = uses_fma("cuda", torch.float32)

    out, want = guard.empty(None, dtype, like=torch.empty_like(x)), torch.empty_like(x)
    emu_any_index("fake_quant_learnable").forward(x, out, s, z, *dims, qmin, qmax, CUDA, per_tensor)
    lref.Launchers.forward(x, want, s, z, *dims, qmin, qmax, CUDA, per_tensor)
    guard.check()
    assert_bitwise_equal(out, want, what="forward")

    dy = make_input(7, shape, 1.0, 0, -4, 4, dtype, "cpu", specials=False)
    dy = fenced(dy.reshape(x.shape))
    qgrads = None
    for need in (True, False):
        dx, want_dx = guard.empty(None, dtype, like=torch.empty_like(x)), torch.empty_like(x)
        grads = emu_any_index("fake_quant_learnable").backward(dy, x, dx, s, z, *dims, qmin, qmax, gf, CUDA, rule,
                                                                fma, need, torch.float32, torch.float32)
        lref.Launchers.backward(dy, x, want_dx, s, z, *dims, qmin, qmax, gf, CUDA, rule, fma, need, torch.float32,
                                torch.float32)
        guard.check()
        assert_bitwise_equal(dx, want_dx, what=f"dx (qparam grads: {need})")
        assert all(g.numel() == (B * C if need else 0) for g in grads)
        qgrads = grads if need else qgrads
    views = [ref.storage_view(t).view(dims).float() for t in (dy, x)]  # the kernels' float32 math
    _, ds, dz = lref.backward_elements_broadcast(
        *views, s.view(B, 1, C, 1), z.view(B, 1, C, 1), qmin, qmax, gf, per_tensor=rule == ZpRule.TorchPerTensor,
        zero_point_rounding=rounding, flavour="cuda", use_fma=fma)
    per_quantizer = lambda v: v.sum((1, 3)).reshape(-1)  # noqa: E731  [B, O, C, I] -> [B * C]
    assert_sums_close(qgrads[0], ds, per_quantizer, "dscale")
    assert_sums_close(qgrads[1], dz, per_quantizer, "dzero_point")


# ------------------------------------------------------------------------------------------------------------
# Fused moving-average observer
# ------------------------------------------------------------------------------------------------------------
# (shape, ch_axis or None per tensor, channels_last): per tensor with vectors and several parts, and an odd
# length (elements after the last vector); run mode with vectors and without; row mode (channels-last on the
# channel axis, or the last axis) with vector columns, odd columns and several parts.
OBSERVER_CASES = [((70001,), None, False), ((4, 6, 5), None, False), ((6, 4000), 0, False), ((4, 6, 9), 1, False),
                  ((2, 8, 5, 3), 1, True), ((1000, 24), 1, False), ((700, 13), -1, False), ((3, 8, 16), -2, False)]
STEPS = [(1, 1), (1, 0), (0, 1), (1, 1), (0, 0), (1, 1)]  # (observer_on, fake_quant_on)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", OBSERVER_CASES,
                         ids=[f"{c[0]}-{c[1]}{'-cl' if c[2] else ''}" for c in OBSERVER_CASES])
@pytest.mark.parametrize("mode,symmetric", [(m, s) for m in QParamsMode for s in (False, True)])
def test_fused_observer(emu_any_index, dtype, case, mode, symmetric):
    shape, ch_axis, channels_last = case
    C = 1 if ch_axis is None else shape[ch_axis]
    states = []
    for _ in range(2):
        states.append([torch.full((C,), math.inf), torch.full((C,), -math.inf), torch.ones(C),
                       torch.zeros(C, dtype=torch.int64)])
    for step, (observe, fake_quant) in enumerate(STEPS):
        g = torch.Generator().manual_seed(10 + step)
        x = (torch.randn(shape, generator=g) * (step + 1) + 0.3).to(dtype)
        if step == 3:
            x.view(-1)[5] = math.inf
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        x = fenced(x)
        inner = x.numel() if ch_axis is None else _inner_stride(x, ch_axis % x.dim())
        flags = fenced(torch.tensor([observe])), fenced(torch.tensor([fake_quant], dtype=torch.uint8))
        for launchers, state in zip((emu_any_index("fused_observer"), oref.Launchers), states):
            launchers.update(x, *flags, *state, 0.01, -128, 127, inner, symmetric, mode, 1e-5, 0, CUDA)
        for name, a, b in zip(("running_min", "running_max", "scale", "zero_point"), *states):
            assert_bitwise_equal(a, b, what=f"step {step}: {name}")


def test_observer_finish_folds_more_parts_than_threads(emu):
    """A per-tensor step over 2^21 + 4099 float32 elements splits the min/max pass into 257 parts, more than the
    finish kernel's 256 threads, so its threads fold several partials each."""
    states = [[torch.full((1,), math.inf), torch.full((1,), -math.inf), torch.ones(1),
               torch.zeros(1, dtype=torch.int64)] for _ in range(2)]
    x = fenced(torch.randn(2**21 + 4099, generator=torch.Generator().manual_seed(12)))
    x[-1] = 7.5  # the extremes in the last part
    x[-2] = -6.25
    for launchers, state in zip((emu("fused_observer"), oref.Launchers), states):
        launchers.update(x, torch.tensor([1]), torch.tensor([1]), *state, 1.0, -128, 127, x.numel(), False,
                         QParamsMode.Fused, 1e-5, 0, CUDA)
    assert states[0][0].item() == -6.25 and states[0][1].item() == 7.5
    for name, a, b in zip(("running_min", "running_max", "scale", "zero_point"), *states):
        assert_bitwise_equal(a, b, what=name)


def test_observer_propagates_nan(emu):
    x = torch.randn(5, 4000)
    x[3, 17] = math.nan
    states = [[torch.full((5,), math.inf), torch.full((5,), -math.inf), torch.ones(5),
               torch.zeros(5, dtype=torch.int32)] for _ in range(2)]
    for launchers, state in zip((emu("fused_observer"), oref.Launchers), states):
        launchers.update(x, torch.tensor([1]), torch.tensor([1]), *state, 0.01, 0, 255, 4000, False,
                         QParamsMode.Fused, 1e-5, 0, CUDA)
    assert math.isnan(states[0][0][3]) and math.isnan(states[0][1][3])
    for name, a, b in zip(("running_min", "running_max", "scale", "zero_point"), *states):
        assert_bitwise_equal(a, b, what=name)


# ------------------------------------------------------------------------------------------------------------
# The emulator's own 16-bit conversions (csrc/emu/include/cuda_fp16.h) against torch's
# ------------------------------------------------------------------------------------------------------------
_CONVERSIONS = r"""
#include "cuda_fp16.h"
#define EACH for (long i = 0; i < n; ++i)
extern "C" void h2f(const uint16_t* in, float* out, long n) { EACH out[i] = __half2float({in[i]}); }
extern "C" void b2f(const uint16_t* in, float* out, long n) { EACH out[i] = __bfloat162float({in[i]}); }
extern "C" void f2h(const float* in, uint16_t* out, long n) { EACH out[i] = __float2half_rn(in[i]).bits; }
extern "C" void f2b(const float* in, uint16_t* out, long n) { EACH out[i] = __float2bfloat16_rn(in[i]).bits; }
"""


def test_emulator_16_bit_conversions_match_torch(tmp_path):
    """Every half and bfloat16 widened exactly; floats (random bit patterns, every half and bfloat16 value, their
    neighbours and the exact midpoints between halves) narrowed as torch narrows them, NaN to NaN."""
    import ctypes
    import subprocess

    (tmp_path / "conversions.cpp").write_text(_CONVERSIONS)
    subprocess.run(cuda_emulator._compiler() + cuda_emulator.CXX_FLAGS + [
        "-shared", "-I", str(cuda_emulator.CSRC / "emu" / "include"), str(tmp_path / "conversions.cpp"),
        "-o", str(tmp_path / "conversions.so")], check=True)
    lib = ctypes.CDLL(str(tmp_path / "conversions.so"))

    def call(fn, a, b):
        fn(ctypes.c_void_p(a.data_ptr()), ctypes.c_void_p(b.data_ptr()), ctypes.c_long(a.numel()))

    every = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    for widen, dtype in ((lib.h2f, torch.float16), (lib.b2f, torch.bfloat16)):
        out = torch.empty(65536)
        call(widen, every, out)
        assert_bitwise_equal(out, every.view(dtype).float(), what=f"{dtype} -> float32")
    halves, inf = every.view(torch.float16).float(), torch.tensor(math.inf)
    midpoints = ((halves.double()[:-1] + halves.double()[1:]) / 2).float()
    random_bits = torch.randint(-2**31, 2**31, (1 << 20,), generator=torch.Generator().manual_seed(0))
    f = torch.cat([random_bits.to(torch.int32).view(torch.float32), halves, halves.nextafter(inf),
                   halves.nextafter(-inf), midpoints, every.view(torch.bfloat16).float()])
    for narrow, dtype in ((lib.f2h, torch.float16), (lib.f2b, torch.bfloat16)):
        out = torch.empty(f.numel(), dtype=torch.int16)
        call(narrow, f, out)
        assert_bitwise_equal(out.view(dtype), f.to(dtype), what=f"float32 -> {dtype}")
