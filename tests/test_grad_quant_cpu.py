"""What is specific to the native CPU launchers of gradient quantization (csrc/ops/grad_quant_cpu.cpp): results that
must not depend on the thread count (block maxima of a group and chunk counts finished in order; the chunks of the
packed codes split between whole bytes); the reference launchers' results bit for bit over the layouts that the loops
split differently (odd numel, odd group lengths whose bytes straddle two groups, the tails of the 8 lanes, of the
256-element sub-blocks and of the 16384-element chunks), the dtypes, 2 to 8 bits and both roundings, and the edge
cases of the spec; and the glue's checks."""

import pytest
import torch

from qkernels import backends
from qkernels.grad_quant import LAUNCHERS
from qkernels.reference import grad_quant as ref
from qkernels.reference.philox import draw_key

from conftest import KERNEL_DTYPES, assert_bitwise_equal

pytestmark = pytest.mark.skipif(backends.availability("cpu", "cpu") is not None, reason="qkernels._C is not built")

CHUNK = 16384  # kGradQuantReduceTarget: absmax's blocks and quantize's chunks


def _gradient(numel, dtype, seed):
    """Heavy-tailed values (as the contract samples), with repeated values for ties at the max and the clip value,
    exact zeros, negative zeros and small negatives (whose nearest code is -0.0)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(numel, generator=gen, dtype=torch.float64)
    g = t * torch.rand(numel, generator=gen, dtype=torch.float64).add(0.05).pow(-0.5) * 1e-3
    g[::17] = g[::17].round(decimals=4)
    g[5::23] = 0.0
    g[7::29] = -0.0
    g[11::31] = -1e-9
    return g.to(dtype)


def _key(seed=0):
    return draw_key("cpu", torch.Generator().manual_seed(seed))


def _run(launchers, g, n, bits, clip_ratio, key, packed):
    groups = g.numel() // n
    amax = torch.empty(groups)
    launchers.absmax(g, n, amax)
    out = torch.empty((g.numel() + 1) // 2, dtype=torch.uint8) if packed else torch.empty_like(g)
    scales = torch.empty(groups)
    n_clipped = torch.empty((), dtype=torch.int64)
    launchers.quantize(g, n, amax, bits, torch.tensor(clip_ratio), key, packed, out, scales, n_clipped)
    return dict(amax=amax, out=out, scales=scales, n_clipped=n_clipped)


def _assert_same(got, expected, what):
    for name in expected:
        assert_bitwise_equal(got[name], expected[name], what=f"{what}: {name}")


# (numel, n): one group of several blocks (odd numel), groups of two blocks with an odd length, small odd groups
# (bytes across groups) over several chunks.
THREAD_LAYOUTS = [(3 * CHUNK + 7, 3 * CHUNK + 7), (3 * 20001, 20001), (5 * 9001, 5)]


@pytest.mark.parametrize("numel,n", THREAD_LAYOUTS)
@pytest.mark.parametrize("stochastic,packed", [(False, False), (True, False), (True, True)])
def test_results_do_not_depend_on_the_thread_count(numel, n, stochastic, packed, restore_threads):
    g, key = _gradient(numel, torch.float32, seed=n), _key(1) if stochastic else None
    native = LAUNCHERS.native("cpu")
    torch.set_num_threads(1)
    first = _run(native, g, n, 4, 0.6, key, packed)
    for threads in (2, 3):
        torch.set_num_threads(threads)
        _assert_same(_run(native, g, n, 4, 0.6, key, packed), first, f"{threads} threads")


# (numel, n): single elements and groups, the lanes' and sub-blocks' tails, odd numel with odd groups, the chunk
# boundary and a group spanning chunks at an odd offset.
LAYOUTS = [(1, 1), (7, 7), (7, 1), (33 * 70, 70), (9 * 7, 7), (15, 3), (8 * 257, 257), (255, 255), (257, 257),
           (CHUNK - 1, CHUNK - 1), (CHUNK + 1, CHUNK + 1), (2 * CHUNK + 3, 2 * CHUNK + 3), (3 * 11001, 11001),
           (5 * 6553, 6553)]


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("numel,n", LAYOUTS)
@pytest.mark.parametrize("bits,clip_ratio", [(2, 1.0), (4, 0.6), (8, 0.3)])
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_matches_the_reference_launchers(dtype, numel, n, bits, clip_ratio, stochastic):
    g = _gradient(numel, dtype, seed=numel + bits)
    key = _key(numel) if stochastic else None
    for packed in (False, True) if bits <= 4 else (False,):
        got = _run(LAUNCHERS.native("cpu"), g, n, bits, clip_ratio, key, packed)
        expected = _run(ref.Launchers, g, n, bits, clip_ratio, key, packed)
        _assert_same(got, expected, f"packed={packed}")


def _specials(dtype):
    """Rows of 13 (odd: packed bytes straddle rows): all zeros, all negative zeros, a NaN, +inf, -inf, a NaN and an
    infinity, values clipped at γ < 1, and subnormal float32 maxima whose γ·m / L underflows to s = 0 (the spec's
    NaN codes for zeros and ±L beyond, dequantized to NaN and 0; packed as 0 and ±L)."""
    rows = _gradient(10 * 13, torch.float64, seed=3).reshape(10, 13)
    rows[0] = 0.0
    rows[1] = -0.0
    rows[2, 4] = float("nan")
    rows[3, 0] = float("inf")
    rows[4, 12] = -float("inf")
    rows[5, 1], rows[5, 2] = float("nan"), float("inf")
    if dtype == torch.float32:
        tiny = torch.finfo(torch.float32).smallest_normal * 2.0 ** -22  # 2 ulps of the subnormals
        rows[7] = torch.tensor([tiny, 0.0, -tiny, tiny / 2] + [0.0] * 9)
        rows[8] = tiny / 2 * torch.tensor([1.0, -1.0] * 6 + [0.0])
    return rows.to(dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("packed", [False, True], ids=["dequantized", "packed"])
def test_zero_non_finite_and_underflowing_groups_as_the_reference(dtype, bits, stochastic, packed):
    g, key = _specials(dtype), _key(7) if stochastic else None
    for n in (13, 130):  # per row; one group (non-finite as a whole)
        got = _run(LAUNCHERS.native("cpu"), g, n, bits, 0.5, key, packed)
        expected = _run(ref.Launchers, g, n, bits, 0.5, key, packed)
        _assert_same(got, expected, f"n={n}")
    assert torch.isnan(got["amax"]).all() and torch.isnan(got["scales"]).all() and int(got["n_clipped"]) == 0


def test_absmax_zeros_are_positive():
    amax = torch.empty(2)
    LAUNCHERS.native("cpu").absmax(torch.tensor([-0.0, -0.0, 0.0, -0.0]), 2, amax)
    assert torch.equal(torch.signbit(amax), torch.tensor([False, False]))


def _args(**change):
    g = torch.ones(3, 4)
    args = dict(g=g, n=4, amax=torch.ones(3), bits=4, clip_ratio=torch.tensor(0.5), key=_key(), packed=False,
                out=torch.empty_like(g), scales=torch.empty(3), n_clipped=torch.empty((), dtype=torch.int64))
    args.update(change)
    return args


@pytest.mark.parametrize("change,match", [
    (dict(g=torch.ones(3, 4, dtype=torch.float64)), r"_quantize_cpu: `g` must be float32, float16 or bfloat16, got "
                                                     r"Double"),
    (dict(g=torch.ones(4, 3).t()), r"_quantize_cpu: `g` must be contiguous with at least one element"),
    (dict(g=torch.ones(0)), r"_quantize_cpu: `g` must be contiguous with at least one element, got sizes \[0\]"),
    (dict(n=5), r"_quantize_cpu: `n` must be a positive divisor of g's numel \(12\), got 5"),
    (dict(n=0), r"_quantize_cpu: `n` must be a positive divisor of g's numel \(12\), got 0"),
    (dict(amax=torch.ones(4)), r"_quantize_cpu: `amax` must be a contiguous Float tensor of sizes \[3\]"),
    (dict(bits=1), r"_quantize_cpu: `bits` must be 2 to 8, got 1"),
    (dict(bits=9), r"_quantize_cpu: `bits` must be 2 to 8, got 9"),
    (dict(bits=5, packed=True, out=torch.empty(6, dtype=torch.uint8)),
     r"_quantize_cpu: `bits` must be 2 to 4 \(packed int4 codes\), got 5"),
    (dict(clip_ratio=torch.tensor([0.5])), r"_quantize_cpu: `clip_ratio` must be a contiguous Float tensor of sizes "
                                           r"\[\]"),
    (dict(clip_ratio=torch.tensor(0.5, dtype=torch.float64)), r"`clip_ratio` must be a contiguous Float tensor"),
    (dict(key=torch.tensor([1, 2], dtype=torch.int32)), r"_quantize_cpu: `key` must be a contiguous Long tensor of "
                                                         r"sizes \[2\]"),
    (dict(key=torch.tensor([1, 2, 3])), r"`key` must be a contiguous Long tensor of sizes \[2\]"),
    (dict(out=torch.empty(12)), r"_quantize_cpu: `out` must be a contiguous Float tensor of sizes \[3, 4\]"),
    (dict(out=torch.empty(3, 4, dtype=torch.float16)), r"`out` must be a contiguous Float tensor of sizes \[3, 4\]"),
    (dict(packed=True), r"_quantize_cpu: `out` must be a contiguous Byte tensor of sizes \[6\]"),
    (dict(packed=True, out=torch.empty(7, dtype=torch.uint8)), r"`out` must be a contiguous Byte tensor of sizes "
                                                               r"\[6\]"),
    (dict(scales=torch.empty(3, dtype=torch.float16)), r"_quantize_cpu: `scales` must be a contiguous Float tensor "
                                                       r"of sizes \[3\]"),
    (dict(n_clipped=torch.empty(1, dtype=torch.int64)), r"_quantize_cpu: `n_clipped` must be a contiguous Long "
                                                        r"tensor of sizes \[\]"),
])
def test_quantize_checks_its_arguments(change, match):
    with pytest.raises(RuntimeError, match=match):
        LAUNCHERS.native("cpu").quantize(*_args(**change).values())


@pytest.mark.parametrize("g,n,amax,match", [
    (torch.ones(6, dtype=torch.int32), 3, torch.empty(2), r"_absmax_cpu: `g` must be float32, float16 or bfloat16"),
    (torch.ones(3, 2).t(), 3, torch.empty(2), r"_absmax_cpu: `g` must be contiguous with at least one element"),
    (torch.ones(6), 4, torch.empty(2), r"_absmax_cpu: `n` must be a positive divisor of g's numel \(6\), got 4"),
    (torch.ones(6), -3, torch.empty(2), r"_absmax_cpu: `n` must be a positive divisor of g's numel \(6\), got -3"),
    (torch.ones(6), 3, torch.empty(3), r"_absmax_cpu: `amax` must be a contiguous Float tensor of sizes \[2\]"),
    (torch.ones(6), 3, torch.empty(2, dtype=torch.float64), r"_absmax_cpu: `amax` must be a contiguous Float tensor"),
    (torch.ones(6), 3, torch.empty(4)[::2], r"_absmax_cpu: `amax` must be a contiguous Float tensor"),
])
def test_absmax_checks_its_arguments(g, n, amax, match):
    with pytest.raises(RuntimeError, match=match):
        LAUNCHERS.native("cpu").absmax(g, n, amax)
