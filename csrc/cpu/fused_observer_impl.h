// CPU loops of the fused observer (min/max of x per channel), compiled once per instruction set (csrc/cpu/
// fused_observer.cpp and its _avx2 variant). The per-quantizer math is fused_observer_math.h; the min/max is the
// reduction layer's MinMax kind (qkernels/reduce.h: the block layout of x as [1, outer, channels, inner];
// cpu/reduce.h: MinMaxLanes).
#include <algorithm>
#include <utility>
#include <vector>

#include "qkernels/fused_observer_kernels.h"
#include "element_io.h"
#include "reduce.h"

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

constexpr int64_t kSub = 256;  // elements per stack sub-block

// NaN-propagating min and max of n elements, folded into m. Sub-blocks of x are widened to float into a stack
// buffer, then folded 8 lanes at a time.
template <typename T>
MinMax minmax_run(const T* __restrict__ x, int64_t n, MinMax m) {
  alignas(32) float buf[kSub];
  MinMaxLanes lanes(m);
  for (int64_t b = 0; b < n; b += kSub) {
    const int64_t len = std::min(kSub, n - b);
    for (int64_t k = 0; k < len; ++k) buf[k] = to_float(x[b + k]);
    for (int64_t k = len; k < (len + kLanes - 1) / kLanes * kLanes; ++k) buf[k] = buf[0];  // a value counted
    for (int64_t k = 0; k < len; k += kLanes) lanes.fold8(buf + k);
  }
  return lanes.fold(m);
}

// inner == 1 (the channel innermost in storage, e.g. a channels-last activation): each row holds one value
// per channel, so the row is folded into lo/hi[channels] 8 channels (one per lane) at a time.
template <typename T>
void minmax_columns(const T* __restrict__ row, int64_t channels, float* __restrict__ lo, float* __restrict__ hi) {
  int64_t c = 0;
  for (; c + kLanes <= channels; c += kLanes) {
    alignas(32) float buf[kLanes];
    for (int k = 0; k < kLanes; ++k) buf[k] = to_float(row[c + k]);
    MinMaxLanes lanes = MinMaxLanes::load(lo + c, hi + c);
    lanes.fold8(buf);
    lanes.store(lo + c, hi + c);
  }
  for (; c < channels; ++c) {
    const MinMax m = MinMaxCombine::fold(MinMax{lo[c], hi[c]}, to_float(row[c]));
    lo[c] = m.lo;
    hi[c] = m.hi;
  }
}

// Work items [begin, end) of the layout k (qkernels/reduce.h), partials [P, C].
//   row mode: item p folds rows [p * rows, p * rows + rows) of every channel, row by row;
//   run mode: item p * C + c (the index of its partial) folds the chunk of each of its rows in turn. A range of
//     items of one p is walked row by row across its channels, in storage order; each partial still sees its
//     rows in order, so it does not depend on how the items are split.
template <typename T>
void minmax_items(const ObserverParams& p, const ReduceBlocks& k, int64_t begin, int64_t end, MinMax* partials) {
  const T* x = static_cast<const T*>(p.x);
  const int64_t O = p.outer, C = p.channels, I = p.inner;
  if (k.row_mode) {
    std::vector<float> lo(C), hi(C);
    for (int64_t item = begin; item < end; ++item) {
      std::fill(lo.begin(), lo.end(), MinMaxCombine::identity().lo);
      std::fill(hi.begin(), hi.end(), MinMaxCombine::identity().hi);
      const int64_t o1 = std::min(O, (item + 1) * k.rows);
      for (int64_t o = item * k.rows; o < o1; ++o) minmax_columns<T>(x + o * C, C, lo.data(), hi.data());
      for (int64_t c = 0; c < C; ++c) partials[item * C + c] = MinMax{lo[c], hi[c]};
    }
    return;
  }
  for (int64_t item = begin; item < end;) {
    const int64_t part = item / C, c0 = item % C, c1 = std::min(C, c0 + (end - item));
    const int64_t ob = part / k.n_ib, ib = part % k.n_ib;
    const int64_t i0 = ib * k.chunk, n = std::min(I, i0 + k.chunk) - i0;
    MinMax* m = partials + part * C;
    std::fill(m + c0, m + c1, MinMaxCombine::identity());
    const int64_t o1 = std::min(O, (ob + 1) * k.rows);
    for (int64_t o = ob * k.rows; o < o1; ++o) {
      for (int64_t c = c0; c < c1; ++c) m[c] = minmax_run<T>(x + (o * C + c) * I + i0, n, m[c]);
    }
    item += c1 - c0;
  }
}

template <typename T>
struct MinMaxFn {
  static void call(const ObserverParams& p, int64_t b, int64_t e, std::pair<const ReduceBlocks*, MinMax*> out) {
    minmax_items<T>(p, *out.first, b, e, out.second);
  }
};

}  // namespace

void fused_observer_minmax(const ObserverParams& p, const ReduceBlocks& blocks, int64_t begin, int64_t end,
                           MinMax* partials) {
  by_dtype<MinMaxFn>(p, begin, end, std::make_pair(&blocks, partials));
}

}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
