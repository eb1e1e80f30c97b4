// Device-side element conversions, the 16-byte vector and the dtype dispatch shared by the CUDA kernels
// (csrc/cuda/*.cu): fp16/bf16 are widened to float exactly and narrowed once, round to nearest even.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "qkernels/enums.h"

namespace qkernels {
namespace cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// One 16-byte vector of T (4 fp32 or 8 fp16/bf16 elements).
template <typename T>
struct alignas(16) Vec {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// One 16-byte vector of T at p (16-byte aligned), widened to float / narrowed from float.
template <typename T>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&out)[Vec<T>::kSize]) {
  const Vec<T> t = *reinterpret_cast<const Vec<T>*>(p);
#pragma unroll
  for (int j = 0; j < Vec<T>::kSize; ++j) out[j] = to_float(t.v[j]);
}

template <typename T>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&in)[Vec<T>::kSize]) {
  Vec<T> t;
#pragma unroll
  for (int j = 0; j < Vec<T>::kSize; ++j) t.v[j] = from_float<T>(in[j]);
  *reinterpret_cast<Vec<T>*>(p) = t;
}

// Below this many elements (or index units) the kernels divide indices by multiply-shift in 32 bits
// (FastDivmod), from it on by 64-bit division. Overridable so that the CUDA emulator's tests run the 64-bit
// path on small tensors.
#ifndef QKERNELS_CUDA_INDEX32_LIMIT
#define QKERNELS_CUDA_INDEX32_LIMIT (int64_t(1) << 31)
#endif
constexpr int64_t kIndex32Limit = QKERNELS_CUDA_INDEX32_LIMIT;

// Whether a host pointer allows 16-byte vector accesses.
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Calls fn(T{}) with the element type of dtype; returns fn's cudaError_t value.
template <typename Fn>
int by_dtype(DType dtype, Fn fn) {
  switch (dtype) {
    case DType::Float32:
      return fn(float{});
    case DType::Float16:
      return fn(__half{});
    case DType::BFloat16:
      return fn(__nv_bfloat16{});
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cuda
}  // namespace qkernels
