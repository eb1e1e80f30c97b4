"""Models of the training harness: an MLP and a small CNN for digits, CIFAR-style ResNet-20, ResNet-18 and
MobileNetV2.

What the quantization helper relies on, in every model: only plain ``nn.Conv2d``, ``nn.Linear``,
``nn.BatchNorm1d/2d``, ``nn.ReLU``/``nn.ReLU6`` (never in place, one instance per use), pooling and flatten;
submodules registered in the order forward runs them, so the first registered Conv2d/Linear is the input layer
and the last registered one the classifier (``Linear(..., num_classes)``); a ResNet shortcut conv comes after
its block's main convs. Input ``[B, in_channels, image_size, image_size]`` -> logits ``[B, num_classes]``.
Weights come from the global torch RNG, so ``torch.manual_seed`` makes :func:`build` deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MODELS = ("mlp", "cnn", "resnet20", "mobilenetv2", "resnet18")


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Conv (no bias: the BatchNorm after it has one) + BatchNorm, 'same' padding for odd kernels."""
    return [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]


def _mlp(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """flatten -> Linear(C*H*W, 128) -> ReLU -> Linear(128, 128) -> ReLU -> Linear(128, num_classes)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 128), nn.ReLU(),
        nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def _cnn(in_channels: int, num_classes: int) -> nn.Module:
    """Four 3x3 conv-BN-ReLU layers (C->32->32, max-pool 2, ->64->64), global average pool, Linear(64, classes).
    H x W -> H/2 x W/2 after the pool (8x8 digits -> 4x4; 32x32 -> 16x16)."""
    return nn.Sequential(
        *_conv_bn(in_channels, 32, 3), nn.ReLU(),
        *_conv_bn(32, 32, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        *_conv_bn(32, 64, 3), nn.ReLU(),
        *_conv_bn(64, 64, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, num_classes),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), convs 3x3, the first with
    `stride`. shortcut = identity, or where the shape changes (stride != 1 or cin != cout) 1x1 conv with
    `stride` + BN ("option B"), registered after the main convs. [B, cin, H, W] -> [B, cout, H/stride, W/stride]
    (rounded up)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(cout, cout, 3)
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + (x if self.shortcut is None else self.shortcut(x)))


class CifarResNet(nn.Module):
    """A ResNet for 32x32 images: a conv3x3(C, widths[0])-BN-ReLU stem (stride 1, no max-pool), one stage of
    ``depth`` basic blocks per width (the first block of every stage but the first has stride 2), global average
    pool, Linear(widths[-1], num_classes). Shortcuts are 1x1 conv-BN where the shape changes ("option B").

    - ResNet-20 (He et al. 2016, section 4.2): widths 16, 32, 64, depth 3 (32x32 -> 16x16 -> 8x8): 19 3x3
      convs + 2 shortcut convs + the Linear, ~0.27M parameters;
    - ResNet-18 (the ImageNet ResNet-18 with the CIFAR stem of the common CIFAR code): widths 64, 128, 256, 512,
      depth 2 (down to 4x4): 17 3x3 convs + 3 shortcut convs + the Linear, ~11.2M parameters."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple, depth: int):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0], 3), nn.ReLU())
        blocks, cin = [], widths[0]
        for stage, cout in enumerate(widths):
            for i in range(depth):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 (cin -> t*cin, skipped when t == 1) -> depthwise 3x3 with `stride`
    (groups = channels) -> project 1x1 (-> cout, linear: BN, no activation), ReLU6 after expand and depthwise.
    y = x + block(x) when stride == 1 and cin == cout, else block(x)."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6()]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        layers += _conv_bn(hidden, cout, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 (Sandler et al. 2018, table 2), width 1.0: conv3x3(C, 32)-BN-ReLU6 with stride 1 (not
    2), inverted residual stages (t, c, n, s) below with the second stage's stride 1 (not 2), so 32x32 ends at
    4x4 (8x8 at 1x1); conv1x1(320, 1280)-BN-ReLU6, global average pool, Linear(1280, num_classes). No dropout."""

    # expansion t, output channels c, blocks n, stride s of the first block
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, 32, 3), nn.ReLU6())
        blocks, cin = [], 32
        for t, c, n, s in self.STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(cin, 1280, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.head(self.blocks(self.stem(x))))


def _he_init(model: nn.Module) -> nn.Module:
    """He (Kaiming) normal init of the conv weights, as both papers do (fan_out, the convention for ReLU nets
    with BN); BN and Linear keep torch's defaults."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def _positive_int(value, arg: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{arg}: expected a positive int, got {value!r}")


def build(name: str, in_channels: int, image_size: int, num_classes: int) -> torch.nn.Module:
    """Model `name` (one of MODELS) for images [B, in_channels, image_size, image_size] -> logits
    [B, num_classes]; see each model's docstring. The cnn needs image_size >= 2 (its max-pool). Unknown name
    or a non-positive size -> ValueError naming the argument. Weights from the global torch RNG."""
    if name not in MODELS:
        raise ValueError(f"name: unknown model {name!r}; choose one of {', '.join(MODELS)}")
    for value, arg in ((in_channels, "in_channels"), (image_size, "image_size"), (num_classes, "num_classes")):
        _positive_int(value, arg)
    if name == "mlp":
        return _mlp(in_channels, image_size, num_classes)
    if name == "cnn":
        if image_size < 2:
            raise ValueError(f"image_size: the cnn max-pools by 2, needs >= 2, got {image_size}")
        return _he_init(_cnn(in_channels, num_classes))
    if name == "resnet20":
        return _he_init(CifarResNet(in_channels, num_classes, (16, 32, 64), 3))
    if name == "resnet18":
        return _he_init(CifarResNet(in_channels, num_classes, (64, 128, 256, 512), 2))
    return _he_init(MobileNetV2(in_channels, num_classes))
