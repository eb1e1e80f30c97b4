// Per-element fake-quantization math, shared by the CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda).
//
// Host-and-device header: includes only <cstdint>/<cmath>, never a torch header. Every function here is the
// exact arithmetic of one PyTorch kernel (see README "Numerics contract"); the CPU extension can run either
// flavour, so the CUDA flavour is tested on machines without a GPU.
//
//   Flavour::Cpu  : aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (x86-64 build)
//   Flavour::Cuda : aten/src/ATen/native/quantized/cuda/FakeQuantizeCore.cu (torch 2.11-2.13)
//
// Inputs are widened to float (exact for fp16/bf16); each function returns y as float (narrowed once by the
// caller) and writes the mask through a reference (a returned struct keeps GCC from vectorizing the loops).
// The kernels require |quant_min|, |quant_max| <= 2^22 (qkernels.backends.MAX_KERNEL_QUANT_BOUND), which
// makes every comparison against the bounds exact in float. Zero points may be any int32.
#pragma once

#include <cmath>
#include <cstdint>

#include "qkernels/enums.h"
#include "qkernels/host_device.h"

namespace qkernels {

// Zero points up to this magnitude keep (q - z) exact in float; larger ones take the double path.
constexpr int64_t kMaxFloatZeroPoint = int64_t(1) << 23;

// Round half to even, independent of the compiler's choice of rounding instruction. On the host the
// 2^23 trick keeps the loop vectorizable on baseline x86-64 (no SSE4.1 round); it needs IEEE adds, so the
// CPU kernels are built with -ffp-contract=off and without fast-math. For |v| >= 2^23 v is already integral;
// NaN and +-inf pass through. The sign of a zero result may differ from nearbyint; callers add a zero point
// or 0.0f, which makes every zero +0.0 as aten's integer round trip does.
QK_HOST_DEVICE float round_half_even(float v) {
#if defined(__CUDA_ARCH__)
  return nearbyintf(v);
#else
  const float two23 = 8388608.0f;
  const float m = std::copysign(two23, v);
  return std::fabs(v) < two23 ? (v + m) - m : v;
#endif
}

// Float -> int64 conversion as CUDA's cvt.s64.f32 does it: saturating, NaN -> INT64_MIN
// (measured on an H100 through aten's kernels, which depend on it).
QK_HOST_DEVICE int64_t to_int64_cuda(float v) {
  if (v != v) return INT64_MIN;
  if (v >= 9.223372036854775808e18f) return INT64_MAX;
  if (v < -9.223372036854775808e18f) return INT64_MIN;
  return static_cast<int64_t>(v);
}

// int64 addition that wraps like the two's-complement hardware add aten relies on (signed overflow is UB).
QK_HOST_DEVICE int64_t wrapping_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}

// clamp(v, lo, hi) with NaN -> lo, as fminf(hi, fmaxf(lo, v)) in both aten kernels. Written as comparisons
// so that compilers vectorize it (fminf/fmaxf NaN rules do not map onto minps/maxps). v is never -0.0 here.
QK_HOST_DEVICE float clamp_nan_low(float v, float lo, float hi) {
  const float t = v > lo ? v : lo;
  return t < hi ? t : hi;
}

// ---------------------------------------------------------------------------------------------------------
// Per-tensor, int zero point (scalar and tensor-qparams forms).
//   inv = 1.0f / scale, p = x * inv, r = rne(p), qf = r + float(z)
//   mask = qmin <= qf <= qmax, qc = clamp(qf, qmin, qmax) (NaN -> qmin)
//   Cpu : y = float(int64(qc) - z) * scale       (exact integer difference, rounded once)
//   Cuda: y = (qc - float(z)) * scale            (float subtraction)
// kWideZ selects exact integer subtraction for |z| > 2^23; with smaller z both forms are the same number.
// ---------------------------------------------------------------------------------------------------------
template <Flavour F, bool kWideZ>
QK_HOST_DEVICE float fq_per_tensor(float x, float scale, float inv_scale, int64_t z, float qmin, float qmax,
                                   bool& mask) {
  const float zf = static_cast<float>(z);
  const float qf = round_half_even(x * inv_scale) + zf;
  mask = (qmin <= qf) & (qf <= qmax);
  const float qc = clamp_nan_low(qf, qmin, qmax);
  float d;
  if (F == Flavour::Cpu && kWideZ) {
    d = static_cast<float>(static_cast<double>(qc) - static_cast<double>(z));
  } else {
    d = qc - zf;
  }
  return d * scale;
}

