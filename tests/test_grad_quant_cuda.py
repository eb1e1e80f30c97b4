"""The gradient quantization CUDA kernels and glue (csrc/cuda/grad_quant.cu, csrc/ops/grad_quant_cuda.cpp) under
the CPU emulator, both builds (32- and 64-bit index division), against qkernels.reference.grad_quant.Launchers bit
for bit: the launch paths the kernels pick (groups of one thread, of one CTA, and of several CTAs with a second
pass), pairs of elements straddling two groups (odd group lengths, packed and not), odd sizes, all-zero, -0.0 and
non-finite groups, a clip value that underflows to a zero step, both roundings and every dtype. Outputs are
written inside guard elements that must come back untouched."""

import pytest
import torch

import cuda_emulator
from conftest import assert_bitwise_equal
from qkernels.reference import grad_quant as ref
from qkernels.reference.philox import draw_key

GUARD = 8
SENTINEL = {torch.uint8: 0xA5, torch.int64: -7}


@pytest.fixture(scope="module", params=list(cuda_emulator.VARIANTS), ids=["index32", "index64"])
def emu(request):
    return cuda_emulator.launchers("grad_quant", request.param)


def _gradient(numel, n, dtype, seed, specials):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(numel, generator=gen, dtype=torch.float64) * torch.rand(numel, generator=gen,
                                                                            dtype=torch.float64).add(0.05).pow(-0.5)
    g[::13] = g[::13].round(decimals=1)  # ties at the clip value and at the max
    groups = g.view(-1, n)
    for j, kind in specials:
        if kind == "zero":
            groups[j] = 0.0
        elif kind == "negzero":
            groups[j] = -0.0
        elif kind == "tiny":  # γ·m underflows: the step is 0
            groups[j] = 0.0
            groups[j, ::2] = torch.finfo(torch.float32).tiny * 2.0 ** -23
            groups[j, 2::4] *= -1
        else:  # a non-finite element at the group's end (the last block of a multi-CTA group)
            groups[j, -1] = {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf")}[kind]
    return g.to(dtype)


def _guarded(numel, dtype):
    """(buffer, view): `numel` elements inside GUARD sentinel elements (NaN for floats) on each side."""
    buf = torch.full((numel + 2 * GUARD,), SENTINEL.get(dtype, float("nan")), dtype=dtype)
    return buf, buf[GUARD:GUARD + numel]


def _check_guard(buf, what):
    for side in (buf[:GUARD], buf[-GUARD:]):
        if buf.dtype.is_floating_point:
            assert bool(side.isnan().all()), f"{what}: guard overwritten"
        else:
            assert bool((side == SENTINEL[buf.dtype]).all()), f"{what}: guard overwritten"


CASES = [
    # numel, n, dtype, bits, clip ratio, stochastic, packed, specials
    (1, 1, torch.float32, 4, 1.0, False, False, []),
    (5, 1, torch.float32, 3, 0.7, True, True, [(2, "zero")]),
    (63, 9, torch.float16, 3, 0.8, True, True, [(0, "zero"), (3, "nan")]),
    (63, 9, torch.bfloat16, 4, 0.6, False, False, [(1, "inf"), (4, "negzero")]),
    (130, 65, torch.float32, 2, 0.5, False, False, [(1, "tiny")]),
    (129, 43, torch.float32, 4, 0.5, True, True, [(1, "tiny")]),
    (64 * 5, 64, torch.float32, 8, 0.9, True, False, [(0, "-inf"), (2, "zero")]),
    (601, 601, torch.bfloat16, 4, 0.7, True, True, []),
    (3 * 1001, 1001, torch.float16, 5, 0.75, True, False, [(0, "nan"), (2, "negzero")]),
    (3 * 40001, 40001, torch.float32, 4, 0.5, True, True, [(0, "inf"), (1, "nan")]),
    (2 * 33000, 33000, torch.bfloat16, 8, 0.95, False, False, [(1, "-inf")]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}_n{c[1]}_{str(c[2])[6:]}_b{c[3]}"
                         f"{'_sr' if c[5] else ''}{'_packed' if c[6] else ''}")
def test_against_reference(emu, case):
    numel, n, dtype, bits, gamma, stochastic, packed, specials = case
    g = _gradient(numel, n, dtype, numel + n, specials)
    groups = numel // n
    clip_ratio = torch.tensor(gamma, dtype=torch.float32)
    key = draw_key("cpu", torch.Generator().manual_seed(n)) if stochastic else None

    want_amax = torch.empty(groups)
    ref.Launchers.absmax(g, n, want_amax)
    amax_buf, amax = _guarded(groups, torch.float32)
    emu.absmax(g, n, amax)
    _check_guard(amax_buf, "amax")
    assert_bitwise_equal(amax, want_amax, what="amax")

    out_numel, out_dtype = ((numel + 1) // 2, torch.uint8) if packed else (numel, dtype)
    want = (torch.empty(out_numel, dtype=out_dtype), torch.empty(groups), torch.empty((), dtype=torch.int64))
    ref.Launchers.quantize(g, n, want_amax, bits, clip_ratio, key, packed, *want)
    for run in range(2):  # the same bits on every run
        out_buf, out = _guarded(out_numel, out_dtype)
        scales_buf, scales = _guarded(groups, torch.float32)
        count_buf, count = _guarded(1, torch.int64)
        emu.quantize(g, n, amax, bits, clip_ratio, key, packed, out, scales, count.view(()))
        for buf, what in ((out_buf, "out"), (scales_buf, "scales"), (count_buf, "n_clipped")):
            _check_guard(buf, f"{what} (run {run})")
        assert_bitwise_equal(out, want[0], what=f"out (run {run})")
        assert_bitwise_equal(scales, want[1], what=f"scales (run {run})")
        assert int(count) == int(want[2]), (int(count), int(want[2]))
