"""Learnable (LSQ) fake quantization: every backend against the reference and against aten.

Bit-exact: the forward output and dx (float32 against aten on the backend's own device flavour; every dtype
against the reference). dscale/dzero_point are sums, formed in another order than aten's: they must be
within twice the error of a float32 ``torch.sum`` of the same per-element values (measured against the
float64 sum, relative to the sums' magnitudes: conftest.assert_sums_close), and never need to beat one float32
ulp of the exact result (any float32 result may be half an ulp off).

opcheck, torch.compile against eager and the bad inputs: tests/test_contract.py on
tests/samples_fake_quant_learnable.py.
"""

import importlib
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cuda_emulator
import qkernels
from qkernels import _shared
from qkernels.enums import Flavour, ZpRule
from qkernels.reference.fake_quant import uses_fma
from qkernels.reference import fake_quant_learnable as lref

from conftest import (DEVICES, KERNEL_DTYPES, assert_bitwise_equal, assert_sums_close, backends_for, flavour_of,
                      interpreted, make_input)

CASES = [(dev, be) for dev in DEVICES for be in backends_for(dev)]
RANGES = [(-128, 127), (0, 255), (-8, 7), (0, 15), (-1, 0), (-32768, 32767)]
ODD_ZERO_POINTS = [2.5, -0.6, -3.7, 0.5, 1.5, -2.5, 0.49999997, 7.0]


def ulp_for(backend, device, dtype):
    """bfloat16 under the Triton interpreter: truncating narrowing (README, "Numerics contract")."""
    return 1 if interpreted(backend, device) and dtype == torch.bfloat16 else 0


def aten_matches(backend, device):
    return flavour_of(backend, device) == ("cuda" if device == "cuda" else "cpu")


def learnable(x, scale, zp, axis, group_size, qmin, qmax, gf, rounding="torch"):
    if axis is None:
        return qkernels.fake_quantize_learnable_per_tensor_affine(x, scale, zp, qmin, qmax, gf,
                                                                  zero_point_rounding=rounding)
    if group_size is None:
        return qkernels.fake_quantize_learnable_per_channel_affine(x, scale, zp, axis, qmin, qmax, gf,
                                                                   zero_point_rounding=rounding)
    return qkernels.fake_quantize_learnable_per_group_affine(x, scale, zp, axis, group_size, qmin, qmax, gf,
                                                             zero_point_rounding=rounding)


def forward_backward(backend, x, scale, zp, dy, axis, group_size, qmin, qmax, gf, rounding="torch"):
    xs, ss, zs = (t.detach().clone().requires_grad_() for t in (x, scale, zp))
    with qkernels.use_backend(backend):
        y = learnable(xs, ss, zs, axis, group_size, qmin, qmax, gf, rounding)
        y.backward(dy)
    return y.detach(), xs.grad, ss.grad, zs.grad


def assert_sum_close(actual, elements, axis, group_size, what):
    """actual (a qparam grad) vs the per-element values: within twice torch's summation error (see top)."""
    assert_sums_close(actual, elements, lambda v: lref.reduce_to_qparam(v, axis, group_size, actual.shape), what)


def qparams(shape, qmin, qmax, seed, device, scale_lo=0.01):
    g = torch.Generator().manual_seed(seed)
    scale = (torch.rand(shape, generator=g) * 0.5 + scale_lo).to(device)
    picks = torch.tensor(ODD_ZERO_POINTS)[torch.randint(0, len(ODD_ZERO_POINTS), shape, generator=g)]
    zp = (picks + torch.randint(qmin, qmax + 1, shape, generator=g) * (qmin < 0)).clamp(qmin - 1, qmax + 1)
    return scale, zp.to(device)


def inputs(seed, shape, scale, zp, axis, group_size, qmin, qmax, dtype, device):
    """x with ties, boundaries, NaN/inf, laid out around each quantizer's own grid; dy random."""
    z_mid = int(round(float(zp.float().mean().clamp(qmin, qmax))))
    u = make_input(seed, shape, 1.0, z_mid, qmin, qmax, torch.float64, "cpu")
    s = lref.broadcast_qparam(scale.cpu().double(), u, axis, group_size)
    x = (u * s).to(dtype).to(device)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype).to(device)
    return x, dy


