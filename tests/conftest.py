"""Shared test helpers: devices, backends per device, bit-exact comparison, hypothesis profiles."""

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import qkernels
from qkernels import backends
from qkernels.reference.reduce import sum_bound

settings.register_profile(
    "ci", max_examples=int(os.environ.get("QKERNELS_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("ci")

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
KERNEL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def backends_for(device: str):
    """Backends that run on `device` in this environment. Missing native/Triton backends on a GPU machine are
    failures, not skips: the GPU run is meant to cover them."""
    names = []
    for name in ("cuda", "triton", "cpu", "reference"):
        reason = backends.availability(name, device)
        if reason is None:
            names.append(name)
        elif device == "cuda" and name in ("cuda", "triton"):
            names.append(name)  # the test then fails with the reason
    return names


def flavour_of(backend: str, device: str) -> str:
    """Semantics a backend implements: Triton is always aten-CUDA's, even interpreted on CPU tensors."""
    return "cuda" if (device == "cuda" or backend == "triton") else "cpu"


def interpreted(backend: str, device: str) -> bool:
    return backend == "triton" and device == "cpu"


def _int_view(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor, *, ulp: int = 0, what: str = ""):
    """Same dtype, shape, strides and bits. NaNs must sit at the same places (payloads are not compared).
    ulp > 0 allows that many units in the last place (only for the interpreter's bfloat16, see README)."""
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if actual.numel() > 1:  # strides of size-1 dimensions carry no layout
        sa = [st for st, sz in zip(actual.stride(), actual.shape) if sz > 1]
        se = [st for st, sz in zip(expected.stride(), expected.shape) if sz > 1]
        assert sa == se, (what, actual.stride(), expected.stride())
    a, e = actual.detach().cpu(), expected.detach().cpu()
    if a.dtype == torch.bool:
        bad = a != e
    else:
        nan_a, nan_e = torch.isnan(a), torch.isnan(e)
        assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
        diff = (_int_view(a).long() - _int_view(e).long()).abs()
        bad = (diff > ulp) & ~nan_a
        if ulp:  # a 1-ulp step never crosses a sign
            bad |= (torch.signbit(a) != torch.signbit(e)) & ~nan_a & (a != 0)
    n = int(bad.sum())
    if n:
        idx = bad.flatten().nonzero()[:5].flatten().tolist()
        raise AssertionError(
            f"{what}: {n} of {a.numel()} elements differ; first at {idx}: "
            f"got {a.flatten()[idx].tolist()} want {e.flatten()[idx].tolist()}"
        )


def assert_sums_close(actual: torch.Tensor, elements: torch.Tensor, reduce, what: str):
    """actual: sums of `elements` per quantizer (reduce(v) forms them from per-element values v, in actual's
    shape), within the reduction layer's contract (``qkernels.reference.reduce.sum_bound``: twice the error of a
    float32 torch sum of the same values relative to their magnitude, or one float32 ulp). A sum with a
    non-finite exact value must be the same value."""
    exact, bound = sum_bound(elements, reduce)
    got = actual.detach().double().cpu()
    finite = torch.isfinite(exact)
    nan, inf = exact.isnan(), exact.isinf()
    assert torch.equal(got.isnan(), nan) and torch.equal(got[inf], exact[inf]), f"{what}: non-finite sums differ"
    bad = finite & ~((got - exact).abs() <= bound)
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())} of {exact.numel()} sums outside twice torch's error; "
                                 f"worst {float(((got - exact).abs() - bound)[bad].max())} over the bound")


def special_values(scale, zp, qmin, qmax):
    """Ties around every boundary, values just inside/outside, zeros, NaN, +-inf and int64-overflowing ones."""
    ks = [qmin - zp - 1, qmin - zp, qmax - zp, qmax - zp + 1, -2, -1, 0, 1, 2]
    ties = [(k + d) * scale for k in ks for d in (-0.5, 0.5, -0.49999997, 0.50000006)]
    return ties + [0.0, -0.0, math.nan, math.inf, -math.inf, 1e20, -1e20, 9.3e18, -9.3e18, 3e38, -3e38]


def make_input(seed, shape, scale, zp, qmin, qmax, dtype, device, specials=True):
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    lo, hi = (qmin - zp - 8) * scale, (qmax - zp + 8) * scale
    x = torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo
    if specials:
        sv = torch.tensor(special_values(scale, zp, qmin, qmax), dtype=torch.float64)
        pick = torch.randint(0, 3, (n,), generator=g) == 0
        x = torch.where(pick, sv[torch.randint(0, sv.numel(), (n,), generator=g)], x)
    return x.to(dtype).reshape(shape).to(device)


def run(backend, fn, *args, **kwargs):
    with qkernels.use_backend(backend):
        return fn(*args, **kwargs)


@pytest.fixture
def restore_threads():
    """Puts torch's intra-op thread count back after a test that changes it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
