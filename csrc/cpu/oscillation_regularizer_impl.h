// The CPU loops of the oscillation regularizer, compiled once per instruction set (csrc/cpu/
// oscillation_regularizer.cpp and its _avx2 variant). Layout and params: qkernels/oscillation_regularizer_kernels.h;
// per-element math: qkernels/oscillation_regularizer_math.h; the reduction layer: qkernels/reduce.h (the blocks),
// cpu/reduce.h (the Sum lanes).
//
// Work item k is the k-th block of the call's tensors' blocks, concatenated. Tensor l is [1, 1, 1, N_l] in run
// mode with one row, so its block p holds the elements [p * chunk, min(N_l, (p + 1) * chunk)). A block's partials
// are formed in a fixed order (8 lanes, element k of the block to lane k % 8, folded in lane order), so neither the
// thread count nor the instruction set changes a bit: the sums' lanes are the double SumLanes; the max and the tie
// count are exact in any order, their lanes only let the loops vectorize.
#include <algorithm>

#include "qkernels/oscillation_regularizer_kernels.h"
#include "reduce.h"

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

constexpr int64_t kSub = 256;  // elements per stack sub-block of the sums loop (a multiple of kLanes)

// The slot of work item `item`: the last slot whose first block is at or before it (offsets ascend, and every
// tensor has at least one block).
int64_t slot_of(const RegularizerParams& p, int64_t item) {
  int64_t lo = 0, hi = p.L;  // slots[lo].offset <= item < slots[hi].offset (hi == L: past the end)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (p.slots[mid].offset <= item) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// fn(l, first, n, item) for each work item of [begin, end): tensor l, its elements [first, first + n).
template <typename F>
void for_blocks(const RegularizerParams& p, int64_t begin, int64_t end, const F& fn) {
  int64_t l = slot_of(p, begin);
  for (int64_t item = begin; item < end; ++item) {
    while (item >= p.slots[l].offset + p.slots[l].blocks.P) ++l;
    const RegularizerSlot& s = p.slots[l];
    const int64_t first = (item - s.offset) * s.blocks.chunk;
    fn(l, first, std::min(s.blocks.chunk, s.numel - first), item);
  }
}

template <typename T>
struct AmaxFn {
  static void call(const RegularizerParams& p, int64_t begin, int64_t end, std::nullptr_t) {
    for_blocks(p, begin, end, [&](int64_t l, int64_t first, int64_t n, int64_t item) {
      p.amax_partial[item] = block_absmax(static_cast<const T*>(p.slots[l].w) + first, n);
    });
  }
};

template <typename T>
struct SumsFn {
  static void call(const RegularizerParams& p, int64_t begin, int64_t end, std::nullptr_t) {
    for_blocks(p, begin, end, [&](int64_t l, int64_t first, int64_t n, int64_t item) {
      const T* __restrict__ w = static_cast<const T*>(p.slots[l].w) + first;
      const RegularizerTensor t = regularizer_tensor(p.amax[l], p.bits);
      alignas(32) float be[kSub], bt[kSub];
      SumLanes le, lt;  // locals stay in registers
      int64_t ties = 0;
      for (int64_t b = 0; b < n; b += kSub) {
        const int64_t m = std::min(kSub, n - b);
        int32_t c = 0;
        for (int64_t k = 0; k < m; ++k) {
          float term;
          bool tie;
          be[k] = regularizer_terms(to_float(w[b + k]), t, term, tie);
          bt[k] = term;
          c += tie;
        }
        for (int64_t k = m; k < (m + kLanes - 1) / kLanes * kLanes; ++k) be[k] = bt[k] = 0.0f;  // pad the lanes
        for (int64_t k = 0; k < m; k += kLanes) {
          le.add8(be + k);
          lt.add8(bt + k);
        }
        ties += c;
      }
      p.e_partial[item] = le.fold();
      p.t_partial[item] = lt.fold();
      p.tie_partial[item] = ties;
    });
  }
};

template <typename T>
struct BackwardFn {
  static void call(const RegularizerParams& p, int64_t begin, int64_t end, std::nullptr_t) {
    const float go = *p.grad;
    for_blocks(p, begin, end, [&](int64_t l, int64_t first, int64_t n, int64_t) {
      const RegularizerSlot& s = p.slots[l];
      const T* __restrict__ w = static_cast<const T*>(s.w) + first;
      T* __restrict__ dw = static_cast<T*>(s.dw) + first;
      const RegularizerTensor t = regularizer_tensor(p.amax[l], p.bits);
      const RegularizerBackward b =
          regularizer_backward_constants(t.m, p.sums[2 * l + 1], p.ties[l], go, s.numel, p.scale_grad);
      for (int64_t k = 0; k < n; ++k) dw[k] = from_float<T>(regularizer_grad(to_float(w[k]), t, b));
    });
  }
};

}  // namespace

void oscillation_regularizer_amax(const RegularizerParams& p, int64_t begin, int64_t end) {
  by_dtype<AmaxFn>(p, begin, end, nullptr);
}

void oscillation_regularizer_sums(const RegularizerParams& p, int64_t begin, int64_t end) {
  by_dtype<SumsFn>(p, begin, end, nullptr);
}

void oscillation_regularizer_backward(const RegularizerParams& p, int64_t begin, int64_t end) {
  by_dtype<BackwardFn>(p, begin, end, nullptr);
}

}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
