"""Philox4x32 in Triton: the twin of qkernels.reference.philox (the spec: the round function, the constants and
the per-element convention) and csrc/include/qkernels/philox.h. A shared helper module, not a family.

Both functions wrap Triton's own ``tl.philox`` rather than a second implementation of the rounds: it is Random123's
philox4x32_R word for word (its key is ``(seed_lo, seed_hi)`` of a 64-bit seed; the counter words are taken as
uint32 bit patterns), it lowers ``umulhi`` to the hardware's high multiply on the GPU, and under the interpreter it
computes in NumPy uint32, which wraps as the rounds need. tests/test_philox.py pins its bits to the reference,
compiled and interpreted, so a change in Triton would show there.
"""

import triton
import triton.language as tl


@triton.jit
def philox4x32(c0, c1, c2, c3, k0, k1, N_ROUNDS: tl.constexpr = 10):
    """The four uint32 words of Philox4x32-N_ROUNDS at counter (c0, c1, c2, c3) under key (k0, k1): 32-bit integer
    scalars or blocks (signed values are taken as their bit patterns), broadcast together."""
    seed = (k1.to(tl.uint32, bitcast=True).to(tl.uint64) << 32) | k0.to(tl.uint32, bitcast=True).to(tl.uint64)
    return tl.philox(seed, c0, c1, c2, c3, N_ROUNDS)


@triton.jit
def element_words(key_ptr, index, N_ROUNDS: tl.constexpr = 10):
    """The four uint32 words of the elements at linear indices ``index`` (an int32 or int64 block, >= 0) of a call
    keyed by ``key_ptr`` -> int64 [seed, offset] (``qkernels.reference.philox.draw_key``, read on the device):
    counter (i_lo, i_hi, offset_lo, offset_hi), key (seed_lo, seed_hi)."""
    seed = tl.load(key_ptr)
    offset = tl.load(key_ptr + 1)
    i = index.to(tl.int64)
    zero = tl.zeros(index.shape, tl.uint32)  # the offset words as blocks: tl.philox takes its dtype from c0's
    off_lo = zero + (offset & 0xFFFFFFFF).to(tl.uint32)
    off_hi = zero + (offset >> 32).to(tl.uint32)
    return tl.philox(seed, (i & 0xFFFFFFFF).to(tl.uint32), (i >> 32).to(tl.uint32), off_lo, off_hi, N_ROUNDS)
