"""Counter-based random numbers, the spec every backend's randomness is tested against: Philox4x32-10
(Salmon et al. 2011, Random123) and the per-call key drawn from PyTorch's generator. The C++ twin is
csrc/include/qkernels/philox.h (host and device), the Triton one triton_kernels/_philox.py; all three give the
same bits (tests/test_philox.py, csrc/tests/test_philox.cpp).

Philox4x32. A counter of four uint32 words ``(c0, c1, c2, c3)`` and a key of two ``(k0, k1)``; each of
``rounds`` rounds (10 by default) maps

    c0, c1, c2, c3 <- hi(M1 * c2) ^ c1 ^ k0,  lo(M1 * c2),  hi(M0 * c0) ^ c3 ^ k1,  lo(M0 * c0)

with ``hi``/``lo`` the upper/lower 32 bits of the 64-bit product, and then bumps the key by
``(k0 + W0, k1 + W1) mod 2**32``. Constants: ``M0 = 0xD2511F53``, ``M1 = 0xCD9E8D57``, ``W0 = 0x9E3779B9``,
``W1 = 0xBB67AE85``. The result is the four words after the last round. This is Random123's ``philox4x32_R``,
``at::Philox4_32`` (ATen/core/PhiloxRNGEngine.h) and Triton's ``tl.philox``, word for word.

The per-element convention of qkernels' random draws (``element_words``). A call draws one key tensor
``key = [seed, offset]`` (``draw_key``); element ``i`` (its linear index in the tensor the call walks, whatever
program, thread or block handles it) gets the four words of Philox4x32-10 at

    counter = (i_lo, i_hi, offset_lo, offset_hi),   key = (seed_lo, seed_hi)

(``x_lo``/``x_hi``: the low/high 32 bits of a 64-bit value). Words 0..3 are all the element's to use (a family
takes word 0 first, then 1, 2, 3 in that order). So the draw depends on the element's index and the key alone,
never on the launch configuration, the backend or the thread count. This is ``at::Philox4_32(seed,
subsequence=offset, offset=i)``'s first 128-bit block, and for offset 0 Triton's ``tl.randint4x(seed, i)``.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

__all__ = ["M0", "M1", "W0", "W1", "philox4x32", "draw_key", "element_words", "KEY_BITS"]

M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # key bumps (Weyl sequence)
_MASK32 = 0xFFFFFFFF

# Seed and offset are drawn in [0, 2**KEY_BITS): torch.randint's int64 range stops below 2**63, and 62 bits of each
# (124 of the 128 the counter's upper half and the key hold) leave any two calls' streams apart for all practical
# purposes.
KEY_BITS = 62

Word = Union[int, torch.Tensor]


def _mul_hi_lo(m: int, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product m * a (m a uint32 constant, a int64 holding uint32 values).
    The product is formed from m's 16-bit halves so that no int64 intermediate exceeds 2**49: a full
    32 x 32-bit product can pass 2**63, and signed overflow is nothing to rely on across devices."""
    p_lo = a * (m & 0xFFFF)  # < 2**48
    p_hi = a * (m >> 16)  # < 2**48; m * a = p_hi * 2**16 + p_lo
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (p_lo + ((p_hi & 0xFFFF) << 16)) & _MASK32
    return hi, lo


def _as_words(values: Sequence[Word], n: int, what: str) -> list[torch.Tensor]:
    if len(values) != n:
        raise ValueError(f"{what}: expected {n} uint32 words, got {len(values)}")
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    device = tensors[0].device if tensors else None
    words = []
    for v in values:
        words.append(torch.as_tensor(v, dtype=torch.int64, device=device) & _MASK32)
    return words


def philox4x32(counter: Sequence[Word], key: Sequence[Word], rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32-``rounds`` (module docstring) of ``counter`` (four words) under ``key`` (two words).

    Each word is a Python int or an integer tensor holding uint32 values (only the low 32 bits are used; an int64
    tensor may hold all of 0..2**32 - 1); the words broadcast together. Returns the four output words as int64
    tensors of the broadcast shape, values in [0, 2**32), on the device of the tensor arguments."""
    c0, c1, c2, c3 = _as_words(counter, 4, "counter")
    k0, k1 = _as_words(key, 2, "key")
    for _ in range(rounds):
        hi0, lo0 = _mul_hi_lo(M0, c0)
        hi1, lo1 = _mul_hi_lo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + W0) & _MASK32
        k1 = (k1 + W1) & _MASK32
    return torch.broadcast_tensors(c0, c1, c2, c3)


def draw_key(device: Union[str, torch.device], generator: torch.Generator | None = None) -> torch.Tensor:
    """One call's key: an int64 tensor ``[seed, offset]`` on ``device``, each uniform in [0, 2**KEY_BITS), drawn
    by ``torch.randint`` from ``generator`` (default: the default generator of ``device``'s type).

    A kernel reads it on the device (no host sync), so ``torch.manual_seed``, ``generator=``, ``fork_rng`` and
    ``get_rng_state``/``set_rng_state`` reproduce a call's randomness, and under CUDA graph capture each replay
    draws a fresh key, as eager calls would (the randint is part of the captured work). Use it with
    ``element_words`` (the convention in the module docstring)."""
    return torch.randint(0, 2**KEY_BITS, (2,), dtype=torch.int64, device=device, generator=generator)


def element_words(key: torch.Tensor, index: torch.Tensor, rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """The four random uint32 words (int64 tensors) of the elements at linear indices ``index`` (int64, >= 0)
    under a call's ``key = [seed, offset]`` (``draw_key``): Philox4x32 at counter ``(i_lo, i_hi, offset_lo,
    offset_hi)``, key ``(seed_lo, seed_hi)``. The key is used as a tensor: nothing is read back to the host."""
    seed, offset = key[0], key[1]
    counter = (index, index >> 32, offset.expand_as(index), (offset >> 32).expand_as(index))
    return philox4x32(counter, (seed, seed >> 32), rounds)
