"""What is specific to the native CPU launchers of the oscillation regularizer (csrc/ops/
oscillation_regularizer_cpu.cpp): one parallel pass over the blocks of all tensors, whose results must not depend on
the thread count or on where the threads' ranges split the list of tensors; the reference launchers' results
(max and tie counts exact, the gradient bit for bit given the same sums); and the glue's checks."""

import pytest
import torch

from qkernels import backends
from qkernels.oscillation_regularizer import LAUNCHERS
from qkernels.reference import oscillation_regularizer as ref

from conftest import KERNEL_DTYPES, assert_bitwise_equal, assert_sums_close

pytestmark = pytest.mark.skipif(backends.availability("cpu", "cpu") is not None, reason="qkernels._C is not built")

# Sizes around the block target (16384) and the lanes (8), single- and multi-block, so the threads' ranges start
# and end inside and between tensors.
SIZES = [15, 1, 7, 40000, 8, 16384, 16385, 3 * 3 * 64, 100000, 9, 2 * 16384 + 5, 513]


def _weights(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [((torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * 10.0 ** (i % 4 - 2)).to(dtype)
          for i, n in enumerate(SIZES)]
    ws[2].zero_()
    ws[5][[3, 9000]] = ws[5].abs().max()  # ties at the max, either sign
    ws[5][9000] *= -1
    return ws


def _assert_sums_as_the_reference(sums, ws, bits):
    """(S1 / N, S2) per tensor within conftest's sum tolerance of the reference's per-element e / N and t (the
    blocks' float32 partials round the same sums in another order)."""
    parts = [ref.elements(w, ref.amax(w), bits) for w in ws]
    ids = torch.cat([torch.full((w.numel(),), i) for i, w in enumerate(ws)])

    def per_tensor(v):
        return torch.zeros(len(ws), dtype=v.dtype).index_add_(0, ids, v)

    assert_sums_close(sums[:, 0], torch.cat([e.double() / w.numel() for (_, e, _, _), w in zip(parts, ws)]),
                      per_tensor, "S1 / N")
    assert_sums_close(sums[:, 1], torch.cat([t for _, _, t, _ in parts]), per_tensor, "S2")


def _run(launchers, ws, bits, scale_grad, grad, sums=None):
    n = len(ws)
    amax = torch.empty(n, dtype=torch.float32)
    out = torch.empty(n, 2, dtype=torch.float64)
    ties = torch.empty(n, dtype=torch.int64)
    launchers.amax(ws, amax)
    launchers.sums(ws, amax, bits, out, ties)
    dw = [torch.empty_like(w) for w in ws]
    launchers.backward(ws, dw, grad, amax, out if sums is None else sums, ties, bits, scale_grad)
    return amax, out, ties, dw


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_results_do_not_depend_on_the_thread_count(dtype, restore_threads):
    ws, grad = _weights(dtype), torch.tensor(0.9)
    native = LAUNCHERS.native("cpu")
    torch.set_num_threads(1)
    first = _run(native, ws, 4, True, grad)
    for threads in (2, 3, 5):
        torch.set_num_threads(threads)
        again = _run(native, ws, 4, True, grad)
        for name, a, e in zip(("amax", "sums", "ties"), again[:3], first[:3]):
            assert_bitwise_equal(a, e, what=f"{name}, {threads} threads")
        for i, (a, e) in enumerate(zip(again[3], first[3])):
            assert_bitwise_equal(a, e, what=f"dw[{i}], {threads} threads")


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("bits,scale_grad", [(2, True), (4, False), (8, True)])
def test_matches_the_reference_launchers(dtype, bits, scale_grad):
    ws, grad = _weights(dtype, seed=bits), torch.tensor(-1.7)
    amax, sums, ties, _ = _run(LAUNCHERS.native("cpu"), ws, bits, scale_grad, grad)
    r_amax, r_sums, r_ties, r_dw = _run(ref.Launchers, ws, bits, scale_grad, grad)
    assert_bitwise_equal(amax, r_amax, what="amax")
    assert_bitwise_equal(ties, r_ties, what="ties")
    _assert_sums_as_the_reference(sums, ws, bits)
    # given the reference's sums, the gradient is per element and exact
    *_, dw = _run(LAUNCHERS.native("cpu"), ws, bits, scale_grad, grad, sums=r_sums)
    for i, (a, e) in enumerate(zip(dw, r_dw)):
        assert_bitwise_equal(a, e, what=f"dw[{i}]")


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_nan_and_infinite_weights_as_the_reference(dtype):
    ws = [torch.tensor([0.5, float("nan"), -1.0]), torch.tensor([1.0, float("inf"), -2.0, float("-inf")]),
          torch.tensor([-0.0, 0.0]), torch.linspace(-3, 3, 20000)]
    ws = [w.to(dtype) for w in ws]
    grad = torch.tensor(0.25)
    got = _run(LAUNCHERS.native("cpu"), ws, 3, True, grad)
    expected = _run(ref.Launchers, ws, 3, True, grad)
    for name, a, e in zip(("amax", "ties"), (got[0], got[2]), (expected[0], expected[2])):
        assert_bitwise_equal(a, e, what=name)
    _assert_sums_as_the_reference(got[1], ws, 3)
    for i, (a, e) in enumerate(zip(got[3], expected[3])):
        assert_bitwise_equal(a, e, what=f"dw[{i}]")


def _bad(ws, **change):
    n = len(ws)
    args = dict(w=ws, dw=[torch.empty_like(w) for w in ws], grad=torch.tensor(1.0),
                amax=torch.ones(n), sums=torch.ones(n, 2, dtype=torch.float64), ties=torch.ones(n, dtype=torch.int64),
                bits=4, scale_grad=True)
    args.update(change)
    return args


@pytest.mark.parametrize("change,match", [
    (dict(w=[]), r"`w` must hold at least one tensor"),
    (dict(w=[torch.ones(3), torch.ones(2, dtype=torch.float16)]), r"`w` must share one dtype and device"),
    (dict(w=[torch.ones(3), torch.ones(0)]), r"w\[1\] must be contiguous with at least one element"),
    (dict(w=[torch.ones(3, 4).t()]), r"w\[0\] must be contiguous"),
    (dict(w=[torch.ones(3, dtype=torch.float64)]), r"unsupported dtype"),
    (dict(dw=[torch.empty(3)]), r"`dw` must hold one tensor per weight \(2\), got 1"),
    (dict(dw=[torch.empty(3), torch.empty(4)]), r"dw\[1\] must be contiguous with the dtype, sizes and device"),
    (dict(grad=torch.ones(1)), r"`grad` must be a contiguous Float tensor of sizes \[\]"),
    (dict(amax=torch.ones(3)), r"`amax` must be a contiguous Float tensor of sizes \[2\]"),
    (dict(sums=torch.ones(2, 2)), r"`sums` must be a contiguous Double tensor of sizes \[2, 2\]"),
    (dict(ties=torch.ones(2, dtype=torch.int32)), r"`ties` must be a contiguous Long tensor"),
    (dict(bits=9), r"`bits` must be 2 to 8, got 9"),
])
def test_backward_checks_its_arguments(change, match):
    args = _bad([torch.ones(3), torch.ones(2, 2)], **change)
    with pytest.raises(RuntimeError, match=match):
        LAUNCHERS.native("cpu").backward(*args.values())


def test_amax_and_sums_check_their_outputs():
    native, ws = LAUNCHERS.native("cpu"), [torch.ones(3), torch.ones(5)]
    with pytest.raises(RuntimeError, match=r"_amax_cpu: `out` must be a contiguous Float tensor of sizes \[2\]"):
        native.amax(ws, torch.empty(2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"_sums_cpu: `out` must be a contiguous Double tensor of sizes \[2, 2\]"):
        native.sums(ws, torch.ones(2), 4, torch.empty(2, 2), torch.empty(2, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=r"_sums_cpu: `bits` must be 2 to 8, got 1"):
        native.sums(ws, torch.ones(2), 1, torch.empty(2, 2, dtype=torch.float64), torch.empty(2, dtype=torch.int64))
