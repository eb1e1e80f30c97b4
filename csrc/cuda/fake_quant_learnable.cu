// CUDA kernels of learnable (LSQ) fake quantization on raw pointers (no torch). The per-element math is
// qkernels/fake_quant_learnable_math.h, always the Cuda flavour here (p.flavour is not consulted). x, out, dy
// and dx are walked in storage order as [B, O, C, I] (fake_quant_learnable_kernels.h).
//
// Forward, and the backward pass when no qparam gradient is wanted (dx only): elementwise, one 16-byte vector
// (4 fp32 or 8 fp16/bf16 elements) per thread and grid-stride step, the last partial vector element-wise.
//
// Backward with qparam gradients: one pass reads x and dy once, writes dx and, for every block of the reduction
// layer's layout (qkernels/reduce.h, ReduceBlocks), the float32 sums of ds and dz over the block into ds_partial /
// dz_partial ([B, P, C]; the caller finishes them). One CTA per work item, grid-stride over the items:
//   run mode: all elements of an item belong to one quantizer; the threads stride over its rows x chunk
//     elements (coalesced along I), each summing its own elements in turn, then the CTA adds the threads'
//     sums with reduce.cuh's block_reduce (a warp-shuffle tree and a tree over the warps).
//   row mode: the threads own a tile of columns c (a 16-byte vector of columns each where possible) and loop
//     over the item's rows, coalesced across threads; when the tile is narrower than the CTA, a power-of-two
//     number of thread groups split the rows and a shared-memory tree adds the groups.
// Every sum is formed in an order fixed by the launch configuration, and there are no atomics, so the
// partials are bit-identical from run to run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "qkernels/fake_quant_learnable_kernels.h"
#include "element_io.cuh"
#include "reduce.cuh"

namespace qkernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = 0x7fffffff;  // gridDim.x limit; larger launches loop

// Forward math of one element. Q holds one quantizer's qparams: __frcp_rn is the IEEE reciprocal, equal to
// the 1.0f / s aten computes, and cheaper; the zero point is rounded and clamped as aten's learnable forward
// does, then used as the integer zero point of the per-tensor or per-channel fake quantization.
struct ForwardOp {
  static constexpr bool kReadsDy = false;
  struct Q {
    float s, inv;
    int64_t z;
  };
  const float* scale;
  const float* zero_point;
  float qmin, qmax;
  int64_t qmin_i, qmax_i;
  bool per_tensor;

  __device__ __forceinline__ Q qparams(int64_t q) const {
    const float s = __ldg(scale + q);
    return {s, __frcp_rn(s), static_cast<int64_t>(forward_zero_point(__ldg(zero_point + q), qmin, qmax))};
  }
  __device__ __forceinline__ float operator()(const Q& q, float x, float) const {
    bool mask;
    if (per_tensor) return fq_per_tensor<Flavour::Cuda, false>(x, q.s, q.inv, q.z, qmin, qmax, mask);
    return fq_per_channel_int_zp<Flavour::Cuda, false>(x, q.s, q.inv, q.z, qmin_i, qmax_i, mask);
  }
};

// Backward math of one element: dx, and the element's ds and dz through grad().
struct GradOp {
  static constexpr bool kReadsDy = true;
  struct Q {
    float s, inv, zb;
  };
  const float* scale;
  const float* zero_point;
  float qmin, qmax, grad_factor;
  ZpRule rule;
  bool use_fma;

  __device__ __forceinline__ Q qparams(int64_t q) const {
    const float s = __ldg(scale + q);
    return {s, __frcp_rn(s), backward_zero_point(__ldg(zero_point + q), qmin, qmax, rule)};
  }
  __device__ __forceinline__ float grad(const Q& q, float x, float dy, float& ds, float& dz) const {
    return learnable_grad<Flavour::Cuda>(x, dy, q.s, q.inv, q.zb, qmin, qmax, grad_factor, rule, use_fma, ds, dz);
  }
  __device__ __forceinline__ float operator()(const Q& q, float x, float dy) const {
    float ds, dz;
    return grad(q, x, dy, ds, dz);
  }
};

