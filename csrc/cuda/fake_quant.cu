// CUDA fake-quant kernels on raw pointers (no torch). The per-element math is qkernels/fake_quant_math.h,
// always the Cuda flavour here. Memory-bound: each thread moves one 16-byte vector of x and out (4 fp32 or
// 8 fp16/bf16 elements) and the matching mask bytes; the last partial vector is handled element-wise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "qkernels/fake_quant_kernels.h"
#include "element_io.cuh"

namespace qkernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// The mask bytes of one vector.
template <int N>
struct alignas(N) MaskVec {
  uint8_t v[N];
};

// Applies y = op(ctx, i, x, mask) to every element i, with ctx = setup(first element of the thread's
// vector), or setup(i) on the element-wise tail. setup holds what a whole vector shares (a channel's qparams),
// so it is loaded once per vector. Vectorized over whole 16-byte vectors when kAligned. The mask is one byte
// per element, or with `packed` one bit: a thread's V bits are half a byte (fp32, V = 4: the even lane of a
// pair writes both halves) or a whole byte (16-bit types, V = 8). `packed` is uniform over the grid and no
// thread leaves before the shuffle.
template <typename T, bool kAligned, typename Setup, typename Op>
__device__ __forceinline__ void elementwise(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ mask,
                                            bool packed, int64_t n, Setup setup, Op op) {
  constexpr int V = Vec<T>::kSize;
  static_assert(V == 4 || V == 8, "a packed mask byte spans one or two threads");
  const int64_t base = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * V;
  uint32_t bits = 0;
  if (base < n && kAligned && base + V <= n) {
    const Vec<T> xv = *reinterpret_cast<const Vec<T>*>(x + base);
    const auto ctx = setup(base);
    Vec<T> yv;
    MaskVec<V> mv;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      bool m;
      yv.v[j] = from_float<T>(op(ctx, base + j, to_float(xv.v[j]), m));
      mv.v[j] = m;
      bits |= static_cast<uint32_t>(m) << j;
    }
    *reinterpret_cast<Vec<T>*>(y + base) = yv;
    if (mask && !packed) *reinterpret_cast<MaskVec<V>*>(mask + base) = mv;
  } else if (base < n) {
    const int64_t end = base + V < n ? base + V : n;
    for (int64_t i = base; i < end; ++i) {
      bool m;
      y[i] = from_float<T>(op(setup(i), i, to_float(x[i]), m));
      if (mask && !packed) mask[i] = m;
      bits |= static_cast<uint32_t>(m) << (i - base);
    }
  }
  if (mask && packed) {
    if (V == 4) bits |= __shfl_down_sync(0xffffffffu, bits, 1) << 4;
    if (base < n && (V == 8 || (threadIdx.x & 1) == 0)) mask[base / 8] = static_cast<uint8_t>(bits);
  }
}

struct Nothing {};
__device__ __forceinline__ Nothing no_setup(int64_t) { return {}; }

template <typename T, bool kAligned>
__global__ void __launch_bounds__(kThreads) per_tensor_kernel(PerTensorParams p) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.out);
  float scale = p.scale;
  int64_t z = p.zero_point;
  bool enabled = p.enabled;
  // Tensor qparams are read on the device, so the host never waits for them.
  if (p.scale_ptr) scale = *p.scale_ptr;
  if (p.zero_point_ptr) z = *p.zero_point_ptr;
  if (p.enabled_ptr) enabled = *p.enabled_ptr != 0;
  const float inv = 1.0f / scale;
  const float lo = static_cast<float>(p.quant_min), hi = static_cast<float>(p.quant_max);
  if (enabled) {
    elementwise<T, kAligned>(x, y, p.mask, p.mask_packed, p.numel, no_setup,
                             [=] __device__(Nothing, int64_t, float v, bool& m) {
                               return fq_per_tensor<Flavour::Cuda, false>(v, scale, inv, z, lo, hi, m);
                             });
  } else {
    elementwise<T, kAligned>(x, y, p.mask, p.mask_packed, p.numel, no_setup,
                             [=] __device__(Nothing, int64_t, float v, bool& m) {
                               m = true;
                               return v;
                             });
  }
}

// Channel of storage offset i: (i / inner) % channels, with multiply-shift division below 2^31 elements.
struct ChannelIndex {
  FastDivmod inner, channels;
  int64_t inner64, channels64;
  bool small;
  __device__ __forceinline__ int64_t operator()(int64_t i) const {
    if (small) return channels.mod(inner.div(static_cast<uint32_t>(i)));
    return (i / inner64) % channels64;
  }
};

// One channel's qparams as the per-element math takes them. __frcp_rn is the IEEE reciprocal: equal to
// 1.0f / s, and cheaper.
template <typename Z>
struct ChannelQParams {
  float scale, inv_scale;
  Z zero_point;
};

template <typename Z>
__device__ __forceinline__ ChannelQParams<Z> channel_qparams(const PerChannelParams& p, const Z* zp,
                                                             const ChannelIndex& channel, int64_t i) {
  const int64_t c = channel(i);
  const float s = __ldg(p.scale + c);
  return {s, __frcp_rn(s), __ldg(zp + c)};
}

