"""qkernels.ptq: the max-abs weight quantizer (the regularizer's, bit for bit) and quantized_weights (which weights,
restored exactly, errors before any change)."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import qkernels
from qkernels.ptq import max_abs_quantize, quantized_weights


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _weights(model: nn.Module) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_per_tensor_is_the_reference_quantizer(bits, dtype):
    w = torch.randn(64, 33, generator=torch.Generator().manual_seed(bits)).to(dtype)
    # ties of w / s at half-integers, where dividing and multiplying by 1/s can round differently
    w[0, :8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 3.5, 0.0, 1.0], dtype=dtype) * (w.abs().max() / 7)
    # written out here (max_abs_quantize calls the reference's quantize): float32, a division by s, half to even
    wf = w.float()
    s = wf.abs().max() / (2 ** (bits - 1) - 1)
    expected = (torch.round(wf / s) * s).to(dtype)
    q = max_abs_quantize(w, bits)
    assert q.dtype == dtype and torch.equal(q, expected)


def test_the_spec_vector():
    w = torch.tensor([0.9, -0.3, 0.05, -1.2])
    assert torch.allclose(max_abs_quantize(w, 2), torch.tensor([1.2, 0.0, 0.0, -1.2]))
    assert torch.allclose(max_abs_quantize(w, 3), torch.tensor([0.8, -0.4, 0.0, -1.2]))
    assert torch.equal(max_abs_quantize(torch.zeros(3), 4), torch.zeros(3))  # s == 0 gives 0, not NaN


def test_per_channel_is_per_tensor_on_each_output_channel():
    w = torch.randn(5, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    w[2] = 0.0
    q = max_abs_quantize(w, 3, per_channel=True)
    for c in range(5):
        assert torch.equal(q[c], max_abs_quantize(w[c], 3)), c
    assert not torch.equal(q, max_abs_quantize(w, 3))


def test_quantized_weights_quantizes_the_regularizers_set_and_restores_bit_for_bit():
    model = _model()
    before = _weights(model)
    with quantized_weights(model, 3) as applied:
        assert list(applied) == ["0", "1", "4"]  # conv, BatchNorm (as the official code), linear
        for name in ("0.weight", "1.weight", "4.weight"):
            assert torch.equal(model.get_parameter(name), max_abs_quantize(before[name], 3)), name
        for name in ("0.bias", "1.bias", "4.bias"):
            assert torch.equal(model.get_parameter(name), before[name]), name
    assert _same(_weights(model), before)


def test_restored_when_the_block_raises():
    model = _model()
    before = _weights(model)
    params = list(model.parameters())
    with pytest.raises(KeyError):
        with quantized_weights(model, 2):
            assert not torch.equal(model[0].weight, before["0.weight"])
            raise KeyError("boom")
    assert _same(_weights(model), before)
    assert all(a is b for a, b in zip(params, model.parameters()))  # in place: optimizers keep their references


def test_exclude_include_norms_layer_bits_and_per_channel():
    model = _model()
    before = _weights(model)
    with quantized_weights(model, 2, exclude=("4",), include_norms=False, per_channel=True) as applied:
        assert list(applied) == ["0"]
        assert torch.equal(model[0].weight, max_abs_quantize(before["0.weight"], 2, per_channel=True))
        assert torch.equal(model[1].weight, before["1.weight"]) and torch.equal(model[4].weight, before["4.weight"])
    with quantized_weights(model, 2, include_norms=False, layer_bits={"0": 8, "4": 32}) as applied:
        assert applied == {"0": 8}
        assert torch.equal(model[0].weight, max_abs_quantize(before["0.weight"], 8))
        assert torch.equal(model[4].weight, before["4.weight"])
    assert _same(_weights(model), before)


def test_shared_weight_quantized_once_and_parametrized_by_its_original():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    original = model[0].weight.detach().clone()
    with quantized_weights(model, 3) as applied:
        assert list(applied) == ["0"]
        assert torch.equal(model[1].weight, max_abs_quantize(original, 3))

    layer = nn.Linear(4, 4)
    parametrize.register_parametrization(layer, "weight", _Double())
    float_weight = layer.parametrizations.weight.original.detach().clone()
    with quantized_weights(layer, 4):
        assert torch.equal(layer.weight, 2 * max_abs_quantize(float_weight, 4))
    assert torch.equal(layer.parametrizations.weight.original, float_weight)


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


@pytest.mark.parametrize("kwargs,name", [
    (dict(bits=1), "bits"), (dict(bits=9), "bits"), (dict(bits=3.0), "bits"), (dict(bits=True), "bits"),
    (dict(bits=3, exclude="0"), "exclude"), (dict(bits=3, exclude=("",)), "model"),
    (dict(bits=3, layer_bits={"9": 8}), "layer_bits"), (dict(bits=3, layer_bits={"0": 16}), "layer_bits"),
])
def test_bad_arguments_are_named_before_any_change(kwargs, name):
    model = _model()
    before = _weights(model)
    with pytest.raises(ValueError, match=name):
        with quantized_weights(model, **kwargs):
            pass
    assert _same(_weights(model), before)


def test_max_abs_quantize_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        max_abs_quantize(torch.ones(3), 1)
    with pytest.raises(ValueError, match="w"):
        max_abs_quantize(torch.ones(3, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="per_channel"):
        max_abs_quantize(torch.tensor(1.0), 3, per_channel=True)


def test_exported():
    assert "ptq" in qkernels.__all__ and qkernels.ptq.max_abs_quantize is max_abs_quantize
