// CUDA kernels of the oscillation dampening loss on raw pointers (no torch). The per-element math is
// qkernels/oscillation_dampening_math.h (the spec's float32 roundings; nvcc --fmad=false); the layout is
// qkernels/oscillation_dampening_kernels.h. 1 / s is __frcp_rn, the correctly rounded reciprocal that
// torch.reciprocal gives.
//
// dw for every element and, for every block of the reduction layer's layout (qkernels/reduce.h), the float32 sums of
// e and ds over the block into e_partial and ds_partial ([B, P, C]; the caller finishes them in float64). One CTA
// per work item, grid-stride over the items, as the sibling family's backward (csrc/cuda/oscillation_fake_quant.cu):
//   run mode: the item's rows x chunk elements of one quantizer, strided over the threads (coalesced along I),
//     each thread summing its own in turn, then reduce.cuh's block_reduce of the (e, ds) pair over the CTA;
//   row mode: the item's rows of all C quantizers; thread t owns the columns t, t + kThreads, ... and sums each
//     over the rows in order (coalesced across threads), in float64 rounded once: a block has up to
//     REDUCE_TARGET / 2 rows, and e is never negative, so a float32 running sum would drift past the sum
//     tolerance (the CPU's row accumulators are float64 too).
// Every sum is formed in an order fixed by the launch configuration, with no atomics: the partials are the same
// from run to run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "qkernels/oscillation_dampening_kernels.h"
#include "element_io.cuh"
#include "reduce.cuh"

namespace qkernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = 0x7fffffff;  // gridDim.x limit; larger launches loop

// dw of element e; returns its (e, ds).
template <typename T>
__device__ __forceinline__ float2 dampen_element(const DampeningParams& p, int64_t e, float s, float inv, float z) {
  float ds;
  const float sq = oscillation_dampening_element(to_float(static_cast<const T*>(p.w)[e]), p.frozen[e],
                                                 p.frozen_x_int[e], s, inv, z, p.quant_min, p.quant_max, p.dw[e],
                                                 ds);
  return make_float2(sq, ds);
}

// Run mode: item = (b * P + p) * C + c, also its index in the partials.
template <typename T>
__global__ void __launch_bounds__(kThreads) run_kernel(DampeningParams p, int64_t items) {
  __shared__ float2 smem[kThreads / 32];
  const ReduceDims& d = p.dims;
  const ReduceBlocks& k = p.blocks;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t c = item % d.C, bp = item / d.C, part = bp % k.P, b = bp / k.P;
    const int64_t o0 = (part / k.n_ib) * k.rows, i0 = (part % k.n_ib) * k.chunk;
    const int64_t rows = d.O - o0 < k.rows ? d.O - o0 : k.rows;
    const int64_t len = d.I - i0 < k.chunk ? d.I - i0 : k.chunk;
    const int64_t base = ((b * d.O + o0) * d.C + c) * d.I + i0, stride = d.C * d.I;
    const float s = __ldg(p.scale + b * d.C + c), z = __ldg(p.zero_point + b * d.C + c), inv = __frcp_rn(s);
    float2 sum = SumPair::identity();
    for (int64_t j = threadIdx.x; j < rows * len; j += kThreads) {
      sum = SumPair::combine(sum, dampen_element<T>(p, base + (j / len) * stride + j % len, s, inv, z));
    }
    sum = block_reduce<SumPair, kThreads>(sum, smem);
    if (threadIdx.x == 0) {
      p.e_partial[item] = sum.x;
      p.ds_partial[item] = sum.y;
    }
  }
}

// Row mode (I == 1): item = b * P + p, rows [p * rows, p * rows + rows) of every column, whose partials are
// [(b * P + p) * C, + C).
template <typename T>
__global__ void __launch_bounds__(kThreads) row_kernel(DampeningParams p, int64_t items) {
  const ReduceDims& d = p.dims;
  const ReduceBlocks& k = p.blocks;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t b = item / k.P, o0 = (item % k.P) * k.rows;
    const int64_t rows = d.O - o0 < k.rows ? d.O - o0 : k.rows;
    for (int64_t c = threadIdx.x; c < d.C; c += kThreads) {
      const float s = __ldg(p.scale + b * d.C + c), z = __ldg(p.zero_point + b * d.C + c), inv = __frcp_rn(s);
      double sum_e = 0.0, sum_ds = 0.0;
      for (int64_t o = 0; o < rows; ++o) {
        const float2 v = dampen_element<T>(p, (b * d.O + o0 + o) * d.C + c, s, inv, z);
        sum_e += v.x;
        sum_ds += v.y;
      }
      p.e_partial[item * d.C + c] = static_cast<float>(sum_e);
      p.ds_partial[item * d.C + c] = static_cast<float>(sum_ds);
    }
  }
}

}  // namespace

int oscillation_dampening_forward(const DampeningParams& p, void* stream) {
  if (p.dims.numel() == 0) return 0;
  const ReduceBlocks& k = p.blocks;
  // The kernels divide by the block sizes.
  if (k.rows < 1 || k.chunk < 1 || k.n_ib < 1 || k.P < 1 || k.row_mode != (p.dims.I == 1 && p.dims.C > 1)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t items = reduce_items(p.dims, k);
  const dim3 grid(static_cast<unsigned>(items < kMaxGrid ? items : kMaxGrid));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return by_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (k.row_mode) {
      row_kernel<T><<<grid, kThreads, 0, s>>>(p, items);
    } else {
      run_kernel<T><<<grid, kThreads, 0, s>>>(p, items);
    }
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace cuda
}  // namespace qkernels
