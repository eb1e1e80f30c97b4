"""Route existing ``torch.fake_quantize_*`` calls to qkernels, and undo it.

``patch_torch()`` replaces the attributes ``torch.fake_quantize_per_tensor_affine``,
``torch.fake_quantize_per_channel_affine``, ``torch._fake_quantize_learnable_per_tensor_affine``,
``torch._fake_quantize_learnable_per_channel_affine`` and ``torch.fused_moving_avg_obs_fake_quant`` with
qkernels' drop-ins, so code that looks them up at call time (torch.ao's FakeQuantize,
FusedMovingAvgObsFakeQuantize and _LearnableFakeQuantize modules do) runs on qkernels. Names bound earlier
with ``from torch import ...``, TorchScript and C++ callers are not affected. ``unpatch_torch()`` restores
the originals; ``patched_torch()`` is the context-manager form. Patching twice is a no-op.
"""

from __future__ import annotations

import contextlib

import torch

from . import fake_quant, fused_observer
from . import fake_quant_learnable as learnable

# torch attribute -> qkernels replacement
_TARGETS = {
    "fake_quantize_per_tensor_affine": fake_quant.fake_quantize_per_tensor_affine,
    "fake_quantize_per_channel_affine": fake_quant.fake_quantize_per_channel_affine,
    "_fake_quantize_learnable_per_tensor_affine": learnable.fake_quantize_learnable_per_tensor_affine,
    "_fake_quantize_learnable_per_channel_affine": learnable.fake_quantize_learnable_per_channel_affine,
    "fused_moving_avg_obs_fake_quant": fused_observer.fused_moving_avg_obs_fake_quant,
}
_originals: dict[str, object] = {}


def is_patched() -> bool:
    return bool(_originals)


def patch_torch() -> None:
    """Make the torch fake-quant functions listed above run on qkernels until ``unpatch_torch()``."""
    if _originals:
        return
    for name, replacement in _TARGETS.items():
        _originals[name] = getattr(torch, name)
        setattr(torch, name, replacement)


def unpatch_torch() -> None:
    """Restore the torch functions replaced by ``patch_torch()``."""
    for name, original in _originals.items():
        setattr(torch, name, original)
    _originals.clear()


@contextlib.contextmanager
def patched_torch():
    """``with qkernels.patched_torch(): ...`` patches for the block; nested use keeps the outer patch."""
    already = is_patched()
    patch_torch()
    try:
        yield
    finally:
        if not already:
            unpatch_torch()
