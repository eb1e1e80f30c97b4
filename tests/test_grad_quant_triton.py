"""The Triton gradient-quantization launchers (triton_kernels/grad_quant.py) against the reference backend
(``qkernels.reference.grad_quant.Launchers``), bit for bit: amax, the dequantized or packed output, the scales and
the clipped count, for what the contract samples do not reach: odd sizes, odd group lengths with packing (bytes
straddling groups), groups spanning several programs and chunks, non-finite, all-zero and underflowing groups,
int64 offsets, and the same bits from two launch configurations. Runs compiled on CUDA tensors, or interpreted on
CPU tensors under ``TRITON_INTERPRET=1`` (where bfloat16 outputs may differ by 1 ulp: NumPy narrows by
truncation).
"""

import math

import pytest
import torch

from qkernels import backends
from qkernels.reference import grad_quant as ref
from qkernels.reference.philox import draw_key

from conftest import HAS_CUDA, assert_bitwise_equal

DEVICE = "cuda" if HAS_CUDA else "cpu"
_REASON = backends.availability("triton", DEVICE)
if _REASON is not None:
    pytest.skip(f"Triton backend unavailable: {_REASON}", allow_module_level=True)

from qkernels.triton_kernels import grad_quant as gq  # noqa: E402 (imports triton)

# The interpreter evaluates 0 / 0, x / 0 and NaN casts with NumPy, which warns; the kernels mean them.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# a launch configuration small enough that groups span several programs and absmax chunks
SMALL = dict(_BLOCK=16, _TILE=32, _CHUNK=64)


