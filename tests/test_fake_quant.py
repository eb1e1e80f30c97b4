"""Fake-quant ops: every backend against the reference and against aten, bit for bit.

Tolerances: none, except bfloat16 under the Triton interpreter (1 ulp): the interpreter narrows float32 to
bfloat16 by truncation where the GPU rounds to nearest even (README, "Numerics contract").

opcheck, torch.compile against eager and the bad inputs: tests/test_contract.py on tests/samples_fake_quant.py.
"""

import importlib
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cuda_emulator
import qkernels
from qkernels import _shared, fake_quant
from qkernels.enums import Flavour
from qkernels.reference import fake_quant as ref

from conftest import (
    DEVICES,
    HAS_CUDA,
    KERNEL_DTYPES,
    assert_bitwise_equal,
    backends_for,
    flavour_of,
    interpreted,
    make_input,
    run,
)

ALL_DTYPES = KERNEL_DTYPES + [torch.float64]
RANGES = [(-128, 127), (0, 255), (-8, 7), (0, 15), (0, 1), (-32768, 32767), (0, 65535), (-1, 0)]
CASES = [(dev, be) for dev in DEVICES for be in backends_for(dev)]


def ulp_for(backend, device, dtype):
    return 1 if interpreted(backend, device) and dtype == torch.bfloat16 else 0


def dtypes_for(backend):
    return ALL_DTYPES if backend == "reference" else KERNEL_DTYPES


def check_against_aten(device, backend, flavours_differ_here=False):
    """Whether aten on this device computes what this backend computes. The cpu and cuda flavours differ
    only per channel (at NaN/inf/int64 overflow, and in the float-zero-point dequantization) and per tensor
    for zero points beyond 2^24; elsewhere an interpreted Triton run is also compared with aten CPU."""
    if flavour_of(backend, device) == ref.default_flavour(torch.empty(0, device=device)):
        return True
    return not flavours_differ_here


# ------------------------------------------------------------------------------------------------------
# per-tensor
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES)
@given(data=st.data())
def test_per_tensor_random(device, backend, data):
    dtype = data.draw(st.sampled_from(dtypes_for(backend)))
    qmin, qmax = data.draw(st.sampled_from(RANGES))
    zp = data.draw(st.integers(qmin, qmax))
    scale = data.draw(st.floats(0.0009765625, 20.0, width=32))
    shape = data.draw(st.lists(st.integers(1, 13), min_size=1, max_size=4))
    x = make_input(data.draw(st.integers(0, 2**31)), shape, scale, zp, qmin, qmax, dtype, device)
    y, m = run(backend, qkernels.fake_quantize_per_tensor_affine_cachemask, x, scale, zp, qmin, qmax)
    ry, rm = ref.fake_quant_per_tensor(x, scale, zp, qmin, qmax, flavour=flavour_of(backend, device))
    ulp = ulp_for(backend, device, dtype)
    assert_bitwise_equal(y, ry, ulp=ulp, what="output vs reference")
    assert_bitwise_equal(m, rm, what="mask vs reference")
    ay, am = torch.ops.aten.fake_quantize_per_tensor_affine_cachemask(x, scale, zp, qmin, qmax)
    assert_bitwise_equal(y, ay, ulp=ulp, what="output vs aten")
    assert_bitwise_equal(m, am, what="mask vs aten")


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("zp_dtype", [torch.int32, torch.int64, torch.float32])
@pytest.mark.parametrize("flag", [None, 1, 0, 0.5, 2])
def test_per_tensor_tensor_qparams(device, backend, zp_dtype, flag):
    dtype = torch.float32
    x = make_input(7, (33, 5), 0.05, 3, -128, 127, dtype, device)
    scale = torch.tensor([0.05], dtype=torch.float64, device=device)  # narrowed to float32, as aten does
    zp = torch.tensor([3.7 if zp_dtype.is_floating_point else 3], dtype=zp_dtype, device=device)  # 3.7 -> 3
    enabled = None if flag is None else torch.tensor([flag], device=device)
    y, m = run(backend, qkernels._fake_quantize_per_tensor_affine_cachemask_tensor_qparams, x, scale, zp,
               enabled, -128, 127)
    aten_flag = enabled if enabled is not None else torch.ones(1, dtype=torch.long, device=device)
    if device == "cuda":  # aten's CUDA kernel needs exactly these dtypes; its semantics are the same
        ay, am = torch._fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
            x, scale.float(), zp.trunc().int() if zp.is_floating_point() else zp.int(),
            aten_flag.trunc().long() if aten_flag.is_floating_point() else aten_flag.long(), -128, 127)
    else:
        ay, am = torch._fake_quantize_per_tensor_affine_cachemask_tensor_qparams(x, scale, zp, aten_flag, -128, 127)
    assert_bitwise_equal(y, ay, what="output vs aten")
    assert_bitwise_equal(m, am, what="mask vs aten")
    if flag == 0 or flag == 0.5:
        assert torch.equal(y, x) and bool(m.all())


@pytest.mark.parametrize("device,backend", CASES)
def test_per_tensor_wide_zero_point(device, backend):
    """Tensor qparams skip aten's zero-point range check; zero points beyond 2^24 dequantize differently
    on CPU (exact integer q - z) and CUDA (float subtraction)."""
    x = make_input(3, (4096,), 1.0, 0, -128, 127, torch.float32, device)
    for z in (2**25 + 1, -(2**24) - 3, 123):
        zp = torch.tensor([z], dtype=torch.int32, device=device)
        y, m = run(backend, qkernels._fake_quantize_per_tensor_affine_cachemask_tensor_qparams, x,
                   torch.ones(1, device=device), zp, None, -128, 127)
        ry, rm = ref.fake_quant_per_tensor(x, 1.0, zp, -128, 127, flavour=flavour_of(backend, device))
        assert_bitwise_equal(y, ry, what=f"z={z}")
        assert_bitwise_equal(m, rm, what=f"mask z={z}")
        if check_against_aten(device, backend, flavours_differ_here=True):
            ay, am = torch._fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
                x, torch.ones(1, device=device), zp, torch.ones(1, dtype=torch.long, device=device), -128, 127)
            assert_bitwise_equal(y, ay, what=f"aten z={z}")


