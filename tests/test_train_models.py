"""qkernels.train.models: shapes on digits- and CIFAR-shaped input, backward, the structure each model promises,
and what the quantization helper relies on (plain layers, registration order = forward order)."""

import pytest
import torch
from torch import nn

from qkernels.train import models

SHAPES = {"digits": (1, 8, 10), "cifar100": (3, 32, 100)}  # in_channels, image_size, num_classes
ALLOWED_LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.MaxPool2d,
                  nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batches of two are too small to gain from intra-op threads, and on a busy machine those threads wait
    for each other (measured: 40 s instead of 4 s for these tests under a load of 3 on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _forward_order(model: nn.Module, x: torch.Tensor) -> list:
    """The Conv2d/Linear modules in the order a forward pass calls them."""
    calls = []
    hooks = [m.register_forward_hook(lambda mod, args, out: calls.append(mod)) for m in _layers(model)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", models.MODELS)
def test_forward_backward_and_layout(name, shape):
    c, size, classes = shape
    torch.manual_seed(0)
    model = models.build(name, c, size, classes)
    x = torch.randn(2, c, size, size)
    out = model(x)
    assert out.shape == (2, classes) and out.dtype == torch.float32
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())

    for m in model.modules():
        if not list(m.children()):
            assert isinstance(m, ALLOWED_LEAVES), type(m)
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            assert not m.inplace
    layers = _layers(model)
    first, last = layers[0], layers[-1]
    assert (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features) == (
        c if isinstance(first, nn.Conv2d) else c * size * size)
    assert isinstance(last, nn.Linear) and last.out_features == classes
    model.eval()
    with torch.no_grad():
        called = _forward_order(model, x)
        assert torch.equal(model(x), model(x))
    assert called == layers  # each layer once, in registration order
    for m in model.modules():  # a ReLU object is used once, so a per-activation observer sees one tensor
        if isinstance(m, nn.Sequential):
            acts = [a for a in m if isinstance(a, (nn.ReLU, nn.ReLU6))]
            assert len({id(a) for a in acts}) == len(acts)


def test_mlp_structure():
    linears = _layers(models.build("mlp", 1, 8, 10))
    assert [(l.in_features, l.out_features) for l in linears] == [(64, 128), (128, 128), (128, 10)]


def test_cnn_structure():
    model = models.build("cnn", 1, 8, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == [
        (1, 32, (3, 3)), (32, 32, (3, 3)), (32, 64, (3, 3)), (64, 64, (3, 3))]
    assert all(m.bias is None for m in convs)  # each is followed by BatchNorm
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 1


def test_resnet20_structure():
    model = models.build("resnet20", 3, 32, 10)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < n_params < 0.28e6  # the paper's 0.27M, plus option B's two 1x1 shortcut convs
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 21  # stem + 9 blocks x 2 + 2 shortcuts
    assert [m.kernel_size for _, m in convs].count((3, 3)) == 19
    shortcuts = [(i, m) for i, (name, m) in enumerate(convs) if m.kernel_size == (1, 1)]
    assert [(m.in_channels, m.out_channels, m.stride) for _, m in shortcuts] == [(16, 32, (2, 2)), (32, 64, (2, 2))]
    for i, m in shortcuts:  # after both main convs of its own block, whose first conv has the same stride
        assert convs[i - 2][1].stride == m.stride and convs[i - 1][1].out_channels == m.out_channels
    assert sorted({m.out_channels for _, m in convs}) == [16, 32, 64]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    feature = []
    convs[-1][1].register_forward_hook(lambda mod, args, out: feature.append(out.shape))
    model(torch.randn(2, 3, 32, 32))
    assert feature == [(2, 64, 8, 8)]


def test_resnet18_structure():
    model = models.build("resnet18", 3, 32, 10)
    n_params = sum(p.numel() for p in model.parameters())
    assert 11.1e6 < n_params < 11.3e6  # the CIFAR ResNet-18's 11.17M with 10 classes
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20  # stem + 8 blocks x 2 + 3 shortcuts
    assert [m.kernel_size for m in convs].count((3, 3)) == 17
    assert convs[0].stride == (1, 1) and convs[0].out_channels == 64  # the CIFAR stem: no stride, no max-pool
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    shortcuts = [(i, m) for i, m in enumerate(convs) if m.kernel_size == (1, 1)]
    assert [(m.in_channels, m.out_channels, m.stride) for _, m in shortcuts] == [
        (64, 128, (2, 2)), (128, 256, (2, 2)), (256, 512, (2, 2))]
    for i, m in shortcuts:  # after both main convs of its own block, whose first conv has the same stride
        assert convs[i - 2].stride == m.stride and convs[i - 1].out_channels == m.out_channels
    assert sorted({m.out_channels for m in convs}) == [64, 128, 256, 512]
    feature = []
    convs[-1].register_forward_hook(lambda mod, args, out: feature.append(out.shape))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert feature == [(2, 512, 4, 4)]


def test_mobilenetv2_structure():
    model = models.build("mobilenetv2", 3, 32, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1]
    assert len(depthwise) == 1 + 2 + 3 + 4 + 3 + 3 + 1  # one per inverted residual block (n of the table)
    assert all(m.groups == m.in_channels == m.out_channels and m.kernel_size == (3, 3) for m in depthwise)
    assert sum(m.stride == (2, 2) for m in convs) == 3  # CIFAR strides: 32x32 -> 4x4
    assert convs[0].stride == (1, 1) and (convs[-1].out_channels, convs[-1].kernel_size) == (1280, (1, 1))
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) > 0
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    feature = []
    convs[-1].register_forward_hook(lambda mod, args, out: feature.append(out.shape))
    model(torch.randn(2, 3, 32, 32))
    assert feature == [(2, 1280, 4, 4)]
    assert 2.0e6 < sum(p.numel() for p in model.parameters()) < 2.5e6  # ~2.2M with 10 classes


def test_build_is_deterministic_under_manual_seed():
    for name in models.MODELS:
        torch.manual_seed(0)
        a = models.build(name, 3, 32, 10).state_dict()
        torch.manual_seed(0)
        b = models.build(name, 3, 32, 10).state_dict()
        torch.manual_seed(1)
        c = models.build(name, 3, 32, 10).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert not all(torch.equal(a[k], c[k]) for k in a), name


def test_bad_arguments():
    with pytest.raises(ValueError, match="name.*vgg"):
        models.build("vgg", 3, 32, 10)
    for kwargs, arg in (({"in_channels": 0}, "in_channels"), ({"image_size": 2.5}, "image_size"),
                        ({"num_classes": True}, "num_classes")):
        args = {"in_channels": 3, "image_size": 32, "num_classes": 10, **kwargs}
        with pytest.raises(ValueError, match=arg):
            models.build("cnn", **args)
    with pytest.raises(ValueError, match="image_size"):
        models.build("cnn", 1, 1, 10)
