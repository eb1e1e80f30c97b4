// The CPU loops of gradient quantization, compiled once per instruction set (csrc/cpu/grad_quant.cpp and its _avx2
// variant). Layout and params: qkernels/grad_quant_kernels.h; per-element math: qkernels/grad_quant_math.h.
//
// absmax: a block's max|g| in eight float lanes (element k of a group of 8 to lane k; the tail folded after the
// lanes: a max is exact in any order). A non-finite value enters as +inf (a NaN too), so the lanes are plain maxima
// and a block holds a NaN or an infinity iff its max is inf; its partial is then NaN, which AbsMaxCombine's finish
// keeps.
// quantize: a chunk walks its group segments (the elements of one group inside the chunk), each in sub-blocks of at
// most kSub elements: the floats, then (stochastic) the 24-bit draws of their flat indices, then the codes, the
// clipped count and the outputs, each a loop the compiler vectorizes. Packed codes go to a nibble buffer of the chunk
// first and are paired into bytes at its end: with an odd n a byte's two elements can belong to two groups.
#include <algorithm>
#include <limits>

#include "qkernels/grad_quant_kernels.h"
#include "reduce.h"

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

constexpr int64_t kSub = 256;  // elements per stack sub-block of quantize

// A block's partial: max|g| over g[0..len), NaN if one of them is a NaN or an infinity (AbsMax sticks NaN; an
// infinity becomes it here).
template <typename T>
float block_finite_absmax(const T* __restrict__ g, int64_t len) {
  const float m = block_absmax(g, len);
  return m < INFINITY ? m : std::numeric_limits<float>::quiet_NaN();
}

template <typename T>
struct AbsmaxFn {
  static void call(const GradQuantAbsmaxParams& p, int64_t begin, int64_t end, std::nullptr_t) {
    const ReduceBlocks k = grad_quant_absmax_blocks(p.numel, p.n);
    float* dst = k.P == 1 ? p.amax : p.partial;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t group = item / k.P, first = item % k.P * k.chunk;  // run mode with one row: block p = chunk p
      dst[item] = block_finite_absmax(static_cast<const T*>(p.g) + group * p.n + first,
                                      std::min(k.chunk, p.n - first));
    }
  }
};

// One sub-block: elements [i, i + len) of one group (len <= kSub). Writes the dequantized values to out[i..] or
// the nibbles to nibbles[0..len); returns the clipped count.
template <typename T, bool kStochastic, bool kPacked>
int32_t quantize_run(const T* __restrict__ g, int64_t i, int64_t len, const GradQuantGroup& q, int64_t seed,
                     int64_t offset, T* __restrict__ out, uint8_t* __restrict__ nibbles) {
  alignas(32) float x[kSub], code[kSub];
  for (int64_t t = 0; t < len; ++t) x[t] = to_float(g[i + t]);
  if constexpr (kStochastic) {
    alignas(32) uint32_t r[kSub];
    for (int64_t t = 0; t < len; ++t) r[t] = grad_quant_uniform24(seed, offset, i + t);
    for (int64_t t = 0; t < len; ++t) code[t] = grad_quant_code_stochastic(x[t], q, r[t]);
  } else {
    for (int64_t t = 0; t < len; ++t) code[t] = grad_quant_code_nearest(x[t], q);
  }
  int32_t clipped = 0;
  for (int64_t t = 0; t < len; ++t) clipped += grad_quant_clipped(x[t], q);
  if constexpr (kPacked) {
    for (int64_t t = 0; t < len; ++t) nibbles[t] = static_cast<uint8_t>(grad_quant_nibble(code[t]));
  } else {
    for (int64_t t = 0; t < len; ++t) out[i + t] = from_float<T>(grad_quant_dequantize(code[t], q));
  }
  return clipped;
}

template <typename T, bool kStochastic, bool kPacked>
void quantize_chunks(const GradQuantParams& p, int64_t begin, int64_t end) {
  const ReduceBlocks blocks = grad_quant_quantize_blocks(p.numel);
  const float gamma = *p.clip_ratio;
  const int64_t seed = kStochastic ? p.key[0] : 0, offset = kStochastic ? p.key[1] : 0;
  const T* g = static_cast<const T*>(p.g);
  T* out = kPacked ? nullptr : static_cast<T*>(p.out);
  alignas(32) uint8_t nibbles[kPacked ? kGradQuantReduceTarget : 1];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t first = item * blocks.chunk, last = std::min(p.numel, first + blocks.chunk);
    int64_t clipped = 0;
    for (int64_t i = first; i < last;) {  // one group segment per pass
      const int64_t j = i / p.n, stop = std::min(last, (j + 1) * p.n);
      const GradQuantGroup q = grad_quant_group(p.amax[j], gamma, p.bits);
      if (i == j * p.n) p.scales[j] = q.scale;  // the chunk holding the group's first element writes its scale
      for (int64_t s = i; s < stop; s += kSub) {
        clipped += quantize_run<T, kStochastic, kPacked>(g, s, std::min(kSub, stop - s), q, seed, offset, out,
                                                         kPacked ? nibbles + (s - first) : nullptr);
      }
      i = stop;
    }
    if constexpr (kPacked) {  // chunks start at even elements; the last high nibble of an odd numel is 0
      uint8_t* bytes = static_cast<uint8_t*>(p.out) + first / 2;
      const int64_t len = last - first;
      for (int64_t b = 0; b < len / 2; ++b) bytes[b] = static_cast<uint8_t>(nibbles[2 * b] | nibbles[2 * b + 1] << 4);
      if (len % 2) bytes[len / 2] = nibbles[len - 1];
    }
    p.count_partial[item] = clipped;
  }
}

template <typename T>
struct QuantizeFn {
  static void call(const GradQuantParams& p, int64_t begin, int64_t end, std::nullptr_t) {
    if (p.key != nullptr) {
      return p.packed ? quantize_chunks<T, true, true>(p, begin, end) : quantize_chunks<T, true, false>(p, begin, end);
    }
    return p.packed ? quantize_chunks<T, false, true>(p, begin, end) : quantize_chunks<T, false, false>(p, begin, end);
  }
};

}  // namespace

void grad_quant_absmax(const GradQuantAbsmaxParams& p, int64_t begin, int64_t end) {
  by_dtype<AbsmaxFn>(p, begin, end, nullptr);
}

void grad_quant_quantize(const GradQuantParams& p, int64_t begin, int64_t end) {
  by_dtype<QuantizeFn>(p, begin, end, nullptr);
}

}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