def gradient(shape, seed, dtype=torch.float32):
    """Heavy-tailed values (as the contract samples) with repeated values, so that some tie the max."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    values = t * torch.rand(shape, generator=g, dtype=torch.float64).add(0.05).pow(-0.5) * 1e-3
    values.view(-1)[::5] = values.view(-1)[::5].round(decimals=4)
    return values.to(dtype).to(DEVICE)


def run(launchers, g, n, bits, gamma, key, packed):
    groups = g.numel() // n
    amax = torch.empty(groups, device=g.device)
    launchers.absmax(g, n, amax)
    out = (torch.empty((g.numel() + 1) // 2, dtype=torch.uint8, device=g.device) if packed
           else torch.empty_like(g))
    scales = torch.empty(groups, device=g.device)
    n_clipped = torch.empty((), dtype=torch.int64, device=g.device)
    launchers.quantize(g, n, amax, bits, torch.tensor(gamma, device=g.device), key, packed, out, scales, n_clipped)
    return dict(amax=amax, out=out, scales=scales, n_clipped=n_clipped)


def key_for(stochastic, seed=7):
    return draw_key(DEVICE, torch.Generator(DEVICE).manual_seed(seed)) if stochastic else None


def check(g, n, bits, gamma, stochastic, packed):
    """Triton's results equal the reference's (the interpreter's bfloat16 outputs within 1 ulp); returns them."""
    key = key_for(stochastic)
    want = run(ref.Launchers, g, n, bits, gamma, key, packed)
    got = run(gq, g, n, bits, gamma, key, packed)
    for name in want:
        narrowed = name == "out" and not packed and g.dtype == torch.bfloat16 and DEVICE == "cpu"
        assert_bitwise_equal(got[name], want[name], ulp=1 if narrowed else 0, what=name)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("shape,n", [((1,), 1), ((3,), 3), ((7, 9), 9), ((7, 9), 63), ((2, 3, 7), 21),
                                     ((5, 13), 65), ((11,), 1)])
def test_odd_sizes(shape, n, dtype, stochastic):
    g = gradient(shape, math.prod(shape), dtype)
    check(g, n, 8, 0.7, stochastic, packed=False)
    check(g, n, 3, 0.7, stochastic, packed=True)


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("shape,n", [((5, 7), 7), ((9, 3), 3), ((5, 7), 5), ((13,), 1)])
def test_packed_odd_group_length(shape, n, stochastic):
    """Bytes straddle two groups: each nibble takes its own group's constants; an odd count ends in a 0 nibble."""
    for bits in (2, 4):
        check(gradient(shape, n, torch.float16), n, bits, 0.5, stochastic, packed=True)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("shape,n", [((3, 200), 200), ((1, 333), 333), ((30, 10), 10), ((6, 45), 15)])
def test_groups_spanning_programs(monkeypatch, shape, n, packed):
    """Groups split over several absmax chunks (partials finished), several short groups per absmax program, and
    quantize programs that start and end inside groups."""
    for name, value in SMALL.items():
        monkeypatch.setattr(gq, name, value)
    g = gradient(shape, n)
    check(g, n, 4, 0.6, True, packed)
    check(g, n, 4, 0.6, False, packed)


def special_groups(dtype):
    """Groups of 8: ordinary, all zero (signed zeros), a NaN, +inf, -inf, NaN and inf, small negatives (k = -0.0
    under nearest rounding), and for float32 a subnormal max whose step underflows to 0 (0 / 0 gives NaN)."""
    tiny = torch.finfo(torch.float32).smallest_normal * 2.0**-23  # the smallest subnormal
    rows = [gradient((8,), 1).cpu().tolist(),
            [0.0, -0.0] * 4,
            [1.0, float("nan"), 2.0, 0.0, -1.0, 0.5, 0.25, 3.0],
            [1.0, -2.0, float("inf"), 0.0, 0.1, 0.2, 0.3, 0.4],
            [-float("inf"), 2.0, 1.0, 0.0, 0.1, 0.2, 0.3, 0.4],
            [float("nan"), float("inf"), 0.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            [4.0, -0.01, -0.02, -0.2, 0.01, -4.0, -0.03, 1.0]]
    if dtype == torch.float32:
        rows.append([tiny, 0.0, -tiny, tiny, 0.0, -0.0, tiny, -tiny])
    return torch.tensor(rows, dtype=dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("stochastic", [False, True])
def test_non_finite_zero_and_underflowing_groups(dtype, packed, stochastic):
    g = special_groups(dtype)
    got = check(g, 8, 4, 0.5, stochastic, packed)
    assert got["amax"][1] == 0 and got["scales"][1] == 0
    assert got["amax"][2:6].isnan().all() and got["scales"][2:6].isnan().all()


def test_non_finite_group_over_several_chunks(monkeypatch):
    """An infinity in one chunk of a long group makes the whole group's amax (and every output) NaN."""
    for name, value in SMALL.items():
        monkeypatch.setattr(gq, name, value)
    g = gradient((2, 300), 3)
    g[1, 250] = float("inf")
    got = check(g, 300, 4, 0.8, True, packed=False)
    assert got["amax"][1].isnan() and got["out"][1].isnan().all() and not got["out"][0].isnan().any()


@pytest.mark.parametrize("packed", [False, True])
def test_int64_offsets(monkeypatch, packed):
    """The int64 offset path (taken past 2^31 elements), forced on a small tensor."""
    monkeypatch.setattr(gq, "_INDEX_LIMIT", 0)
    for name, value in SMALL.items():
        monkeypatch.setattr(gq, name, value)
    check(gradient((4, 75), 11, torch.bfloat16), 75, 4, 0.7, True, packed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("packed", [False, True])
def test_launch_configuration_independence(monkeypatch, dtype, packed):
    """Two launch configurations give the same bits (the draw depends on the flat index only)."""
    g = gradient((3, 1500), 5, dtype)
    key = key_for(True, 9)
    first = run(gq, g, 1500, 4, 0.5, key, packed)
    for name, value in SMALL.items():
        monkeypatch.setattr(gq, name, value)
    second = run(gq, g, 1500, 4, 0.5, key, packed)
    for name in first:
        assert_bitwise_equal(second[name], first[name], what=name)
