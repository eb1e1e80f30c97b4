"""Contract samples of the gradient quantization family (qkernels.quantize_gradient / quantize_gradient_packed:
Kim et al.'s clipped low-bit grid with nearest or stochastic rounding), checked by tests/test_contract.py against
qkernels.reference.grad_quant.

Stochastic samples draw their key from an explicit generator seeded in the call, so every backend and the
reference see the same key (the draw of an element depends on the key and its flat index only). Heavy-tailed
gradients (a normal over the root of a uniform), per tensor, per row and per group, dequantized and packed, clip
ratios below 1 (so that values clip), repeated values (ties at the max); one sample with an all-zero row and
non-finite rows. The bad inputs are
tested in tests/test_grad_quant.py.
"""

import torch

import qkernels
from contract import Sample
from qkernels.reference import grad_quant as ref
from qkernels.reference.philox import draw_key

FAMILY = "grad_quant"
SEED = 20240712


def _make(shape, seed, specials=False):
    def make(device, dtype):
        g = torch.Generator().manual_seed(seed)
        t = torch.randn(shape, generator=g, dtype=torch.float64)
        # heavy tails: t-like values (a normal over the root of a chi-square-like scale)
        scale = torch.rand(shape, generator=g, dtype=torch.float64).add(0.05).pow(-0.5)
        values = t * scale * 1e-3
        flat = values.view(-1)
        flat[::17] = flat[::17].round(decimals=4)  # repeated values: ties at the max and at the clip value
        if specials:
            rows = values.view(shape[0], -1)
            rows[0] = 0.0
            rows[1, 3] = float("nan")
            rows[2, 5] = float("inf")
            rows[3, 0] = -float("inf")
        return dict(g=values.to(dtype).to(device))
    return make


def _generator(device):
    return torch.Generator(device).manual_seed(SEED)


def _call(bits, clip_ratio, rounding, granularity, group_size, packed):
    def call(inputs):
        generator = _generator(inputs["g"].device) if rounding == "stochastic" else None
        args = (inputs["g"], bits, clip_ratio, rounding, granularity, group_size, generator)
        if packed:
            codes, scales, n_clipped = qkernels.quantize_gradient_packed(*args)
            return dict(y=codes, scales=scales, n_clipped=n_clipped)
        g_hat, n_clipped = qkernels.quantize_gradient(*args)
        return dict(y=g_hat, n_clipped=n_clipped)
    return call


def _expected(bits, clip_ratio, rounding, granularity, group_size, packed):
    def expected(inputs, target):
        g = inputs["g"]
        n = ref.group_len(g.shape, granularity, group_size)
        key = draw_key(g.device, _generator(g.device)) if rounding == "stochastic" else None
        k, scales, n_clipped = ref.quantize(g, bits, clip_ratio, rounding, n, key)
        if packed:
            return dict(y=ref.pack_int4(k), scales=scales, n_clipped=n_clipped)
        return dict(y=ref.dequantize(k, scales, n, g.dtype), n_clipped=n_clipped)
    return expected


def _ops(bits, clip_ratio, rounding, granularity, group_size, packed):
    def ops(inputs):
        g = inputs["g"]
        n = ref.group_len(g.shape, granularity, group_size)
        key = draw_key(g.device, _generator(g.device)) if rounding == "stochastic" else None
        return [(torch.ops.qkernels.grad_quant.default,
                 (g, bits, torch.tensor(clip_ratio, device=g.device), n, key, packed))]
    return ops


def _sample(name, shape, seed, bits, clip_ratio, rounding, granularity, group_size=None, packed=False,
            specials=False, compile=False):
    spec = (bits, clip_ratio, rounding, granularity, group_size, packed)
    return Sample(name, _make(shape, seed, specials), _call(*spec), _expected(*spec),
                  ops=None if specials else _ops(*spec), compile=compile, narrowed=() if packed else ("y",))


SAMPLES = [
    _sample("tensor_nearest", (33, 70), 1, 4, 0.6, "nearest", "tensor", compile=True),
    _sample("tensor_stochastic", (40000,), 2, 4, 0.7, "stochastic", "tensor"),
    _sample("row_stochastic_b8", (16, 3, 5, 5), 3, 8, 0.9, "stochastic", "row"),
    _sample("group_stochastic_packed", (12, 48), 4, 4, 0.5, "stochastic", "group", group_size=16, packed=True),
    _sample("row_packed_odd_b3", (7, 9), 5, 3, 0.8, "stochastic", "row", packed=True),
    _sample("row_specials", (6, 20), 6, 4, 0.5, "stochastic", "row", specials=True),
    _sample("tensor_nearest_packed_b2", (5, 13), 7, 2, 1.0, "nearest", "tensor", packed=True),
]

BAD_INPUTS = []