def check_against_reference(backend, device, x, scale, zp, dy, axis, group_size, qmin, qmax, gf, rounding):
    flavour = flavour_of(backend, device)
    y, dx, ds, dz = forward_backward(backend, x, scale, zp, dy, axis, group_size, qmin, qmax, gf, rounding)
    ry = lref.learnable_forward(x.float(), scale, zp, qmin, qmax, axis=axis, group_size=group_size, flavour=flavour)
    rdx, rds, rdz = lref.learnable_backward_elements(dy.float(), x.float(), scale, zp, qmin, qmax, gf, axis=axis,
                                                     group_size=group_size, zero_point_rounding=rounding,
                                                     flavour=flavour)
    ulp = ulp_for(backend, device, x.dtype)
    assert_bitwise_equal(y, ry.to(x.dtype), ulp=ulp, what="output vs reference")
    assert_bitwise_equal(dx, rdx.to(x.dtype), what="dx vs reference")
    assert_sum_close(ds, rds, axis, group_size, "dscale vs reference")
    assert_sum_close(dz, rdz, axis, group_size, "dzero_point vs reference")
    return y, dx, ds, dz, rds, rdz


GRANULARITIES = st.sampled_from(["tensor", "channel", "group"])


@pytest.mark.parametrize("device,backend", CASES)
@given(data=st.data())
def test_random_against_reference(device, backend, data):
    dtype = data.draw(st.sampled_from(KERNEL_DTYPES))
    qmin, qmax = data.draw(st.sampled_from(RANGES))
    kind = data.draw(GRANULARITIES)
    shape = data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=4))
    axis = group_size = None
    if kind != "tensor":
        axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    if kind == "group":
        group_size = data.draw(st.sampled_from([d for d in range(1, shape[axis] + 1) if shape[axis] % d == 0]))
    qshape = lref.qparam_shape(shape, axis, group_size)
    scale, zp = qparams(qshape, qmin, qmax, data.draw(st.integers(0, 2**31)), device)
    x, dy = inputs(data.draw(st.integers(0, 2**31)), shape, scale, zp, axis, group_size, qmin, qmax, dtype, device)
    gf = data.draw(st.sampled_from([1.0, 0.5, 0.0123]))
    rounding = data.draw(st.sampled_from(lref.ZERO_POINT_ROUNDINGS))
    check_against_reference(backend, device, x, scale, zp, dy, axis, group_size, qmin, qmax, gf, rounding)


