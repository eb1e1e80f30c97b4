// CUDA kernels of Wenshøj et al.'s oscillation-inducing regularizer on raw pointers (no torch). The per-element math
// is qkernels/oscillation_regularizer_math.h (the spec's float32 roundings: w / s an IEEE division, and nvcc
// --fmad=false rounds every product and difference on its own); the layout is
// qkernels/oscillation_regularizer_kernels.h: block p of tensor l is the elements [p * chunk, p * chunk + chunk) of
// its flat storage, and its partial is at offset[l] + p.
//
// Multi-tensor: the CTAs of a launch are the blocks of several tensors, concatenated, grid-stride. The slot table
// is a launch argument of at most kSlotsPerLaunch tensors (more take more launches, as torch's multi_tensor_apply):
// no copy to the device, so nothing waits on the host and a CUDA graph captures the launches whole. A CTA finds its
// tensor by a binary search over the slots' first items (uniform over the CTA). The passes:
//   amax: per block max |w| (AbsMax, NaN sticking); then one CTA per tensor combines its partials into max|w_l|;
//   sums: per block the float32 sums of e and t (each thread sums its elements in turn, then reduce.cuh's
//     block_reduce) and the count of |w| == m; then one CTA per tensor adds its partials: each thread those of
//     p = t, t + kThreads, ... in float64, then a tree over the CTA, not rounded (float64 adds in another order than
//     reduce.h's finish_sum, as aten's device sum in reduce_glue.h's finish_sums; counts exact);
//   backward: dw over the same blocks; each thread forms its tensor's constants (regularizer_backward_constants)
//     from amax, sums, ties and grad, read on the device.
// Where a tensor (and dw) is 16-byte aligned, a thread takes 16-byte vectors t, t + kThreads, ... of a block and
// then the elements after its last whole vector. Every sum is formed in an order fixed by the launch
// configuration, with no atomics: the same bits on every run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "element_io.cuh"
#include "qkernels/oscillation_regularizer_kernels.h"
#include "reduce.cuh"

namespace qkernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = 0x7fffffff;  // gridDim.x limit; larger launches loop
constexpr int kSlotsPerLaunch = 64;

// One tensor of a launch: its blocks are the launch's items [first, first + P), partials [offset, offset + P).
struct Slot {
  const void* w;
  void* dw;
  int64_t numel, chunk, first, offset;
  bool vec;  // 16-byte vectors: w (and dw) aligned, and every block starts on a vector
};

// Tensors [tensor0, tensor0 + n) of a call, `items` blocks in all.
struct Group {
  Slot slot[kSlotsPerLaunch];
  int64_t tensor0, items;
  int n;
};
// The classic 4 KiB of kernel parameters: larger ones are allowed from CUDA 12.1 on, but cost every launch a longer
// copy.
static_assert(sizeof(Group) + sizeof(RegularizerParams) <= 4096, "kernel parameters over 4 KiB");

// Item `item` of a launch: slot j's block, elements [start, start + len) of its tensor.
struct Block {
  int j;
  int64_t start, partial;
  int len;
};

__device__ __forceinline__ int64_t slot_end(const Group& g, int j) {
  return j + 1 < g.n ? g.slot[j + 1].first : g.items;
}

__device__ __forceinline__ Block block_of(const Group& g, int64_t item) {
  int lo = 0, hi = g.n - 1;  // the last slot whose first item is at most `item`
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (g.slot[mid].first <= item) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const Slot& s = g.slot[lo];
  const int64_t p = item - s.first, start = p * s.chunk;
  const int64_t len = s.numel - start < s.chunk ? s.numel - start : s.chunk;
  return Block{lo, start, s.offset + p, static_cast<int>(len)};
}

