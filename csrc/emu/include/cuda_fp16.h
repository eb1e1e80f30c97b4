// The CUDA emulator's 16-bit float types, __half and __nv_bfloat16 (cuda_bf16.h includes this file): storage
// only, with CUDA's conversions (float to 16 bits rounds to nearest even; NaN stays NaN).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t bits;
};

struct __nv_bfloat16 {
  uint16_t bits;
};

namespace qk_emu {
inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace qk_emu

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu, mantissa = h.bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  // The exponent bias moves from 15 to 127; inf and NaN keep an all-ones exponent.
  return qk_emu::float_of(sign | (exponent == 0x1f ? 0xffu : exponent + 112) << 23 | mantissa << 13);
}

inline __half __float2half_rn(float f) {
  const uint32_t u = qk_emu::bits_of(f) & 0x7fffffffu;
  const uint32_t sign = (qk_emu::bits_of(f) >> 16) & 0x8000u;
  uint32_t h;
  if (u > 0x7f800000u) {
    h = 0x7e00u;  // NaN
  } else if (u >= 0x477ff000u) {
    h = 0x7c00u;  // rounds to infinity: >= 65520
  } else if (u < 0x38800000u) {
    // Below 2^-14: a subnormal half (or zero), in units of 2^-24, rounded to nearest even by the FPU.
    h = static_cast<uint32_t>(std::nearbyint(qk_emu::float_of(u) * 16777216.0f));
  } else {
    h = (((u >> 23) - 112) << 10) | ((u >> 13) & 0x3ffu);
    const uint32_t rest = u & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is still right
  }
  return {static_cast<uint16_t>(sign | h)};
}

inline float __bfloat162float(__nv_bfloat16 b) { return qk_emu::float_of(static_cast<uint32_t>(b.bits) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = qk_emu::bits_of(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};  // NaN stays quiet
  return {static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