# ------------------------------------------------------------------------------------------------------
# per-channel
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES)
@given(data=st.data())
def test_per_channel_random(device, backend, data):
    dtype = data.draw(st.sampled_from(dtypes_for(backend)))
    qmin, qmax = data.draw(st.sampled_from(RANGES))
    ndim = data.draw(st.integers(1, 4))
    shape = data.draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim))
    axis = data.draw(st.integers(-ndim, ndim - 1))
    C = shape[axis]
    zp_kind = data.draw(st.sampled_from(["int32", "float32", "float16", "float32_integral"]))
    specials = data.draw(st.booleans())
    seed = data.draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    scale = (torch.rand(C, generator=g) * 2 + 0.01).to(device)
    zp_int = torch.randint(qmin, qmax + 1, (C,), generator=g)
    zp = {"int32": zp_int.int(), "float32": zp_int.float() + torch.rand(C, generator=g) - 0.5,
          "float16": zp_int.half(), "float32_integral": zp_int.float()}[zp_kind].to(device)
    x = make_input(seed + 1, shape, 1.0, 0, qmin, qmax, dtype, device, specials)
    layout = data.draw(st.sampled_from(["contiguous", "channels_last", "transposed"]))
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed" and x.dim() >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    y, m = run(backend, qkernels.fake_quantize_per_channel_affine_cachemask, x, scale, zp, axis, qmin, qmax)
    ry, rm = ref.fake_quant_per_channel(x, scale, zp, axis, qmin, qmax, flavour=flavour_of(backend, device))
    ulp = ulp_for(backend, device, dtype)
    assert_bitwise_equal(y, ry, ulp=ulp, what="output vs reference")
    assert_bitwise_equal(m, rm, what="mask vs reference")
    if check_against_aten(device, backend, flavours_differ_here=specials or zp.is_floating_point()):
        ay, am = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(x, scale, zp, axis % x.dim(), qmin, qmax)
        assert_bitwise_equal(y, ay, ulp=ulp, what="output vs aten")
        assert_bitwise_equal(m, am, what="mask vs aten")


@pytest.mark.parametrize("device,backend", CASES)
def test_per_channel_bf16_scale(device, backend):
    """bf16 scales are widened exactly (aten CUDA accepts them; aten CPU trips an internal assert)."""
    x = make_input(5, (3, 100), 0.1, 0, -128, 127, torch.float32, device)
    s16 = torch.tensor([0.1, 0.25, 3.0], dtype=torch.bfloat16, device=device)
    zp = torch.tensor([0, 4, -7], dtype=torch.int32, device=device)
    y, m = run(backend, qkernels.fake_quantize_per_channel_affine_cachemask, x, s16, zp, 0, -128, 127)
    ry, rm = run(backend, qkernels.fake_quantize_per_channel_affine_cachemask, x, s16.float(), zp, 0, -128, 127)
    assert_bitwise_equal(y, ry)
    assert_bitwise_equal(m, rm)


# ------------------------------------------------------------------------------------------------------
# layouts, sizes, the CUDA math on the CPU kernel
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES)
def test_layouts_and_empty(device, backend):
    base = make_input(11, (2, 3, 5, 7), 0.1, 0, -128, 127, torch.float32, device)
    inputs = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "sliced": base[:, 1:, ::2],
        "transposed": base.transpose(1, 3),
        "empty": base[:, :0],
        "zero_dim": base[0, 0, 0, 0].clone(),
    }
    for name, x in inputs.items():
        y, m = run(backend, qkernels.fake_quantize_per_tensor_affine_cachemask, x, 0.1, 1, -128, 127)
        ay, am = torch.ops.aten.fake_quantize_per_tensor_affine_cachemask(x, 0.1, 1, -128, 127)
        assert_bitwise_equal(y, ay, what=name)
        assert_bitwise_equal(m, am, what=name)
        if x.dim():
            s = torch.rand(x.size(-1), device=device) + 0.05
            zp = torch.zeros(x.size(-1), dtype=torch.int32, device=device)
            y, m = run(backend, qkernels.fake_quantize_per_channel_affine_cachemask, x, s, zp, -1, -128, 127)
            ry, rm = ref.fake_quant_per_channel(x, s, zp, -1, -128, 127, flavour=flavour_of(backend, device))
            assert_bitwise_equal(y, ry, what=name)
            assert_bitwise_equal(m, rm, what=name)
            if check_against_aten(device, backend, flavours_differ_here=True):
                ay, am = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(x, s, zp, x.dim() - 1, -128, 127)
                assert_bitwise_equal(y, ay, what=name)
                assert_bitwise_equal(m, am, what=name)


@pytest.mark.parametrize("device,backend", CASES)
def test_unaligned_and_odd_sizes(device, backend):
    """Views that start mid-vector and lengths that end mid-vector take the element-wise paths."""
    big = make_input(13, (70001,), 0.02, -5, -128, 127, torch.float32, device)
    for start, length in [(1, 70000), (3, 1029), (0, 1), (7, 4099)]:
        x = big[start:start + length]
        y, m = run(backend, qkernels.fake_quantize_per_tensor_affine_cachemask, x, 0.02, -5, -128, 127)
        ay, am = torch.ops.aten.fake_quantize_per_tensor_affine_cachemask(x, 0.02, -5, -128, 127)
        assert_bitwise_equal(y, ay, what=f"{start}+{length}")
        assert_bitwise_equal(m, am, what=f"{start}+{length}")


