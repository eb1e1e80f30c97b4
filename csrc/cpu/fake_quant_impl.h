// The CPU fake-quant loops, compiled once per instruction set: csrc/cpu/fake_quant.cpp includes this for
// baseline x86-64 and fake_quant_avx2.cpp under `#pragma GCC target("avx2,fma,f16c")`, each with its own
// QK_CPU_ISA namespace (distinct names, so no inline function is shared between the two builds).
// The per-element math is qkernels/fake_quant_math.h; this file only walks memory. Loops are written so that
// GCC and Clang vectorize them: no calls, no early exits, compile-time dtype/flavour/mask switches.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "qkernels/fake_quant_kernels.h"

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

// ------------------------------------------------------------------------------------------------------
// Per-tensor
// ------------------------------------------------------------------------------------------------------
template <typename T, Flavour F, bool kWideZ, bool kMask>
void per_tensor_loop(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ mask,
                                   int64_t n, float scale, float inv_scale, int64_t z, float qmin, float qmax) {
  for (int64_t i = 0; i < n; ++i) {
    bool in_range;
    y[i] = from_float<T>(fq_per_tensor<F, kWideZ>(to_float(x[i]), scale, inv_scale, z, qmin, qmax, in_range));
    if (kMask) mask[i] = in_range;
  }
}

template <typename T>
void per_tensor_typed(const PerTensorParams& p, int64_t begin, int64_t end, uint8_t* mask) {
  const T* x = static_cast<const T*>(p.x) + begin;
  T* y = static_cast<T*>(p.out) + begin;
  const int64_t n = end - begin;
  if (!p.enabled) {
    std::memcpy(y, x, sizeof(T) * n);
    if (mask) std::memset(mask, 1, n);
    return;
  }
  const float inv = 1.0f / p.scale;
  const float lo = float(p.quant_min), hi = float(p.quant_max);
  const bool wide = p.zero_point > kMaxFloatZeroPoint || p.zero_point < -kMaxFloatZeroPoint;
  const auto run = [&](auto flavour, auto wide_z, auto with_mask) {
    per_tensor_loop<T, decltype(flavour)::value, decltype(wide_z)::value, decltype(with_mask)::value>(
        x, y, mask, n, p.scale, inv, p.zero_point, lo, hi);
  };
  using CpuF = std::integral_constant<Flavour, Flavour::Cpu>;
  using CudaF = std::integral_constant<Flavour, Flavour::Cuda>;
  using Yes = std::true_type;
  using No = std::false_type;
  if (p.flavour == Flavour::Cpu) {
    if (wide) {
      mask ? run(CpuF{}, Yes{}, Yes{}) : run(CpuF{}, Yes{}, No{});
    } else {
      mask ? run(CpuF{}, No{}, Yes{}) : run(CpuF{}, No{}, No{});
    }
  } else {
    mask ? run(CudaF{}, No{}, Yes{}) : run(CudaF{}, No{}, No{});
  }
}

// ------------------------------------------------------------------------------------------------------
// Per-channel: [begin, end) is cut into runs of one channel (inner > 1) or one row of channels (inner == 1).
// ------------------------------------------------------------------------------------------------------
template <typename T, Flavour F, bool kWideZ, bool kMask>
void channel_run_int(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ mask,
                                   int64_t n, float scale, int64_t z, int64_t qmin, int64_t qmax) {
  const float inv = 1.0f / scale;
  for (int64_t i = 0; i < n; ++i) {
    bool in_range;
    y[i] = from_float<T>(fq_per_channel_int_zp<F, kWideZ>(to_float(x[i]), scale, inv, z, qmin, qmax, in_range));
    if (kMask) mask[i] = in_range;
  }
}

template <typename T, Flavour F, bool kWideZ, bool kMask>
void channel_row_int(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ mask,
                                   int64_t n, const float* __restrict__ scale, const int32_t* __restrict__ z,
                                   int64_t qmin, int64_t qmax) {
  for (int64_t i = 0; i < n; ++i) {
    const float inv = 1.0f / scale[i];
    bool in_range;
    y[i] = from_float<T>(fq_per_channel_int_zp<F, kWideZ>(to_float(x[i]), scale[i], inv, z[i], qmin, qmax, in_range));
    if (kMask) mask[i] = in_range;
  }
}

template <typename T, Flavour F, bool kMask>
void channel_run_float(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ mask,
                                     int64_t n, float scale, float z, float qmin, float qmax, bool use_fma) {
  const float inv = 1.0f / scale;
  for (int64_t i = 0; i < n; ++i) {
    bool in_range;
    y[i] = from_float<T>(fq_per_channel_float_zp<F>(to_float(x[i]), scale, inv, z, qmin, qmax, use_fma, in_range));
    if (kMask) mask[i] = in_range;
  }
}