# Triton implements aten-CUDA's rules also on CPU tensors: there it is covered against the reference only.
@pytest.mark.parametrize("device,backend", [(d, b) for d, b in CASES if aten_matches(b, d)])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1])
@pytest.mark.parametrize("zero_point", ODD_ZERO_POINTS)
def test_against_aten_float32(device, backend, axis, zero_point):
    """Forward and dx bit-exact, dscale/dzero_point within 2x torch's summation error, on the device flavour."""
    qmin, qmax = -128, 127
    shape = (6, 5, 7)
    qshape = (1,) if axis is None else (shape[axis],)
    scale, _ = qparams(qshape, qmin, qmax, 3, device)
    zp = torch.full(qshape, zero_point, device=device)
    x, dy = inputs(11, shape, scale, zp, axis, None, qmin, qmax, torch.float32, device)
    y, dx, ds, dz, rds, rdz = check_against_reference(backend, device, x, scale, zp, dy, axis, None, qmin, qmax,
                                                      0.37, "torch")
    xa, sa, za = (t.detach().clone().requires_grad_() for t in (x, scale, zp))
    if axis is None:
        ya = torch._fake_quantize_learnable_per_tensor_affine(xa, sa, za, qmin, qmax, 0.37)
    else:
        # (aten takes no negative axis)
        ya = torch._fake_quantize_learnable_per_channel_affine(xa, sa, za, axis % 3, qmin, qmax, 0.37)
    ya.backward(dy)
    assert_bitwise_equal(y, ya.detach(), what="output vs aten")
    assert_bitwise_equal(dx, xa.grad, what="dx vs aten")
    # The reference's per-element values are aten's: aten's own sums pass the same bound.
    assert_sum_close(sa.grad, rds, axis, None, "aten dscale vs reference elements")
    assert_sum_close(za.grad, rdz, axis, None, "aten dzero_point vs reference elements")


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_against_float32_reference(device, backend, dtype):
    """fp16/bf16 inputs: the float32 math on the widened values, y narrowed once (torch rejects fp16)."""
    scale, zp = qparams((8,), -8, 7, 5, device)
    x, dy = inputs(5, (8, 33), scale, zp, 0, None, -8, 7, dtype, device)
    y, dx, ds, dz = forward_backward(backend, x, scale, zp, dy, 0, None, -8, 7, 1.0)
    flavour = flavour_of(backend, device)
    ry = lref.learnable_forward(x.float(), scale, zp, -8, 7, axis=0, flavour=flavour)
    rdx, rds, rdz = lref.learnable_backward_elements(dy.float(), x.float(), scale, zp, -8, 7, axis=0,
                                                     flavour=flavour)
    assert y.dtype == dtype and dx.dtype == dtype and ds.dtype == torch.float32
    assert_bitwise_equal(y, ry.to(dtype), ulp=ulp_for(backend, device, dtype), what="output")
    assert_bitwise_equal(dx, rdx.to(dtype), what="dx")
    assert_sum_close(ds, rds, 0, None, "dscale")
    assert_sum_close(dz, rdz, 0, None, "dzero_point")


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("scale_dtype,zp_dtype", [(torch.float64, torch.float64), (torch.float16, torch.int32),
                                                  (torch.bfloat16, torch.float32)])
def test_qparam_grads_take_the_qparams_dtypes(device, backend, scale_dtype, zp_dtype):
    """dscale has scale's dtype and dzero_point zero_point's (an integer zero point gets none): the float32
    partials' float64 sum rounded once to that dtype, i.e. the float32-qparams gradient up to that rounding
    (tolerance: one ulp of the gradient's dtype; float64 gets the float32 gradient's own rounding)."""
    scale, zp = qparams((8,), -8, 7, 5, device)
    x, dy = inputs(5, (8, 33), scale, zp, 0, None, -8, 7, torch.float32, device)
    s, z = scale.to(scale_dtype), zp.round().to(zp_dtype)
    _, _, ds32, dz32 = forward_backward(backend, x, s.float(), z.float(), dy, 0, None, -8, 7, 1.0)
    y, dx, ds, dz = forward_backward(backend, x, s, z, dy, 0, None, -8, 7, 1.0) if zp_dtype.is_floating_point else (
        _with_integer_zero_point(backend, x, s, z, dy))
    assert ds.dtype == scale_dtype and (dz is None or dz.dtype == zp_dtype)
    rtol = {torch.float64: 2 ** -23, torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}[scale_dtype]
    torch.testing.assert_close(ds.double(), ds32.double(), rtol=rtol, atol=0)
    if dz is not None:
        torch.testing.assert_close(dz.double(), dz32.double(), rtol=2 ** -23, atol=0)


def _with_integer_zero_point(backend, x, s, z, dy):
    """An integer zero point cannot require grad: only x and scale get gradients."""
    xs, ss = x.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    with qkernels.use_backend(backend):
        y = learnable(xs, ss, z, 0, None, -8, 7, 1.0, "torch")
        y.backward(dy)
    return y.detach(), xs.grad, ss.grad, None


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in CASES if b in ("cpu", "cuda")])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, False),
                                   (False, False, True), (False, True, True)], ids=str)
