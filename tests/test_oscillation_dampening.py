"""The fused dampening loss (Nagel et al. §4) against autograd on its explicit formula, every aggregation."""

import pytest
import torch

import qkernels

BACKENDS = ["reference"]


def _explicit(w, scale, zero_point, axis, qmin, qmax, frozen, frozen_x_int, aggregation):
    """(stopgrad(q(w)) - clamp(w, s (qmin - z), s (qmax - z)))^2 summed / K, with torch ops (autograd)."""
    shape = [1] * w.dim()
    if axis is not None:
        shape[axis] = -1
    s, z = scale.reshape(shape), zero_point.reshape(shape).float()
    x = torch.round(w.detach().float() * torch.reciprocal(s.detach())) + z
    x = torch.where(frozen, frozen_x_int.float(), x.clamp(qmin, qmax))
    target = ((x - z) * s).detach()
    clipped = torch.clamp(w.float(), (qmin - z) * s, (qmax - z) * s)
    k = {"kernel_mean": w.numel() // w.size(0), "sum": 1, "mean": w.numel()}[aggregation]
    return ((target - clipped) ** 2).sum() / k


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggregation", ["kernel_mean", "sum", "mean"])
@pytest.mark.parametrize("axis", [None, 0])
def test_value_and_gradients_match_autograd_of_the_formula(backend, aggregation, axis):
    torch.manual_seed(0)
    w = (torch.randn(6, 4, 3, 3) * 0.3)
    channels = 1 if axis is None else 6
    scale = torch.rand(channels) * 0.05 + 0.05
    zero_point = torch.zeros(channels, dtype=torch.int32)
    frozen = torch.rand(w.shape) < 0.2
    frozen_x_int = torch.randint(-4, 4, w.shape, dtype=torch.int8)
    # a frozen weight far outside the range: its clip bound is active and pulls on the scale
    w[0, 0, 0, 0], frozen[0, 0, 0, 0], frozen_x_int[0, 0, 0, 0] = 5.0, True, 1
    w[1, 0, 0, 0], frozen[1, 0, 0, 0] = -5.0, True
    ours_w, ours_s = w.clone().requires_grad_(), scale.clone().requires_grad_()
    ref_w, ref_s = w.clone().requires_grad_(), scale.clone().requires_grad_()
    with qkernels.use_backend(backend):
        loss = qkernels.oscillation_dampening(ours_w, ours_s, zero_point, axis, -4, 3, frozen, frozen_x_int,
                                              aggregation)
        (loss * 0.7).backward()
    expected = _explicit(ref_w, ref_s, zero_point, axis, -4, 3, frozen, frozen_x_int, aggregation)
    (expected * 0.7).backward()
    # sums: ours in fixed blocks finished in float64, torch's float32 sum in its own order
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours_w.grad, ref_w.grad, rtol=1e-6, atol=1e-9)  # per element, product order
    torch.testing.assert_close(ours_s.grad, ref_s.grad, rtol=1e-5, atol=1e-7)
    assert ours_s.grad.abs().sum() > 0  # the frozen weights outside the range reach the scale
    clipped = (w < -4 * scale.reshape(-1, 1, 1, 1)) | (w > 3 * scale.reshape(-1, 1, 1, 1))
    assert torch.all(ours_w.grad[clipped] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unfrozen_clipped_weights_cost_nothing(backend):
    w = torch.tensor([[10.0, -10.0, 0.05]])
    with qkernels.use_backend(backend):
        loss = qkernels.oscillation_dampening(w, torch.tensor([0.1]), torch.zeros(1), None, -4, 3,
                                              torch.zeros(w.shape, dtype=torch.bool),
                                              torch.zeros(w.shape, dtype=torch.int8), "sum")
    assert float(loss) == pytest.approx((0.1 - 0.05) ** 2, rel=1e-5)


@pytest.mark.parametrize("overrides,name", [
    (dict(aggregation="median"), "aggregation"),
    (dict(frozen=torch.zeros(3, 4, dtype=torch.uint8)), "frozen"),
    (dict(frozen_x_int=torch.zeros(4, 3, dtype=torch.int8)), "frozen_x_int"),
    (dict(quant_max=300), "quant_max"),
    (dict(weight=torch.zeros(0, 4)), "weight"),
])
def test_bad_input_names_the_argument(overrides, name):
    args = dict(weight=torch.randn(3, 4), scale=torch.ones(1), zero_point=torch.zeros(1), axis=None, quant_min=-4,
                quant_max=3, frozen=torch.zeros(3, 4, dtype=torch.bool),
                frozen_x_int=torch.zeros(3, 4, dtype=torch.int8), aggregation="sum")
    args.update(overrides)
    if "weight" in overrides:
        args["frozen"] = torch.zeros(overrides["weight"].shape, dtype=torch.bool)
        args["frozen_x_int"] = torch.zeros(overrides["weight"].shape, dtype=torch.int8)
    with pytest.raises(RuntimeError, match=name):
        qkernels.oscillation_dampening(**args)


def test_compiles_and_opchecks():
    torch.manual_seed(1)
    w, scale = torch.randn(8, 5), torch.rand(8) * 0.1 + 0.05
    frozen, k = torch.rand(8, 5) < 0.3, torch.randint(-4, 4, (8, 5), dtype=torch.int8)
    args = (w, scale, torch.zeros(8), 0, -4, 3, frozen, k, "kernel_mean")
    with qkernels.use_backend("reference"):
        torch.library.opcheck(torch.ops.qkernels.oscillation_dampening, args)
        compiled = torch.compile(qkernels.oscillation_dampening, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(*args), qkernels.oscillation_dampening(*args))
