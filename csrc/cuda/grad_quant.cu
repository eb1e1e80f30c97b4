// CUDA kernels of Kim et al.'s low-bit gradient quantization on raw pointers (no torch). The per-element math is
// qkernels/grad_quant_math.h (the spec's float32 roundings: g / s and c / L IEEE divisions, and nvcc --fmad=false
// rounds every product and difference on its own); the layout is qkernels/grad_quant_cuda.h: G groups of n
// consecutive elements of g's flat storage.
//
// absmax: max|g| per group is exact in any order (AbsMax, NaN sticking), so the split only has to be fixed, not
// ordered. Groups of at most kGradQuantThreadGroup elements: one thread per group, its elements in turn (a CTA per
// group would leave most of its threads idle). Larger ones: one CTA per block of make_reduce_blocks' layout (a
// chunk of one group), reduce.cuh's tree; a group of one block writes its max directly, a larger one writes a
// partial per block and a second kernel (one CTA per group) combines them. Two passes rather than atomics on the
// float bits: no output to zero first, nothing for the emulator to lack, and the partials are few (G * P <= numel
// / 16384 + G). Last, a max of +inf means an infinity and no NaN in the group: it becomes NaN, as a NaN does.
//
// quantize: thread t of the grid takes the pairs of elements j = t, t + threads, ... (grid-stride): elements 2j
// and 2j + 1, each with its own group's constants (a pair may straddle two groups), so that a thread owns whole
// bytes of the packed codes. The constants come from amax and γ read on the device; the stochastic rounding's key
// too, the draw of element i being Philox at its flat index (never the launch's layout). The thread holding a
// group's first element writes its scale. Each CTA counts its clipped elements (reduce.cuh's Count tree) into its
// own partial, and one CTA adds the partials into n_clipped: exact, with no atomics and no zeroing of the output.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "element_io.cuh"
#include "qkernels/fake_quant_math.h"  // FastDivmod
#include "qkernels/grad_quant_cuda.h"
#include "reduce.cuh"

