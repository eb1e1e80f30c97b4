"""qkernels.nn.QuantLinear / QuantConv2d (W/A/G bits, Kim et al. 2024) and quantize_layers: a 4/4/4 layer's
backward equals the reference computation from the same quantized gradient (the same random draws), dX and dW
from that one gradient; full-precision widths; the converter keeping the first and last layers."""

import pytest
import torch

import qkernels
from qkernels.fake_quant_learnable import fake_quantize_learnable_per_tensor_affine, lsq_grad_factor

from conftest import assert_bitwise_equal


def _lsq(x, quantizer):
    return fake_quantize_learnable_per_tensor_affine(x, quantizer.scale.detach(), quantizer.zero_point,
                                                     quantizer.quant_min, quantizer.quant_max,
                                                     lsq_grad_factor(x.numel(), quantizer.quant_max))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_444_backward_equals_the_reference_from_the_same_quantized_gradient(kind):
    torch.manual_seed(0)
    if kind == "linear":
        layer = qkernels.nn.QuantLinear(24, 16, grad_quantizer=dict(interval="fixed", clip_ratio=0.7))
        x = torch.rand(8, 24)
        op = torch.nn.functional.linear
    else:
        layer = qkernels.nn.QuantConv2d(3, 8, 3, padding=1, grad_quantizer=dict(interval="fixed", clip_ratio=0.7))
        x = torch.rand(4, 3, 10, 10)
        op = lambda inp, w, b: torch.nn.functional.conv2d(inp, w, b, padding=1)  # noqa: E731
    x.requires_grad_()
    y = layer(x)
    dy = torch.randn_like(y)
    torch.manual_seed(42)
    y.backward(dy)
    # the reference: the same LSQ forward, the output gradient quantized with the same key, autograd of the op
    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    y2 = op(_lsq(x2, layer.input_quantizer), _lsq(w2, layer.weight_quantizer), layer.bias.detach())
    assert_bitwise_equal(y.detach(), y2.detach())
    torch.manual_seed(42)
    g_hat, _ = qkernels.quantize_gradient(dy, 4, 0.7)
    y2.backward(g_hat)
    assert_bitwise_equal(x.grad, x2.grad)
    assert_bitwise_equal(layer.weight.grad, w2.grad)
    assert not torch.equal(g_hat, dy)  # the gradient really was quantized


def test_full_precision_widths_are_the_plain_layer():
    torch.manual_seed(1)
    plain = torch.nn.Linear(6, 5)
    layer = qkernels.nn.QuantLinear(6, 5, wbits=32, abits=32, gbits=32)
    layer.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(3, 6, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    layer(x).sum().backward()
    plain(x2).sum().backward()
    assert torch.equal(x.grad, x2.grad) and torch.equal(layer.weight.grad, plain.weight.grad)
    assert layer.weight_quantizer is None and layer.input_quantizer is None


def test_quantize_layers_keeps_first_and_last_and_the_weights():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 8),
                                torch.nn.Linear(8, 2))
    weights = [m.weight.detach().clone() for m in model if hasattr(m, "weight")]
    qkernels.nn.quantize_layers(model, 4, 4, 4)
    kinds = [type(m).__name__ for m in model if hasattr(m, "weight")]
    assert kinds == ["Conv2d", "QuantConv2d", "QuantLinear", "Linear"]
    assert all(torch.equal(w, m.weight) for w, m in zip(weights, [m for m in model if hasattr(m, "weight")]))
    out = model(torch.rand(2, 3, 8, 8))
    out.sum().backward()
    assert model[2].grad_quantizer.initialized and float(model[2].grad_quantizer.clip_ratio) <= 1.0


@pytest.mark.parametrize("kwargs,name", [(dict(wbits=1), "wbits"), (dict(abits=9), "abits"), (dict(gbits=0), "bits")])
def test_bad_bits(kwargs, name):
    with pytest.raises(ValueError, match=name):
        qkernels.nn.QuantLinear(4, 4, **kwargs)
