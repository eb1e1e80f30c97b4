"""The public gradient quantization functions (qkernels.quantize_gradient, quantize_gradient_packed, unpack_int4)
on every backend that runs here and the CUDA kernels under the emulator: randomness from PyTorch's generator
(seeds, generators, rng-state replay, nearest rounding drawing nothing), unbiasedness, the packed round trip,
non-finite gradients, and bad inputs. The per-element spec is tests/test_grad_quant_reference.py; the bit-for-bit
comparison with the reference is the contract (tests/samples_grad_quant.py)."""

import math

import pytest
import torch

import contract_hooks
import qkernels

from conftest import assert_bitwise_equal

TARGETS = contract_hooks.targets()
_on = contract_hooks.on


def _grad(shape=(64, 50), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) / torch.rand(shape, generator=g).add(0.05).sqrt()


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_generators_and_rng_state_reproduce_a_call(target):
    g = _grad()
    with _on(target):
        torch.manual_seed(3)
        first, n1 = qkernels.quantize_gradient(g, 4, 0.8)
        torch.manual_seed(3)
        again, n2 = qkernels.quantize_gradient(g, 4, 0.8)
        other, _ = qkernels.quantize_gradient(g, 4, 0.8)  # the generator moved on: another key
        state = torch.get_rng_state()
        replay_a, _ = qkernels.quantize_gradient(g, 4, 0.8)
        torch.set_rng_state(state)
        replay_b, _ = qkernels.quantize_gradient(g, 4, 0.8)
        mine = [qkernels.quantize_gradient(g, 4, 0.8, generator=torch.Generator().manual_seed(9))[0]
                for _ in range(2)]
    assert_bitwise_equal(first, again)
    assert bool(n1 == n2)
    assert not torch.equal(first, other)
    assert_bitwise_equal(replay_a, replay_b)
    assert_bitwise_equal(mine[0], mine[1])


@pytest.mark.parametrize("target", TARGETS)
def test_nearest_rounding_draws_no_randomness(target):
    g = _grad()
    state = torch.get_rng_state()
    with _on(target):
        first, _ = qkernels.quantize_gradient(g, 4, 0.8, rounding="nearest")
    assert torch.equal(torch.get_rng_state(), state)
    with _on(target):
        assert_bitwise_equal(first, qkernels.quantize_gradient(g, 4, 0.8, rounding="nearest")[0])


@pytest.mark.parametrize("target", TARGETS)
def test_stochastic_rounding_is_unbiased(target):
    """Mean of 400 calls per element against g, inside the clip range (γ = 1: nothing clips). A draw is one of
    two levels s apart: its standard deviation is at most s/2, the mean's s / (2 sqrt(400)); bound 5 of those."""
    g = torch.linspace(-1.0, 1.0, 301)
    total = torch.zeros_like(g)
    torch.manual_seed(0)
    with _on(target):
        for _ in range(400):
            total += qkernels.quantize_gradient(g, 4, 1.0)[0]
    assert float((total / 400 - g).abs().max()) <= 5 * (1.0 / 7) / (2 * math.sqrt(400))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("granularity,group_size", [("tensor", None), ("row", None), ("group", 10)])
def test_packed_codes_unpack_to_the_dequantized_gradient(target, granularity, group_size):
    g = _grad((9, 30), seed=1)
    with _on(target):
        key = torch.Generator().manual_seed(5)
        dense, n_dense = qkernels.quantize_gradient(g, 3, 0.7, "stochastic", granularity, group_size, key)
        key = torch.Generator().manual_seed(5)
        codes, scales, n_packed = qkernels.quantize_gradient_packed(g, 3, 0.7, "stochastic", granularity,
                                                                    group_size, key)
    groups = {"tensor": 1, "row": 9, "group": 27}[granularity]
    assert codes.dtype == torch.uint8 and codes.numel() == 135 and scales.shape == (groups,)
    assert_bitwise_equal(qkernels.unpack_int4(codes, scales, g.shape, g.dtype), dense)
    assert bool(n_dense == n_packed) and int(n_dense) > 0
    # codes within -3..3 at 3 bits
    nibbles = torch.stack([codes & 0xF, codes >> 4], 1).reshape(-1)[:270].to(torch.int64)
    signed = torch.where(nibbles >= 8, nibbles - 16, nibbles)
    assert int(signed.abs().max()) == 3