// Quantizer of storage offset e: ((e / I) % C) + (e / (O * C * I)) * C, with multiply-shift division below
// 2^31 elements.
struct QuantizerIndex {
  FastDivmod inner, channels, outer;
  int64_t I, C, OCI;
  bool small;
  __device__ __forceinline__ int64_t operator()(int64_t e) const {
    if (small) {
      const uint32_t u = static_cast<uint32_t>(e);
      return channels.mod(inner.div(u)) + static_cast<int64_t>(outer.div(u)) * C;
    }
    return (e / I) % C + (e / OCI) * C;
  }
};

QuantizerIndex make_quantizer_index(const LearnableDims& d) {
  QuantizerIndex index;
  index.I = d.I;
  index.C = d.C;
  index.OCI = d.O * d.C * d.I;
  index.small = d.numel() < kIndex32Limit;
  if (index.small) {
    index.inner = FastDivmod(static_cast<uint32_t>(d.I));
    index.channels = FastDivmod(static_cast<uint32_t>(d.C));
    index.outer = FastDivmod(static_cast<uint32_t>(index.OCI));
  }
  return index;
}

// Where an elementwise thread gets its qparams: one quantizer for the whole tensor (loaded once per thread),
// one per vector (I is a multiple of the vector width, so a vector never leaves its run of I elements), or
// one per element.
enum class QParamsAt { Tensor, Vector, Element };

template <typename T, bool kAligned, QParamsAt kAt, typename Op>
__global__ void __launch_bounds__(kThreads)
    elementwise_kernel(Op op, QuantizerIndex index, const T* __restrict__ x, const T* __restrict__ dy,
                       T* __restrict__ y, int64_t n) {
  constexpr int V = Vec<T>::kSize;
  using Q = typename Op::Q;
  Q tensor_q{};
  if constexpr (kAt == QParamsAt::Tensor) tensor_q = op.qparams(0);
  const int64_t vectors = (n + V - 1) / V;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; v < vectors; v += step) {
    const int64_t base = v * V;
    Q vector_q = tensor_q;
    if constexpr (kAt == QParamsAt::Vector) vector_q = op.qparams(index(base));
    if (kAligned && base + V <= n) {
      float xv[V], gv[V] = {}, yv[V];
      load_vec(x + base, xv);
      if constexpr (Op::kReadsDy) load_vec(dy + base, gv);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        Q q = vector_q;
        if constexpr (kAt == QParamsAt::Element) q = op.qparams(index(base + j));
        yv[j] = op(q, xv[j], gv[j]);
      }
      store_vec(y + base, yv);
    } else {
      const int64_t end = base + V < n ? base + V : n;
      for (int64_t e = base; e < end; ++e) {
        Q q = vector_q;
        if constexpr (kAt == QParamsAt::Element) q = op.qparams(index(e));
        y[e] = from_float<T>(op(q, to_float(x[e]), Op::kReadsDy ? to_float(dy[e]) : 0.0f));
      }
    }
  }
}

dim3 grid_for(int64_t blocks) { return dim3(static_cast<unsigned>(blocks < kMaxGrid ? blocks : kMaxGrid)); }

template <typename T, typename Op>
int launch_elementwise(const Op& op, const LearnableDims& d, const void* x, const void* dy, void* y,
                       cudaStream_t stream) {
  constexpr int V = Vec<T>::kSize;
  const int64_t n = d.numel();
  const QuantizerIndex index = make_quantizer_index(d);
  const bool aligned = aligned16(x) && aligned16(y) && (dy == nullptr || aligned16(dy));
  const dim3 grid = grid_for(((n + V - 1) / V + kThreads - 1) / kThreads);
  const auto launch = [&](auto aligned_tag, auto at_tag) {
    elementwise_kernel<T, decltype(aligned_tag)::value, decltype(at_tag)::value><<<grid, kThreads, 0, stream>>>(
        op, index, static_cast<const T*>(x), static_cast<const T*>(dy), static_cast<T*>(y), n);
  };
  const auto by_qparams = [&](auto aligned_tag) {
    if (d.B * d.C == 1) {
      launch(aligned_tag, std::integral_constant<QParamsAt, QParamsAt::Tensor>{});
    } else if (d.I % V == 0) {
      launch(aligned_tag, std::integral_constant<QParamsAt, QParamsAt::Vector>{});
    } else {
      launch(aligned_tag, std::integral_constant<QParamsAt, QParamsAt::Element>{});
    }
  };
  if (aligned) {
    by_qparams(std::true_type{});
  } else {
    by_qparams(std::false_type{});
  }
  return static_cast<int>(cudaGetLastError());
}

