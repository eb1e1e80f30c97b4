"""Contract samples of the fake-quant family (qkernels.fake_quantize_per_{tensor,channel}_affine and the registered
cachemask and backward ops), checked by tests/test_contract.py against qkernels.reference.fake_quant.

Inputs come from conftest.make_input: values around every rounding boundary of the quantizer (ties such as
qmax + 0.5 included), +-0, NaN, +-inf and int64-overflowing values; sizes that are no multiple of a block or a
vector, and of 8 (packed masks); contiguous, transposed, channels-last and empty inputs.
"""

import math
import re

import torch

import qkernels
from contract import BadInput, Sample
from conftest import make_input
from qkernels.reference import fake_quant as ref

FAMILY = "fake_quant"

_PER_TENSOR = torch.ops.qkernels.fake_quantize_per_tensor_affine_cachemask
_TENSOR_QPARAMS = torch.ops.qkernels._fake_quantize_per_tensor_affine_cachemask_tensor_qparams
_PER_CHANNEL = torch.ops.qkernels.fake_quantize_per_channel_affine_cachemask
_BACKWARD = torch.ops.qkernels.fake_quantize_cachemask_backward


def _like(x, t):
    """t in the layout the ops give their outputs for input x (torch.empty_like's)."""
    return torch.empty_like(x, dtype=t.dtype).copy_(t)


def _packed(x, mask):
    """The bool mask bit-packed in the storage order of an output laid out for x."""
    return ref.pack_bits(ref.storage_view(_like(x, mask)))


