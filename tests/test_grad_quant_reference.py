"""The spec of the gradient quantizer of Kim et al. 2024 (qkernels.reference.grad_quant): the grid, stochastic
rounding's unbiasedness and reproducibility, the clipped count, the packed int4 layout, non-finite groups, and
the interval update and first-batch initialisation against step-by-step transcriptions of the released code
(note §3). The kernels of the family will be tested against this reference."""

import math

import numpy as np
import pytest
import torch

from qkernels.reference import grad_quant as gq
from qkernels.reference import philox


def _key(seed):
    return torch.tensor([seed, 12345], dtype=torch.int64)


@pytest.mark.parametrize("rounding", gq.ROUNDINGS)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("granularity,n", [("tensor", 600), ("row", 60), ("group", 12)])
def test_every_value_on_the_grid_and_clipped_to_the_bound(rounding, bits, granularity, n):
    g = torch.distributions.StudentT(3.0).sample((10, 60), ) * 1e-3
    assert gq.group_len(g.shape, granularity, 12) == n
    k, scales, n_clipped = gq.quantize(g, bits, 0.7, rounding, n, _key(1))
    L = gq.levels(bits)
    assert torch.equal(k, k.round()) and int(k.abs().max()) <= L
    groups = g.reshape(-1, n)
    c = 0.7 * groups.abs().amax(1, keepdim=True)  # float32, as the spec's γ · m
    assert torch.equal(scales, (c / L).reshape(-1))
    clipped = groups.abs() > c
    assert int(n_clipped) == int(clipped.sum()) > 0
    # clipped values are exactly the bound, ±L · s (c up to the rounding of s = c / L)
    kg = k.reshape(-1, n)
    assert torch.equal(kg[clipped], L * torch.sign(groups[clipped]))
    ghat = gq.dequantize(k, scales, n, torch.float32).reshape(-1, n)
    bound = (L * scales).reshape(-1, 1).expand_as(ghat)
    assert torch.equal(ghat[clipped].abs(), bound[clipped])
    # inside the range: one of the two neighbouring levels (nearest: the nearer, half to even)
    v = groups / (c / L)
    inside = ~clipped
    assert bool(((kg - torch.floor(v)).abs() <= 1)[inside].all())
    if rounding == "nearest":
        assert torch.equal(kg[inside], torch.round(v)[inside])


def test_zero_stays_zero():
    g = torch.zeros(3, 8)
    g[1, 2] = 0.5  # one non-zero group (per row) beside all-zero ones, and zeros inside it
    k, scales, n_clipped = gq.quantize(g, 4, 1.0, "stochastic", 8, _key(3))
    assert torch.equal(scales, torch.tensor([0.0, 0.5 / 7, 0.0]))
    ghat = gq.dequantize(k, scales, 8, torch.float32)
    assert torch.equal(ghat == 0, g == 0) and float(ghat[1, 2]) == pytest.approx(0.5) and int(n_clipped) == 0


def test_stochastic_rounding_is_unbiased_inside_the_range():
    """Mean of 4000 draws per element against g. Each draw is one of two levels s apart, so a draw's standard
    deviation is at most s/2 and the mean's at most s / (2 sqrt(D)); the bound is 5 of those (about 6e-7 of
    missing per element, and 80 elements)."""
    g = torch.linspace(-0.93, 0.97, 80)
    draws = 4000
    total = torch.zeros_like(g)
    for seed in range(draws):
        k, scales, _ = gq.quantize(g, 4, 1.0, "stochastic", g.numel(), _key(seed))
        total += gq.dequantize(k, scales, g.numel(), torch.float32)
    s = float(scales[0])
    assert float((total / draws - g).abs().max()) <= 5 * s / (2 * math.sqrt(draws))


