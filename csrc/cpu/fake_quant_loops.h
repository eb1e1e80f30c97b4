// The CPU fake-quant loops (internal linkage), compiled once per instruction set by the translation units that
// include fake_quant_impl.h (csrc/cpu/fake_quant.cpp for baseline x86-64, fake_quant_avx2.cpp under
// `#pragma GCC target("avx2,fma,f16c")`, each with its own QK_CPU_ISA namespace), and by the learnable family,
// whose forward runs them.
// The per-element math is qkernels/fake_quant_math.h; this file only walks memory. Loops are written so that
// GCC and Clang vectorize them: no calls, no early exits, compile-time dtype/flavour/mask switches.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "qkernels/fake_quant_kernels.h"
#include "element_io.h"

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

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

}  // namespace
}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