// kUniform: inner is a multiple of the vector width, so a whole vector lies in one channel and its qparams
// are loaded once per vector (setup); otherwise once per element.
template <typename T, bool kAligned, bool kUniform, typename Z>
__device__ __forceinline__ void per_channel(const PerChannelParams& p, const ChannelIndex& channel, const Z* zp) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.out);
  const int64_t qmin = p.quant_min, qmax = p.quant_max;
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  const auto math = [=] __device__(const ChannelQParams<Z>& q, float v, bool& m) {
    if constexpr (std::is_floating_point<Z>::value) {
      return fq_per_channel_float_zp<Flavour::Cuda>(v, q.scale, q.inv_scale, q.zero_point, lo, hi, true, m);
    } else {
      return fq_per_channel_int_zp<Flavour::Cuda, false>(v, q.scale, q.inv_scale, q.zero_point, qmin, qmax, m);
    }
  };
  if (kUniform) {
    elementwise<T, kAligned>(
        x, y, p.mask, p.mask_packed, p.numel, [=] __device__(int64_t i) { return channel_qparams(p, zp, channel, i); },
        [=] __device__(const ChannelQParams<Z>& q, int64_t, float v, bool& m) { return math(q, v, m); });
  } else {
    elementwise<T, kAligned>(x, y, p.mask, p.mask_packed, p.numel, no_setup,
                             [=] __device__(Nothing, int64_t i, float v, bool& m) {
                               return math(channel_qparams(p, zp, channel, i), v, m);
                             });
  }
}

template <typename T, bool kAligned, bool kUniform>
__global__ void __launch_bounds__(kThreads) per_channel_kernel(PerChannelParams p, ChannelIndex channel) {
  if (p.zero_point_i) {
    per_channel<T, kAligned, kUniform>(p, channel, p.zero_point_i);
  } else {
    per_channel<T, kAligned, kUniform>(p, channel, p.zero_point_f);
  }
}

// out = grad * mask: the mask bytes of a vector are loaded as one MaskVec, or its bits as one byte.
template <typename T, bool kAligned>
__global__ void __launch_bounds__(kThreads) backward_kernel(BackwardParams p) {
  constexpr int V = Vec<T>::kSize;
  const T* g = static_cast<const T*>(p.grad);
  T* out = static_cast<T*>(p.out);
  const int64_t base = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * V;
  if (base >= p.numel) return;
  const auto keep = [&](int64_t i) { return p.mask_packed ? (p.mask[i >> 3] >> (i & 7)) & 1 : p.mask[i]; };
  if (kAligned && base + V <= p.numel) {
    const Vec<T> gv = *reinterpret_cast<const Vec<T>*>(g + base);
    MaskVec<V> mv;
    if (p.mask_packed) {
      const uint32_t bits = p.mask[base >> 3] >> (base & 7);
#pragma unroll
      for (int j = 0; j < V; ++j) mv.v[j] = (bits >> j) & 1;
    } else {
      mv = *reinterpret_cast<const MaskVec<V>*>(p.mask + base);
    }
    Vec<T> ov;
#pragma unroll
    for (int j = 0; j < V; ++j) ov.v[j] = from_float<T>(to_float(gv.v[j]) * (mv.v[j] ? 1.0f : 0.0f));
    *reinterpret_cast<Vec<T>*>(out + base) = ov;
  } else {
    const int64_t end = base + V < p.numel ? base + V : p.numel;
    for (int64_t i = base; i < end; ++i) out[i] = from_float<T>(to_float(g[i]) * (keep(i) ? 1.0f : 0.0f));
  }
}

// The mask moves in chunks of V bytes, so its alignment must match.
bool aligned_n(const void* p, int n) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) % n) == 0; }

template <typename T>
dim3 grid_for(int64_t n) {
  const int64_t per_block = int64_t(kThreads) * Vec<T>::kSize;
  return dim3(static_cast<unsigned>((n + per_block - 1) / per_block));
}

template <typename T, typename Launch>
int launch_typed(int64_t n, bool aligned, void* stream, Launch launch) {
  if (n == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  if (aligned) {
    launch(std::integral_constant<bool, true>{}, grid_for<T>(n), s);
  } else {
    launch(std::integral_constant<bool, false>{}, grid_for<T>(n), s);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int fake_quant_per_tensor(const PerTensorParams& p, void* stream) {
  return by_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool aligned = aligned16(p.x) && aligned16(p.out) && (p.mask_packed || aligned_n(p.mask, Vec<T>::kSize));
    return launch_typed<T>(p.numel, aligned, stream, [&](auto al, dim3 grid, cudaStream_t s) {
      per_tensor_kernel<T, decltype(al)::value><<<grid, kThreads, 0, s>>>(p);
    });
  });
}

int fake_quant_per_channel(const PerChannelParams& p, void* stream) {
  ChannelIndex channel;
  channel.inner64 = p.inner;
  channel.channels64 = p.channels;
  channel.small = p.numel < kIndex32Limit;
  if (channel.small) {
    channel.inner = FastDivmod(static_cast<uint32_t>(p.inner));
    channel.channels = FastDivmod(static_cast<uint32_t>(p.channels));
  }
  return by_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool aligned = aligned16(p.x) && aligned16(p.out) && (p.mask_packed || aligned_n(p.mask, Vec<T>::kSize));
    const bool uniform = p.inner % Vec<T>::kSize == 0;
    return launch_typed<T>(p.numel, aligned, stream, [&](auto al, dim3 grid, cudaStream_t s) {
      if (uniform) {
        per_channel_kernel<T, decltype(al)::value, true><<<grid, kThreads, 0, s>>>(p, channel);
      } else {
        per_channel_kernel<T, decltype(al)::value, false><<<grid, kThreads, 0, s>>>(p, channel);
      }
    });
  });
}

int fake_quant_backward(const BackwardParams& p, void* stream) {
  return by_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool aligned = aligned16(p.grad) && aligned16(p.out) && (p.mask_packed || aligned_n(p.mask, Vec<T>::kSize));
    return launch_typed<T>(p.numel, aligned, stream, [&](auto al, dim3 grid, cudaStream_t s) {
      backward_kernel<T, decltype(al)::value><<<grid, kThreads, 0, s>>>(p);
    });
  });
}

}  // namespace cuda
}  // namespace qkernels