def _cuda_flavour_launchers():
    """(name, device, launchers getter) for every kernel that implements aten-CUDA's rules: the CUDA kernels'
    shared math through the CPU extension (flavour Cuda), Triton, the CUDA kernels under the CPU emulator
    (tests/cuda_emulator.py, built when the test runs), and the CUDA extension."""
    native = fake_quant.LAUNCHERS.native
    out = [("cuda-emulated", "cpu", lambda: cuda_emulator.launchers("fake_quant"))]
    if qkernels.backends.availability("cpu", "cpu") is None:
        out.append(("cpu-ext", "cpu", lambda: native("cpu")))
    for device in DEVICES:
        if qkernels.backends.availability("triton", device) is None:
            out.append(("triton", device, lambda: importlib.import_module("qkernels.triton_kernels.fake_quant")))
    if HAS_CUDA:
        out.append(("cuda-ext", "cuda", lambda: native("cuda")))
    return out


@pytest.mark.parametrize("name,device,get_launchers", _cuda_flavour_launchers(),
                         ids=[c[0] + "-" + c[1] for c in _cuda_flavour_launchers()])
def test_cuda_flavour_kernels_wide_zero_points(name, device, get_launchers):
    """aten-CUDA's rules at zero points the public checks would reject on CPU (int64 saturation and
    wrapping, float subtraction beyond 2^24), straight through the launchers, against the CUDA reference."""
    launchers = get_launchers()
    per_tensor, per_channel = launchers.per_tensor, launchers.per_channel
    x = make_input(17, (5, 4001), 0.3, 0, -128, 127, torch.float32, device)
    for z in (0, 5, -3, 2**25 + 1):
        out, mask = torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)
        per_tensor(x, out, mask, 0.3, z, None, None, None, -128, 127, Flavour.Cuda)
        ry, rm = ref.fake_quant_per_tensor(x, 0.3, z, -128, 127, flavour="cuda")
        assert_bitwise_equal(out, ry, what=f"per-tensor z={z}")
        assert_bitwise_equal(mask, rm, what=f"per-tensor mask z={z}")
    s = torch.tensor([0.3, 1.7, 0.01, 2.0, 0.5], device=device)
    for zp in (torch.tensor([0, 5, -3, 2**25 + 1, -(2**30) - 7], dtype=torch.int32, device=device),
               torch.tensor([0.5, 5, -3.25, 1e-3, -128], device=device)):
        out, mask = torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)
        per_channel(x, out, mask, s, zp, 4001, -128, 127, Flavour.Cuda, True)
        ry, rm = ref.fake_quant_per_channel(x, s, zp, 0, -128, 127, flavour="cuda")
        assert_bitwise_equal(out, ry, what=f"per-channel {zp.dtype}")
        assert_bitwise_equal(mask, rm, what=f"per-channel mask {zp.dtype}")


@pytest.mark.parametrize("device", DEVICES)
def test_reference_fma_model(device):
    """The reference's float-zero-point path follows aten's FMA choice; the other choice differs somewhere."""
    x = make_input(19, (4, 50000), 1.0, 0, -128, 127, torch.float32, device, specials=False)
    s = torch.tensor([1.5094910860061646, 0.640592098236084, 0.1, 0.37], device=device)
    zp = torch.tensor([50.0, -3.0, 0.3, 7.0], device=device)
    ay, _ = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(x, s, zp, 0, -128, 127)
    ry, _ = ref.fake_quant_per_channel(x, s, zp, 0, -128, 127)
    assert_bitwise_equal(ry, ay)


# ------------------------------------------------------------------------------------------------------
# autograd
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_matches_aten(device, backend, dtype):
    x0 = make_input(23, (6, 129), 0.07, 2, -128, 127, dtype, device)
    grad = make_input(29, (6, 129), 1.0, 0, -128, 127, dtype, device)  # has NaN, -0.0, inf
    s = torch.rand(6, device=device) + 0.01
    zp = torch.randint(-128, 128, (6,), dtype=torch.int32, device=device)
    calls = [
        (lambda x: qkernels.fake_quantize_per_tensor_affine(x, 0.07, 2, -128, 127),
         lambda x: torch.fake_quantize_per_tensor_affine(x, 0.07, 2, -128, 127)),
        (lambda x: qkernels.fake_quantize_per_channel_affine(x, s, zp, 0, -128, 127),
         lambda x: torch.fake_quantize_per_channel_affine(x, s, zp, 0, -128, 127)),
    ]
    for ours, theirs in calls:
        xa = x0.clone().requires_grad_()
        xb = x0.clone().requires_grad_()
        with qkernels.use_backend(backend):
            ours(xa).backward(grad)
        theirs(xb).backward(grad)
        assert_bitwise_equal(xa.grad, xb.grad, ulp=ulp_for(backend, device, dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_need_mask_false(device):
    x = torch.randn(10, device=device)
    y, m = qkernels.fake_quantize_per_tensor_affine_cachemask(x, 0.1, 0, -128, 127, need_mask=False)
    assert m.numel() == 0 and m.dtype == torch.bool
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127))
    with pytest.raises(RuntimeError, match="need_mask=False"):
        qkernels.fake_quantize_per_tensor_affine_cachemask(x.requires_grad_(), 0.1, 0, -128, 127, need_mask=False)


# ------------------------------------------------------------------------------------------------------
# bad inputs (on CPU tensors, with and without the C++ entry point: tests/samples_fake_quant.py)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_bad_device():
    x = torch.randn(4, device="cuda")
    with pytest.raises(RuntimeError, match="`scale` must be on the same device"):
        qkernels.fake_quantize_per_tensor_affine(x, torch.ones(1), torch.zeros(1, device="cuda"), 0, 255)