// The backward work items: the dims and ReduceBlocks, the item count, and (run mode) `merge`: with C == 1
// and whole rows (n_ib == 1) an item's rows are adjacent in memory and are walked as one row.
struct Items {
  int64_t B, O, C, I;
  int64_t rows, chunk, n_ib, P;
  int64_t count;
  bool merge;
};

// Calls f(o, k) for the (o, k) in [0, rows) x [0, count) whose flat index o * count + k is threadIdx.x +
// j * kThreads, for j = 0, 1, ... in turn, so consecutive threads take consecutive k. (o, k) advances by a
// fixed step, so there is one division per call, by a 32-bit number: the quotient and remainder of any
// number up to kThreads are the same for every divisor above kThreads.
template <typename F>
__device__ __forceinline__ void strided(int64_t rows, int64_t count, F f) {
  if (count == 0) return;
  const uint32_t d = count > kThreads ? kThreads + 1 : static_cast<uint32_t>(count);
  int64_t o = threadIdx.x / d, k = threadIdx.x % d;
  const int64_t step_o = kThreads / d, step_k = kThreads % d;
  while (o < rows) {
    f(o, k);
    o += step_o;
    k += step_k;
    if (k >= count) {
      k -= count;
      ++o;
    }
  }
}

// Run mode: item = (b * P + p) * C + c, which is also its index in the partials. kVec: every row of an item
// starts at a multiple of the vector width (and the pointers are 16-byte aligned), so rows are walked in
// 16-byte vectors and the last len % V elements of each row one by one.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    backward_run_kernel(GradOp op, Items it, const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                        float* __restrict__ ds_partial, float* __restrict__ dz_partial) {
  constexpr int V = Vec<T>::kSize;
  __shared__ float2 smem[kThreads / 32];
  for (int64_t item = blockIdx.x; item < it.count; item += gridDim.x) {
    const int64_t c = item % it.C, bp = item / it.C, p = bp % it.P, b = bp / it.P;
    const int64_t ob = p / it.n_ib, ib = p % it.n_ib;
    const int64_t o0 = ob * it.rows, i0 = ib * it.chunk;
    int64_t rows = it.O - o0 < it.rows ? it.O - o0 : it.rows;
    int64_t len = it.I - i0 < it.chunk ? it.I - i0 : it.chunk;
    if (it.merge) {
      len *= rows;
      rows = 1;
    }
    const int64_t base = ((b * it.O + o0) * it.C + c) * it.I + i0, stride = it.C * it.I;
    const GradOp::Q q = op.qparams(b * it.C + c);
    float ds = 0.0f, dz = 0.0f;
    const auto element = [&](float xe, float ge) {
      float ds_e, dz_e;
      const float dx_e = op.grad(q, xe, ge, ds_e, dz_e);
      ds += ds_e;
      dz += dz_e;
      return dx_e;
    };
    const int64_t vectors = kVec ? len / V : 0;
    if constexpr (kVec) {
      strided(rows, vectors, [&](int64_t o, int64_t k) {
        const int64_t e = base + o * stride + k * V;
        float xv[V], gv[V], dv[V];
        load_vec(x + e, xv);
        load_vec(dy + e, gv);
#pragma unroll
        for (int j = 0; j < V; ++j) dv[j] = element(xv[j], gv[j]);
        store_vec(dx + e, dv);
      });
    }
    strided(rows, len - vectors * V, [&](int64_t o, int64_t k) {
      const int64_t e = base + o * stride + vectors * V + k;
      dx[e] = from_float<T>(element(to_float(x[e]), to_float(dy[e])));
    });
    const float2 sum = block_reduce<SumPair, kThreads>(make_float2(ds, dz), smem);
    if (threadIdx.x == 0) {
      ds_partial[item] = sum.x;
      dz_partial[item] = sum.y;
    }
  }
}

