"""The shapes a benchmark run covers: a size sweep, or a registry of real layers' shapes.

Sweep: element counts, by default powers of two from 2^16 (64K) to 2^28 (256M), capped by memory (see
``fits``); ``--sizes`` takes counts (``1048576``) or powers (``2^20``). Each op lays a count out its own way
(``Op.sweep_shape``: 1-D for per-tensor ops, [256, n / 256] per channel, ...).

Registry (``--shapes resnet18,mobilenetv2,llm``): each ``Shape`` is a weight (output channels first) or an
activation at batch 256 (or 8192 tokens for ``llm``); an op takes the kinds it applies to (``Op.kinds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

SWEEP = tuple(1 << k for k in range(16, 29, 2))  # 64K ... 256M, every factor of 4
QUICK = (1 << 12, 1 << 14)
BATCH = 256


@dataclass(frozen=True)
class Shape:
    """A named tensor shape: ``kind`` ``"weight"`` or ``"activation"``; ``set`` the registry entry."""

    name: str
    dims: tuple
    kind: str
    set: str = "sweep"

    @property
    def numel(self) -> int:
        return prod(self.dims)

    @property
    def label(self) -> str:
        return self.name if self.set == "sweep" else f"{self.name} {'x'.join(map(str, self.dims))}"


def _weights(set_name: str, entries: dict) -> list:
    return [Shape(name, dims, "weight", set_name) for name, dims in entries.items()]


def _activations(set_name: str, entries: dict) -> list:
    return [Shape(name, dims, "activation", set_name) for name, dims in entries.items()]


REGISTRY = {
    # ImageNet ResNet-18: one weight per stage, the classifier; each stage's activation at batch 256
    "resnet18": _weights("resnet18", {
        "conv1.weight": (64, 3, 7, 7), "layer1.conv.weight": (64, 64, 3, 3), "layer2.conv.weight": (128, 128, 3, 3),
        "layer3.conv.weight": (256, 256, 3, 3), "layer4.conv.weight": (512, 512, 3, 3), "fc.weight": (1000, 512),
    }) + _activations("resnet18", {
        "layer1.act": (BATCH, 64, 56, 56), "layer2.act": (BATCH, 128, 28, 28), "layer3.act": (BATCH, 256, 14, 14),
        "layer4.act": (BATCH, 512, 7, 7),
    }),
    # ImageNet MobileNetV2: depthwise (one input channel per group) and pointwise weights, and activations
    "mobilenetv2": _weights("mobilenetv2", {
        "dw144.weight": (144, 1, 3, 3), "dw960.weight": (960, 1, 3, 3), "pw96to576.weight": (576, 96, 1, 1),
        "pw960to320.weight": (320, 960, 1, 1), "classifier.weight": (1000, 1280),
    }) + _activations("mobilenetv2", {
        "block2.expand.act": (BATCH, 144, 56, 56), "block14.expand.act": (BATCH, 960, 7, 7),
        "block3.project.act": (BATCH, 32, 28, 28),
    }),
    # transformer linears; activations as 8192 tokens (e.g. 4 sequences of 2048)
    "llm": _weights("llm", {
        "linear4096.weight": (4096, 4096), "linear8192.weight": (8192, 8192), "mlp.up.weight": (11008, 4096),
    }) + _activations("llm", {
        "hidden4096.act": (8192, 4096), "mlp11008.act": (8192, 11008),
    }),
}


def sweep(sizes=SWEEP) -> list:
    """A ``Shape`` per element count (its dims: the count; each op lays it out)."""
    return [Shape(size_label(n), (n,), "sweep") for n in sizes]


def registry(names) -> list:
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"--shapes: unknown {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    return [shape for name in names for shape in REGISTRY[name]]


def parse_size(text: str) -> int:
    """``"2^20"`` or ``"1048576"`` as an element count (positive)."""
    try:
        value = 1 << int(text[2:]) if text.startswith("2^") else int(text)
    except ValueError:
        raise ValueError(f"--sizes: expected a count such as 1048576 or 2^20, got {text!r}") from None
    if value < 1:
        raise ValueError(f"--sizes: must be positive, got {text!r}")
    return value


def size_label(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n & (n - 1) == 0 else str(n)


def fits(numel: int, itemsize: int, budget_bytes: int, copies: int = 8) -> bool:
    """Whether ``copies`` tensors of ``numel`` elements (inputs, outputs, gradients, the compiled provider's
    buffers) fit the budget."""
    return numel * max(itemsize, 4) * copies <= budget_bytes