# ------------------------------------------------------------------------------------------------------
# backend selection
# ------------------------------------------------------------------------------------------------------
def test_backend_selection(monkeypatch):
    x = torch.randn(8)
    assert qkernels.backends.select(x.double(), -128, 127) is ref.Launchers
    assert qkernels.backends.select(x, -(2**23), 2**23) is ref.Launchers
    assert qkernels.backends.chosen(x, -(2**23), 2**23) == "reference"
    with qkernels.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' was requested"):
        qkernels.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127)
    monkeypatch.setenv("QKERNELS_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="the cuda backend runs CUDA tensors"):
        qkernels.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127)
    with qkernels.use_backend("reference"):  # the context manager wins over the environment
        qkernels.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127)
    monkeypatch.setenv("QKERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="QKERNELS_BACKEND must be one of"):
        qkernels.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match="backend must be one of"):
        with qkernels.use_backend("tpu"):
            pass
    if qkernels.backends.availability("cpu", "cpu") is None:
        with qkernels.use_backend("cpu"), pytest.raises(RuntimeError, match="float32/float16/bfloat16"):
            qkernels.fake_quantize_per_tensor_affine(x.double(), 0.1, 0, -128, 127)


def test_check_values_variable(monkeypatch):
    """QKERNELS_CHECK_VALUES=1 makes device tensors' qparam values checked (a meta tensor stands in for a GPU one:
    neither is CPU); set and unset through os.environ, as a user's shell or monkeypatch does."""
    from qkernels._shared import _values_checkable

    meta = torch.ones(1, device="meta")
    monkeypatch.delenv("QKERNELS_CHECK_VALUES", raising=False)
    assert _values_checkable(torch.ones(1)) and not _values_checkable(meta)
    monkeypatch.setenv("QKERNELS_CHECK_VALUES", "1")
    assert _values_checkable(meta)
    monkeypatch.setenv("QKERNELS_CHECK_VALUES", "0")
    assert not _values_checkable(meta)


@pytest.mark.parametrize("device,backend", CASES)
def test_float_zero_point_gives_positive_zero(device, backend):
    """Tiny negative inputs round to -0.0, but aten goes through an integer: the result is +0.0."""
    x = torch.tensor([[-0.3, -1e-30, -0.0, 0.3]], device=device)
    y, _ = run(backend, qkernels.fake_quantize_per_channel_affine_cachemask, x, torch.ones(1, device=device),
               torch.zeros(1, device=device), 0, -1, 0)
    ay, _ = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(x, torch.ones(1, device=device),
                                                                    torch.zeros(1, device=device), 0, -1, 0)
    assert_bitwise_equal(y, ay)