template <typename T, Flavour F, bool kMask>
void channel_row_float(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ mask,
                                     int64_t n, const float* __restrict__ scale, const float* __restrict__ z,
                                     float qmin, float qmax, bool use_fma) {
  for (int64_t i = 0; i < n; ++i) {
    const float inv = 1.0f / scale[i];
    bool in_range;
    y[i] = from_float<T>(
        fq_per_channel_float_zp<F>(to_float(x[i]), scale[i], inv, z[i], qmin, qmax, use_fma, in_range));
    if (kMask) mask[i] = in_range;
  }
}

template <typename T, Flavour F, bool kWideZ, bool kMask>
void per_channel_walk(const PerChannelParams& p, int64_t begin, int64_t end, uint8_t* mask) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.out);
  const int64_t C = p.channels, inner = p.inner;
  const float lo = float(p.quant_min), hi = float(p.quant_max);
  int64_t i = begin;
  while (i < end) {
    const int64_t row = i / inner;
    const int64_t c = row % C;
    uint8_t* m = kMask ? mask + (i - begin) : nullptr;
    if (inner == 1) {
      const int64_t len = std::min(end - i, C - c);
      if (p.zero_point_i) {
        channel_row_int<T, F, kWideZ, kMask>(x + i, y + i, m, len, p.scale + c, p.zero_point_i + c, p.quant_min,
                                             p.quant_max);
      } else {
        channel_row_float<T, F, kMask>(x + i, y + i, m, len, p.scale + c, p.zero_point_f + c, lo, hi, p.use_fma);
      }
      i += len;
    } else {
      const int64_t len = std::min(end - i, (row + 1) * inner - i);
      if (p.zero_point_i) {
        channel_run_int<T, F, kWideZ, kMask>(x + i, y + i, m, len, p.scale[c], p.zero_point_i[c], p.quant_min,
                                             p.quant_max);
      } else {
        channel_run_float<T, F, kMask>(x + i, y + i, m, len, p.scale[c], p.zero_point_f[c], lo, hi, p.use_fma);
      }
      i += len;
    }
  }
}

template <typename T>
void per_channel_typed(const PerChannelParams& p, int64_t begin, int64_t end, uint8_t* mask) {
  bool wide = false;
  if (p.zero_point_i) {
    for (int64_t c = 0; c < p.channels; ++c) {
      const int64_t z = p.zero_point_i[c];
      wide = wide || z > kMaxFloatZeroPoint || z < -kMaxFloatZeroPoint;
    }
  }
  const bool m = mask != nullptr;
  if (p.flavour == Flavour::Cuda) {
    m ? per_channel_walk<T, Flavour::Cuda, false, true>(p, begin, end, mask)
      : per_channel_walk<T, Flavour::Cuda, false, false>(p, begin, end, mask);
  } else if (wide) {
    m ? per_channel_walk<T, Flavour::Cpu, true, true>(p, begin, end, mask)
      : per_channel_walk<T, Flavour::Cpu, true, false>(p, begin, end, mask);
  } else {
    m ? per_channel_walk<T, Flavour::Cpu, false, true>(p, begin, end, mask)
      : per_channel_walk<T, Flavour::Cpu, false, false>(p, begin, end, mask);
  }
}

// ------------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------------
template <typename T>
void backward_loop(const T* __restrict__ g, const uint8_t* __restrict__ mask, T* __restrict__ out,
                                 int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = from_float<T>(to_float(g[i]) * (mask[i] ? 1.0f : 0.0f));
  }
}

template <typename T>
void backward_typed(const BackwardParams& p, int64_t begin, int64_t end, const uint8_t* mask) {
  backward_loop<T>(static_cast<const T*>(p.grad) + begin, mask, static_cast<T*>(p.out) + begin, end - begin);
}

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

template <typename T>
struct PerTensorFn {
  static void call(const PerTensorParams& p, int64_t b, int64_t e, uint8_t* m) { per_tensor_typed<T>(p, b, e, m); }
};
template <typename T>
struct PerChannelFn {
  static void call(const PerChannelParams& p, int64_t b, int64_t e, uint8_t* m) { per_channel_typed<T>(p, b, e, m); }
};
template <typename T>
struct BackwardFn {
  static void call(const BackwardParams& p, int64_t b, int64_t e, const uint8_t* m) { backward_typed<T>(p, b, e, m); }
};

}  // namespace

// `mask` holds one byte per element for [begin, end) (nullptr: no mask); packing is the caller's.
void fake_quant_per_tensor(const PerTensorParams& p, int64_t begin, int64_t end, uint8_t* mask) {
  by_dtype<PerTensorFn>(p, begin, end, mask);
}
void fake_quant_per_channel(const PerChannelParams& p, int64_t begin, int64_t end, uint8_t* mask) {
  by_dtype<PerChannelFn>(p, begin, end, mask);
}
void fake_quant_backward(const BackwardParams& p, int64_t begin, int64_t end, const uint8_t* mask) {
  by_dtype<BackwardFn>(p, begin, end, mask);
}

}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