// fold(v) for the elements v of block b that this thread takes, in the order fixed above.
template <typename T, typename Fold>
__device__ __forceinline__ void fold_block(const Group& g, const Block& b, Fold fold) {
  constexpr int V = Vec<T>::kSize;
  const T* w = static_cast<const T*>(g.slot[b.j].w) + b.start;
  int tail = 0;
  if (g.slot[b.j].vec) {
    for (int k = threadIdx.x; k < b.len / V; k += kThreads) {
      float v[V];
      load_vec(w + k * V, v);
#pragma unroll
      for (int i = 0; i < V; ++i) fold(v[i]);
    }
    tail = b.len / V * V;
  }
  for (int k = tail + threadIdx.x; k < b.len; k += kThreads) fold(to_float(w[k]));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) amax_kernel(RegularizerParams p, Group g) {
  __shared__ float smem[kThreads / 32];
  for (int64_t item = blockIdx.x; item < g.items; item += gridDim.x) {
    const Block b = block_of(g, item);
    float m = AbsMaxCombine::identity();
    fold_block<T>(g, b, [&](float v) { m = AbsMaxCombine::fold(m, v); });
    m = block_reduce<AbsMaxCombine, kThreads>(m, smem);
    if (threadIdx.x == 0) p.amax_partial[b.partial] = m;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sums_kernel(RegularizerParams p, Group g) {
  __shared__ float2 sum_smem[kThreads / 32];
  __shared__ int64_t tie_smem[kThreads / 32];
  for (int64_t item = blockIdx.x; item < g.items; item += gridDim.x) {
    const Block b = block_of(g, item);
    const RegularizerTensor t = regularizer_tensor(p.amax[g.tensor0 + b.j], p.bits);
    float2 sum = SumPair::identity();
    int64_t ties = CountCombine::identity();
    fold_block<T>(g, b, [&](float w) {
      float term;
      bool tie;
      const float e = regularizer_terms(w, t, term, tie);
      sum = SumPair::combine(sum, make_float2(e, term));
      ties += tie;
    });
    sum = block_reduce<SumPair, kThreads>(sum, sum_smem);
    ties = block_reduce<CountCombine, kThreads>(ties, tie_smem);
    if (threadIdx.x == 0) {
      p.e_partial[b.partial] = sum.x;
      p.t_partial[b.partial] = sum.y;
      p.tie_partial[b.partial] = ties;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_kernel(RegularizerParams p, Group g) {
  constexpr int V = Vec<T>::kSize;
  for (int64_t item = blockIdx.x; item < g.items; item += gridDim.x) {
    const Block b = block_of(g, item);
    const Slot& s = g.slot[b.j];
    const int64_t l = g.tensor0 + b.j;
    const float m = p.amax[l];
    const RegularizerTensor t = regularizer_tensor(m, p.bits);
    const RegularizerBackward c =
        regularizer_backward_constants(m, p.sums[2 * l + 1], p.ties[l], *p.grad, s.numel, p.scale_grad);
    const T* w = static_cast<const T*>(s.w) + b.start;
    T* dw = static_cast<T*>(s.dw) + b.start;
    int tail = 0;
    if (s.vec) {
      for (int j = threadIdx.x; j < b.len / V; j += kThreads) {
        float v[V];
        load_vec(w + j * V, v);
#pragma unroll
        for (int i = 0; i < V; ++i) v[i] = regularizer_grad(v[i], t, c);
        store_vec(dw + j * V, v);
      }
      tail = b.len / V * V;
    }
    for (int j = tail + threadIdx.x; j < b.len; j += kThreads) {
      dw[j] = from_float<T>(regularizer_grad(to_float(w[j]), t, c));
    }
  }
}

__global__ void __launch_bounds__(kThreads) finish_amax_kernel(RegularizerParams p, Group g, float* out) {
  __shared__ float smem[kThreads / 32];
  for (int j = blockIdx.x; j < g.n; j += gridDim.x) {
    const float* partials = p.amax_partial + g.slot[j].offset;
    const int64_t P = slot_end(g, j) - g.slot[j].first;
    float m = AbsMaxCombine::identity();
    for (int64_t k = threadIdx.x; k < P; k += kThreads) m = AbsMaxCombine::combine(m, partials[k]);
    m = block_reduce<AbsMaxCombine, kThreads>(m, smem);
    if (threadIdx.x == 0) out[g.tensor0 + j] = m;
  }
}

// One tensor's sums of e and t in float64 and its tie count.
struct Totals {
  double e, t;
  int64_t ties;
};
struct TotalsCombine {
  using Value = Totals;
  static __device__ __forceinline__ Totals identity() { return Totals{0.0, 0.0, 0}; }
  static __device__ __forceinline__ Totals combine(Totals a, Totals b) {
    return Totals{a.e + b.e, a.t + b.t, a.ties + b.ties};
  }
};
// reduce.cuh's block_reduce finds this overload by argument-dependent lookup (reduce.cuh has no float64 one).
__device__ __forceinline__ Totals shfl_down(Totals v, int offset) {
  return Totals{__shfl_down_sync(0xffffffffu, v.e, offset), __shfl_down_sync(0xffffffffu, v.t, offset),
                cuda::shfl_down(v.ties, offset)};
}

__global__ void __launch_bounds__(kThreads) finish_sums_kernel(RegularizerParams p, Group g, double* out,
                                                               int64_t* ties) {
  __shared__ Totals smem[kThreads / 32];
  for (int j = blockIdx.x; j < g.n; j += gridDim.x) {
    const int64_t offset = g.slot[j].offset, P = slot_end(g, j) - g.slot[j].first;
    Totals sum = TotalsCombine::identity();
    for (int64_t k = offset + threadIdx.x; k < offset + P; k += kThreads) {
      sum = TotalsCombine::combine(sum, Totals{p.e_partial[k], p.t_partial[k], p.tie_partial[k]});
    }
    sum = block_reduce<TotalsCombine, kThreads>(sum, smem);
    if (threadIdx.x == 0) {
      const int64_t l = g.tensor0 + j;
      out[2 * l] = sum.e / static_cast<double>(g.slot[j].numel);
      out[2 * l + 1] = sum.t;
      ties[l] = sum.ties;
    }
  }
}

dim3 grid_for(int64_t blocks) { return dim3(static_cast<unsigned>(blocks < kMaxGrid ? blocks : kMaxGrid)); }

// The kernels index blocks as make_reduce_blocks({1, 1, 1, N}, target) lays them out in run mode: P chunks of N.
bool valid(const RegularizerParams& p) {
  for (int64_t l = 0; l < p.L; ++l) {
    const RegularizerSlot& s = p.slots[l];
    const ReduceBlocks& k = s.blocks;
    if (s.numel < 1 || k.row_mode || k.chunk < 1 || k.chunk > kRegularizerReduceTarget ||
        k.P != (s.numel + k.chunk - 1) / k.chunk || s.offset < 0) {
      return false;
    }
  }
  return true;
}

// launch(group) for the call's tensors, kSlotsPerLaunch at a time; stops at the first launch error.
template <typename T, typename Launch>
int for_groups(const RegularizerParams& p, Launch launch) {
  constexpr int V = Vec<T>::kSize;
  for (int64_t l0 = 0; l0 < p.L; l0 += kSlotsPerLaunch) {
    Group g{};
    g.tensor0 = l0;
    g.n = static_cast<int>(p.L - l0 < kSlotsPerLaunch ? p.L - l0 : kSlotsPerLaunch);
    for (int j = 0; j < g.n; ++j) {
      const RegularizerSlot& r = p.slots[l0 + j];
      const bool starts = r.blocks.P == 1 || r.blocks.chunk % V == 0;
      g.slot[j] = Slot{r.w, r.dw, r.numel, r.blocks.chunk, g.items, r.offset,
                       starts && aligned16(r.w) && (r.dw == nullptr || aligned16(r.dw))};
      g.items += r.blocks.P;
    }
    launch(g);
    const int err = static_cast<int>(cudaGetLastError());
    if (err != 0) return err;
  }
  return 0;
}

// launch(tag, group) as for_groups, T = decltype(tag), for a valid call.
template <typename Launch>
int for_groups_by_dtype(const RegularizerParams& p, Launch launch) {
  if (!valid(p)) return static_cast<int>(cudaErrorInvalidValue);
  return by_dtype(p.dtype, [&](auto tag) {
    return for_groups<decltype(tag)>(p, [&](const Group& g) { launch(tag, g); });
  });
}

}  // namespace

int oscillation_regularizer_amax(const RegularizerParams& p, float* out, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return for_groups_by_dtype(p, [&](auto tag, const Group& g) {
    amax_kernel<decltype(tag)><<<grid_for(g.items), kThreads, 0, s>>>(p, g);
    finish_amax_kernel<<<grid_for(g.n), kThreads, 0, s>>>(p, g, out);
  });
}

int oscillation_regularizer_sums(const RegularizerParams& p, double* out, int64_t* ties, void* stream) {
  if (p.bits < 2 || p.bits > 8) return static_cast<int>(cudaErrorInvalidValue);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return for_groups_by_dtype(p, [&](auto tag, const Group& g) {
    sums_kernel<decltype(tag)><<<grid_for(g.items), kThreads, 0, s>>>(p, g);
    finish_sums_kernel<<<grid_for(g.n), kThreads, 0, s>>>(p, g, out, ties);
  });
}

int oscillation_regularizer_backward(const RegularizerParams& p, void* stream) {
  if (p.bits < 2 || p.bits > 8) return static_cast<int>(cudaErrorInvalidValue);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return for_groups_by_dtype(p, [&](auto tag, const Group& g) {
    backward_kernel<decltype(tag)><<<grid_for(g.items), kThreads, 0, s>>>(p, g);
  });
}

}  // namespace cuda
}  // namespace qkernels