// ---------------------------------------------------------------------------------------------------------
// Per-channel, int zero point of channel c (scale s, inv = 1.0f / s).
//   Cpu : qf = float(z) + rne(x*inv); q = int64(qf), x86 style: NaN or |qf| >= 2^63 -> INT64_MIN
//         mask = qmin <= q <= qmax
//         y = float((double(clamp(q)) - z) * double(s))
//   Cuda: q = wrap(to_int64_cuda(rne(x*inv)) + z); mask = qmin <= q <= qmax
//         y = float(clamp(q) - z) * s
// ---------------------------------------------------------------------------------------------------------
template <Flavour F, bool kWideZ>
QK_HOST_DEVICE float fq_per_channel_int_zp(float x, float scale, float inv_scale, int64_t z, int64_t qmin,
                                           int64_t qmax, bool& mask) {
  const float r = round_half_even(x * inv_scale);
  if (F == Flavour::Cpu) {
    const float qf = r + static_cast<float>(z);
    // Out-of-range and NaN qf convert to INT64_MIN (far below qmin): test in float to stay vectorizable.
    const bool special = !(std::fabs(qf) < 9.223372036854775808e18f);
    const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
    mask = !special & (lo <= qf) & (qf <= hi);
    const float qc = special ? lo : clamp_nan_low(qf, lo, hi);
    float y;
    if (kWideZ) {
      y = static_cast<float>((static_cast<double>(qc) - static_cast<double>(z)) * static_cast<double>(scale));
    } else {
      // |qc - z| <= 2^24: exact in float, so the float product is the double product rounded once.
      y = (qc - static_cast<float>(z)) * scale;
    }
    return y;
  } else {
    const float zf = static_cast<float>(z);
    if (std::fabs(r) < 8388608.0f && std::fabs(zf) <= 8388608.0f) {
      // |r| < 2^23, |z| <= 2^23: r + z, the clamp and qc - z are exact in float, so this gives the numbers of
      // the int64 definition below without float<->int conversions (which limit the GPU's 16-bit throughput).
      const float q = r + zf, lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
      mask = (lo <= q) & (q <= hi);
      return (clamp_nan_low(q, lo, hi) - zf) * scale;
    }
    const int64_t q = wrapping_add(to_int64_cuda(r), z);
    mask = (qmin <= q) & (q <= qmax);
    const int64_t qc = q < qmin ? qmin : (q > qmax ? qmax : q);
    return static_cast<float>(qc - z) * scale;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Per-channel, float zero point z of channel c (fp16 zero points are widened to float first).
//   v = x*inv + z, fused into one FMA on CUDA and on AVX2/AVX512 builds of aten (use_fma)
//   Cpu : q = lrintf(v) (NaN/out of range -> INT64_MIN); mask = qmin <= q <= qmax
//         y = float((double(clamp(q)) - double(z)) * double(s))
//   Cuda: q = lrint(v) saturating; mask = qmin <= q <= qmax; y = (clamp(float(q)) - z) * s
// ---------------------------------------------------------------------------------------------------------
template <Flavour F>
QK_HOST_DEVICE float fq_per_channel_float_zp(float x, float scale, float inv_scale, float z, float qmin, float qmax,
                                             bool use_fma, bool& mask) {
  const float v = use_fma ? fmaf(x, inv_scale, z) : x * inv_scale + z;
  // aten rounds to an integer, so a zero is +0; `+ 0.0f` turns a -0.0 from the rounding into +0.0.
  const float r = round_half_even(v) + 0.0f;
  if (F == Flavour::Cpu) {
    const bool special = !(std::fabs(r) < 9.223372036854775808e18f);
    mask = !special & (qmin <= r) & (r <= qmax);
    const float qc = special ? qmin : clamp_nan_low(r, qmin, qmax);
    const double y = (static_cast<double>(qc) - static_cast<double>(z)) * static_cast<double>(scale);
    return static_cast<float>(y);
  } else {
    // Saturation and NaN -> INT64_MIN both end up clamped exactly like r itself.
    mask = (qmin <= r) & (r <= qmax);
    return (clamp_nan_low(r, qmin, qmax) - z) * scale;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Division and remainder by a fixed positive divisor with a multiply and a shift (Granlund-Montgomery),
// for the channel index (offset / inner) % channels inside the CUDA kernel. Valid for n < 2^31.
// ---------------------------------------------------------------------------------------------------------
struct FastDivmod {
  uint32_t divisor;
  uint32_t multiplier;
  uint32_t shift;

  FastDivmod() : divisor(1), multiplier(0), shift(0) {}
  explicit FastDivmod(uint32_t d) : divisor(d), multiplier(0), shift(0) {
    // Smallest shift with 2^shift >= d, then m = ceil(2^(32+shift) / d) - 2^32 fits in 32 bits.
    while ((uint64_t(1) << shift) < d) ++shift;
    const uint64_t one = 1;
    multiplier = static_cast<uint32_t>(((one << 32) * ((one << shift) - d)) / d + 1);
  }

  QK_HOST_DEVICE uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t t = __umulhi(n, multiplier);
#else
    const uint32_t t = static_cast<uint32_t>((static_cast<uint64_t>(n) * multiplier) >> 32);
#endif
    return (t + n) >> shift;
  }
  QK_HOST_DEVICE uint32_t mod(uint32_t n) const { return n - div(n) * divisor; }
};

}  // namespace qkernels
