// The deterministic reduction layer, torch-free and host+device: how a reduction over each quantizer's elements is
// split into fixed blocks (the layout), how values are combined inside a block (the four combine kinds), and how a
// quantizer's block partials are finished. The Python twin is qkernels/reference/reduce.py (the same planner, the
// reference partials and the finish of the Python/Triton paths); the per-backend block combines are
// csrc/cpu/reduce.h (fixed lanes), csrc/cuda/reduce.cuh (warp/CTA trees) and triton_kernels/_reduce.py.
//
// Layout. The input is walked in storage order as [B, O, C, I]: element e = ((b * O + o) * C + c) * I + i
// belongs to quantizer b * C + c. make_reduce_blocks splits each quantizer's elements into P blocks from the
// dims and a target block size alone, never from the thread count or the schedule:
//   run mode (I > 1 or C == 1): block p = ob * n_ib + ib of quantizer (b, c) covers rows o in
//     [ob * rows, ob * rows + rows) and i in [ib * chunk, ib * chunk + chunk);
//   row mode (I == 1 and C > 1): block p of every quantizer (b, c) covers rows o in [p * rows, p * rows + rows),
//     and one work item (b, p) forms the blocks of all C quantizers of those rows at once.
// A block's partial is stored at [b, p, c] of a [B, P, C] array.
//
// Combine kinds (a block's elements, in any order the backend fixes; partials, in the finish):
//   Sum    float32 partials (each backend fixes its in-block order; the CPU's lanes are double), finished in
//          float64 over p = 0, 1, ..., P - 1 and rounded once;
//   MinMax (min, max) with NaN sticking (torch.aminmax): exact in any order, up to the sign of a zero min/max of
//          both -0.0 and +0.0 (unspecified, as in torch; the block layout and finish order fix it per backend);
//   AbsMax max |v| with NaN sticking: exact in any order;
//   Count  the number of elements for which a predicate holds, int64: exact in any order.
#pragma once

#include <cmath>
#include <cstdint>

#include "qkernels/host_device.h"

namespace qkernels {

// min / max that return NaN when either side is NaN (torch.aminmax, torch.minimum).
QK_HOST_DEVICE float nan_min(float a, float b) { return (a != a || a < b) ? a : b; }
QK_HOST_DEVICE float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

// The [B, O, C, I] view of a reduction's input (above).
struct ReduceDims {
  int64_t B, O, C, I;
  int64_t numel() const { return B * O * C * I; }
};

// The fixed block layout of a ReduceDims (above).
struct ReduceBlocks {
  bool row_mode;
  int64_t rows;   // O-rows per block
  int64_t chunk;  // run mode: elements of I per block (row mode: 1)
  int64_t n_ib;   // run mode: blocks along I (row mode: 1)
  int64_t P;      // blocks (partials) per quantizer
};

// target: elements per block (per work item in row mode). Row mode takes at least 64 rows, which bounds the
// partials by numel / 64. rows_multiple: the rows of a block are rounded down to a multiple of it (at least one
// multiple), for a backend that walks rows in tiles. qkernels.reference.reduce.make_blocks is the same function.
inline ReduceBlocks make_reduce_blocks(const ReduceDims& d, int64_t target, int64_t rows_multiple = 1) {
  ReduceBlocks k{};
  const auto cdiv = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const auto round_rows = [&](int64_t rows) {
    rows = rows / rows_multiple * rows_multiple;
    return rows > rows_multiple ? rows : rows_multiple;
  };
  k.row_mode = d.I == 1 && d.C > 1;
  if (k.row_mode) {
    k.rows = round_rows(cdiv(target, d.C) > 64 ? cdiv(target, d.C) : 64);
    k.chunk = 1;
    k.n_ib = 1;
    k.P = cdiv(d.O, k.rows);
  } else {
    k.chunk = d.I < target ? d.I : target;
    k.n_ib = cdiv(d.I, k.chunk);
    k.rows = round_rows(target / k.chunk > 1 ? target / k.chunk : 1);
    k.P = cdiv(d.O, k.rows) * k.n_ib;
  }
  return k;
}

// Work items of a layout: B * C * P in run mode (one block each), B * P in row mode (item (b, p) forms the C
// blocks of its rows); how items are numbered is the backend's.
inline int64_t reduce_items(const ReduceDims& d, const ReduceBlocks& k) {
  return d.B * k.P * (k.row_mode ? 1 : d.C);
}

// The combine kinds: value type, identity, the combine of two values (also of two partials) and the fold of one
// element. Host and device; the backends' block combines (CPU lanes, CUDA trees, Triton) apply these.
struct SumCombine {
  using Value = float;
  static QK_HOST_DEVICE float identity() { return 0.0f; }
  static QK_HOST_DEVICE float combine(float a, float b) { return a + b; }
};

struct MinMax {
  float lo, hi;
};
struct MinMaxCombine {
  using Value = MinMax;
  static QK_HOST_DEVICE MinMax identity() { return {INFINITY, -INFINITY}; }
  static QK_HOST_DEVICE MinMax combine(MinMax a, MinMax b) { return {nan_min(a.lo, b.lo), nan_max(a.hi, b.hi)}; }
  static QK_HOST_DEVICE MinMax fold(MinMax a, float v) { return {nan_min(a.lo, v), nan_max(a.hi, v)}; }
};

struct AbsMaxCombine {
  using Value = float;
  static QK_HOST_DEVICE float identity() { return 0.0f; }
  static QK_HOST_DEVICE float combine(float a, float b) { return nan_max(a, b); }
  static QK_HOST_DEVICE float fold(float a, float v) { return nan_max(a, fabsf(v)); }
};

struct CountCombine {
  using Value = int64_t;
  static QK_HOST_DEVICE int64_t identity() { return 0; }
  static QK_HOST_DEVICE int64_t combine(int64_t a, int64_t b) { return a + b; }
};

// The finish of one quantizer: its P partials, `stride` apart, folded in order p = 0, 1, ..., P - 1. Sums are
// added in float64 and returned unrounded (the caller rounds once, to its dtype); the other kinds are exact.
QK_HOST_DEVICE double finish_sum(const float* partials, int64_t P, int64_t stride) {
  double acc = 0.0;
  for (int64_t p = 0; p < P; ++p) acc += partials[p * stride];
  return acc;
}

template <typename Combine>
QK_HOST_DEVICE typename Combine::Value finish(const typename Combine::Value* partials, int64_t P, int64_t stride) {
  typename Combine::Value acc = Combine::identity();
  for (int64_t p = 0; p < P; ++p) acc = Combine::combine(acc, partials[p * stride]);
  return acc;
}

}  // namespace qkernels
