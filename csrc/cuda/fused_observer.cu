// CUDA kernels of the fused moving-average observer on raw pointers (no torch). The per-channel math is
// fused_observer_kernels.h (observer_finish_channel), shared with the CPU kernel; x is walked in storage
// order as [O, C, I] = [outer, channels, inner].
//
// Two launches, both reading the flags on the device (no host sync):
//   1. min/max partials: every CTA returns at once while the observer is off, so x is not read. Otherwise
//      each work item (channel c, part p) folds a share of channel c's elements into partials[c * P + p]:
//      run mode: channel c is O runs of I elements at (o * C + c) * I; a channel's elements (16-byte vectors
//        when every run starts on a vector) are split over P CTAs that stride through them;
//      row mode (I == 1, C > 1: a channels-last activation on its last axis): x is [O, C] row-major; a CTA
//        takes a tile of columns (vectors of columns where C allows) and a part of the rows, its threads
//        split the rows into groups, and the groups are folded in shared memory.
//   2. finish: one CTA per channel folds its P partials, then thread 0 runs observer_finish_channel.
// Values and partials are combined as the reduction layer's MinMax kind (qkernels/reduce.h: MinMaxCombine; CTA
// trees: reduce.cuh's block_reduce). The split into parts is this kernel's own, sized by CTA counts.
// Min and max do not depend on the order in which values are folded, so results are exact however the
// work is split, up to the sign of a zero min/max of both -0.0 and +0.0 (unspecified, as in torch.aminmax;
// no qparam depends on it).
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "element_io.cuh"
#include "qkernels/fused_observer_kernels.h"
#include "reduce.cuh"

namespace qkernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kUnitsPerThread = 8;  // vectors (or elements) a thread folds at least, before more parts
constexpr int64_t kMaxCtas = 2048;      // enough CTAs of the min/max pass to fill any current GPU
constexpr int64_t kMaxGrid = 0x7fffffff;

// How the min/max pass is split (a function of the params alone, so fused_observer_parts agrees with the
// launch).
struct Plan {
  bool row_mode, vec;
  int64_t parts;        // P
  int64_t units;        // run mode: vectors (vec) or elements of each channel
  int64_t rows;         // row mode: rows per part
  int width, groups;    // row mode: column slots per tile, row groups per CTA
  int64_t tiles;        // row mode: column tiles
};

template <typename T>
Plan make_plan(const ObserverParams& p) {
  constexpr int V = Vec<T>::kSize;
  Plan plan{};
  plan.row_mode = p.inner == 1 && p.channels > 1;
  const auto clamp_parts = [](int64_t want, int64_t per_part_ctas) {
    const int64_t most = kMaxCtas / per_part_ctas > 1 ? kMaxCtas / per_part_ctas : 1;
    return want < 1 ? int64_t(1) : (want > most ? most : want);
  };
  if (plan.row_mode) {
    plan.vec = aligned16(p.x) && p.channels % V == 0;
    const int64_t slots = plan.vec ? p.channels / V : p.channels;
    plan.width = static_cast<int>(slots < kThreads ? slots : kThreads);
    plan.groups = kThreads / plan.width;
    plan.tiles = (slots + plan.width - 1) / plan.width;
    plan.parts = clamp_parts((p.outer + kUnitsPerThread * plan.groups - 1) / (kUnitsPerThread * plan.groups),
                             plan.tiles);
    plan.rows = (p.outer + plan.parts - 1) / plan.parts;
  } else {
    // Vectors need every run to start on one: I a multiple of V, or a single run (then I % V elements
    // are left over at its end).
    plan.vec = aligned16(p.x) && (p.inner % V == 0 || p.outer * p.channels == 1);
    plan.units = p.outer * (plan.vec ? p.inner / V : p.inner);
    plan.parts = clamp_parts((plan.units + kUnitsPerThread * kThreads - 1) / (kUnitsPerThread * kThreads), p.channels);
  }
  return plan;
}

