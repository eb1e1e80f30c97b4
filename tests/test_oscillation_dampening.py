"""The fused dampening loss (Nagel et al. §4) against autograd on its explicit formula, every aggregation."""

import math

import pytest
import torch

import cuda_emulator
import qkernels
from qkernels import backends
from qkernels.oscillation_dampening import LAUNCHERS
from qkernels.oscillation_fake_quant import _dims
from qkernels.reference import oscillation_dampening as reference
from qkernels.reference.oscillation_fake_quant import REDUCE_TARGET
from qkernels.reference.reduce import make_blocks

from conftest import assert_bitwise_equal, assert_sums_close, backends_for, make_input

# The backends run by name here (the CUDA kernels: under the emulator below).
BACKENDS = backends_for("cpu")


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
    w = torch.tensor([[10.0, -10.0, 0.07]])  # 0.07 rounds to 0.1: the only term, (0.1 - 0.07)^2
    with qkernels.use_backend(backend):
        loss = qkernels.oscillation_dampening(w, torch.tensor([0.1]), torch.zeros(1), None, -4, 3,
                                              torch.zeros(w.shape, dtype=torch.bool),
                                              torch.zeros(w.shape, dtype=torch.int8), "sum")
    assert float(loss) == pytest.approx((0.1 - 0.07) ** 2, rel=1e-5)


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


# (shape, axis, plan the Triton launcher takes, P blocks per quantizer of make_blocks(dims, REDUCE_TARGET))
LAYOUTS = [
    ((6, 4, 3, 3), None, "segment", 1),  # per tensor
    ((40000,), None, "run", 3),  # per tensor, blocks along I
    ((8, 3, 3, 3), 0, "segment", 1),  # per channel along the first axis
    ((300, 70), 1, "row", 2),  # per channel, row mode (I == 1, C > 1), blocks of rows
    ((70, 3, 300), 1, "run", 2),  # per channel, run mode, blocks of rows
]


def _check_launcher(forward, shape, axis, dtype):
    """forward (a launcher of the contract) against the reference launcher on one layout: dw bit for bit, the sums
    within the sum tolerance, and the same bits on a second run."""
    dims = _dims(torch.empty(shape), axis)
    C, n = dims[2], math.prod(shape)
    g = torch.Generator().manual_seed(n + C)
    # values on both sides of every bound (ties and specials, NaN included, in the small per-tensor case)
    w = make_input(n, shape, 0.1, 0, -4, 3, dtype, "cpu", specials=n < 1000 and axis is None)
    scale = torch.rand(C, generator=g) * 0.1 + 0.05
    zero_point = torch.randint(-2, 3, (C,), generator=g).float()
    frozen = torch.rand(shape, generator=g) < 0.3
    frozen_x_int = torch.randint(-8, 8, shape, generator=g, dtype=torch.int8)  # some outside [-4, 3]
    args = (w, scale, zero_point, *dims, -4, 3, frozen, frozen_x_int)
    dw, dw_ref = torch.empty(shape), torch.empty(shape)
    e_sums, ds_sums = forward(*args, dw)
    reference.Launchers.forward(*args, dw_ref)
    assert_bitwise_equal(dw, dw_ref, what="dw")
    e, _, ds = reference.elements(w, scale, zero_point, dims, -4, 3, frozen, frozen_x_int)
    assert ds.abs().sum() > 0  # frozen weights outside the range reach the scale
    for got, values, what in ((e_sums, e, "e"), (ds_sums, ds, "ds")):
        assert got.dtype == torch.float32 and got.shape == (C,)
        assert_sums_close(got, values, lambda v: v.sum((0, 1, 3)), what)
    again = torch.empty(shape)  # the same bits on every run
    for a, b, what in zip(tuple(forward(*args, again)) + (again,), (e_sums, ds_sums, dw), "e ds dw".split()):
        assert_bitwise_equal(a, b, what=what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,axis,plan,P", LAYOUTS)
def test_triton_launcher_equals_the_reference_launcher(shape, axis, plan, P, dtype):
    reason = backends.availability("triton", "cpu")
    if reason is not None:
        pytest.skip(reason)
    from qkernels.triton_kernels import oscillation_dampening as triton_launchers

    dims = _dims(torch.empty(shape), axis)
    assert make_blocks(dims, REDUCE_TARGET).P == P and triton_launchers._plan(
        dims, triton_launchers._KERNELS)[0].__name__ == f"_damp_{plan}_kernel"
    _check_launcher(triton_launchers.forward, shape, axis, dtype)


# The native launchers: cpu, and the CUDA kernels under the emulator (their run and row kernels; the layouts'
# plans are the Triton launcher's).
NATIVE = {"cpu": lambda: LAUNCHERS.native("cpu"),
          "cuda-emulated": lambda: cuda_emulator.launchers("oscillation_dampening")}


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,axis,plan,P", LAYOUTS)
def test_native_launchers_equal_the_reference_launcher(native, shape, axis, plan, P, dtype):
    assert make_blocks(_dims(torch.empty(shape), axis), REDUCE_TARGET).P == P
    _check_launcher(NATIVE[native]().forward, shape, axis, dtype)
