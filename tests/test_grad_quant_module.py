"""qkernels.nn.GradientQuantizer (identity forward, quantized gradient backward, the adaptive interval) and
qkernels.grad_quant.update_clip_ratio / initial_clip_ratio against the reference (tests/test_grad_quant_reference.py
checks that against the released code)."""

import pytest
import torch

import qkernels
from qkernels.grad_quant import initial_clip_ratio, update_clip_ratio
from qkernels.reference import grad_quant as ref

from conftest import assert_bitwise_equal


def _grad(shape=(32, 8, 6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) / torch.rand(shape, generator=g).add(0.02).sqrt()


def _backward_through(module, grad):
    # (no draw from the default generator: the key comes next)
    x = torch.arange(grad.numel(), dtype=torch.float32).reshape(grad.shape).requires_grad_()
    y = module(x)
    assert torch.equal(y, x)  # identity forward
    y.backward(grad)
    return x.grad


@pytest.mark.parametrize("init", ["lbt", "quantile", "none"])
def test_adaptive_quantizer_initialises_quantizes_and_updates(init):
    module = qkernels.nn.GradientQuantizer(bits=4, init=init)
    grads = [_grad(seed=s) for s in range(4)]
    gamma = 1.0 if init == "none" else initial_clip_ratio(grads[0], 4, init)
    for step, g in enumerate(grads):
        torch.manual_seed(step)
        got = _backward_through(module, g)
        torch.manual_seed(step)
        want, n_clipped = qkernels.quantize_gradient(g, 4, gamma)
        assert_bitwise_equal(got, want)
        gamma = ref.update_clip_ratio(torch.tensor(gamma), n_clipped, g.numel(), g.abs().amax(), 4)
        assert torch.equal(module.clip_ratio, gamma), step
        gamma = float(gamma)
    assert bool(module.initialized)


def test_fixed_interval_and_full_precision():
    g = _grad()
    fixed = qkernels.nn.GradientQuantizer(bits=3, interval="fixed", clip_ratio=0.8, rounding="nearest")
    got = _backward_through(fixed, g)
    assert_bitwise_equal(got, qkernels.quantize_gradient(g, 3, 0.8, rounding="nearest")[0])
    assert float(fixed.clip_ratio) == pytest.approx(0.8)
    assert torch.equal(_backward_through(qkernels.nn.GradientQuantizer(bits=32), g), g)


def test_state_dict_round_trip_keeps_the_interval():
    module = qkernels.nn.GradientQuantizer(bits=4)
    _backward_through(module, _grad())
    state = module.state_dict()
    assert set(state) == {"clip_ratio", "initialized"}
    fresh = qkernels.nn.GradientQuantizer(bits=4)
    fresh.load_state_dict(state)
    g = _grad(seed=7)
    torch.manual_seed(1)
    a = _backward_through(module, g)
    torch.manual_seed(1)
    b = _backward_through(fresh, g)  # no second initialisation: it continues from the loaded γ
    assert_bitwise_equal(a, b)
    assert torch.equal(module.clip_ratio, fresh.clip_ratio)


def test_update_skips_all_zero_gradients_and_clamps():
    gamma = torch.tensor(0.5)
    update_clip_ratio(gamma, torch.tensor(0), 100, torch.zeros(1), 4)
    assert float(gamma) == 0.5
    update_clip_ratio(gamma, torch.tensor(0), 100, torch.ones(1), 4)
    assert float(gamma) == pytest.approx(0.499)
    top = torch.tensor(1.0)
    update_clip_ratio(top, torch.tensor(50), 100, torch.ones(1), 4)
    assert float(top) == 1.0


@pytest.mark.parametrize("kwargs,name", [
    (dict(bits=1), "bits"), (dict(bits=9), "bits"), (dict(interval="auto"), "interval"), (dict(init="x"), "init"),
    (dict(clip_ratio=0.0), "clip_ratio"), (dict(clip_ratio=1.5), "clip_ratio"), (dict(rounding="up"), "rounding"),
    (dict(granularity="column"), "granularity"), (dict(gamma_min=0.0), "gamma_min"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        qkernels.nn.GradientQuantizer(**kwargs)
    with pytest.raises(RuntimeError, match="clip_ratio"):
        update_clip_ratio(torch.tensor(0.5, dtype=torch.float64), torch.tensor(0), 10, torch.ones(1), 4)


def _rank_gradient(rank):
    return torch.randn(4096, generator=torch.Generator().manual_seed(rank)) * (1 + 3 * rank)


def _ranked_update(rank, world, path, out):
    """One rank: a different clipped count per rank, which the update sums; and a GradientQuantizer's first
    gradient, different per rank (gloo)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        gamma = torch.tensor(0.5)
        update_clip_ratio(gamma, torch.tensor([0, 3][rank]), 10000, torch.tensor([0.0, 2.0][rank]).reshape(1), 4)
        # eta 1e-9: the update after the init moves γ by less than float32 resolves, to see the init alone
        quantizer = qkernels.nn.GradientQuantizer(4, rounding="nearest", init="quantile", eta=1e-9)
        x = torch.zeros(4096, requires_grad=True)
        quantizer(x).backward(_rank_gradient(rank))
        torch.save((gamma, quantizer.clip_ratio), f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_sum_their_counts_so_the_interval_stays_the_same(tmp_path):
    """Rank 0 clipped nothing of an all-zero gradient (alone: no step), rank 1 three of 10000 (alone: up). Summed,
    R = 3 / 20000 > 1e-3 / 15 and the largest max is non-zero: both ranks step up, to the same γ. A quantizer's
    first-batch γ is the mean of the ranks' own (which differ: their gradients do)."""
    torch.multiprocessing.spawn(_ranked_update, args=(2, tmp_path / "store", tmp_path / "gamma"), nprocs=2)
    saved = [torch.load(tmp_path / f"gamma.{rank}") for rank in range(2)]
    assert torch.equal(saved[0][0], saved[1][0]) and float(saved[0][0]) == pytest.approx(0.501)
    own = [initial_clip_ratio(_rank_gradient(rank), 4, "quantile") for rank in range(2)]
    assert own[0] != own[1]
    assert torch.equal(saved[0][1], saved[1][1])
    assert float(saved[0][1]) == pytest.approx((own[0] + own[1]) / 2, rel=1e-6)