@pytest.mark.parametrize("target", TARGETS)
def test_non_finite_gradients_make_their_group_nan(target):
    """Documented behaviour: a group holding a NaN or an infinity is NaN throughout and clips nothing; the other
    groups are untouched by it."""
    g = _grad((4, 16), seed=2)
    g[1, 3], g[2, 0] = float("nan"), float("inf")
    with _on(target):
        out, n_clipped = qkernels.quantize_gradient(g, 4, 0.5, granularity="row")
        clean, n_clean = qkernels.quantize_gradient(g[[0, 3]].contiguous(), 4, 0.5, rounding="nearest",
                                                    granularity="row")
        near, n_near = qkernels.quantize_gradient(g, 4, 0.5, rounding="nearest", granularity="row")
    assert bool(out[1:3].isnan().all()) and bool(out[[0, 3]].isfinite().all())
    assert_bitwise_equal(near[[0, 3]], clean)
    assert int(n_near) == int(n_clean) == int(n_clipped)


@pytest.mark.parametrize("target", TARGETS)
def test_clip_ratio_as_a_device_tensor(target):
    g = _grad()
    with _on(target):
        a = qkernels.quantize_gradient(g, 4, torch.tensor(0.6), rounding="nearest")
        b = qkernels.quantize_gradient(g, 4, 0.6, rounding="nearest")
    assert_bitwise_equal(a[0], b[0])
    assert bool(a[1] == b[1])


@pytest.mark.parametrize("call,name", [
    (lambda g: qkernels.quantize_gradient(g, 1), "bits"),
    (lambda g: qkernels.quantize_gradient(g, 9), "bits"),
    (lambda g: qkernels.quantize_gradient(g, 4.0), "bits"),
    (lambda g: qkernels.quantize_gradient_packed(g, 5), "bits"),
    (lambda g: qkernels.quantize_gradient(g.int()), "`g`"),
    (lambda g: qkernels.quantize_gradient(g.double()), "`g`"),
    (lambda g: qkernels.quantize_gradient(g[:0]), "`g`"),
    (lambda g: qkernels.quantize_gradient(g, 4, 0.0), "clip_ratio"),
    (lambda g: qkernels.quantize_gradient(g, 4, 1.5), "clip_ratio"),
    (lambda g: qkernels.quantize_gradient(g, 4, float("nan")), "clip_ratio"),
    (lambda g: qkernels.quantize_gradient(g, 4, torch.tensor([0.5, 0.5])), "clip_ratio"),
    (lambda g: qkernels.quantize_gradient(g, 4, torch.tensor(1.5)), "clip_ratio"),
    (lambda g: qkernels.quantize_gradient(g, 4, 0.5, "up"), "rounding"),
    (lambda g: qkernels.quantize_gradient(g, 4, 0.5, "nearest", "column"), "granularity"),
    (lambda g: qkernels.quantize_gradient(g, 4, 0.5, "nearest", "group", 7), "group_size"),
    (lambda g: qkernels.quantize_gradient(g, 4, 0.5, "nearest", "group"), "group_size"),
    (lambda g: qkernels.quantize_gradient(g, 4, 0.5, "nearest", "row", 10), "group_size"),
    (lambda g: qkernels.quantize_gradient(g[0, 0], 4, 0.5, "nearest", "row"), "granularity"),
    (lambda g: qkernels.unpack_int4(torch.zeros(3, dtype=torch.uint8), torch.ones(1), (4, 2)), "codes"),
    (lambda g: qkernels.unpack_int4(torch.zeros(4, dtype=torch.uint8), torch.ones(3), (4, 2)), "scales"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(RuntimeError, match=name):
        call(_grad((8, 20)))


def test_quantization_errors_of_all_and_of_large_gradients():
    """E(G) and E(G_L) against a literal computation: 2000 elements, so the large set is the top 2 (k = ceil(2)),
    here three values tied at the threshold 4, all counted."""
    g = torch.linspace(-1, 1, 2000)
    g[[5, 700, 1500]] = torch.tensor([4.0, -4.0, 4.0])
    g[10] = -8.0
    g_hat = g + torch.linspace(0, 0.5, 2000)
    got = qkernels.grad_quant.quantization_errors(g, g_hat)
    errors = [abs(float(a) - float(b)) for a, b in zip(g_hat, g)]
    large = [e for e, v in zip(errors, g.tolist()) if abs(v) >= 4.0]
    assert len(large) == 4
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor([sum(errors) / 2000 / 8, sum(large) / 4 / 8], dtype=torch.float64),
                               rtol=1e-12, atol=0)  # float64 sums in another order
    zero = torch.zeros(10)
    assert torch.equal(qkernels.grad_quant.quantization_errors(zero, zero), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="same shape"):
        qkernels.grad_quant.quantization_errors(g, g_hat[:10])
    with pytest.raises(RuntimeError, match="large_fraction"):
        qkernels.grad_quant.quantization_errors(g, g_hat, 0.0)