def _channel_qparams(seed, channels, device, zp_dtype=torch.int32, scale_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    scale = (torch.rand(channels, generator=g) * 2 + 0.01).to(scale_dtype)
    zp = torch.randint(-128, 128, (channels,), generator=g)
    if zp_dtype.is_floating_point:  # fractional float zero points: round(x * inv + z) ties elsewhere
        zp = zp + torch.tensor([0.0, 0.5, -0.25, 0.75])[torch.arange(channels) % 4]
    return scale.to(device), zp.to(zp_dtype).to(device)


# ------------------------------------------------------------------------------------------------------------
# public functions, gradients through autograd
# ------------------------------------------------------------------------------------------------------------
def _make_per_tensor(device, dtype):
    shape = (3, 1031)
    return {"x": make_input(1, shape, 0.05, 3, -128, 127, dtype, device),
            "dy": make_input(2, shape, 1.0, 0, -128, 127, dtype, device)}


def _expected_per_tensor(inp, target):
    y, m = ref.fake_quant_per_tensor(inp["x"], 0.05, 3, -128, 127, flavour=target.flavour)
    return {"y": _like(inp["x"], y), "dx": ref.fake_quant_backward(inp["dy"], m)}


def _make_per_tensor_no_grad(device, dtype):
    return {"x": make_input(3, (4099,), 0.3, -2, -8, 7, dtype, device)}


def _make_tensor_qparams(device, dtype):
    shape = (37, 5)
    return {"x": make_input(4, shape, 0.05, 3, -128, 127, dtype, device).t(),  # transposed: dense, not contiguous
            "dy": make_input(5, shape[::-1], 1.0, 0, -128, 127, dtype, device),
            "scale": torch.tensor([0.05], dtype=torch.float64, device=device),  # narrowed to float32, as aten does
            "zero_point": torch.tensor([3.7], device=device)}  # truncated toward zero: 3


def _expected_tensor_qparams(inp, target):
    y, m = ref.fake_quant_per_tensor(inp["x"], inp["scale"], inp["zero_point"], -128, 127, flavour=target.flavour)
    return {"y": _like(inp["x"], y), "dx": ref.fake_quant_backward(inp["dy"], m)}


def _make_per_channel(device, dtype):
    scale, zp = _channel_qparams(6, 6, device)
    return {"x": make_input(7, (4, 6, 9), 1.0, 0, -128, 127, dtype, device).transpose(0, 2),  # [9, 6, 4], axis 1
            "dy": make_input(8, (9, 6, 4), 1.0, 0, -128, 127, dtype, device), "scale": scale, "zero_point": zp}


def _expected_per_channel(inp, target):
    y, m = ref.fake_quant_per_channel(inp["x"], inp["scale"], inp["zero_point"], 1, -128, 127,
                                      flavour=target.flavour)
    return {"y": _like(inp["x"], y), "dx": ref.fake_quant_backward(inp["dy"], m)}


def _make_per_channel_half_zp(device, dtype):
    scale, zp = _channel_qparams(9, 5, device, torch.float16)
    x = make_input(10, (2, 5, 7, 3), 1.0, 0, -128, 127, dtype, device).contiguous(memory_format=torch.channels_last)
    return {"x": x, "scale": scale, "zero_point": zp}


def _expected_per_channel_half_zp(inp, target):
    y, _ = ref.fake_quant_per_channel(inp["x"], inp["scale"], inp["zero_point"], 1, -128, 127,
                                      flavour=target.flavour)
    return {"y": _like(inp["x"], y)}


def _make_empty(device, dtype):
    scale, zp = _channel_qparams(11, 5, device)
    return {"x": torch.empty(0, 5, dtype=dtype, device=device), "dy": torch.empty(0, 5, dtype=dtype, device=device),
            "scale": scale, "zero_point": zp}


def _empty_call(inp):
    y = qkernels.fake_quantize_per_tensor_affine(inp["x"], 0.1, 0, -128, 127)
    return {"y": qkernels.fake_quantize_per_channel_affine(y, inp["scale"], inp["zero_point"], 1, -128, 127)}


def _expected_empty(inp, target):
    a, ma = ref.fake_quant_per_tensor(inp["x"], 0.1, 0, -128, 127, flavour=target.flavour)
    y, my = ref.fake_quant_per_channel(a, inp["scale"], inp["zero_point"], 1, -128, 127, flavour=target.flavour)
    return {"y": y, "dx": ref.fake_quant_backward(ref.fake_quant_backward(inp["dy"], my), ma)}


def _make_chain(device, dtype):
    scale, zp = _channel_qparams(12, 4, device)
    return {"x": make_input(13, (4, 37), 0.05, 2, -128, 127, dtype, device),
            "dy": make_input(14, (4, 37), 1.0, 0, -128, 127, dtype, device), "scale": scale, "zero_point": zp,
            "tensor_scale": torch.tensor([0.05], device=device),
            "tensor_zero_point": torch.tensor([2], dtype=torch.int32, device=device)}


def _chain_call(inp):
    a = qkernels.fake_quantize_per_tensor_affine(inp["x"], 0.05, 2, -128, 127)
    b = qkernels.fake_quantize_per_channel_affine(a * 2, inp["scale"], inp["zero_point"], 0, -128, 127)
    return {"y": qkernels.fake_quantize_per_tensor_affine(b, inp["tensor_scale"], inp["tensor_zero_point"], 0, 255)}


def _chain_packed_call(inp):
    """The chain keeping bit-packed masks for backward."""
    with qkernels.packed_masks():
        return _chain_call(inp)


def _expected_chain(inp, target):
    f = target.flavour
    a, ma = ref.fake_quant_per_tensor(inp["x"], 0.05, 2, -128, 127, flavour=f)
    b, mb = ref.fake_quant_per_channel(a * 2, inp["scale"], inp["zero_point"], 0, -128, 127, flavour=f)
    y, my = ref.fake_quant_per_tensor(b, inp["tensor_scale"], inp["tensor_zero_point"], 0, 255, flavour=f)
    dx = ref.fake_quant_backward(ref.fake_quant_backward(ref.fake_quant_backward(inp["dy"], my), mb) * 2, ma)
    return {"y": y, "dx": dx}


# ------------------------------------------------------------------------------------------------------------
# registered ops: bool and packed masks, the backward op, the fake_quant_enabled flag
# ------------------------------------------------------------------------------------------------------------
def _with_masks(x, dy, op, *args):
    """The op with a bool and with a packed mask, and the backward op on both (dy in the output's layout)."""
    y, mask = op(x, *args)
    y_packed, packed = op(x, *args, True, True)
    dy = _like(y, dy)
    return {"y": y, "mask": mask, "y_packed": y_packed, "packed_mask": packed, "dx": _BACKWARD(dy, mask),
            "dx_packed": _BACKWARD(dy, packed)}


def _expected_masks(x, dy, y, m):
    dx = _like(x, ref.fake_quant_backward(_like(x, dy), m))
    return {"y": _like(x, y), "mask": _like(x, m), "y_packed": _like(x, y), "packed_mask": _packed(x, m),
            "dx": dx, "dx_packed": dx}


def _make_cachemask_channels_last(device, dtype):
    shape = (2, 5, 7, 3)  # 210 elements: packed masks end mid-byte
    x = make_input(15, shape, 0.1, -2, -128, 127, dtype, device).contiguous(memory_format=torch.channels_last)
    return {"x": x, "dy": make_input(16, shape, 1.0, 0, -128, 127, dtype, device)}


def _expected_cachemask_channels_last(inp, target):
    y, m = ref.fake_quant_per_tensor(inp["x"], 0.1, -2, -128, 127, flavour=target.flavour)
    return _expected_masks(inp["x"], inp["dy"], y, m)


def _ops_cachemask(inp):
    x = inp["x"].requires_grad_()
    _, mask = _PER_TENSOR(x.detach(), 0.1, -2, -128, 127)
    dy = _like(x, inp["dy"].nan_to_num()).requires_grad_()
    # The packed mask's bits follow the channels-last layout; opcheck's double backward hands over a grad_grad of
    # another layout, which the registered double backward must bring into the bits' layout.
    _, packed = _PER_TENSOR(x.detach(), 0.1, -2, -128, 127, True, True)
    return [(_PER_TENSOR, (x, 0.1, -2, -128, 127)), (_PER_TENSOR, (x, 0.1, -2, -128, 127, True, True)),
            (_PER_TENSOR, (x.detach(), 0.1, -2, -128, 127, False)), (_BACKWARD, (dy, mask)),
            (_BACKWARD, (dy, packed))]


def _make_cachemask_per_channel(device, dtype):
    scale, zp = _channel_qparams(17, 67, device, torch.float32, torch.bfloat16)  # bf16 scales widen exactly
    return {"x": make_input(18, (5, 2, 67), 1.0, 0, -128, 127, dtype, device),
            "dy": make_input(19, (5, 2, 67), 1.0, 0, -128, 127, dtype, device), "scale": scale, "zero_point": zp}


def _expected_cachemask_per_channel(inp, target):
    y, m = ref.fake_quant_per_channel(inp["x"], inp["scale"], inp["zero_point"], -1, -128, 127,
                                      flavour=target.flavour)
    return _expected_masks(inp["x"], inp["dy"], y, m)


def _ops_per_channel(inp):
    x = inp["x"].requires_grad_()
    s, z = inp["scale"], inp["zero_point"]
    return [(_PER_CHANNEL, (x, s, z, -1, -128, 127)), (_PER_CHANNEL, (x, s, z.round().int(), 2, -128, 127)),
            (_PER_CHANNEL, (x, s, z, -1, -128, 127, True, True))]


_FLAG_CALLS = {"off": (0.5, 1.0, 3), "on": (2, 0.05, 3), "wide": (1, 1.0, 2**25 + 1)}  # flag, scale, zero point


def _make_tensor_qparams_flag(device, dtype):
    inp = {"x": make_input(20, (3, 100), 0.05, 3, -128, 127, dtype, device)}
    for name, (flag, scale, zp) in _FLAG_CALLS.items():
        inp[f"flag_{name}"] = torch.tensor([flag], device=device)
        inp[f"scale_{name}"] = torch.tensor([scale], device=device)
        inp[f"zero_point_{name}"] = torch.tensor([zp], dtype=torch.int32, device=device)
    return inp


def _tensor_qparams_flag_call(inp):
    """A flag of 0.5 reads as off (y = x, all-true mask), 2 as on; a zero point beyond 2^24 (which tensor qparams
    may have) dequantizes differently in the two flavours."""
    out = {}
    for name in _FLAG_CALLS:
        out[f"y_{name}"], out[f"mask_{name}"] = _TENSOR_QPARAMS(
            inp["x"], inp[f"scale_{name}"], inp[f"zero_point_{name}"], inp[f"flag_{name}"], -128, 127)
    return out


def _expected_tensor_qparams_flag(inp, target):
    out = {}
    for name in _FLAG_CALLS:
        out[f"y_{name}"], out[f"mask_{name}"] = ref.fake_quant_per_tensor(
            inp["x"], inp[f"scale_{name}"], inp[f"zero_point_{name}"], -128, 127, enabled=inp[f"flag_{name}"],
            flavour=target.flavour)
    return out


def _ops_tensor_qparams(inp):
    x = inp["x"].requires_grad_()
    return [(_TENSOR_QPARAMS, (x, inp["scale_on"], inp["zero_point_on"], inp["flag_on"], -128, 127)),
            (_TENSOR_QPARAMS, (x, inp["scale_on"], inp["zero_point_on"], None, -128, 127, True, True))]


SAMPLES = [
    Sample("per_tensor", _make_per_tensor,
           lambda inp: {"y": qkernels.fake_quantize_per_tensor_affine(inp["x"], 0.05, 3, -128, 127)},
           _expected_per_tensor, grads=("x",)),
    Sample("per_tensor_no_grad", _make_per_tensor_no_grad,
           lambda inp: {"y": qkernels.fake_quantize_per_tensor_affine(inp["x"], 0.3, -2, -8, 7)},
           lambda inp, t: {"y": ref.fake_quant_per_tensor(inp["x"], 0.3, -2, -8, 7, flavour=t.flavour)[0]}),
    Sample("per_tensor_tensor_qparams", _make_tensor_qparams,
           lambda inp: {"y": qkernels.fake_quantize_per_tensor_affine(inp["x"], inp["scale"], inp["zero_point"],
                                                                      -128, 127)},
           _expected_tensor_qparams, grads=("x",)),
    Sample("per_channel", _make_per_channel,
           lambda inp: {"y": qkernels.fake_quantize_per_channel_affine(inp["x"], inp["scale"], inp["zero_point"], 1,
                                                                       -128, 127)},
           _expected_per_channel, grads=("x",)),
    Sample("per_channel_half_zero_point", _make_per_channel_half_zp,
           lambda inp: {"y": qkernels.fake_quantize_per_channel_affine(inp["x"], inp["scale"], inp["zero_point"], 1,
                                                                       -128, 127)},
           _expected_per_channel_half_zp),
    Sample("empty", _make_empty, _empty_call, _expected_empty, grads=("x",)),
    # (no bfloat16: a 1-ulp difference of the interpreter's narrowing would move the next op's rounding)
    Sample("chain", _make_chain, _chain_call, _expected_chain, grads=("x",), compile=True,
           dtypes=(torch.float32, torch.float16)),
    Sample("chain_packed_masks", _make_chain, _chain_packed_call, _expected_chain, grads=("x",), compile=True,
           dtypes=(torch.float32, torch.float16)),
    Sample("cachemask_channels_last", _make_cachemask_channels_last,
           lambda inp: _with_masks(inp["x"], inp["dy"], _PER_TENSOR, 0.1, -2, -128, 127),
           _expected_cachemask_channels_last, ops=_ops_cachemask, narrowed=("y", "y_packed")),
    Sample("cachemask_per_channel_float_zero_point", _make_cachemask_per_channel,
           lambda inp: _with_masks(inp["x"], inp["dy"], _PER_CHANNEL, inp["scale"], inp["zero_point"], -1, -128,
                                   127),
           _expected_cachemask_per_channel, ops=_ops_per_channel, narrowed=("y", "y_packed")),
    Sample("cachemask_tensor_qparams_flag", _make_tensor_qparams_flag, _tensor_qparams_flag_call,
           _expected_tensor_qparams_flag, ops=_ops_tensor_qparams, narrowed=("y_on", "y_wide")),
]


def _x():
    return torch.randn(4, 5)


def _bad(message, call):
    return BadInput(re.escape(message), call)


def _int_zp(*values):
    return torch.tensor(values, dtype=torch.int32)


BAD_INPUTS = [
    _bad("`input` must be float32", lambda: qkernels.fake_quantize_per_tensor_affine(_x().int(), 0.1, 0, 0, 255)),
    _bad("`quant_min` should be less than or equal to `quant_max`",
         lambda: qkernels.fake_quantize_per_tensor_affine(_x(), 0.1, 0, 5, 4)),
    _bad("`input` must be a strided tensor, got torch.sparse_coo",
         lambda: qkernels.fake_quantize_per_tensor_affine(_x().to_sparse(), 0.1, 0, 0, 255)),
    _bad("`input` must be a strided tensor, got a nested tensor", lambda: qkernels.fake_quantize_per_channel_affine(
        torch.nested.nested_tensor([_x()[0], _x()[1, :2]]), torch.ones(2), _int_zp(0, 0), 0, 0, 255)),
    _bad("`zero_point` must be between", lambda: qkernels.fake_quantize_per_tensor_affine(_x(), 0.1, 300, 0, 255)),
    _bad("`scale` must be a positive finite number, got 0.0",
         lambda: qkernels.fake_quantize_per_tensor_affine(_x(), 0.0, 0, 0, 255)),
    _bad("`scale` must be a positive finite number, got -1.0",
         lambda: qkernels.fake_quantize_per_tensor_affine(_x(), -1.0, 0, 0, 255)),
    _bad("`scale` must be a positive finite number, got inf",
         lambda: qkernels.fake_quantize_per_tensor_affine(_x(), math.inf, 0, 0, 255)),
    _bad("`scale` must be a positive finite number, got nan",
         lambda: qkernels.fake_quantize_per_tensor_affine(_x(), math.nan, 0, 0, 255)),
    _bad("`scale` must have exactly 1 element", lambda: qkernels.fake_quantize_per_tensor_affine(
        _x(), torch.ones(2), _int_zp(0), 0, 255)),
    _bad("`scale` must be a floating-point", lambda: qkernels.fake_quantize_per_tensor_affine(
        _x(), _int_zp(1), _int_zp(0), 0, 255)),
    _bad("`scale` must be positive and finite", lambda: qkernels.fake_quantize_per_tensor_affine(
        _x(), torch.zeros(1), _int_zp(0), 0, 255)),
    _bad("`quant_min` should be less than", lambda: qkernels.fake_quantize_per_tensor_affine(
        _x(), torch.ones(1), _int_zp(0), 9, 8)),
    _bad("`scale` and `zero_point` must both be Tensors or both be numbers",
         lambda: qkernels.fake_quantize_per_tensor_affine(_x(), torch.ones(1), 0, 0, 255)),
    _bad("`scale` must be Float or BFloat16", lambda: qkernels.fake_quantize_per_channel_affine(
        _x(), torch.ones(4, dtype=torch.float64), _int_zp(0, 0, 0, 0), 0, 0, 255)),
    _bad("`zero_point` must be Int32, Float or Half", lambda: qkernels.fake_quantize_per_channel_affine(
        _x(), torch.ones(4), torch.zeros(4, dtype=torch.int64), 0, 0, 255)),
    _bad("`scale` should be a 1-D", lambda: qkernels.fake_quantize_per_channel_affine(
        _x(), torch.ones(4, 1), _int_zp(0, 0, 0, 0), 0, 0, 255)),
    _bad("`zero_point` should be a 1-D", lambda: qkernels.fake_quantize_per_channel_affine(
        _x(), torch.ones(4), _int_zp(0, 0, 0, 0)[:, None], 0, 0, 255)),
    _bad("`scale` and `zero_point` need to have the same number of elements",
         lambda: qkernels.fake_quantize_per_channel_affine(_x(), torch.ones(4), _int_zp(0, 0, 0), 0, 0, 255)),
    _bad("but `input` has 5 channels along axis 1", lambda: qkernels.fake_quantize_per_channel_affine(
        _x(), torch.ones(4), _int_zp(0, 0, 0, 0), 1, 0, 255)),
    _bad("`axis` must be in [-2, 1]", lambda: qkernels.fake_quantize_per_channel_affine(
        _x(), torch.ones(4), _int_zp(0, 0, 0, 0), 2, 0, 255)),
    _bad("`zero_point` must be between", lambda: qkernels.fake_quantize_per_channel_affine(
        _x(), torch.ones(4), _int_zp(0, 1, 256, 3), 0, 0, 255)),
    _bad("`scale` must be positive and finite", lambda: qkernels.fake_quantize_per_channel_affine(
        _x(), torch.tensor([1.0, 0.0, 1.0, 1.0]), _int_zp(0, 0, 0, 0), 0, 0, 255)),
    _bad("`mask` must be bool", lambda: qkernels.fake_quantize_cachemask_backward(_x(), _x())),
    _bad("a packed mask needs 3 bytes", lambda: qkernels.fake_quantize_cachemask_backward(
        _x(), torch.zeros(2, dtype=torch.uint8))),
    _bad("`mask` and `dY` are not the same size",
         lambda: qkernels.fake_quantize_cachemask_backward(_x(), torch.ones(3, dtype=torch.bool))),
    _bad("fake quantization is not differentiable with respect to `scale`",
         lambda: qkernels.fake_quantize_per_tensor_affine(_x(), torch.tensor([0.1], requires_grad=True),
                                                          _int_zp(0), -128, 127)),
    _bad("a fake-quant call with need_mask=False cannot be differentiated",
         lambda: _PER_TENSOR(_x().requires_grad_(), 0.1, 0, -128, 127, need_mask=False)),
]
