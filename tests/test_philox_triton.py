"""The Triton Philox helpers (triton_kernels/_philox.py) against the spec (qkernels/reference/philox.py), bit for
bit: the raw function on the known-answer vectors and on random per-element counters and keys (10 and 7 rounds),
the element convention for int32 and int64 indices (past 2**32) under three launch configurations, and at offset
0 Triton's own ``tl.randint4x``. Runs compiled on CUDA tensors, or interpreted on CPU tensors under
``TRITON_INTERPRET=1``.
"""

import pytest
import torch

from qkernels import backends
from qkernels.reference import philox as ph

from conftest import HAS_CUDA
from test_philox import KAT

DEVICE = "cuda" if HAS_CUDA else "cpu"
_REASON = backends.availability("triton", DEVICE)
if _REASON is not None:
    pytest.skip(f"Triton backend unavailable: {_REASON}", allow_module_level=True)

import triton  # noqa: E402 (after the availability check)
import triton.language as tl  # noqa: E402

from qkernels.triton_kernels import _philox  # noqa: E402


@triton.jit
def _raw_kernel(words_ptr, out_ptr, n, N_ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
    """words: int32 [6, n] (counter words, key words); out: int32 [4, n]."""
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = j < n
    c0 = tl.load(words_ptr + j, mask=m)
    c1 = tl.load(words_ptr + n + j, mask=m)
    c2 = tl.load(words_ptr + 2 * n + j, mask=m)
    c3 = tl.load(words_ptr + 3 * n + j, mask=m)
    k0 = tl.load(words_ptr + 4 * n + j, mask=m)
    k1 = tl.load(words_ptr + 5 * n + j, mask=m)
    r0, r1, r2, r3 = _philox.philox4x32(c0, c1, c2, c3, k0, k1, N_ROUNDS)
    tl.store(out_ptr + j, r0.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + n + j, r1.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + 2 * n + j, r2.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + 3 * n + j, r3.to(tl.int32, bitcast=True), mask=m)


@triton.jit
def _element_kernel(key_ptr, out_ptr, base, n, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    """out[k, j]: word k of element index base + j (int64 indices when WIDE, else int32), grid-stride."""
    for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
        j = start + tl.arange(0, BLOCK)
        m = j < n
        index = base + j.to(tl.int64) if WIDE else j
        r0, r1, r2, r3 = _philox.element_words(key_ptr, index)
        tl.store(out_ptr + j, r0.to(tl.int32, bitcast=True), mask=m)
        tl.store(out_ptr + n + j, r1.to(tl.int32, bitcast=True), mask=m)
        tl.store(out_ptr + 2 * n + j, r2.to(tl.int32, bitcast=True), mask=m)
        tl.store(out_ptr + 3 * n + j, r3.to(tl.int32, bitcast=True), mask=m)


def _as_uint32(t):
    """int32 bit patterns -> int64 values in [0, 2**32)."""
    return t.long() & 0xFFFFFFFF


def _raw(words, rounds):
    n = words.shape[1]
    out = torch.empty(4, n, dtype=torch.int32, device=DEVICE)
    _raw_kernel[(triton.cdiv(n, 32),)](words.to(DEVICE, torch.int32).contiguous(), out, n, N_ROUNDS=rounds, BLOCK=32)
    return _as_uint32(out.cpu())


def test_known_answers():
    for rounds in (10, 7):
        cases = [(c, k, w) for r, c, k, w in KAT if r == rounds]
        words = torch.tensor([list(c) + list(k) for c, k, _ in cases]).T  # [6, cases]
        got = _raw(words, rounds)
        assert torch.equal(got, torch.tensor([w for _, _, w in cases]).T), rounds


@pytest.mark.parametrize("rounds", [10, 7])
def test_raw_against_reference(rounds):
    g = torch.Generator().manual_seed(rounds)
    words = torch.randint(0, 2**32, (6, 300), dtype=torch.int64, generator=g)
    words[:, :5] = 0xFFFFFFFF
    want = torch.stack(ph.philox4x32(words[:4], words[4:], rounds))
    assert torch.equal(_raw(words, rounds), want)


@pytest.mark.parametrize("wide", [False, True])
def test_element_words_any_launch(wide):
    """The element convention, the same words whatever the block size and grid."""
    n = 200
    base = 2**32 - 70 if wide else 0  # int64 indices cross 2**32: i_hi changes inside the range
    torch.manual_seed(3)
    key = ph.draw_key(DEVICE)
    want = torch.stack(ph.element_words(key.cpu(), base + torch.arange(n)))
    for block, grid in ((32, 1), (64, 3), (128, 2)):
        out = torch.empty(4, n, dtype=torch.int32, device=DEVICE)
        _element_kernel[(grid,)](key, out, base, n, WIDE=wide, BLOCK=block)
        assert torch.equal(_as_uint32(out.cpu()), want), (block, grid)


@triton.jit
def _randint4x_kernel(key_ptr, out_ptr, n, BLOCK: tl.constexpr):
    j = tl.arange(0, BLOCK)
    r0, r1, r2, r3 = tl.randint4x(tl.load(key_ptr), j)
    tl.store(out_ptr + j, r0.to(tl.int32, bitcast=True), mask=j < n)
    tl.store(out_ptr + n + j, r1.to(tl.int32, bitcast=True), mask=j < n)
    tl.store(out_ptr + 2 * n + j, r2.to(tl.int32, bitcast=True), mask=j < n)
    tl.store(out_ptr + 3 * n + j, r3.to(tl.int32, bitcast=True), mask=j < n)


def test_offset_zero_is_randint4x():
    """With offset 0 the element convention is Triton's own tl.randint4x(seed, i) (the module docstring's claim)."""
    key = torch.tensor([0x0123456789ABCDEF, 0], device=DEVICE)
    out = torch.empty(4, 64, dtype=torch.int32, device=DEVICE)
    _randint4x_kernel[(1,)](key, out, 64, BLOCK=64)
    assert torch.equal(_as_uint32(out.cpu()), torch.stack(ph.element_words(key.cpu(), torch.arange(64))))