def test_the_same_key_gives_the_same_bits_and_keys_differ():
    g = torch.randn(1000)
    first = gq.quantize(g, 4, 0.9, "stochastic", 1000, _key(7))[0]
    assert torch.equal(first, gq.quantize(g, 4, 0.9, "stochastic", 1000, _key(7))[0])
    assert not torch.equal(first, gq.quantize(g, 4, 0.9, "stochastic", 1000, _key(8))[0])
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = gq.quantize(g, 4, 0.9, "stochastic", 1000, philox.draw_key("cpu"))[0]
    torch.set_rng_state(state)
    assert torch.equal(a, gq.quantize(g, 4, 0.9, "stochastic", 1000, philox.draw_key("cpu"))[0])


def test_the_draw_of_an_element_does_not_depend_on_the_granularity():
    """r is a function of the key and the flat index only: the same fractional position rounds the same way
    whatever the grouping (here every group has the same max, so v is the same in every layout)."""
    g = torch.rand(4, 16) * 0.9
    g[:, 0] = 1.0  # every row (and group of 8) has max 1: the same s in every layout
    g[:, 8] = 1.0
    layouts = [gq.quantize(g, 4, 1.0, "stochastic", n, _key(11))[0] for n in (64, 16, 8)]
    assert torch.equal(layouts[0], layouts[1]) and torch.equal(layouts[1], layouts[2])


def test_clipped_count_is_strict_at_ties():
    g = torch.tensor([2.0, -2.0, 1.0, -1.0, 1.0000001, -0.5, 0.0, 1.0])  # γ = 0.5: c = 1.0 exactly
    _, _, n_clipped = gq.quantize(g, 4, 0.5, "nearest", 8)
    assert int(n_clipped) == 3  # ±2 and 1.0000001; the three at exactly ±c are not clipped
    _, _, n_clipped = gq.quantize(g, 4, 1.0, "nearest", 8)
    assert int(n_clipped) == 0  # ties at the max itself