@pytest.mark.parametrize("device", DEVICES)
def test_eager_fast_path_equals_dispatcher_path(device):
    """Plain eager calls skip the dispatcher; under a dispatch mode the registered ops run. Same results."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    x0 = make_input(37, (3, 50), 0.1, 0, -128, 127, torch.float32, device)
    s = torch.rand(3, device=device) + 0.05
    zp = torch.zeros(3, dtype=torch.int32, device=device)
    grad = torch.randn(3, 50, device=device)
    results = []
    for mode in (None, Count()):
        xa = x0.clone().requires_grad_()
        with mode or torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            y = qkernels.fake_quantize_per_channel_affine(
                qkernels.fake_quantize_per_tensor_affine(xa, 0.1, 1, -128, 127), s, zp, 0, -128, 127)
        y.backward(grad)
        results.append((y.detach(), xa.grad))
    assert any("qkernels.fake_quantize_per_channel_affine_cachemask" in f for f in Count.seen)
    for a, b in zip(*results):
        assert_bitwise_equal(a, b)


# ------------------------------------------------------------------------------------------------------
# bit-packed masks
# ------------------------------------------------------------------------------------------------------
def _packed_reference(out, mask_bool):
    """The bool mask laid out like `out`, packed in storage order."""
    dense = torch.empty_like(out, dtype=torch.bool).copy_(mask_bool)
    return ref.pack_bits(ref.storage_view(dense))


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_mask_forward_and_backward(device, backend, dtype):
    base = make_input(41, (3, 5, 7, 11), 0.1, 2, -128, 127, dtype, device)  # 1155 elements: not a multiple of 8
    inputs = {"contiguous": base, "channels_last": base.contiguous(memory_format=torch.channels_last),
              "transposed": base.transpose(0, 3), "tiny": base.flatten()[:5]}
    for name, x in inputs.items():
        s = torch.rand(x.size(0), device=device) + 0.05
        zp = torch.randint(-128, 128, (x.size(0),), dtype=torch.int32, device=device)
        for call in (
            lambda pack: qkernels.fake_quantize_per_tensor_affine_cachemask(x, 0.1, 2, -128, 127, True, pack),
            lambda pack: qkernels.fake_quantize_per_channel_affine_cachemask(x, s, zp, 0, -128, 127, True, pack),
        ):
            with qkernels.use_backend(backend):
                y, m = call(False)
                yp, mp = call(True)
                grad = make_input(43, tuple(x.shape), 1.0, 0, -128, 127, dtype, device).as_strided(y.shape, y.stride())
                dx = qkernels.fake_quantize_cachemask_backward(grad, m)
                dxp = qkernels.fake_quantize_cachemask_backward(grad, mp)
            assert mp.dtype == torch.uint8 and mp.shape == ((x.numel() + 7) // 8,)
            assert_bitwise_equal(yp, y, what=name)
            assert_bitwise_equal(mp, _packed_reference(y, m), what=f"{name} packed bits")
            assert_bitwise_equal(dxp, dx, what=f"{name} backward")


@pytest.mark.parametrize("device,backend", CASES)
def test_packed_masks_context_keeps_one_bit_per_element(device, backend):
    """Inside packed_masks() autograd saves ceil(n/8) bytes per op and the gradients do not change, also when
    the incoming gradient has another layout than the output."""
    x0 = make_input(47, (4, 6, 5, 3), 0.1, 0, -128, 127, torch.float32, device).contiguous(
        memory_format=torch.channels_last)
    s = torch.rand(6, device=device) + 0.05
    zp = torch.zeros(6, dtype=torch.int32, device=device)
    grad = torch.randn(4, 6, 5, 3, device=device)  # contiguous, unlike the channels-last output
    grads, saved = [], []
    for packed in (False, True):
        x = x0.clone().requires_grad_()
        with qkernels.use_backend(backend), qkernels.packed_masks(packed), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y = qkernels.fake_quantize_per_channel_affine(
                qkernels.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127), s, zp, 1, -128, 127)
            y.backward(grad)
        grads.append(x.grad)
    assert_bitwise_equal(grads[1], grads[0])
    masks = [t for t in saved if t.dtype in (torch.bool, torch.uint8)]
    assert [t.dtype for t in masks] == [torch.bool] * 2 + [torch.uint8] * 2
    assert all(t.numel() == (x0.numel() + 7) // 8 for t in masks[2:])


@pytest.mark.parametrize("device,backend", CASES)
def test_eager_calls_run_in_cpp_on_native_backends(device, backend, monkeypatch):
    """Plain eager calls on the cpu/cuda backends are one C++ call forward (allocation, launch, autograd node;
    not the launchers the registered ops use) and run their backward without a call back into Python; the
    other backends use the runs and the Python autograd.Function. Same gradients as aten either way."""
    native = fake_quant.LAUNCHERS.native(device)
    calls = []
    for module, name in ((fake_quant, "_backward_impl"), (native, "per_tensor"), (native, "per_channel")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    x = make_input(5, (6, 40), 0.1, 3, 0, 255, torch.float32, device).requires_grad_()
    xa = x.detach().clone().requires_grad_()
    s = torch.rand(40, device=device) + 0.05
    zp = torch.randint(0, 256, (40,), dtype=torch.int32, device=device)
    dy = torch.randn(40, 6, device=device).t()  # another layout than the output's
    with qkernels.use_backend(backend):
        qkernels.fake_quantize_per_channel_affine(qkernels.fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 255), s, zp,
                                                  1, 0, 255).backward(dy)
    torch.fake_quantize_per_channel_affine(torch.fake_quantize_per_tensor_affine(xa, 0.1, 3, 0, 255), s, zp, 1, 0,
                                           255).backward(dy)
    assert_bitwise_equal(x.grad, xa.grad)
    if backend in ("cpu", "cuda"):
        assert calls == []
        with qkernels.use_backend(backend):  # the registered ops still take the launchers
            qkernels.fake_quantize_per_tensor_affine_cachemask(x.detach(), 0.1, 3, 0, 255)
        assert calls == ["per_tensor"]
    else:
        assert calls.count("_backward_impl") == 2


# ------------------------------------------------------------------------------------------------------
# the C++ entry points (qkernels._C, csrc/ops/python_entry.cpp): valid plain eager calls, else None
# ------------------------------------------------------------------------------------------------------
needs_entry = pytest.mark.skipif(_shared._entry is None, reason="qkernels._C is not built")


def _entry_per_tensor(x, scale=0.1, zp=3, qmin=0, qmax=255, backend=None, pack=False):
    return _shared._entry.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax, backend, pack)


def _entry_per_channel(x, scale, zp, axis=0, qmin=-128, qmax=127, backend=None, pack=False):
    return _shared._entry.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax, backend, pack)


@needs_entry
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [False, True])
def test_entry_runs_valid_plain_eager_calls(device, packed):
    """Each qparam form through the entry: aten's output and gradient, bit for bit, with the autograd node only
    when x needs a gradient; bounds and backend names as the Python path accepts them."""
    # The device's native library is loaded (the entry finds a CUDA op only then; a first CUDA call through the
    # Python path would load it).
    assert qkernels.backends.availability(device, device) is None
    x0 = make_input(71, (6, 9), 0.1, 3, -128, 127, torch.float32, device)
    s6 = torch.rand(6, device=device) + 0.05
    one = torch.ones(1, device=device)
    forms = [
        ("numbers", lambda t: _entry_per_tensor(t, 0.1, 3, -128, 127, pack=packed),
         lambda t: torch.fake_quantize_per_tensor_affine(t, 0.1, 3, -128, 127)),
        ("int scale", lambda t: _entry_per_tensor(t, 1, 0, -128, 127, pack=packed),
         lambda t: torch.fake_quantize_per_tensor_affine(t, 1.0, 0, -128, 127)),
        ("tensors", lambda t: _entry_per_tensor(t, one * 0.1, (one * 3).int(), -128, 127, pack=packed),
         lambda t: torch.fake_quantize_per_tensor_affine(t, one * 0.1, (one * 3).int(), -128, 127)),
        ("per channel int zp, axis -2", lambda t: _entry_per_channel(
            t, s6, torch.arange(6, dtype=torch.int32, device=device), -2, pack=packed),
         lambda t: torch.fake_quantize_per_channel_affine(
             t, s6, torch.arange(6, dtype=torch.int32, device=device), 0, -128, 127)),  # (aten: no negative axis)
        ("per channel float zp", lambda t: _entry_per_channel(
            t.t(), s6, torch.full((6,), 2.5, device=device), 1, pack=packed),
         lambda t: torch.fake_quantize_per_channel_affine(t.t(), s6, torch.full((6,), 2.5, device=device), 1,
                                                          -128, 127)),
        ("backend name of the device, any case and spaces", lambda t: _entry_per_tensor(
            t, 0.1, 3, -128, 127, backend=f" {device.upper()} "), lambda t: torch.fake_quantize_per_tensor_affine(
                t, 0.1, 3, -128, 127)),
        ("widest kernel bounds", lambda t: _entry_per_tensor(t, 0.1, 3, -(2**22), 2**22),
         lambda t: torch.fake_quantize_per_tensor_affine(t, 0.1, 3, -(2**22), 2**22)),
    ]
    for name, entry, aten in forms:
        y = entry(x0)
        assert y is not None and y.grad_fn is None, name
        assert_bitwise_equal(y, aten(x0), what=name)
        xa, xb = x0.clone().requires_grad_(), x0.clone().requires_grad_()
        y, ya = entry(xa), aten(xb)
        assert y.grad_fn is not None, name
        grad = torch.randn_like(ya)
        y.backward(grad), ya.backward(grad)
        assert_bitwise_equal(xa.grad, xb.grad, what=f"{name}, dx")
        with torch.no_grad():
            assert entry(xa).grad_fn is None, name


class _Subclass(torch.Tensor):
    pass


def _entry_fallbacks():
    """(what, call of the entry that must return None): every argument ops.py would reject or convert, every
    backend choice other than the native one, every non-plain mode."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    x = torch.randn(4, 6)
    s4, z4 = torch.rand(4) + 0.1, torch.zeros(4, dtype=torch.int32)
    one, zero = torch.ones(1), torch.zeros(1, dtype=torch.int32)

    def under(mode_cls):
        def call():
            with mode_cls():
                return _entry_per_tensor(x)
        return call

    def in_vmap():
        seen = []
        torch.func.vmap(lambda t: seen.append(_entry_per_tensor(t)) or t)(x)
        return seen[0]

    return [
        ("reference backend", lambda: _entry_per_tensor(x, backend="reference")),
        ("triton backend", lambda: _entry_per_tensor(x, backend="triton")),
        ("cuda backend for a CPU tensor", lambda: _entry_per_tensor(x, backend="cuda")),
        ("unknown backend", lambda: _entry_per_tensor(x, backend="c p u")),
        ("float64 input", lambda: _entry_per_tensor(x.double())),
        ("meta input (the reference backend's)", lambda: _entry_per_tensor(x.to("meta"))),
        ("meta input, tensor qparams", lambda: _entry_per_tensor(x.to("meta"), one.to("meta"), zero.to("meta"))),
        ("meta input, per channel", lambda: _entry_per_channel(x.to("meta"), s4.to("meta"), z4.to("meta"))),
        ("integer input", lambda: _entry_per_tensor(x.int())),
        ("bounds beyond 2^22", lambda: _entry_per_tensor(x, 0.1, 0, 0, 2**22 + 1)),
        ("int64-overflowing bound", lambda: _entry_per_tensor(x, 0.1, 0, 0, 2**70)),
        ("quant_min > quant_max", lambda: _entry_per_tensor(x, 0.1, 0, 5, 4)),
        ("zero point above range", lambda: _entry_per_tensor(x, 0.1, 256, 0, 255)),
        ("zero point below range", lambda: _entry_per_tensor(x, 0.1, -1, 0, 255)),
        ("zero scale", lambda: _entry_per_tensor(x, 0.0)),
        ("negative scale", lambda: _entry_per_tensor(x, -0.1)),
        ("NaN scale", lambda: _entry_per_tensor(x, math.nan)),
        ("infinite scale", lambda: _entry_per_tensor(x, math.inf)),
        ("float zero point (Python converts)", lambda: _entry_per_tensor(x, 0.1, 3.0)),
        ("bool zero point", lambda: _entry_per_tensor(x, 0.1, True)),
        ("str scale", lambda: _entry_per_tensor(x, "0.1")),
        ("tensor scale, number zero point", lambda: _entry_per_tensor(x, one, 0)),
        ("number scale, tensor zero point", lambda: _entry_per_tensor(x, 0.1, zero)),
        ("tensor subclass input", lambda: _entry_per_tensor(x.as_subclass(_Subclass))),
        ("tensor subclass scale", lambda: _entry_per_tensor(x, one.as_subclass(_Subclass), zero)),
        ("torch function mode", under(TorchFunctionMode)),
        ("torch dispatch mode", under(TorchDispatchMode)),
        ("functorch transform", in_vmap),
        ("wrong argument count", lambda: _shared._entry.fake_quantize_per_tensor_affine(x, 0.1, 0, 0, 255, None)),
        ("scale needs grad", lambda: _entry_per_tensor(x, one.clone().requires_grad_(), zero)),
        ("two-element scale", lambda: _entry_per_tensor(x, torch.ones(2), zero)),
        ("integer scale tensor", lambda: _entry_per_tensor(x, one.int(), zero)),
        ("bool zero point tensor", lambda: _entry_per_tensor(x, one, zero.bool())),
        ("complex zero point tensor", lambda: _entry_per_tensor(x, one, zero.to(torch.complex64))),
        ("zero scale tensor", lambda: _entry_per_tensor(x, one * 0, zero)),
        ("NaN scale tensor", lambda: _entry_per_tensor(x, one * math.nan, zero)),
        ("scale on another device", lambda: _entry_per_tensor(x, torch.ones(1, device="meta"), zero)),
        ("per channel: float64 scale", lambda: _entry_per_channel(x, s4.double(), z4)),
        ("per channel: int64 zero point", lambda: _entry_per_channel(x, s4, z4.long())),
        ("per channel: 2-D scale", lambda: _entry_per_channel(x, s4[:, None], z4)),
        ("per channel: 2-D zero point", lambda: _entry_per_channel(x, s4, z4[:, None])),
        ("per channel: numel mismatch", lambda: _entry_per_channel(x, s4, z4[:3])),
        ("per channel: channel count", lambda: _entry_per_channel(x, s4, z4, 1)),
        ("per channel: axis too large", lambda: _entry_per_channel(x, s4, z4, 2)),
        ("per channel: axis too small", lambda: _entry_per_channel(x, s4, z4, -3)),
        ("per channel: 0-D input", lambda: _entry_per_channel(x[0, 0], s4[:1], z4[:1])),
        ("per channel: zero point out of range", lambda: _entry_per_channel(
            x, s4, torch.tensor([0, 1, 128, 3], dtype=torch.int32))),
        ("per channel: strided zero point out of range", lambda: _entry_per_channel(
            x, s4, torch.tensor([0, 500, 1, 500, 2, 500, 3, 500], dtype=torch.int32)[1::2])),
        ("per channel: zero scale", lambda: _entry_per_channel(x, torch.tensor([1.0, 0.0, 1.0, 1.0]), z4)),
        ("per channel: NaN bfloat16 scale", lambda: _entry_per_channel(
            x, torch.tensor([1.0, math.nan, 1.0, 1.0], dtype=torch.bfloat16), z4)),
        ("per channel: zero point needs grad", lambda: _entry_per_channel(x, s4, z4.float().requires_grad_())),
        ("per channel: quant_min > quant_max", lambda: _entry_per_channel(x, s4, z4, 0, 1, 0)),
    ]