// Row mode (I == 1): item = b * P + p, covering rows [p * rows, p * rows + rows) of every column c, whose
// partials are [(b * P + p) * C, + C). Thread (g, s) = (threadIdx.x / width, threadIdx.x % width) owns column
// slot s of each tile of `width` slots (kVec: a slot is a 16-byte vector of columns, C being a multiple of the
// vector width; otherwise one column) and rows g, g + groups, ...; threads with g >= groups idle.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    backward_row_kernel(GradOp op, Items it, int width, int groups, const T* __restrict__ x,
                        const T* __restrict__ dy, T* __restrict__ dx, float* __restrict__ ds_partial,
                        float* __restrict__ dz_partial) {
  constexpr int W = kVec ? Vec<T>::kSize : 1;  // columns per slot
  __shared__ float ds_smem[kThreads * W], dz_smem[kThreads * W];
  const int tid = threadIdx.x, slot_in_tile = tid % width, g = tid / width;
  const int64_t slots = it.C / W;
  for (int64_t item = blockIdx.x; item < it.count; item += gridDim.x) {
    const int64_t b = item / it.P, o0 = (item % it.P) * it.rows;
    const int64_t rows = it.O - o0 < it.rows ? it.O - o0 : it.rows;
    // The tile loop is uniform over the CTA: every thread reaches the barriers below.
    for (int64_t tile = 0; tile < slots; tile += width) {
      const int64_t c0 = (tile + slot_in_tile) * W;
      const bool active = g < groups && tile + slot_in_tile < slots;
      float ds[W] = {}, dz[W] = {};
      if (active) {
        GradOp::Q q[W];
#pragma unroll
        for (int j = 0; j < W; ++j) q[j] = op.qparams(b * it.C + c0 + j);
#pragma unroll 4
        for (int64_t o = g; o < rows; o += groups) {
          const int64_t e = (b * it.O + o0 + o) * it.C + c0;
          float xv[W], gv[W], dv[W];
          if constexpr (kVec) {
            load_vec(x + e, xv);
            load_vec(dy + e, gv);
          } else {
            xv[0] = to_float(x[e]);
            gv[0] = to_float(dy[e]);
          }
#pragma unroll
          for (int j = 0; j < W; ++j) {
            float ds_e, dz_e;
            dv[j] = op.grad(q[j], xv[j], gv[j], ds_e, dz_e);
            ds[j] += ds_e;
            dz[j] += dz_e;
          }
          if constexpr (kVec) {
            store_vec(dx + e, dv);
          } else {
            dx[e] = from_float<T>(dv[0]);
          }
        }
      }
      if (groups > 1) {
        // Tree over the row groups: group g adds group g + h for h = groups / 2, ..., 1 (slot tid + h * width).
        // Each thread writes only its own slot and reads its partner's before the next barrier.
        if (active) {
#pragma unroll
          for (int j = 0; j < W; ++j) {
            ds_smem[tid * W + j] = ds[j];
            dz_smem[tid * W + j] = dz[j];
          }
        }
        __syncthreads();
        for (int h = groups / 2; h > 0; h /= 2) {
          if (active && g < h) {
#pragma unroll
            for (int j = 0; j < W; ++j) {
              ds_smem[tid * W + j] += ds_smem[(tid + h * width) * W + j];
              dz_smem[tid * W + j] += dz_smem[(tid + h * width) * W + j];
            }
          }
          __syncthreads();
        }
        if (active && g == 0) {
#pragma unroll
          for (int j = 0; j < W; ++j) {
            ds[j] = ds_smem[tid * W + j];
            dz[j] = dz_smem[tid * W + j];
          }
        }
      }
      if (active && g == 0) {
#pragma unroll
        for (int j = 0; j < W; ++j) {
          ds_partial[item * it.C + c0 + j] = ds[j];
          dz_partial[item * it.C + c0 + j] = dz[j];
        }
      }
    }
  }
}

