"""The fused oscillation regularizer (Wenshøj et al. 2025) against the note's worked test vector, against autograd
of the official formulation, on the toy model of the note's §3, and its errors. Every backend that runs here, and
the CUDA kernels under the emulator (the contract samples: tests/samples_oscillation_regularizer.py)."""

import pytest
import torch

import contract_hooks
import qkernels
from qkernels.oscillation import OscillationRegularizer, regularizer
from qkernels.reference import oscillation_regularizer as ref

from conftest import assert_bitwise_equal

TARGETS = contract_hooks.targets()
_on = contract_hooks.on


def _run(target, weights, bits, scale_grad=True, upstream=1.0):
    """(value, [dW]) of fresh leaves holding ``weights``."""
    leaves = [w.clone().requires_grad_() for w in weights]
    with _on(target):
        value = qkernels.oscillation_regularizer(leaves, bits, scale_grad)
        (value * upstream).backward()
    return value.detach(), [w.grad for w in leaves]


# The note's §2 table: W = [0.9, -0.3, 0.05, -1.2], lambda = 1.
VECTOR = [0.9, -0.3, 0.05, -1.2]
TABLE = {
    2: (0.134375, [0.15, 0.15, -0.025, -0.15]),
    3: (-0.025625, [-0.05, -0.05, -0.025, 0.016667]),
    4: (-0.012564, [-0.021429, -0.021429, -0.025, 0.009184]),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("scale_grad", [True, False])
def test_the_notes_worked_vector(target, bits, scale_grad):
    value, (grad,) = _run(target, [torch.tensor(VECTOR)], bits, scale_grad)
    want_value, want_grad = TABLE[bits]
    if not scale_grad:
        want_grad = want_grad[:3] + [0.0]  # the max's only path is through s
    # the table's six decimals
    assert float(value) == pytest.approx(want_value, abs=1e-6)
    assert grad.tolist() == pytest.approx(want_grad, abs=1e-6)


def _random_weights(seed, dtype=torch.float32):
    """Tensors of several magnitudes and sizes (one over several reduction blocks), with ties at the max."""
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(shape, generator=g) * scale for shape, scale in
               (((16, 8, 3, 3), 0.05), ((40000,), 1.0), ((10, 33), 3.0), ((7,), 0.2))]
    for w in weights[:3]:
        flat = w.view(-1)
        top = flat.abs().max()
        flat[:3] = torch.tensor([top, -top, top])  # three ties at the max, of both signs
    return [w.to(dtype) for w in weights]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("scale_grad", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_value_and_gradients_match_autograd_of_the_official_formulation(target, bits, scale_grad):
    weights = _random_weights(bits)
    value, grads = _run(target, weights, bits, scale_grad, upstream=0.7)
    leaves = [w.clone().requires_grad_() for w in weights]
    expected = ref.official(leaves, bits, scale_grad)
    (expected * 0.7).backward()
    # The value: ours fixed-block float64-finished sums, torch's float32 means in their own order.
    torch.testing.assert_close(value, expected.detach(), rtol=1e-5, atol=1e-7)
    for got, leaf in zip(grads, leaves):
        # Ours is (q − w) · 2/N rounded once; autograd forms 2q · (s / s) − 2w, cancelling terms of |w| · 2/N,
        # so the bound is a few float32 ulps of that magnitude. The tied elements' scale path is a quotient of
        # the sum S2, as precise as that sum.
        magnitude = float(leaf.detach().abs().max()) * 2 / leaf.numel()
        torch.testing.assert_close(got, leaf.grad, rtol=1e-5, atol=1e-6 * magnitude)
    tied = [w.abs() == w.abs().max() for w in weights[:3]]
    if scale_grad:
        assert all(bool((g[t] != 0).all()) for g, t in zip(grads, tied))  # the scale path reaches every tie
    else:
        assert all(bool((g[t] == 0).all()) for g, t in zip(grads, tied))  # q == w there: nothing else


@pytest.mark.parametrize("target", TARGETS)
def test_gradients_equal_the_reference_per_element(target):
    """Off the ties, dW is exact (no sum in it): bit for bit against the reference, every dtype."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        weights = _random_weights(5, dtype)
        _, grads = _run(target, weights, 3, scale_grad=True, upstream=-1.5)
        for w, g in zip(weights, grads):
            m = ref.amax(w)
            sums, ties = ref.sums(w, m, 3)
            want = ref.backward(w, torch.tensor(-1.5), m, sums, ties, 3, True)
            off = w.float().abs() != m
            assert_bitwise_equal(g[off], want[off], ulp=1 if target == "triton" and dtype == torch.bfloat16 else 0,
                                 what=str(dtype))
            # the ties' scale path: S2 is a sum in the backend's block order; then one rounding to w's dtype
            rtol = max(1e-5, torch.finfo(dtype).eps)
            torch.testing.assert_close(g[~off].float(), want[~off].float(), rtol=rtol, atol=0)


@pytest.mark.parametrize("target", TARGETS)
def test_zero_tensor_gives_zero_and_no_nan_and_nan_propagates(target):
    value, (dz, dw) = _run(target, [torch.zeros(3, 4), torch.tensor([0.5, -0.25])], 3)
    # q(0.5) = 0.5 and q(-0.25) = -1/3 (s = 1/6): the value is the second tensor's mean only
    assert float(value) == pytest.approx(((1 / 3) ** 2 - 0.25 ** 2) / 2, rel=1e-6)
    assert bool((dz == 0).all()) and bool(dw.isfinite().all())
    value, (dn, dw) = _run(target, [torch.tensor([1.0, float("nan")]), torch.tensor([0.5, -0.25])], 3)
    assert value.isnan() and bool(dn.isnan().all()) and bool(dw.isfinite().all())


@pytest.mark.parametrize("target", TARGETS)
def test_gradients_accumulate_into_grad(target):
    w = torch.tensor(VECTOR, requires_grad=True)
    w.grad = torch.ones(4)
    with _on(target):
        qkernels.oscillation_regularizer([w], 2).backward()
    assert w.grad.tolist() == pytest.approx([1.15, 1.15, 0.975, 0.85], abs=1e-6)


def test_the_same_bits_on_every_run():
    weights = _random_weights(3)
    first = _run(TARGETS[0], weights, 4)
    second = _run(TARGETS[0], weights, 4)
    assert_bitwise_equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert_bitwise_equal(a, b)


def _toy(regularized, steps=20, lr=0.15, w0=0.1, y=0.75):
    """The note's §3 toy model: one weight, x = 1, levels {0, 1} (s = 1), gradient descent. QAT: the loss
    ½(q(w) − y)² with a straight-through round; the regularizer: the FP loss ½(w − y)² plus ½ · (q² − w²) (λ = ½
    = E[x²]/2), whose q comes from the fused op on the pair [w, 1] (the 1 fixes max|W| = 1, s = 1;
    scale_grad=False; the op's mean over 2 elements is undone by the factor 2)."""
    w, ws, qs = torch.tensor(w0), [], []
    for _ in range(steps):
        ws.append(float(w))
        qs.append(float(torch.round(w)))
        leaf = w.clone().requires_grad_()
        if regularized:
            pair = torch.stack([leaf, torch.tensor(1.0)])
            loss = 0.5 * (leaf - y) ** 2 + 0.5 * 2 * qkernels.oscillation_regularizer([pair], 2, scale_grad=False)
        else:
            q = leaf + (torch.round(leaf) - leaf).detach()
            loss = 0.5 * (q - y) ** 2
        loss.backward()
        w = (w - lr * leaf.grad).detach()
    return ws, qs


@pytest.mark.parametrize("target", TARGETS)
def test_toy_model_regularizer_equals_qat_and_averages_to_the_target(target):
    qat_w, qat_q = _toy(regularized=False)
    with _on(target):
        reg_w, reg_q = _toy(regularized=True)
    # the same trajectory at every step, up to float32 rounding: the regularized gradient is (w − y) + (q − w)
    assert reg_q == qat_q and reg_w == pytest.approx(qat_w, abs=1e-6)
    # the note's table: from t = 4 on w cycles 0.55, 0.5125, 0.475, 0.5875 and q 1, 1, 0, 1
    assert qat_w[4:8] == pytest.approx([0.55, 0.5125, 0.475, 0.5875], abs=1e-6)
    assert qat_q[:12] == [0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 0, 1]
    assert sum(qat_q[4:20]) / 16 == 0.75  # the time-averaged quantized weight is the FP optimum
    # identity of the note's §3 C: mean_t q − y = (w0 − w_T) / (η T)
    ws, qs = _toy(regularized=False, steps=400, y=0.6)
    w_end = ws[-1] - 0.15 * (qs[-1] - 0.6)
    assert sum(qs) / 400 - 0.6 == pytest.approx((0.1 - w_end) / (0.15 * 400), abs=1e-6)


@pytest.mark.parametrize("call,name", [
    (lambda: qkernels.oscillation_regularizer([], 3), "weights"),
    (lambda: qkernels.oscillation_regularizer(torch.ones(3), 3), "weights"),
    (lambda: qkernels.oscillation_regularizer([torch.ones(3), "w"], 3), r"weights\[1\]"),
    (lambda: qkernels.oscillation_regularizer([torch.ones(3, dtype=torch.int32)], 3), r"weights\[0\]"),
    (lambda: qkernels.oscillation_regularizer([torch.ones(3, dtype=torch.float64)], 3), r"weights\[0\]"),
    (lambda: qkernels.oscillation_regularizer([torch.ones(3), torch.ones(0, 2)], 3), r"weights\[1\]"),
    (lambda: qkernels.oscillation_regularizer([torch.ones(3, 4).t()], 3), r"weights\[0\].*contiguous"),
    (lambda: qkernels.oscillation_regularizer([torch.ones(3), torch.ones(3, dtype=torch.half)], 3), "one device"),
    (lambda: qkernels.oscillation_regularizer([torch.ones(3)], 1), "bits"),
    (lambda: qkernels.oscillation_regularizer([torch.ones(3)], 9), "bits"),
    (lambda: qkernels.oscillation_regularizer([torch.ones(3)], 3.0), "bits"),
    (lambda: regularizer([torch.ones(3), torch.ones(0)], 3), r"weights\[1\]"),
    (lambda: regularizer([torch.ones(3)], 0), "bits"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(RuntimeError, match=name):
        call()


def test_regularizer_groups_dtypes_and_layouts():
    """A mix of dtypes and a non-contiguous tensor: the sum of one fused call per group, gradients to each."""
    weights = [torch.randn(4, 6).t(), torch.randn(9).half(), torch.randn(5)]
    leaves = [w.clone().requires_grad_() for w in weights]
    value = regularizer(leaves, 4)
    value.backward()
    parts = [float(qkernels.oscillation_regularizer([w.contiguous()], 4)) for w in weights]
    assert float(value.detach()) == pytest.approx(sum(parts), rel=1e-6)
    assert all(leaf.grad is not None and leaf.grad.dtype == leaf.dtype for leaf in leaves)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10), torch.nn.LayerNorm(10))


def test_model_regularizer_takes_every_weight_parameter():
    model = _model()
    with torch.no_grad():  # norm weights off 1, so that they contribute
        model[1].weight.uniform_(0.5, 1.5)
        model[5].weight.uniform_(0.5, 1.5)
    reg = OscillationRegularizer(model, bits=3, lam=2.5)
    assert reg.names == ["0", "1", "4", "5"]
    value = reg()
    weights = [model[i].weight for i in (0, 1, 4, 5)]
    assert float(value.detach()) == pytest.approx(2.5 * float(qkernels.oscillation_regularizer(weights, 3).detach()),
                                                  rel=1e-6)
    value.backward()
    assert all(w.grad is not None and bool((w.grad != 0).any()) for w in weights)
    assert all(m.bias.grad is None for m in (model[0], model[1], model[4]))  # biases never
    assert OscillationRegularizer(model, 3, include_norms=False).names == ["0", "4"]
    assert OscillationRegularizer(model, 3, exclude=("4", "5")).names == ["0", "1"]
    reg.bits, reg.lam = 2, 1.0
    with torch.no_grad():
        assert float(reg()) == pytest.approx(float(qkernels.oscillation_regularizer(weights, 2)), rel=1e-6)


def test_model_regularizer_sees_parametrized_float_weights():
    model = _model()
    qkernels.oscillation.attach(model, bits=4, first_last_bits=4)
    reg = OscillationRegularizer(model, bits=4, include_norms=False)
    assert reg.weights[0] is model[0].parametrizations.weight.original


@pytest.mark.parametrize("kwargs,error", [
    (dict(bits=1), RuntimeError), (dict(bits=3, lam=float("nan")), ValueError),
    (dict(bits=3, exclude="0"), ValueError), (dict(bits=3, exclude=("",)), ValueError),
])
def test_model_regularizer_bad_input(kwargs, error):
    with pytest.raises(error, match="|".join(kwargs)):
        OscillationRegularizer(_model(), **kwargs)


def test_compiles_fullgraph():
    weights = _random_weights(7)
    leaves = [w.clone().requires_grad_() for w in weights]
    compiled = torch.compile(lambda ws: qkernels.oscillation_regularizer(ws, 3), fullgraph=True, backend="aot_eager")
    value = compiled(leaves)
    value.backward()
    eager_value, eager_grads = _run(TARGETS[0], weights, 3)
    assert_bitwise_equal(value.detach(), eager_value)
    for leaf, g in zip(leaves, eager_grads):
        assert_bitwise_equal(leaf.grad, g)
