// CUDA kernels of oscillation fake quantization on raw pointers (no torch). The per-element math is
// qkernels/oscillation_fake_quant_math.h (the spec's float32 roundings; nvcc --fmad=false keeps the EMAs' two
// roundings); the layout is qkernels/oscillation_fake_quant_kernels.h.
//
// Forward: elementwise, grid-stride, one element per thread and step. The flags (started, threshold, tracking) are
// read from device memory by every thread (no host sync); 1 / s is __frcp_rn, the correctly rounded reciprocal
// that torch.reciprocal gives. Each CTA counts its oscillations in int64 and writes the count to its slot of
// count_partial (the caller sums them: exact).
//
// Backward: dw for every element and, for every block of the reduction layer's layout (qkernels/reduce.h), the
// float32 sum of ds over the block into ds_partial ([B, P, C]; the caller finishes them in float64). One CTA per
// work item, grid-stride over the items:
//   run mode: the item's rows x chunk elements of one quantizer, strided over the threads (coalesced along I),
//     each thread summing its own in turn, then reduce.cuh's block_reduce over the CTA;
//   row mode: the item's rows of all C quantizers; thread t owns the columns t, t + kThreads, ... and sums each
//     over the rows in order (coalesced across threads).
// Every sum is formed in an order fixed by the launch configuration, with no atomics: the partials are the same
// from run to run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "qkernels/oscillation_fake_quant_kernels.h"
#include "element_io.cuh"
#include "reduce.cuh"

namespace qkernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = 0x7fffffff;  // gridDim.x limit; larger launches loop

// Quantizer of storage offset e: (e / I) % C + (e / (O * C * I)) * C, by multiply-shift below 2^31 elements.
struct QuantizerOf {
  FastDivmod inner, channels, outer;
  int64_t I, C, OCI;
  bool small;

  explicit QuantizerOf(const ReduceDims& d) : I(d.I), C(d.C), OCI(d.O * d.C * d.I), small(d.numel() < kIndex32Limit) {
    if (small) {
      inner = FastDivmod(static_cast<uint32_t>(d.I));
      channels = FastDivmod(static_cast<uint32_t>(d.C));
      outer = FastDivmod(static_cast<uint32_t>(OCI));
    }
  }
  __device__ __forceinline__ int64_t operator()(int64_t e) const {
    if (small) {
      const uint32_t u = static_cast<uint32_t>(e);
      return channels.mod(inner.div(u)) + static_cast<int64_t>(outer.div(u)) * C;
    }
    return (e / I) % C + (e / OCI) * C;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(OscillationForwardParams p, QuantizerOf quantizer, int64_t n, int64_t* __restrict__ count_partial) {
  __shared__ int64_t smem[kThreads / 32];
  const OscillationFlags f = oscillation_flags(p);
  const T* __restrict__ w = static_cast<const T*>(p.w);
  T* __restrict__ out = static_cast<T*>(p.out);
  int64_t count = 0;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t q = quantizer(e);
    const float s = __ldg(p.scale + q), z = __ldg(p.zero_point + q);
    OscillationElement st{p.prev_x_int[e], p.prev_switch_dir[e], p.frozen_x_int[e],
                          p.frozen[e],     p.ema_oscillation[e], p.ema_x_int[e]};
    bool mask, osc;
    const float x = oscillation_step(to_float(w[e]), __frcp_rn(s), z, p.quant_min, p.quant_max, f, st, mask, osc);
    out[e] = from_float<T>(oscillation_output(x, s, z));
    if (p.x_int != nullptr) {
      p.x_int[e] = oscillation_int8(x);
      p.mask[e] = mask;
    }
    if (f.tracking) {  // the state changes only when tracking
      p.prev_x_int[e] = st.prev_x_int;
      p.prev_switch_dir[e] = st.prev_switch_dir;
      p.ema_oscillation[e] = st.ema_oscillation;
      p.frozen[e] = st.frozen;
      p.frozen_x_int[e] = st.frozen_x_int;
      p.ema_x_int[e] = st.ema_x_int;
    }
    count += osc;
  }
  count = block_reduce<CountCombine, kThreads>(count, smem);
  if (threadIdx.x == 0) count_partial[blockIdx.x] = count;
}

dim3 grid_for(int64_t blocks) { return dim3(static_cast<unsigned>(blocks < kMaxGrid ? blocks : kMaxGrid)); }

// dw of element e, and its ds through `ds`.
template <typename T>
__device__ __forceinline__ void grad_element(const OscillationBackwardParams& p, int64_t e, float s, float inv,
                                             float z, float& ds) {
  const float dw = oscillation_grad(to_float(static_cast<const T*>(p.dy)[e]), to_float(static_cast<const T*>(p.w)[e]),
                                    static_cast<float>(p.x_int[e]), p.mask[e], s, inv, z, p.grad_factor, ds);
  static_cast<T*>(p.dw)[e] = from_float<T>(dw);
}

// Run mode: item = (b * P + p) * C + c, also its index in the partials.
template <typename T>
__global__ void __launch_bounds__(kThreads) backward_run_kernel(OscillationBackwardParams p, int64_t items) {
  __shared__ float smem[kThreads / 32];
  const ReduceDims& d = p.dims;
  const ReduceBlocks& k = p.blocks;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t c = item % d.C, bp = item / d.C, part = bp % k.P, b = bp / k.P;
    const int64_t o0 = (part / k.n_ib) * k.rows, i0 = (part % k.n_ib) * k.chunk;
    const int64_t rows = d.O - o0 < k.rows ? d.O - o0 : k.rows;
    const int64_t len = d.I - i0 < k.chunk ? d.I - i0 : k.chunk;
    const int64_t base = ((b * d.O + o0) * d.C + c) * d.I + i0, stride = d.C * d.I;
    const float s = __ldg(p.scale + b * d.C + c), z = __ldg(p.zero_point + b * d.C + c), inv = __frcp_rn(s);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < rows * len; j += kThreads) {
      float ds;
      grad_element<T>(p, base + (j / len) * stride + j % len, s, inv, z, ds);
      sum += ds;
    }
    if (p.ds_partial == nullptr) continue;  // uniform over the CTA
    sum = block_reduce<SumCombine, kThreads>(sum, smem);
    if (threadIdx.x == 0) p.ds_partial[item] = sum;
  }
}