def test_eager_backward_runs_in_cpp_on_native_backends(device, backend, needs, monkeypatch):
    """Plain eager calls on the cpu/cuda backends get a C++ autograd node (no call back into Python in
    backward) that gives the Python autograd path's gradients bit for bit, for any subset of inputs that
    need a gradient and an incoming gradient of another layout."""
    from qkernels import fake_quant_learnable as learnable_module

    calls = []
    python_backward = learnable_module._backward_checked
    monkeypatch.setattr(learnable_module, "_backward_checked", lambda *a: calls.append(1) or python_backward(*a))
    scale, zp = qparams((8,), -8, 7, 5, device)
    x, dy = inputs(5, (8, 33), scale, zp, 0, None, -8, 7, torch.float32, device)
    dy = dy.t().contiguous().t()

    def run():
        xs, ss, zs = (t.detach().clone().requires_grad_(n) for t, n in zip((x, scale, zp), needs))
        with qkernels.use_backend(backend):
            y = learnable(xs, ss, zs, 0, None, -8, 7, 0.5)
            y.backward(dy)
        return y.detach(), xs.grad, ss.grad, zs.grad

    fast = run()
    assert not calls
    monkeypatch.delattr(learnable_module.LAUNCHERS.native(device), "forward_eager")
    monkeypatch.setattr(_shared, "_entry", None)  # (the C++ entry point calls the same eager op)
    slow = run()
    assert calls
    for a, b, what in zip(fast, slow, ("y", "dx", "dscale", "dzero_point")):
        assert (a is None) == (b is None), what
        if a is not None:
            assert_bitwise_equal(a, b, what=what)


# ------------------------------------------------------------------------------------------------------
# the C++ entry point (qkernels._C, csrc/ops/python_entry.cpp): valid plain eager calls, else None
# ------------------------------------------------------------------------------------------------------
needs_entry = pytest.mark.skipif(_shared._entry is None, reason="qkernels._C is not built")


def _entry(x, scale, zp, axis=None, group_size=None, qmin=-8, qmax=7, gf=0.5, rounding="torch", backend=None):
    return _shared._entry.fake_quantize_learnable(x, scale, zp, axis, group_size, qmin, qmax, gf, rounding, backend)


@needs_entry
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("granularity", [(None, None), (-1, None), (1, 3)], ids=["tensor", "channel", "group"])
@pytest.mark.parametrize("rounding", lref.ZERO_POINT_ROUNDINGS)
def test_entry_equals_the_python_path(device, granularity, rounding, monkeypatch):
    """Through the entry and through the Python path (checks, then the same eager op): the same outputs and
    gradients, bit for bit, for nn.Parameter qparams (as modules hold them) and a transposed x."""
    assert qkernels.backends.availability(device, device) is None  # (the native library the entry calls is loaded)
    axis, group_size = granularity
    shape = (1,) if axis is None else (5,) if group_size is None else (4, 2, 5)
    scale, zp = qparams(shape, -8, 7, 3, device)
    x, dy = inputs(9, (4, 6, 5), scale, zp, axis, group_size, -8, 7, torch.float32, device)
    x = x.transpose(0, 2).contiguous().transpose(0, 2)

    def run(entry):
        xs = x.clone().requires_grad_()
        ss, zs = torch.nn.Parameter(scale.clone()), torch.nn.Parameter(zp.clone())
        y = entry(xs, ss, zs)
        y.backward(dy)
        return y.detach(), xs.grad, ss.grad, zs.grad

    fast = run(lambda *a: _entry(*a, axis, group_size, rounding=rounding))
    monkeypatch.setattr(_shared, "_entry", None)
    slow = run(lambda *a: learnable(*a, axis, group_size, -8, 7, 0.5, rounding))
    for a, b, what in zip(fast, slow, ("y", "dx", "dscale", "dzero_point")):
        assert_bitwise_equal(a, b, what=what)
    with torch.no_grad():
        monkeypatch.undo()
        assert _entry(x, scale, zp, axis, group_size, rounding=rounding).grad_fn is None


class _Subclass(torch.Tensor):
    pass


