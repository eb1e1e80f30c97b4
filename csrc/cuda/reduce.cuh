// The CUDA block combine of the reduction layer (qkernels/reduce.h): the values of a CTA's threads combined in a
// fixed tree, a shuffle tree in each warp (lane l takes lane l + 16, 8, 4, 2, 1), then the same tree over the
// warps' results in warp 0. Every value is combined in an order fixed by the launch configuration, with no
// atomics, so a block's partial is the same from run to run. Combine: a kind of qkernels/reduce.h (Value and
// combine()), or SumPair below.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "qkernels/reduce.h"

namespace qkernels {
namespace cuda {

// Two float32 sums formed together (the learnable backward's ds and dz).
struct SumPair {
  using Value = float2;
  static __device__ __forceinline__ float2 identity() { return make_float2(0.0f, 0.0f); }
  static __device__ __forceinline__ float2 combine(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }
};

__device__ __forceinline__ float shfl_down(float v, int offset) { return __shfl_down_sync(0xffffffffu, v, offset); }
__device__ __forceinline__ int64_t shfl_down(int64_t v, int offset) {
  return __shfl_down_sync(0xffffffffu, static_cast<long long>(v), offset);
}
__device__ __forceinline__ float2 shfl_down(float2 v, int offset) {
  return make_float2(shfl_down(v.x, offset), shfl_down(v.y, offset));
}
__device__ __forceinline__ MinMax shfl_down(MinMax v, int offset) {
  return MinMax{shfl_down(v.lo, offset), shfl_down(v.hi, offset)};
}

// Combine of v over the CTA of kThreads (a multiple of 32, at most 1024) threads; the result is valid in thread 0.
// Ends with a barrier, so that smem can be used again.
template <typename Combine, int kThreads>
__device__ __forceinline__ typename Combine::Value block_reduce(typename Combine::Value v,
                                                                typename Combine::Value (&smem)[kThreads / 32]) {
  constexpr int kWarps = kThreads / 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = Combine::combine(v, shfl_down(v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? smem[lane] : Combine::identity();  // lanes >= kWarps never reach lane 0's result
#pragma unroll
    for (int offset = kWarps / 2; offset > 0; offset >>= 1) v = Combine::combine(v, shfl_down(v, offset));
  }
  __syncthreads();
  return v;
}

}  // namespace cuda
}  // namespace qkernels