@needs_entry
@pytest.mark.parametrize("what,call", _entry_fallbacks(), ids=[w for w, _ in _entry_fallbacks()])
def test_entry_leaves_other_calls_to_python(what, call):
    assert call() is None


@needs_entry
def test_entry_reads_the_backend_variable(monkeypatch):
    x = torch.randn(8)
    monkeypatch.setenv("QKERNELS_BACKEND", "reference")
    assert _entry_per_tensor(x) is None
    assert _entry_per_tensor(x, backend="cpu") is not None  # use_backend() wins over the environment
    assert _entry_per_tensor(x, backend="") is None  # an empty override reads the environment, as in Python
    monkeypatch.setenv("QKERNELS_BACKEND", "Cpu")
    assert _entry_per_tensor(x) is not None
    monkeypatch.delenv("QKERNELS_BACKEND")
    assert _entry_per_tensor(x) is not None


def _public_call_cases(x):
    """(name, public call, the same through the registered cachemask op) over every qparam form."""
    device = x.device
    yield ("scalars", lambda t: qkernels.fake_quantize_per_tensor_affine(t, 0.1, 1, -128, 127),
           lambda t, pack: qkernels.fake_quantize_per_tensor_affine_cachemask(t, 0.1, 1, -128, 127, True, pack))
    for scale, zp in ((torch.tensor(0.1, dtype=torch.float64, device=device), torch.tensor([3.7], device=device)),
                      (torch.tensor([0.1], device=device), torch.tensor(-2, dtype=torch.int64, device=device))):
        yield (f"tensors {scale.dtype} {zp.dtype}",
               lambda t, s=scale, z=zp: qkernels.fake_quantize_per_tensor_affine(t, s, z, -128, 127),
               lambda t, pack, s=scale, z=zp: qkernels._fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
                   t, s, z, None, -128, 127, True, pack))
    if x.dim() == 0:
        return
    g = torch.Generator().manual_seed(x.numel())
    for axis in (-1, 0):
        C = x.size(axis)
        for scale_dtype, zp_dtype in ((torch.float32, torch.int32), (torch.bfloat16, torch.float32),
                                      (torch.float32, torch.float16)):
            scale = (torch.rand(C, generator=g) + 0.05).to(device, scale_dtype)
            zp = torch.randint(-128, 128, (C,), generator=g).to(device, zp_dtype)
            yield (f"per channel axis {axis} {scale_dtype} {zp_dtype}",
                   lambda t, s=scale, z=zp, a=axis: qkernels.fake_quantize_per_channel_affine(t, s, z, a, -128, 127),
                   lambda t, pack, s=scale, z=zp, a=axis: qkernels.fake_quantize_per_channel_affine_cachemask(
                       t, s, z, a, -128, 127, True, pack))


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_public_functions_equal_the_registered_ops(device, backend, dtype):
    """The public functions' eager path (on cpu/cuda one C++ call that allocates, converts tensor qparams,
    launches and attaches the autograd node) gives the registered ops' outputs, strides and gradients, bit for
    bit: every layout, qparam form and dtype, with and without grad, bool and packed masks."""
    base = make_input(61, (2, 3, 5, 7), 0.1, 1, -128, 127, dtype, device)
    layouts = {"contiguous": lambda t: t, "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
               "transposed": lambda t: t.transpose(1, 3), "sliced": lambda t: t[:, 1:, ::2],
               "empty": lambda t: t[:, :0], "zero_dim": lambda t: t[0, 0, 0, 0]}
    for layout, view in layouts.items():
        x = view(base)
        dy = make_input(67, tuple(x.shape), 1.0, 0, -128, 127, dtype, device)  # contiguous: another layout
        for name, public, registered in _public_call_cases(x):
            what = f"{layout}, {name}"
            with qkernels.use_backend(backend):
                y_ref, mask = registered(x, False)
                dx_ref = qkernels.fake_quantize_cachemask_backward(torch.empty_like(y_ref).copy_(dy), mask)
                assert_bitwise_equal(public(x), y_ref, what=f"{what}, no grad")
                for packed in (False, True):
                    xg = view(base.detach().clone().requires_grad_())  # the layout's view of a leaf
                    with qkernels.packed_masks(packed):
                        y = public(xg)
                    assert_bitwise_equal(y.detach(), y_ref, what=f"{what}, grad")
                    (dx,) = torch.autograd.grad(y, xg, dy)
                    # gradient values (their strides follow autograd's choices, not the op's contract)
                    assert_bitwise_equal(dx.contiguous(), dx_ref.contiguous(), what=f"{what}, packed={packed}, dx")