namespace qkernels {
namespace cuda {
namespace {

constexpr int kThreads = static_cast<int>(kGradQuantThreads);
constexpr int64_t kMaxGrid = 0x7fffffff;  // gridDim.x limit; larger launches loop

dim3 grid_for(int64_t blocks) { return dim3(static_cast<unsigned>(blocks < kMaxGrid ? blocks : kMaxGrid)); }

// A group's max as the contract gives it: NaN for a group holding a NaN (sticking) or an infinity (max +inf).
__device__ __forceinline__ float group_max(float m) { return m < INFINITY ? m : NAN; }

// One thread per group (n <= kGradQuantThreadGroup).
template <typename T>
__global__ void __launch_bounds__(kThreads) absmax_small_kernel(GradQuantAbsmaxParams p) {
  const T* g = static_cast<const T*>(p.g);
  const int64_t groups = p.numel / p.n;
  for (int64_t j = blockIdx.x * int64_t(kThreads) + threadIdx.x; j < groups; j += int64_t(gridDim.x) * kThreads) {
    float m = AbsMaxCombine::identity();
    for (int64_t i = j * p.n; i < (j + 1) * p.n; ++i) m = AbsMaxCombine::fold(m, to_float(g[i]));
    p.amax[j] = group_max(m);
  }
}

// One CTA per block (group j, chunk b) of the layout, `blocks` per group; with one block per group it writes the
// group's max, else the block's partial at j * blocks + b.
template <typename T>
__global__ void __launch_bounds__(kThreads) absmax_kernel(GradQuantAbsmaxParams p, int64_t chunk, int64_t blocks) {
  __shared__ float smem[kThreads / 32];
  const int64_t items = p.numel / p.n * blocks;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t j = item / blocks, start = (item - j * blocks) * chunk;
    const int64_t len = p.n - start < chunk ? p.n - start : chunk;
    const T* g = static_cast<const T*>(p.g) + j * p.n + start;
    float m = AbsMaxCombine::identity();
    for (int64_t i = threadIdx.x; i < len; i += kThreads) m = AbsMaxCombine::fold(m, to_float(g[i]));
    m = block_reduce<AbsMaxCombine, kThreads>(m, smem);
    if (threadIdx.x == 0) {
      if (blocks == 1) {
        p.amax[j] = group_max(m);
      } else {
        p.partial[item] = m;
      }
    }
  }
}

// One CTA per group: its `blocks` partials.
__global__ void __launch_bounds__(kThreads) finish_absmax_kernel(GradQuantAbsmaxParams p, int64_t blocks) {
  __shared__ float smem[kThreads / 32];
  const int64_t groups = p.numel / p.n;
  for (int64_t j = blockIdx.x; j < groups; j += gridDim.x) {
    float m = AbsMaxCombine::identity();
    for (int64_t b = threadIdx.x; b < blocks; b += kThreads) m = AbsMaxCombine::combine(m, p.partial[j * blocks + b]);
    m = block_reduce<AbsMaxCombine, kThreads>(m, smem);
    if (threadIdx.x == 0) p.amax[j] = group_max(m);
  }
}

// Group of flat index i and its place in the group: multiply-shift division below kIndex32Limit elements.
struct GroupIndex {
  FastDivmod n32;
  int64_t n;
  bool small;
  __device__ __forceinline__ int64_t operator()(int64_t i, int64_t& rem) const {
    if (small) {
      const uint32_t j = n32.div(static_cast<uint32_t>(i));
      rem = static_cast<int64_t>(static_cast<uint32_t>(i) - j * n32.divisor);
      return j;
    }
    const int64_t j = i / n;
    rem = i - j * n;
    return j;
  }
};

// The code of element i (value v) of a group: nearest, or stochastic from the key's draw at i.
template <bool kStochastic>
__device__ __forceinline__ float code_of(float v, const GradQuantGroup& q, int64_t seed, int64_t offset, int64_t i) {
  if (kStochastic) return grad_quant_code_stochastic(v, q, grad_quant_uniform24(seed, offset, i));
  return grad_quant_code_nearest(v, q);
}

template <typename T, bool kPacked, bool kStochastic>
__global__ void __launch_bounds__(kThreads) quantize_kernel(GradQuantParams p, GroupIndex index) {
  __shared__ int64_t smem[kThreads / 32];
  const T* g = static_cast<const T*>(p.g);
  const float gamma = *p.clip_ratio;
  const int64_t seed = kStochastic ? p.key[0] : 0, offset = kStochastic ? p.key[1] : 0;
  const int64_t pairs = (p.numel + 1) / 2;
  int64_t clipped = CountCombine::identity();
  for (int64_t j = blockIdx.x * int64_t(kThreads) + threadIdx.x; j < pairs; j += int64_t(gridDim.x) * kThreads) {
    const int64_t i = 2 * j;
    int64_t rem;
    int64_t group = index(i, rem);
    GradQuantGroup q = grad_quant_group(__ldg(p.amax + group), gamma, p.bits);
    if (rem == 0) p.scales[group] = q.scale;
    const float v0 = to_float(g[i]);
    const float k0 = code_of<kStochastic>(v0, q, seed, offset, i);
    clipped += grad_quant_clipped(v0, q);
    const float d0 = grad_quant_dequantize(k0, q);
    float k1 = 0.0f, d1 = 0.0f;
    const bool second = i + 1 < p.numel;
    if (second) {
      if (rem + 1 == p.n) {  // element i + 1 starts the next group
        ++group;
        q = grad_quant_group(__ldg(p.amax + group), gamma, p.bits);
        p.scales[group] = q.scale;
      }
      const float v1 = to_float(g[i + 1]);
      k1 = code_of<kStochastic>(v1, q, seed, offset, i + 1);
      clipped += grad_quant_clipped(v1, q);
      d1 = grad_quant_dequantize(k1, q);
    }
    if (kPacked) {
      static_cast<uint8_t*>(p.out)[j] = static_cast<uint8_t>(grad_quant_nibble(k0) | (grad_quant_nibble(k1) << 4));
    } else {
      T* out = static_cast<T*>(p.out);
      out[i] = from_float<T>(d0);
      if (second) out[i + 1] = from_float<T>(d1);
    }
  }
  clipped = block_reduce<CountCombine, kThreads>(clipped, smem);
  if (threadIdx.x == 0) p.count_partial[blockIdx.x] = clipped;
}

// One CTA: n_clipped = the sum of the `ctas` partials.
__global__ void __launch_bounds__(kThreads) finish_count_kernel(GradQuantParams p, int64_t ctas) {
  __shared__ int64_t smem[kThreads / 32];
  int64_t sum = CountCombine::identity();
  for (int64_t b = threadIdx.x; b < ctas; b += kThreads) sum = CountCombine::combine(sum, p.count_partial[b]);
  sum = block_reduce<CountCombine, kThreads>(sum, smem);
  if (threadIdx.x == 0) *p.n_clipped = sum;
}

bool valid_layout(const void* g, int64_t numel, int64_t n) {
  return g != nullptr && numel >= 1 && n >= 1 && numel % n == 0;
}

}  // namespace

int grad_quant_absmax(const GradQuantAbsmaxParams& p, void* stream) {
  if (!valid_layout(p.g, p.numel, p.n)) return static_cast<int>(cudaErrorInvalidValue);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t groups = p.numel / p.n;
  return by_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (p.n <= kGradQuantThreadGroup) {
      absmax_small_kernel<T><<<grid_for((groups + kThreads - 1) / kThreads), kThreads, 0, s>>>(p);
      return static_cast<int>(cudaGetLastError());
    }
    const ReduceBlocks k = grad_quant_absmax_blocks(p.numel, p.n);
    if (k.P > 1 && p.partial == nullptr) return static_cast<int>(cudaErrorInvalidValue);
    absmax_kernel<T><<<grid_for(groups * k.P), kThreads, 0, s>>>(p, k.chunk, k.P);
    if (k.P > 1) finish_absmax_kernel<<<grid_for(groups), kThreads, 0, s>>>(p, k.P);
    return static_cast<int>(cudaGetLastError());
  });
}

int grad_quant_quantize(const GradQuantParams& p, void* stream) {
  if (!valid_layout(p.g, p.numel, p.n) || p.bits < 2 || p.bits > (p.packed ? 4 : 8)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  GroupIndex index{};
  index.n = p.n;
  index.small = p.numel < kIndex32Limit;
  if (index.small) index.n32 = FastDivmod(static_cast<uint32_t>(p.n));
  const int64_t ctas = grad_quant_count_partials(p.numel);
  return by_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid = grid_for(ctas);
    if (p.packed && p.key != nullptr) {
      quantize_kernel<T, true, true><<<grid, kThreads, 0, s>>>(p, index);
    } else if (p.packed) {
      quantize_kernel<T, true, false><<<grid, kThreads, 0, s>>>(p, index);
    } else if (p.key != nullptr) {
      quantize_kernel<T, false, true><<<grid, kThreads, 0, s>>>(p, index);
    } else {
      quantize_kernel<T, false, false><<<grid, kThreads, 0, s>>>(p, index);
    }
    finish_count_kernel<<<1, kThreads, 0, s>>>(p, ctas);
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace cuda
}  // namespace qkernels
