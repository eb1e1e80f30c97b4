// CPU loops of the fused observer (min/max of x per channel), compiled once per instruction set (csrc/cpu/
// fused_observer.cpp and its _avx2 variant). The per-quantizer math is fused_observer_math.h.
#include <algorithm>
#include <cstring>
#include <vector>

#include "qkernels/fused_observer_kernels.h"
#include "element_io.h"

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

typedef float Floats8 __attribute__((vector_size(32)));
typedef int32_t Ints8 __attribute__((vector_size(32)));

// NaN-propagating min and max of n elements, folded into lo/hi. Blocks of x are widened to float into a
// stack buffer, then reduced 8 lanes at a time with GCC/Clang vector selects (a NaN lane stays NaN).
template <typename T>
void minmax_run(const T* __restrict__ x, int64_t n, float& lo, float& hi) {
  constexpr int64_t kBlock = 256;
  alignas(32) float buf[kBlock];
  Floats8 l = {lo, lo, lo, lo, lo, lo, lo, lo}, h = {hi, hi, hi, hi, hi, hi, hi, hi};
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    for (int64_t k = 0; k < m; ++k) buf[k] = to_float(x[b + k]);
    for (int64_t k = m; k < (m + 7) / 8 * 8; ++k) buf[k] = buf[0];  // pad with a value already counted
    for (int64_t k = 0; k < m; k += 8) {
      Floats8 v;
      std::memcpy(&v, buf + k, sizeof(v));
      const Ints8 nan = v != v;
      l = ((v < l) | nan) ? v : l;
      h = ((v > h) | nan) ? v : h;
    }
  }
  for (int j = 0; j < 8; ++j) lo = nan_min(lo, l[j]), hi = nan_max(hi, h[j]);
}

// inner == 1 (the channel innermost in storage, e.g. a channels-last activation): each row holds one value
// per channel, so the row is folded into lo/hi[channels] 8 channels at a time.
template <typename T>
void minmax_columns(const T* __restrict__ row, int64_t channels, float* __restrict__ lo, float* __restrict__ hi) {
  int64_t c = 0;
  for (; c + 8 <= channels; c += 8) {
    alignas(32) float buf[8];
    for (int k = 0; k < 8; ++k) buf[k] = to_float(row[c + k]);
    Floats8 v, l, h;
    std::memcpy(&v, buf, sizeof(v));
    std::memcpy(&l, lo + c, sizeof(l));
    std::memcpy(&h, hi + c, sizeof(h));
    const Ints8 nan = v != v;
    l = ((v < l) | nan) ? v : l;
    h = ((v > h) | nan) ? v : h;
    std::memcpy(lo + c, &l, sizeof(l));
    std::memcpy(hi + c, &h, sizeof(h));
  }
  for (; c < channels; ++c) {
    const float v = to_float(row[c]);
    lo[c] = nan_min(lo[c], v);
    hi[c] = nan_max(hi[c], v);
  }
}

// Min/max of rows [row_begin, row_end) of x viewed as [outer, channels, inner], folded into lo/hi[channels].
template <typename T>
void minmax_rows(const ObserverParams& p, int64_t row_begin, int64_t row_end, float* lo, float* hi) {
  const T* x = static_cast<const T*>(p.x);
  if (p.inner == 1) {
    for (int64_t o = row_begin; o < row_end; ++o) minmax_columns<T>(x + o * p.channels, p.channels, lo, hi);
    return;
  }
  for (int64_t o = row_begin; o < row_end; ++o) {
    for (int64_t c = 0; c < p.channels; ++c) {
      minmax_run<T>(x + (o * p.channels + c) * p.inner, p.inner, lo[c], hi[c]);
    }
  }
}

template <typename T>
struct MinMaxFn {
  static void call(const ObserverParams& p, int64_t b, int64_t e, float* const* out) {
    minmax_rows<T>(p, b, e, out[0], out[1]);
  }
};

}  // namespace

void fused_observer_minmax(const ObserverParams& p, int64_t row_begin, int64_t row_end, float* lo, float* hi) {
  float* const out[2] = {lo, hi};
  by_dtype<MinMaxFn>(p, row_begin, row_end, out);
}

}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