def _learnable_entry_fallbacks():
    """(what, call of the entry that must return None) for every call learnable.py would reject or leave to
    another backend or path."""
    x = torch.randn(4, 6)
    one, s6, z6 = torch.ones(1), torch.ones(6), torch.zeros(6)
    return [
        ("empty input", lambda: _entry(x[:0], one, one * 0)),
        ("float64 input", lambda: _entry(x.double(), one, one * 0)),
        ("meta input", lambda: _entry(x.to("meta"), one.to("meta"), one.to("meta") * 0)),
        ("reference backend", lambda: _entry(x, one, one * 0, backend="reference")),
        ("tensor subclass scale", lambda: _entry(x, one.as_subclass(_Subclass), one * 0)),
        ("integer scale", lambda: _entry(x, one.int(), one * 0)),
        ("bool zero point", lambda: _entry(x, one, one.bool())),
        ("complex zero point", lambda: _entry(x, one, one.to(torch.complex64))),
        ("shape mismatch", lambda: _entry(x, one, torch.zeros(1, 1))),
        ("two-element per-tensor scale", lambda: _entry(x, torch.ones(2), torch.zeros(2))),
        ("scale on another device", lambda: _entry(x, torch.ones(1, device="meta"), torch.zeros(1, device="meta"))),
        ("zero scale", lambda: _entry(x, one * 0, one * 0)),
        ("NaN scale", lambda: _entry(x, one * math.nan, one * 0)),
        ("range without 0", lambda: _entry(x, one, one * 0, qmin=1, qmax=7)),
        ("quant_min > quant_max", lambda: _entry(x, one, one * 0, qmin=7, qmax=-8)),
        ("bounds beyond 2^22", lambda: _entry(x, one, one * 0, qmin=-(2**23))),
        ("infinite grad_factor", lambda: _entry(x, one, one * 0, gf=math.inf)),
        ("unknown rounding", lambda: _entry(x, one, one * 0, rounding="nearest")),
        ("per tensor with a group size", lambda: _entry(x, one, one * 0, None, 2)),
        ("per channel: 0-D input", lambda: _entry(x[0, 0], one, one * 0, 0)),
        ("per channel: axis too large", lambda: _entry(x, s6, z6, 2)),
        ("per channel: axis too small", lambda: _entry(x, s6, z6, -3)),
        ("per channel: channel count", lambda: _entry(x, s6, z6, 0)),
        ("per channel: 2-D qparams", lambda: _entry(x, s6[None], z6[None], 1)),
        ("per channel: str axis", lambda: _entry(x, s6, z6, "1")),
        ("per group: size not dividing", lambda: _entry(x, torch.ones(4, 1), torch.zeros(4, 1), 1, 4)),
        ("per group: zero size", lambda: _entry(x, torch.ones(4, 1), torch.zeros(4, 1), 1, 0)),
        ("per group: wrong qparam shape", lambda: _entry(x, torch.ones(4, 2), torch.zeros(4, 2), 1, 2)),
        ("per group: flat qparams", lambda: _entry(x, torch.ones(12), torch.zeros(12), 1, 2)),
    ]