// Row mode (I == 1): item = b * P + p, rows [p * rows, p * rows + rows) of every column, whose partials are
// [(b * P + p) * C, + C).
template <typename T>
__global__ void __launch_bounds__(kThreads) backward_row_kernel(OscillationBackwardParams p, int64_t items) {
  const ReduceDims& d = p.dims;
  const ReduceBlocks& k = p.blocks;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t b = item / k.P, o0 = (item % k.P) * k.rows;
    const int64_t rows = d.O - o0 < k.rows ? d.O - o0 : k.rows;
    for (int64_t c = threadIdx.x; c < d.C; c += kThreads) {
      const float s = __ldg(p.scale + b * d.C + c), z = __ldg(p.zero_point + b * d.C + c), inv = __frcp_rn(s);
      float sum = 0.0f;
      for (int64_t o = 0; o < rows; ++o) {
        float ds;
        grad_element<T>(p, (b * d.O + o0 + o) * d.C + c, s, inv, z, ds);
        sum += ds;
      }
      if (p.ds_partial != nullptr) p.ds_partial[item * d.C + c] = sum;
    }
  }
}

}  // namespace

int oscillation_fake_quant_forward(const OscillationForwardParams& p, int64_t* count_partial, void* stream) {
  const int64_t n = p.dims.numel();
  const dim3 grid = grid_for(oscillation_forward_ctas(n));
  const QuantizerOf quantizer(p.dims);
  return by_dtype(p.dtype, [&](auto tag) {
    forward_kernel<decltype(tag)>
        <<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, quantizer, n, count_partial);
    return static_cast<int>(cudaGetLastError());
  });
}

int oscillation_fake_quant_backward(const OscillationBackwardParams& p, void* stream) {
  if (p.dims.numel() == 0) return 0;
  const ReduceBlocks& k = p.blocks;
  // The kernels divide by the block sizes.
  if (k.rows < 1 || k.chunk < 1 || k.n_ib < 1 || k.P < 1 || k.row_mode != (p.dims.I == 1 && p.dims.C > 1)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t items = reduce_items(p.dims, k);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return by_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (k.row_mode) {
      backward_row_kernel<T><<<grid_for(items), kThreads, 0, s>>>(p, items);
    } else {
      backward_run_kernel<T><<<grid_for(items), kThreads, 0, s>>>(p, items);
    }
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace cuda
}  // namespace qkernels