// Storage offset of unit k of channel c in run mode: run k / U, unit k % U (U units per run, W elements
// each), with a multiply-shift division while the indices fit in 31 bits.
struct RunIndex {
  FastDivmod per_run;
  int64_t U, C, I;
  int W;
  bool small;
  __device__ __forceinline__ int64_t operator()(int64_t k, int64_t c) const {
    const int64_t run = small ? static_cast<int64_t>(per_run.div(static_cast<uint32_t>(k))) : k / U;
    return (run * C + c) * I + (k - run * U) * W;
  }
};

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    minmax_run_kernel(ObserverParams p, RunIndex index, int64_t units, int64_t parts, float* __restrict__ lo_part,
                      float* __restrict__ hi_part) {
  if (!flag_is_on(p.observer_on)) return;
  constexpr int W = kVec ? Vec<T>::kSize : 1;
  __shared__ MinMax smem[kThreads / 32];
  const T* x = static_cast<const T*>(p.x);
  const int64_t step = parts * kThreads;
  for (int64_t item = blockIdx.x; item < p.channels * parts; item += gridDim.x) {
    const int64_t c = item / parts, part = item % parts;
    MinMax m = MinMaxCombine::identity();
    for (int64_t k = part * kThreads + threadIdx.x; k < units; k += step) {
      const int64_t e = index(k, c);
      if constexpr (kVec) {
        float v[W];
        load_vec(x + e, v);
#pragma unroll
        for (int j = 0; j < W; ++j) m = MinMaxCombine::fold(m, v[j]);
      } else {
        m = MinMaxCombine::fold(m, to_float(x[e]));
      }
    }
    if constexpr (kVec) {  // only a single run (C == 1) has elements after its last whole vector
      for (int64_t e = units * W + part * kThreads + threadIdx.x; e < p.inner; e += step) {
        m = MinMaxCombine::fold(m, to_float(x[e]));
      }
    }
    m = block_reduce<MinMaxCombine, kThreads>(m, smem);
    if (threadIdx.x == 0) {
      lo_part[item] = m.lo;
      hi_part[item] = m.hi;
    }
  }
}