@pytest.mark.parametrize("device", DEVICES)
def test_vmap_of_the_public_functions_matches_aten(device):
    """Under torch.func transforms the public functions call the registered ops: vmap gives aten's results (the
    learnable one's eager shortcut would hand batched tensors to a launcher that writes into an output, which
    vmap's fallback cannot batch)."""
    x = make_input(71, (4, 6, 9), 0.1, 0, -128, 127, torch.float32, device)
    s = torch.rand(9, device=device) + 0.05
    zp = torch.randint(-128, 128, (9,), dtype=torch.int32, device=device)
    y = torch.func.vmap(lambda t: qkernels.fake_quantize_per_channel_affine(
        qkernels.fake_quantize_per_tensor_affine(t, 0.1, 2, -128, 127), s, zp, -1, -128, 127))(x)
    ya = torch.fake_quantize_per_channel_affine(torch.fake_quantize_per_tensor_affine(x, 0.1, 2, -128, 127), s, zp,
                                                2, -128, 127)
    assert_bitwise_equal(y, ya)
    ls, lz = torch.tensor([0.1], device=device), torch.tensor([2.0], device=device)
    y = torch.func.vmap(lambda t: qkernels.fake_quantize_learnable_per_tensor_affine(t, ls, lz, -128, 127))(x)
    assert_bitwise_equal(y, torch._fake_quantize_learnable_per_tensor_affine(x, ls, lz, -128, 127))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [False, True])
