// CPU fake-quant entry points: the loops of fake_quant_impl.h built for baseline x86-64 (here) and for
// AVX2+FMA+F16C (fake_quant_avx2.cpp), chosen once from the running CPU (isa.h).
// Bit-packed masks are handled here, around the loops: they run on one byte per element in a stack block,
// packed (or unpacked) 8 to a byte.
#include <algorithm>

#include "qkernels/fake_quant_kernels.h"

#define QK_CPU_ISA baseline
#include "fake_quant_impl.h"
#undef QK_CPU_ISA
#include "isa.h"

namespace qkernels {
namespace cpu {

#ifdef QK_CPU_HAS_AVX2_BUILD
namespace avx2 {
void fake_quant_per_tensor(const PerTensorParams& p, int64_t begin, int64_t end, uint8_t* mask);
void fake_quant_per_channel(const PerChannelParams& p, int64_t begin, int64_t end, uint8_t* mask);
void fake_quant_backward(const BackwardParams& p, int64_t begin, int64_t end, const uint8_t* mask);
}  // namespace avx2
#endif

namespace {

constexpr int64_t kPackBlock = 4096;  // elements per stack block; a multiple of 8

// Bit k of packed[j] is bytes[8j + k] (each 0 or 1); n need not be a multiple of 8 (missing bits are 0).
// Whole bytes go through a fixed-trip inner loop the compiler unrolls; the last partial byte is separate.
void pack_bits(const uint8_t* __restrict__ bytes, int64_t n, uint8_t* __restrict__ packed) {
  const int64_t full = n / 8;
  for (int64_t j = 0; j < full; ++j) {
    uint32_t b = 0;
    for (int k = 0; k < 8; ++k) b |= static_cast<uint32_t>(bytes[8 * j + k]) << k;
    packed[j] = static_cast<uint8_t>(b);
  }
  if (n % 8) {
    uint32_t b = 0;
    for (int64_t i = 8 * full; i < n; ++i) b |= static_cast<uint32_t>(bytes[i]) << (i - 8 * full);
    packed[full] = static_cast<uint8_t>(b);
  }
}

void unpack_bits(const uint8_t* __restrict__ packed, int64_t n, uint8_t* __restrict__ bytes) {
  const int64_t full = n / 8;
  for (int64_t j = 0; j < full; ++j) {
    for (int k = 0; k < 8; ++k) bytes[8 * j + k] = (packed[j] >> k) & 1;
  }
  for (int64_t i = 8 * full; i < n; ++i) bytes[i] = (packed[full] >> (i - 8 * full)) & 1;
}

// Runs fn(begin, end, byte_mask) over [begin, end), giving it the caller's byte mask, or a stack block whose
// bits are packed into (after) or unpacked from (before) p.mask. begin is a multiple of 8 when packed.
template <bool kWritesMask, typename Params, typename Fn>
void with_mask(const Params& p, int64_t begin, int64_t end, Fn fn) {
  if (!p.mask || !p.mask_packed) {
    fn(begin, end, p.mask ? p.mask + begin : nullptr);
    return;
  }
  uint8_t block[kPackBlock];
  for (int64_t b = begin; b < end; b += kPackBlock) {
    const int64_t e = std::min(end, b + kPackBlock);
    if constexpr (!kWritesMask) unpack_bits(p.mask + b / 8, e - b, block);
    fn(b, e, block);
    if constexpr (kWritesMask) pack_bits(block, e - b, p.mask + b / 8);
  }
}

}  // namespace

void fake_quant_per_tensor(const PerTensorParams& p, int64_t begin, int64_t end) {
  with_mask<true>(p, begin, end,
                  [&](int64_t b, int64_t e, auto m) { QK_CPU_DISPATCH(fake_quant_per_tensor, p, b, e, m); });
}
void fake_quant_per_channel(const PerChannelParams& p, int64_t begin, int64_t end) {
  with_mask<true>(p, begin, end,
                  [&](int64_t b, int64_t e, auto m) { QK_CPU_DISPATCH(fake_quant_per_channel, p, b, e, m); });
}
void fake_quant_backward(const BackwardParams& p, int64_t begin, int64_t end) {
  with_mask<false>(p, begin, end,
                   [&](int64_t b, int64_t e, auto m) { QK_CPU_DISPATCH(fake_quant_backward, p, b, e, m); });
}
}  // namespace cpu
}  // namespace qkernels
