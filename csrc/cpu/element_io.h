// Element types and conversions of the CPU loops, compiled once per instruction set (per-ISA include: the file
// that includes it defines QK_CPU_ISA, the namespace of its instruction-set build, so no inline function is
// shared between two builds). fp16/bf16 are raw 16-bit patterns, widened to float exactly and narrowed once,
// round to nearest even, as c10::Half and c10::BFloat16 convert.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "qkernels/enums.h"
#include "qkernels/host_device.h"

#ifndef QK_CPU_ISA
#error "define QK_CPU_ISA (the namespace of this instruction-set build) before including this file"
#endif

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

QK_HOST_DEVICE uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
QK_HOST_DEVICE float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

QK_HOST_DEVICE float to_float(float v) { return v; }
QK_HOST_DEVICE float to_float(BFloat16 v) { return float_of(uint32_t(v.bits) << 16); }
// IEEE binary16 -> binary32, exact; subnormals are rebuilt with one float subtraction.
QK_HOST_DEVICE float to_float(Half v) {
  const uint32_t w = uint32_t(v.bits) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  // Normal and inf/NaN: shift the exponent/mantissa into place and rescale by 2^-112.
  const float normal = float_of((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  // Subnormal: place the mantissa under the exponent of 0.5 and subtract 0.5.
  const float subnormal = float_of((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t mag = two_w < (1u << 27) ? bits_of(subnormal) : bits_of(normal);
  return float_of(sign | mag);
}

template <typename T>
QK_HOST_DEVICE T from_float(float v);
template <>
QK_HOST_DEVICE float from_float<float>(float v) {
  return v;
}
// Round to nearest even; NaN becomes the canonical quiet NaN, as c10::BFloat16 does.
template <>
QK_HOST_DEVICE BFloat16 from_float<BFloat16>(float v) {
  const uint32_t u = bits_of(v);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return BFloat16{static_cast<uint16_t>(v != v ? 0x7FC0u : rounded)};
}
// Round to nearest even, with overflow to inf and gradual underflow, as c10::Half does. The float
// arithmetic makes the FPU do the rounding: scaling by 2^112 * 2^-110 rounds the mantissa where binary16's
// would end, and adding a power of two aligned to the result's exponent moves those bits into place.
template <>
QK_HOST_DEVICE Half from_float<Half>(float v) {
  const float base0 = (std::fabs(v) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = bits_of(v);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  const float base = float_of((bias >> 1) + 0x07800000u) + base0;
  const uint32_t b = bits_of(base);
  const uint32_t nonsign = ((b >> 13) & 0x00007C00u) + (b & 0x00000FFFu);
  return Half{static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
}

// Fn<T>::call(p, begin, end, extra) for the element type T of p.dtype.
template <template <typename> class Fn, typename P, typename M>
void by_dtype(const P& p, int64_t begin, int64_t end, M mask) {
  switch (p.dtype) {
    case DType::Float32:
      return Fn<float>::call(p, begin, end, mask);
    case DType::Float16:
      return Fn<Half>::call(p, begin, end, mask);
    case DType::BFloat16:
      return Fn<BFloat16>::call(p, begin, end, mask);
  }
}

}  // namespace
}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
