"""qkernels: fused CUDA, Triton and CPU kernels for quantization-aware training.

Drop-in fake-quant ops with PyTorch's exact numerics (see README, "Numerics contract"):

    qkernels.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)
    qkernels.fake_quantize_per_channel_affine(x, scale, zero_point, axis, quant_min, quant_max)
    qkernels.fake_quantize_learnable_per_{tensor,channel,group}_affine(...)   (LSQ: learnable scale/zero point)
    qkernels.fused_moving_avg_obs_fake_quant(...)                               (observer + fake quant)

Backends are chosen per call (``QKERNELS_BACKEND`` or ``qkernels.use_backend``); ``qkernels.patch_torch()``
routes existing ``torch.fake_quantize_*`` calls here. ``python -m qkernels.info`` tells what is live.
"""

import sys as _sys

import torch as _torch

if tuple(int(p) for p in _torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
    raise ImportError(f"qkernels needs torch >= 2.6, found {_torch.__version__}")

from . import backends, fake_quant, fake_quant_learnable, reference  # noqa: E402
from .backends import use_backend  # noqa: E402
from .fake_quant import (  # noqa: E402
    _fake_quantize_per_tensor_affine_cachemask_tensor_qparams,
    fake_quantize_cachemask_backward,
    fake_quantize_per_channel_affine,
    fake_quantize_per_channel_affine_cachemask,
    fake_quantize_per_tensor_affine,
    fake_quantize_per_tensor_affine_cachemask,
    packed_masks,
)
from .fused_observer import fused_moving_avg_obs_fake_quant  # noqa: E402
from .oscillation_fake_quant import OscillationState, new_oscillation_state, oscillation_fake_quantize  # noqa: E402
from .oscillation_dampening import oscillation_dampening  # noqa: E402
from .oscillation_regularizer import oscillation_regularizer  # noqa: E402
from .grad_quant import quantize_gradient, quantize_gradient_packed, unpack_int4  # noqa: E402
from .fake_quant_learnable import (  # noqa: E402
    fake_quantize_learnable_per_channel_affine,
    fake_quantize_learnable_per_group_affine,
    fake_quantize_learnable_per_tensor_affine,
    lsq_grad_factor,
)
from .patch import patch_torch, patched_torch, unpatch_torch  # noqa: E402
from . import nn, qconfig  # noqa: E402  (torch.ao-compatible modules and qconfigs)
from . import oscillation  # noqa: E402  (Nagel et al.'s oscillation helpers)
from . import ptq  # noqa: E402  (max-abs weight PTQ at any bit width, Wenshøj et al.)
from .oscillation import bn_reestimate  # noqa: E402

# The families' public modules under their former names, kept for the public API: qkernels.ops is
# qkernels.fake_quant, qkernels.learnable is qkernels.fake_quant_learnable (both import forms work).
ops, learnable = fake_quant, fake_quant_learnable
_sys.modules[f"{__name__}.ops"], _sys.modules[f"{__name__}.learnable"] = ops, learnable

__version__ = "0.1.0"

__all__ = [
    "backends",
    "ops",
    "nn",
    "oscillation",
    "ptq",
    "bn_reestimate",
    "qconfig",
    "reference",
    "use_backend",
    "fake_quantize_per_tensor_affine",
    "fake_quantize_per_channel_affine",
    "fake_quantize_per_tensor_affine_cachemask",
    "fake_quantize_per_channel_affine_cachemask",
    "fake_quantize_cachemask_backward",
    "_fake_quantize_per_tensor_affine_cachemask_tensor_qparams",
    "packed_masks",
    "fake_quantize_learnable_per_tensor_affine",
    "fake_quantize_learnable_per_channel_affine",
    "fake_quantize_learnable_per_group_affine",
    "lsq_grad_factor",
    "fused_moving_avg_obs_fake_quant",
    "OscillationState",
    "new_oscillation_state",
    "oscillation_fake_quantize",
    "oscillation_dampening",
    "oscillation_regularizer",
    "quantize_gradient",
    "quantize_gradient_packed",
    "unpack_int4",
    "patch_torch",
    "unpatch_torch",
    "patched_torch",
]
