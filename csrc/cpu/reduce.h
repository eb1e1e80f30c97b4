// The CPU block combines of the reduction layer (qkernels/reduce.h), compiled once per instruction set
// (per-ISA include, as element_io.h): fixed-lane accumulators that the compiler vectorizes with GCC/Clang vector
// types, each lane combining its elements in order, the lanes folded in lane order at the end of a block. So a
// block's partial depends only on the block's elements and their order, never on threads or instruction set.
//   Sum:    8 double lanes (element k of a group of 8 goes to lane k), folded as lanes 0..7 in double and rounded
//           once to the float32 partial: the nearly exact sum of the block rounded once;
//   MinMax: 8 float lanes of (min, max) with NaN sticking (MinMaxCombine), folded into a MinMax in lane order;
//   AbsMax: 8 float lanes of max |v| from +0.0 with NaN sticking (AbsMaxCombine), folded in lane order.
#pragma once

#include <cstring>

#include "element_io.h"  // QK_CPU_ISA
#include "qkernels/reduce.h"

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

constexpr int kLanes = 8;

typedef float Floats4 __attribute__((vector_size(16)));
typedef double Doubles4 __attribute__((vector_size(32)));
typedef float Floats8 __attribute__((vector_size(32)));
typedef int32_t Ints8 __attribute__((vector_size(32)));

// Sum: eight double lanes as two vectors of four, so the per-lane adds compile to packed adds on every ISA.
struct SumLanes {
  Doubles4 lo = {}, hi = {};

  // Adds v[0..7] to lanes 0..7.
  QK_HOST_DEVICE void add8(const float* v) {
    Floats4 a, b;
    std::memcpy(&a, v, sizeof(a));
    std::memcpy(&b, v + 4, sizeof(b));
    lo += __builtin_convertvector(a, Doubles4);
    hi += __builtin_convertvector(b, Doubles4);
  }
  // The block's float32 partial: lanes 0..7 added in double, rounded once.
  QK_HOST_DEVICE float fold() const {
    double t = 0.0;
    for (int j = 0; j < 4; ++j) t += lo[j];
    for (int j = 0; j < 4; ++j) t += hi[j];
    return static_cast<float>(t);
  }
};

// MinMax: eight lanes of min and of max; a NaN lane stays NaN (nothing compares below or above it).
struct MinMaxLanes {
  Floats8 lo, hi;

  MinMaxLanes() = default;
  explicit QK_HOST_DEVICE MinMaxLanes(MinMax start)
      : lo{start.lo, start.lo, start.lo, start.lo, start.lo, start.lo, start.lo, start.lo},
        hi{start.hi, start.hi, start.hi, start.hi, start.hi, start.hi, start.hi, start.hi} {}

  // Folds v[0..7] into lanes 0..7. (The new lanes are formed in locals from copies: GCC 12 then selects with one
  // compare-or-blend per lane vector; the same selects written on the members add a mask inversion each, 20%
  // slower.)
  QK_HOST_DEVICE void fold8(const float* v) {
    Floats8 x;
    std::memcpy(&x, v, sizeof(x));
    const Floats8 l = lo, h = hi;
    const Ints8 nan = x != x;
    const Floats8 new_lo = ((x < l) | nan) ? x : l, new_hi = ((x > h) | nan) ? x : h;
    lo = new_lo;
    hi = new_hi;
  }
  // Lanes 0..7 from / to eight consecutive per-column accumulators (one column per lane).
  static QK_HOST_DEVICE MinMaxLanes load(const float* lo8, const float* hi8) {
    MinMaxLanes m;
    std::memcpy(&m.lo, lo8, sizeof(m.lo));
    std::memcpy(&m.hi, hi8, sizeof(m.hi));
    return m;
  }
  QK_HOST_DEVICE void store(float* lo8, float* hi8) const {
    std::memcpy(lo8, &lo, sizeof(lo));
    std::memcpy(hi8, &hi, sizeof(hi));
  }
  // Combines lanes 0..7 into m, in lane order.
  QK_HOST_DEVICE MinMax fold(MinMax m) const {
    for (int j = 0; j < kLanes; ++j) m = MinMaxCombine::combine(m, MinMax{lo[j], hi[j]});
    return m;
  }
};

// AbsMax in eight float lanes, NaN sticking: a NaN lane stays NaN (nothing compares above it), and a -0.0 never
// replaces the +0.0 start (the max of zeros is +0.0, as aten's).
struct AbsMaxLanes {
  Floats8 m = {};

  // Folds |v[0..7]| into lanes 0..7. (The new lanes are formed from copies, as in MinMaxLanes::fold8.)
  void fold8(const float* v) {
    Floats8 x;
    std::memcpy(&x, v, sizeof(x));
    const Floats8 h = m;
    const Floats8 a = x < 0.0f ? -x : x;
    const Ints8 nan = x != x;
    const Floats8 next = ((a > h) | nan) ? a : h;
    m = next;
  }
  float fold() const {
    float r = AbsMaxCombine::identity();
    for (int j = 0; j < kLanes; ++j) r = AbsMaxCombine::combine(r, m[j]);
    return r;
  }
};

// max |v| of v[0..n) (AbsMax: NaN sticking), through AbsMaxLanes; the tail padded with zeros, AbsMax's identity.
template <typename T>
float block_absmax(const T* __restrict__ v, int64_t n) {
  alignas(32) float x[kLanes];
  AbsMaxLanes lanes;
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int j = 0; j < kLanes; ++j) x[j] = to_float(v[k + j]);
    lanes.fold8(x);
  }
  if (k < n) {
    for (int j = 0; j < kLanes; ++j) x[j] = k + j < n ? to_float(v[k + j]) : 0.0f;
    lanes.fold8(x);
  }
  return lanes.fold();
}

}  // namespace
}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