// Run mode: whether every row of every item starts at a multiple of V elements. Row starts are
// ((b * O + o) * C + c) * I + ib * chunk, merged rows start at (b * O + ob * rows) * I.
bool run_rows_aligned(const Items& it, int64_t V) {
  if (it.merge) return (it.B == 1 || (it.O * it.I) % V == 0) && (it.P == 1 || (it.rows * it.I) % V == 0);
  return (it.B * it.O * it.C == 1 || it.I % V == 0) && (it.n_ib == 1 || it.chunk % V == 0);
}

template <typename T>
int launch_backward(const LearnableBackwardParams& p, const GradOp& op, cudaStream_t stream) {
  constexpr int V = Vec<T>::kSize;
  const LearnableDims& d = p.dims;
  const ReduceBlocks& k = p.blocks;
  Items it{d.B, d.O, d.C, d.I, k.rows, k.chunk, k.n_ib, k.P, 0, false};
  const bool aligned = aligned16(p.x) && aligned16(p.dy) && aligned16(p.dx);
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  if (k.row_mode) {
    it.count = d.B * k.P;
    const bool vec = aligned && d.C % V == 0;
    const int64_t slots = vec ? d.C / V : d.C;
    const int width = static_cast<int>(slots < kThreads ? slots : kThreads);
    int groups = 1;
    while (2 * groups * width <= kThreads) groups *= 2;
    const dim3 grid = grid_for(it.count);
    if (vec) {
      backward_row_kernel<T, true>
          <<<grid, kThreads, 0, stream>>>(op, it, width, groups, x, dy, dx, p.ds_partial, p.dz_partial);
    } else {
      backward_row_kernel<T, false>
          <<<grid, kThreads, 0, stream>>>(op, it, width, groups, x, dy, dx, p.ds_partial, p.dz_partial);
    }
  } else {
    it.count = d.B * k.P * d.C;
    it.merge = d.C == 1 && k.n_ib == 1;
    const dim3 grid = grid_for(it.count);
    if (aligned && run_rows_aligned(it, V)) {
      backward_run_kernel<T, true><<<grid, kThreads, 0, stream>>>(op, it, x, dy, dx, p.ds_partial, p.dz_partial);
    } else {
      backward_run_kernel<T, false><<<grid, kThreads, 0, stream>>>(op, it, x, dy, dx, p.ds_partial, p.dz_partial);
    }
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int fake_quant_learnable_forward(const LearnableForwardParams& p, void* stream) {
  if (p.dims.numel() == 0) return 0;
  const ForwardOp op{p.scale,
                     p.zero_point,
                     static_cast<float>(p.quant_min),
                     static_cast<float>(p.quant_max),
                     p.quant_min,
                     p.quant_max,
                     p.per_tensor};
  return by_dtype(p.dtype, [&](auto tag) {
    return launch_elementwise<decltype(tag)>(op, p.dims, p.x, nullptr, p.out, static_cast<cudaStream_t>(stream));
  });
}

int fake_quant_learnable_backward(const LearnableBackwardParams& p, void* stream) {
  if (p.dims.numel() == 0) return 0;
  const ReduceBlocks& k = p.blocks;
  // The partials come in pairs, and the kernels divide by the block sizes.
  if ((p.ds_partial == nullptr) != (p.dz_partial == nullptr)) return static_cast<int>(cudaErrorInvalidValue);
  if (p.ds_partial && (k.rows < 1 || k.chunk < 1 || k.n_ib < 1 || k.P < 1 ||
                       k.row_mode != (p.dims.I == 1 && p.dims.C > 1))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const GradOp op{p.scale, p.zero_point, static_cast<float>(p.quant_min), static_cast<float>(p.quant_max),
                  p.grad_factor, p.rule, p.use_fma};
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return by_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (p.ds_partial == nullptr) return launch_elementwise<T>(op, p.dims, p.x, p.dy, p.dx, s);
    return launch_backward<T>(p, op, s);
  });
}

}  // namespace cuda
}  // namespace qkernels
