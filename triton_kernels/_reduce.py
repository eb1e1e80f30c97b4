"""The Triton block combines of the deterministic reduction layer (``qkernels.reference.reduce``: the block
layout, the reference partials and the finish; csrc/include/qkernels/reduce.h: its C++ twin). A shared helper
module, not a family: each kind folds the values of a program's tile in lanes (one lane per tile element, each
lane combining its values in the program's fixed loop order), then reduces the lanes along an axis:

* sum: float32 lanes, reduced in float64 and rounded once (``sum_lanes``), so the result does not depend on
  the order of the reduction tree (nor on the interpreter's numpy, which adds a strided axis sequentially);
* minmax: lanes of (min, max) where a NaN sticks (``minmax_fold``), reduced with ``tl.min``/``tl.max`` over
  NaN-free values plus an any-NaN flag (``minmax_lanes``): those reductions do not propagate NaN on the GPU,
  and a ``tl.reduce`` with a custom combine runs element by element in Python under the interpreter;
* absmax: lanes of max |v| where a NaN sticks (``absmax_fold``, ``absmax_lanes``), the same way;
* count: int32 lanes of how many values held (``count_fold``), reduced in int64 (``count_lanes``).

Min, max and counts are exact in any order; which of -0.0 and +0.0 a min/max of both gives is unspecified, as in
torch.aminmax.
"""

import triton
import triton.language as tl


@triton.jit
def sum_lanes(acc, AXIS: tl.constexpr):
    """Sum of float32 lanes along AXIS (None: all) in float64, rounded once to float32."""
    return tl.sum(acc.to(tl.float64), axis=AXIS).to(tl.float32)


@triton.jit
def minmax_fold(lo, hi, vlo, vhi, m):
    """Folds (vlo, vhi) into the (lo, hi) lanes where m holds; a NaN sticks: nothing compares below or above it."""
    lo = tl.where(m & ((vlo != vlo) | (vlo < lo)), vlo, lo)
    hi = tl.where(m & ((vhi != vhi) | (vhi > hi)), vhi, hi)
    return lo, hi


@triton.jit
def _nan_any(nan, AXIS: tl.constexpr):
    return tl.max(nan.to(tl.int32), axis=AXIS) > 0


@triton.jit
def minmax_lanes(lo, hi, AXIS: tl.constexpr):
    """NaN-propagating (min, max) of the folded lanes along AXIS (None: all)."""
    nan_lo = lo != lo
    nan_hi = hi != hi
    has_nan = _nan_any(nan_lo | nan_hi, AXIS)
    mn = tl.min(tl.where(nan_lo, float("inf"), lo), axis=AXIS)
    mx = tl.max(tl.where(nan_hi, -float("inf"), hi), axis=AXIS)
    return tl.where(has_nan, float("nan"), mn), tl.where(has_nan, float("nan"), mx)


@triton.jit
def absmax_fold(acc, v, m):
    """Folds |v| into the absmax lanes where m holds (the lanes start at 0); a NaN sticks."""
    a = tl.abs(v)
    return tl.where(m & ((a != a) | (a > acc)), a, acc)


@triton.jit
def absmax_lanes(acc, AXIS: tl.constexpr):
    """NaN-propagating max of the absmax lanes along AXIS (None: all)."""
    nan = acc != acc
    return tl.where(_nan_any(nan, AXIS), float("nan"), tl.max(tl.where(nan, 0.0, acc), axis=AXIS))


@triton.jit
def count_fold(acc, hit, m):
    """Adds 1 to the int32 count lanes where both hit and m hold."""
    return acc + (hit & m).to(tl.int32)


@triton.jit
def count_lanes(acc, AXIS: tl.constexpr):
    """The exact int64 total of the count lanes along AXIS (None: all)."""
    return tl.sum(acc.to(tl.int64), axis=AXIS)