def test_compiled_autograd_runs_the_eager_nodes(device, packed):
    """Compiled autograd (a backward traced by Dynamo) takes the C++ autograd nodes of the eager paths (their saved
    data must be liftable or hashable; Dynamo runs such a node in eager, a graph break): same gradients as plain
    autograd, for the straight-through node (fake quant, fused observer) and the learnable node."""
    from torch._dynamo import compiled_autograd

    enable = getattr(compiled_autograd, "_enable", None) or compiled_autograd.enable
    x0 = make_input(73, (6, 9), 0.1, 0, -128, 127, torch.float32, device)
    s0, z0 = torch.tensor([0.1], device=device), torch.tensor([2.0], device=device)
    on = torch.ones(1, dtype=torch.long, device=device)

    def grads():
        x, s, z = (t.detach().clone().requires_grad_() for t in (x0, s0, z0))
        state = [torch.tensor([v], device=device) for v in (math.inf, -math.inf, 1.0)]
        state.append(torch.zeros(1, dtype=torch.int32, device=device))
        with qkernels.packed_masks(packed):
            y = qkernels.fake_quantize_per_tensor_affine(x, 0.1, 3, -128, 127)
            y = y + qkernels.fused_moving_avg_obs_fake_quant(x, on, on, *state, 0.01, -128, 127, 0, False, False)
            y = y + qkernels.fake_quantize_learnable_per_tensor_affine(x, s, z, -128, 127, 0.5)
        (y * torch.arange(y.numel(), device=device).view_as(y)).sum().backward()
        return x.grad, s.grad, z.grad

    expected = grads()
    torch._dynamo.reset()
    captures = torch._dynamo.utils.counters["compiled_autograd"]
    captures.clear()
    with enable(torch.compile(backend="eager")):
        got = grads()
    assert captures["captures"] == 1  # the backward did go through compiled autograd
    for g, e in zip(got, expected):
        assert_bitwise_equal(g, e)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("packed", [False, True])
def test_double_backward_matches_aten(device, backend, packed):
    """create_graph=True: dx = dy * mask stays differentiable (a gradient penalty sees it), as with aten."""
    x0 = make_input(9, (5, 16), 0.1, 3, 0, 255, torch.float32, device, specials=False)
    grads = []
    for fq in (torch.fake_quantize_per_tensor_affine, qkernels.fake_quantize_per_tensor_affine):
        x = x0.clone().requires_grad_()
        with qkernels.use_backend(backend), qkernels.packed_masks(packed):
            y = fq(x, 0.1, 3, 0, 255)
            (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
            (gx * x).sum().backward()
        grads.append((gx.detach(), x.grad))
    assert_bitwise_equal(grads[1][0], grads[0][0], what="first derivative")
    assert_bitwise_equal(grads[1][1], grads[0][1], what="second-order term")


def test_reference_float64_float_zero_point_matches_aten_cpu():
    """float64 inputs with a float zero point: aten's CPU kernel narrows x * inv + z to float before lrintf."""
    g = torch.Generator().manual_seed(53)
    x = (torch.rand(4, 50000, generator=g, dtype=torch.float64) - 0.5) * 60000
    s = torch.rand(4, generator=g) * 3 + 0.01
    zp = torch.tensor([0.0, 7.0, -3.0, 100.5])
    ay, am = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(x, s, zp, 0, -32768, 32767)
    ry, rm = ref.fake_quant_per_channel(x, s, zp, 0, -32768, 32767, flavour="cpu")
    assert_bitwise_equal(ry, ay)
    assert_bitwise_equal(rm, am)


@pytest.mark.parametrize("device", DEVICES)
def test_export(device):
    """torch.export traces the registered ops (not the eager shortcut) and the exported program matches."""

    class Fq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.rand(4, device=device) + 0.05)
            self.register_buffer("zp", torch.tensor([0, 2, -3, 1], dtype=torch.int32, device=device))

        def forward(self, x):
            y = qkernels.fake_quantize_per_tensor_affine(x, 0.05, 1, -128, 127)
            return qkernels.fake_quantize_per_channel_affine(y, self.scale, self.zp, 0, -128, 127)

    module = Fq()
    x = make_input(59, (4, 33), 0.05, 1, -128, 127, torch.float32, device)
    program = torch.export.export(module, (x,))
    graph = str(program.graph)
    assert "qkernels.fake_quantize_per_channel_affine_cachemask" in graph
    assert_bitwise_equal(program.module()(x), module(x))


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("zp_dtype", [torch.float32, torch.float16])
def test_float_zero_point_near_ties(device, backend, zp_dtype):
    """Inputs a few ulp from x * inv + z = k + 0.5, where one FMA and two roundings disagree: aten fuses for
    float32 zero points (CPU vector builds, CUDA) and not for float16 ones on the CPU."""
    g = torch.Generator().manual_seed(61)
    s = torch.rand(8, generator=g) * 3 + 0.01
    zf = torch.randint(0, 256, (8,), generator=g).float()
    k = torch.randint(0, 256, (8, 2000), generator=g).float()
    x = (k + 0.5 - zf[:, None]) * s[:, None]
    x = x + torch.randint(-3, 4, x.shape, generator=g).float() * x.abs() * 2**-24
    x, s, zp = x.to(device), s.to(device), zf.to(zp_dtype).to(device)
    y, m = run(backend, qkernels.fake_quantize_per_channel_affine_cachemask, x, s, zp, 0, 0, 255)
    ry, rm = ref.fake_quant_per_channel(x, s, zp, 0, 0, 255, flavour=flavour_of(backend, device))
    assert_bitwise_equal(y, ry)
    assert_bitwise_equal(m, rm)
    if check_against_aten(device, backend, flavours_differ_here=True):
        ay, am = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(x, s, zp, 0, 0, 255)
        assert_bitwise_equal(y, ay)
        assert_bitwise_equal(m, am)