// Row mode: thread (g, s) = (threadIdx.x / width, threadIdx.x % width) folds column slot s of the tile (W
// columns) over rows g, g + groups, ... of the part; threads with g >= groups idle.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    minmax_row_kernel(ObserverParams p, Plan plan, float* __restrict__ lo_part, float* __restrict__ hi_part) {
  if (!flag_is_on(p.observer_on)) return;
  constexpr int W = kVec ? Vec<T>::kSize : 1;
  __shared__ MinMax smem[kThreads * W];
  const T* x = static_cast<const T*>(p.x);
  const int s = threadIdx.x % plan.width, g = threadIdx.x / plan.width;
  const int64_t C = p.channels, slots = C / W;
  for (int64_t item = blockIdx.x; item < plan.parts * plan.tiles; item += gridDim.x) {
    const int64_t part = item / plan.tiles, slot = (item % plan.tiles) * plan.width + s;
    const int64_t o_end = (part + 1) * plan.rows < p.outer ? (part + 1) * plan.rows : p.outer;
    const bool active = g < plan.groups && slot < slots;
    MinMax m[W];
#pragma unroll
    for (int j = 0; j < W; ++j) m[j] = MinMaxCombine::identity();
    if (active) {
      for (int64_t o = part * plan.rows + g; o < o_end; o += plan.groups) {
        if constexpr (kVec) {
          float v[W];
          load_vec(x + o * C + slot * W, v);
#pragma unroll
          for (int j = 0; j < W; ++j) m[j] = MinMaxCombine::fold(m[j], v[j]);
        } else {
          m[0] = MinMaxCombine::fold(m[0], to_float(x[o * C + slot]));
        }
      }
#pragma unroll
      for (int j = 0; j < W; ++j) smem[threadIdx.x * W + j] = m[j];
    }
    __syncthreads();
    if (active && g == 0) {
      for (int h = 1; h < plan.groups; ++h) {
#pragma unroll
        for (int j = 0; j < W; ++j) m[j] = MinMaxCombine::combine(m[j], smem[(threadIdx.x + h * plan.width) * W + j]);
      }
#pragma unroll
      for (int j = 0; j < W; ++j) {
        lo_part[(slot * W + j) * plan.parts + part] = m[j].lo;
        hi_part[(slot * W + j) * plan.parts + part] = m[j].hi;
      }
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
    finish_kernel(ObserverParams p, int64_t parts, const float* __restrict__ lo_part,
                  const float* __restrict__ hi_part) {
  const bool observe = flag_is_on(p.observer_on);
  const bool recompute = observer_recomputes(p, observe);
  if (!observe && !recompute) return;
  __shared__ MinMax smem[kThreads / 32];
  for (int64_t c = blockIdx.x; c < p.channels; c += gridDim.x) {
    MinMax m = MinMaxCombine::identity();
    if (observe) {  // uniform over the grid: every thread reaches block_reduce's barriers
      for (int64_t k = threadIdx.x; k < parts; k += kThreads) {
        m = MinMaxCombine::combine(m, MinMax{lo_part[c * parts + k], hi_part[c * parts + k]});
      }
      m = block_reduce<MinMaxCombine, kThreads>(m, smem);
    }
    if (threadIdx.x == 0) observer_finish_channel(p, c, m.lo, m.hi, observe, recompute);
  }
}

dim3 grid_for(int64_t blocks) { return dim3(static_cast<unsigned>(blocks < kMaxGrid ? blocks : kMaxGrid)); }

template <typename T>
int launch(const ObserverParams& p, float* partials, cudaStream_t stream) {
  const Plan plan = make_plan<T>(p);
  float* lo_part = partials;
  float* hi_part = partials + p.channels * plan.parts;
  const auto vec_or_not = [&](auto kernel_for) {
    if (plan.vec) {
      kernel_for(std::true_type{});
    } else {
      kernel_for(std::false_type{});
    }
  };
  if (plan.row_mode) {
    vec_or_not([&](auto vec) {
      minmax_row_kernel<T, decltype(vec)::value>
          <<<grid_for(plan.parts * plan.tiles), kThreads, 0, stream>>>(p, plan, lo_part, hi_part);
    });
  } else {
    vec_or_not([&](auto vec) {
      constexpr int W = decltype(vec)::value ? Vec<T>::kSize : 1;
      RunIndex index{};
      index.U = plan.vec ? p.inner / W : p.inner;
      index.C = p.channels;
      index.I = p.inner;
      index.W = W;
      index.small = plan.units < kIndex32Limit && index.U > 0;
      if (index.small) index.per_run = FastDivmod(static_cast<uint32_t>(index.U));
      minmax_run_kernel<T, decltype(vec)::value>
          <<<grid_for(p.channels * plan.parts), kThreads, 0, stream>>>(p, index, plan.units, plan.parts, lo_part,
                                                                         hi_part);
    });
  }
  finish_kernel<<<grid_for(p.channels), kThreads, 0, stream>>>(p, plan.parts, lo_part, hi_part);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int64_t fused_observer_parts(const ObserverParams& p) {
  int64_t parts = 0;
  by_dtype(p.dtype, [&](auto tag) {
    parts = make_plan<decltype(tag)>(p).parts;
    return 0;
  });
  return parts;
}

int fused_observer_update(const ObserverParams& p, float* partials, void* stream) {
  if (p.outer * p.channels * p.inner == 0) return 0;
  return by_dtype(p.dtype, [&](auto tag) {
    return launch<decltype(tag)>(p, partials, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace cuda
}  // namespace qkernels