@needs_entry
@pytest.mark.parametrize("what,call", _learnable_entry_fallbacks(), ids=[w for w, _ in _learnable_entry_fallbacks()])
def test_entry_leaves_other_calls_to_python(what, call):
    assert call() is None


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_public_functions_equal_the_registered_op(device, backend, dtype):
    """The public functions' eager path (on cpu/cuda one C++ call: launch and autograd node) gives the registered
    op's outputs and gradients (its Python autograd), bit for bit: every layout (non-dense views of a leaf too),
    per tensor, per channel, per group, with and without grad, for each subset of inputs needing a gradient."""
    base = make_input(73, (2, 4, 6, 8), 0.1, 0, -8, 7, dtype, device)
    layouts = {"contiguous": lambda t: t, "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
               "transposed": lambda t: t.transpose(1, 3), "sliced": lambda t: t[:, :, ::2],
               "empty": lambda t: t[:, :, :0], "one_dim": lambda t: t[0, 0, 0]}
    for layout, view in layouts.items():
        x = view(base)
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(79)).to(device, dtype)
        kinds = [(None, None, ())]
        if x.dim() > 1:
            kinds += [(1, None, (x.size(1),)), (-1, None, (x.size(-1),)), (-1, 2, x.shape[:-1] + (x.size(-1) // 2,))]
        for axis, group_size, qshape in kinds:
            scale, zp = qparams(qshape, -8, 7, 83, device)
            args = (axis, group_size, -8, 7, 0.5, "torch")
            for needs in ((False, False, False), (True, True, True), (True, False, False), (False, True, True)):
                what = f"{layout}, axis={axis}, group_size={group_size}, needs={needs}"
                results = []
                registered = torch.ops.qkernels.fake_quantize_learnable
                for call in (lambda *t: learnable(*t, *args[:5]), lambda *t: registered(*t, *args)):
                    leaves = [t.detach().clone().requires_grad_(n) for t, n in zip((base, scale, zp), needs)]
                    xs = view(leaves[0])
                    with qkernels.use_backend(backend):
                        y = call(xs, leaves[1], leaves[2])
                        wrt = [t for t, n in zip((xs, leaves[1], leaves[2]), needs) if n]
                        grads = torch.autograd.grad(y, wrt, dy) if wrt else ()
                    results.append([y.detach()] + [g.contiguous() for g in grads])
                for a, b in zip(*results):
                    assert_bitwise_equal(a, b, what=what)


@pytest.mark.parametrize("device,backend", CASES)
def test_per_group_of_whole_rows_is_per_channel(device, backend):
    """Groups spanning a whole row of a 2-D tensor are per-channel quantizers along axis 0."""
    scale, zp = qparams((6,), -8, 7, 9, device)
    x, dy = inputs(9, (6, 40), scale, zp, 0, None, -8, 7, torch.float32, device)
    yg, dxg, dsg, dzg = forward_backward(backend, x, scale.view(6, 1), zp.view(6, 1), dy, 1, 40, -8, 7, 0.5)
    yc, dxc, dsc, dzc = forward_backward(backend, x, scale, zp, dy, 0, None, -8, 7, 0.5)
    assert_bitwise_equal(yg, yc)
    assert_bitwise_equal(dxg, dxc)
    assert_sum_close(dsg.view(6), lref.learnable_backward_elements(
        dy, x, scale, zp, -8, 7, 0.5, axis=0, flavour=flavour_of(backend, device))[1], 0, None, "dscale")


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("axis,group_size,shape", [(None, None, (3000, 7)), (0, None, (64, 301)),
                                                   (1, None, (301, 64)), (1, 32, (97, 128)), (0, 8, (64, 40))])
def test_qparam_grads_are_deterministic(device, backend, axis, group_size, shape):
    """Same bits on every run and (CPU) with any thread count: the reduction order is fixed by the shapes."""
    scale, zp = qparams(lref.qparam_shape(shape, axis, group_size), -128, 127, 1, device)
    x, dy = inputs(1, shape, scale, zp, axis, group_size, -128, 127, torch.float32, device)
    first = forward_backward(backend, x, scale, zp, dy, axis, group_size, -128, 127, 1.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        again = forward_backward(backend, x, scale, zp, dy, axis, group_size, -128, 127, 1.0)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first, again):
        assert_bitwise_equal(a, b)


@pytest.mark.skipif(qkernels.backends.availability("cpu", "cpu") is not None, reason="qkernels._C is not built")
@pytest.mark.parametrize("axis,shape", [(None, (3000, 70)), (0, (64, 3001)), (1, (3001, 64))],
                         ids=["per tensor", "per channel, runs", "per channel, rows"])
def test_cpu_qparam_grads_do_not_depend_on_the_thread_count(axis, shape):
    """Inputs large enough for the cpu backend to split the backward's work items across threads (each thread
    takes at least 2^15 elements' worth): the same bits with 1, 2 and 3 threads."""
    scale, zp = qparams(lref.qparam_shape(shape, axis, None), -128, 127, 2, "cpu")
    x, dy = inputs(2, shape, scale, zp, axis, None, -128, 127, torch.float32, "cpu")
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append(forward_backward("cpu", x, scale, zp, dy, axis, None, -128, 127, 1.0))
    finally:
        torch.set_num_threads(threads)
    for again in runs[1:]:
        for a, b in zip(runs[0], again):
            assert_bitwise_equal(a, b)


def _learnable_launchers():
    """(name, device, launchers getter, flavour) of every kernel backend, straight through its launchers, and of
    the CUDA kernels under the emulator (built when the test runs)."""
    out = [("cuda-emulated", "cpu", lambda: cuda_emulator.launchers("fake_quant_learnable"), "cuda")]
    for device in DEVICES:
        for backend in backends_for(device):
            if backend == "reference":
                continue
            get = ((lambda b=backend: qkernels.fake_quant_learnable.LAUNCHERS.native(b)) if backend in ("cpu", "cuda")
                   else (lambda: importlib.import_module("qkernels.triton_kernels.fake_quant_learnable")))
            flavours = ["cpu", "cuda"] if backend == "cpu" else [flavour_of(backend, device)]
            out += [(f"{backend}-{device}-{f}", device, get, f) for f in flavours]
    return out


@pytest.mark.parametrize("name,device,get_launchers,flavour", _learnable_launchers(),
                         ids=[c[0] for c in _learnable_launchers()])
@pytest.mark.parametrize("per_tensor", [True, False])
def test_unchecked_non_finite_zero_points(name, device, get_launchers, flavour, per_tensor):
    """Where zero-point values are not read (CUDA tensors), a NaN one reaches the kernels: they take it as
    quant_min, as the reference does; +-inf clamp to the range, as in torch."""
    C, I = (1, 4000) if per_tensor else (4, 1000)
    x = make_input(3, (C, I), 0.1, 0, -8, 7, torch.float32, device)
    dy = torch.randn(C, I, generator=torch.Generator().manual_seed(4)).to(device)
    dims = (1, 1, C, I)
    rule = ZpRule.TorchPerTensor if per_tensor else ZpRule.Torch
    for zp in ([math.nan], [math.inf], [-math.inf]) if per_tensor else ([math.nan, math.inf, -math.inf, 2.0],):
        s, z = torch.full((C,), 0.2, device=device), torch.tensor(zp, device=device)
        got, want = [], []
        for launchers, results in ((get_launchers(), got), (lref.Launchers, want)):
            out, dx = torch.empty_like(x), torch.empty_like(x)
            launchers.forward(x, out, s, z, *dims, -8, 7, Flavour.of(flavour), per_tensor)
            grads = launchers.backward(dy, x, dx, s, z, *dims, -8, 7, 0.5, Flavour.of(flavour), rule,
                                       uses_fma(flavour, torch.float32), True, torch.float32, torch.float32)
            results += [out, dx, *grads]
        for what, a, b in zip(("y", "dx"), got, want):
            assert_bitwise_equal(a, b, what=f"{what} for zero point {zp}")
        _, ds, dz = lref.backward_elements_broadcast(
            dy.view(1, 1, C, I), x.view(1, 1, C, I), s.view(1, 1, C, 1), z.view(1, 1, C, 1), -8, 7, 0.5,
            per_tensor=per_tensor, flavour=flavour, use_fma=uses_fma(flavour, torch.float32))
        for what, a, elements in (("dscale", got[2], ds), ("dzero_point", got[3], dz)):
            assert_sums_close(a, elements, lambda v: v.sum((0, 1, 3)), f"{what} for zero point {zp}")


@pytest.mark.parametrize("device,backend", CASES)
def test_zero_point_rounding_modes(device, backend):
    """torch: zp 2.5 is 2 forward and 3 backward (aten); consistent: dx's mask is the forward mask."""
    qmin, qmax, s = -8, 7, 0.25
    scale, zp = torch.tensor([s], device=device), torch.tensor([2.5], device=device)
    x = (torch.arange(-12.0, 6.0, 0.5, device=device) * s)  # every level and every tie around the range
    dy = torch.ones_like(x)
    _, dx_torch, _, _ = forward_backward(backend, x, scale, zp, dy, None, None, qmin, qmax, 1.0, "torch")
    _, dx_cons, _, _ = forward_backward(backend, x, scale, zp, dy, None, None, qmin, qmax, 1.0, "consistent")
    level = torch.round(x / s) + 2  # the forward pass's zero point is rne(2.5) = 2
    assert torch.equal(dx_cons, ((level >= qmin) & (level <= qmax)).float())
    assert not torch.equal(dx_torch, dx_cons)  # zb = 3 moves the backward range by one level


@pytest.mark.parametrize("device,backend", CASES)
def test_only_x_needs_grad(device, backend):
    scale, zp = qparams((5,), -128, 127, 2, device)
    x, dy = inputs(2, (5, 9), scale, zp, 0, None, -128, 127, torch.float32, device)
    xs = x.clone().requires_grad_()
    with qkernels.use_backend(backend):
        qkernels.fake_quantize_learnable_per_channel_affine(xs, scale, zp, 0, -128, 127).backward(dy)
        dx, ds, dz = torch.ops.qkernels.fake_quantize_learnable_backward(dy, x, scale, zp, 0, None, -128, 127, 1.0,
                                                                         "torch", False)
    _, full_dx, _, _ = forward_backward(backend, x, scale, zp, dy, 0, None, -128, 127, 1.0)
    assert_bitwise_equal(xs.grad, full_dx)
    assert_bitwise_equal(dx, full_dx)
    assert ds.numel() == 0 and dz.numel() == 0


@pytest.mark.parametrize("device,backend", CASES)
def test_layouts_and_edge_shapes(device, backend):
    """Channels-last and transposed inputs keep their layout; 1-D per-channel gives [C] grads (aten raises);
    empty inputs give zero grads (aten returns scale and zero_point themselves)."""
    scale, zp = qparams((4,), -8, 7, 4, device)
    base, dy = inputs(4, (3, 4, 5, 6), scale, zp, 1, None, -8, 7, torch.float32, device)
    for x in (base.to(memory_format=torch.channels_last), base.transpose(0, 3).contiguous().transpose(0, 3),
              base[:, :, ::2]):
        d = dy[:, :, ::2] if x.shape != base.shape else dy
        y, dx, ds, dz = forward_backward(backend, x, scale, zp, d, 1, None, -8, 7, 1.0)
        y0, dx0, ds0, dz0 = forward_backward(backend, x.contiguous(), scale, zp, d.contiguous(), 1, None, -8, 7, 1.0)
        assert torch.equal(y, y0) and torch.equal(dx, dx0)
        if x.shape == base.shape:
            assert y.stride() == x.stride()
        assert_sum_close(ds, lref.learnable_backward_elements(
            d, x, scale, zp, -8, 7, axis=1, flavour=flavour_of(backend, device))[1], 1, None, "dscale")
    x1 = base.flatten()[:4]
    _, _, ds1, dz1 = forward_backward(backend, x1, scale, zp, dy.flatten()[:4], 0, None, -8, 7, 1.0)
    assert ds1.shape == (4,) and dz1.shape == (4,)
    empty = torch.empty(0, 4, device=device)
    y, dx, ds, dz = forward_backward(backend, empty, scale, zp, empty, 1, None, -8, 7, 1.0)
    assert y.shape == (0, 4) and torch.equal(ds, torch.zeros_like(scale)) and torch.equal(dz, torch.zeros_like(zp))


def test_lsq_grad_factor():
    assert qkernels.lsq_grad_factor(1000, 127) == 1.0 / math.sqrt(127000)
    with pytest.raises(ValueError, match="numel > 0"):
        qkernels.lsq_grad_factor(0, 127)