def test_packed_int4_layout_and_round_trip():
    k = torch.tensor([[-7.0, 7.0, 0.0], [1.0, -1.0, 3.0], [-8.0 + 1, 2.0, 5.0]])
    packed = gq.pack_int4(k)
    # low nibble first, two's complement: (-7, 7) -> 0x79, (0, 1) -> 0x10, (-1, 3) -> 0x3F, (-7, 2) -> 0x29,
    # (5, pad 0) -> 0x05
    assert packed.tolist() == [0x79, 0x10, 0x3F, 0x29, 0x05] and packed.dtype == torch.uint8
    scales = torch.tensor([0.25, 0.5, 2.0])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert torch.equal(gq.unpack_int4(packed, scales, (3, 3), dtype), gq.dequantize(k, scales, 3, dtype))
    g = torch.randn(7, 9)
    k, scales, _ = gq.quantize(g, 3, 0.8, "stochastic", 9, _key(2))
    assert torch.equal(gq.unpack_int4(gq.pack_int4(k), scales, g.shape, torch.float32),
                       gq.dequantize(k, scales, 9, torch.float32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_group_is_nan_and_clips_nothing(bad):
    g = torch.randn(3, 5)
    g[1, 3] = bad
    k, scales, n_clipped = gq.quantize(g, 4, 0.5, "stochastic", 5, _key(4))
    ghat = gq.dequantize(k, scales, 5, torch.float32)
    assert bool(ghat[1].isnan().all()) and bool(scales[1].isnan()) and bool((k[1] == 0).all())
    assert bool(ghat[[0, 2]].isfinite().all())
    finite = g[[0, 2]]
    assert int(n_clipped) == int((finite.abs() > 0.5 * finite.abs().amax(1, keepdim=True)).sum())


def _official_update(gamma, g, bits):
    """The released ``update_interval`` step (note §3.1), as its torch code: float32 tensors."""
    gmax = g.abs().max()
    if gmax != 0:
        ratio = (g.abs() > gamma * gmax).float().mean()
        gamma = gamma + 0.001 * torch.sign(ratio - 1e-3 / (2 ** bits - 1))
        gamma = torch.clamp(gamma, 0.001, 1)
    return gamma


def test_interval_update_follows_the_released_code_step_by_step():
    generator = torch.Generator().manual_seed(0)
    gamma_ref = gamma = torch.tensor(0.3)
    t = torch.distributions.StudentT(torch.tensor(3.0))
    moves = []
    for step in range(300):
        scale = 10.0 ** float(torch.rand((), generator=generator) * 4 - 2)
        g = t.sample((65536,)) * scale if step % 50 else torch.zeros(65536)  # some all-zero gradients: no step
        _, _, n_clipped = gq.quantize(g, 4, gamma, "nearest", g.numel())
        new = gq.update_clip_ratio(gamma, n_clipped, g.numel(), g.abs().amax(), 4)
        gamma_ref = _official_update(gamma_ref, g, 4)
        assert torch.equal(new, gamma_ref), step
        moves.append(float(torch.sign(new - gamma)))
        gamma = new
    assert {-1.0, 0.0, 1.0} <= set(moves)  # steps both ways, and none on the all-zero gradients


def _official_init(g, bits):
    """The released first-batch loop (note §3.3), as its torch code: float32 tensors."""
    gmax = g.abs().max()
    gamma, ema, t = torch.tensor(1.0), torch.tensor(0.0), 0
    while t <= 0:
        ratio = (g.abs() > gamma * gmax).float().mean()
        ema = 0.999 * ema + 0.001 * ratio
        t = torch.sign(ema - 1e-3 / (2 ** bits - 1))
        gamma = gamma + 0.001 * t
    return float(torch.clamp(gamma, 0.001, 1))


@pytest.mark.parametrize("bits", [4, 8])
def test_first_batch_initialisation_follows_the_released_loop(bits):
    g = torch.distributions.StudentT(torch.tensor(3.0)).sample((20000,))
    got = gq.initial_clip_ratio(g, bits)
    assert got == _official_init(g, bits)
    exact = gq.initial_clip_ratio(g, bits, "quantile")
    assert got < exact  # the released loop overshoots below the exact quantile (note §3.3)
    ratio = float((g.abs() > exact * g.abs().max()).float().mean())
    assert ratio == pytest.approx(gq.target_ratio(bits), abs=2 / g.numel())
    assert gq.initial_clip_ratio(g, bits, "none") == 1.0


def _large_error(g, ghat):
    """E(G_L) of note §2.1: mean |ĝ − g| / max|g| over the top 0.1 % of |g|."""
    a = g.abs()
    large = a >= torch.quantile(a, 0.999)
    return float(((ghat - g).abs()[large] / a.max()).mean())


def test_adaptive_interval_lowers_the_error_of_large_gradients_on_heavy_tails():
    """Student-t(3) gradients of 2^18 elements (a conv output at a small batch): the adaptive γ (from the
    quantile initialisation, then 80 updates) quantizes the large gradients with a lower E(G_L) than fixed
    γ = 1, 0.8 and 0.6, averaged over the next 40 iterations (the same gradients and draws for every interval).
    At this size the clipped fraction's target puts γ near 0.4 (measured: E(G_L) 0.028 adaptive against 0.048,
    0.040, 0.032)."""
    t = torch.distributions.StudentT(torch.tensor(3.0))
    torch.manual_seed(0)
    n = 1 << 18
    gamma = None
    errors = {"adaptive": [], 1.0: [], 0.8: [], 0.6: []}
    for step in range(120):
        g, key = t.sample((n,)), _key(step)
        if gamma is None:
            gamma = torch.tensor(gq.initial_clip_ratio(g, 4, "quantile"))
        for name in errors if step >= 80 else ["adaptive"]:  # the fixed intervals have no state to warm up
            ratio = gamma if name == "adaptive" else name
            k, scales, n_clipped = gq.quantize(g, 4, ratio, "stochastic", n, key)
            if step >= 80:
                errors[name].append(_large_error(g, gq.dequantize(k, scales, n, torch.float32)))
            if name == "adaptive":
                gamma = gq.update_clip_ratio(gamma, n_clipped, n, g.abs().amax(), 4)
    mean = {name: float(np.mean(v)) for name, v in errors.items()}
    assert mean["adaptive"] < min(mean[1.0], mean[0.8], mean[0.6]), mean
