// A CPU emulator of the CUDA execution model, so that the CUDA kernels (csrc/cuda/*.cu, compiled by the host
// compiler after tests/cuda_emulator.py rewrites their launches) run on machines without a GPU.
//
// A launch runs its blocks one after another. A block's threads are fibers (ucontext) on the calling thread,
// resumed one at a time (in thread order, or in reverse order: it alternates between blocks and between
// synchronization points, so that a missing barrier shows) until each one exits or waits at a __syncthreads()
// or a __shfl_down_sync(). A barrier
// opens once every thread of the block waits at it; a shuffle completes once every lane its mask names waits
// at it. What the hardware leaves undefined is an error here, raised by the launch as std::runtime_error:
//   - a barrier that some threads of the block wait at while others have exited (or wait at a shuffle);
//   - a shuffle whose mask names a lane that has exited, that waits at a barrier, or that is not the same
//     warp's; a calling lane missing from its own mask; lanes of one warp shuffling with different masks,
//     widths or value sizes; a source lane outside the mask;
//   - threads that can never go on (every thread waits, and no barrier or shuffle can complete).
// An invalid launch configuration (an empty grid or block, more than 1024 threads, a grid over CUDA's limits)
// runs nothing and sets the error that cudaGetLastError() returns, as CUDA does.
//
// __shared__ variables become function statics: one instance per kernel specialization, shared by the
// threads of the block running (blocks run one at a time, and launches are serialized by a process-wide
// lock). Device pointers are host pointers. The arithmetic is the host compiler's: with -ffp-contract=off
// it is what nvcc --fmad=false compiles, operation by operation (IEEE float add, multiply, divide, fmaf).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

struct float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

typedef struct CUstream_st* cudaStream_t;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};

cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);

namespace qk_emu {

const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
void syncthreads();
// Lane `lane`'s (within a width-wide segment) shuffle of `size` bytes at `value`, mask and delta as CUDA's;
// returns the bytes of the source lane's value, or of the caller's own when the source is past the segment.
uint64_t shuffle_down(unsigned int mask, uint64_t value, size_t size, unsigned int delta, int width);

// Runs body() as every thread of every block of the grid; for an invalid configuration nothing, and sets the
// error cudaGetLastError() returns. Throws std::runtime_error for the errors listed at the top.
void run_grid(dim3 grid, dim3 block, const std::function<void()>& body);

// kernel<<<grid, block, shared_bytes, stream>>>(args...) is rewritten as Launch(grid, block, shared_bytes,
// stream)([&](auto... a) { kernel(a...); }, args...): the kernel's template arguments are deduced from the
// launch arguments, as nvcc does. Dynamic shared memory is not emulated; the stream is ignored (launches run to
// completion before they return).
struct Launch {
  dim3 grid, block;
  Launch(dim3 g, dim3 b, size_t shared_bytes = 0, cudaStream_t stream = nullptr);
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, Args&&... args) const {
    // Copied once, as a launch copies its arguments to the device; every thread gets its own copy.
    const std::tuple<std::decay_t<Args>...> values(std::forward<Args>(args)...);
    run_grid(grid, block, [&] { std::apply(kernel, values); });
  }
};

}  // namespace qk_emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define threadIdx (::qk_emu::thread_idx())
#define blockIdx (::qk_emu::block_idx())
#define blockDim (::qk_emu::block_dim())
#define gridDim (::qk_emu::grid_dim())
#define warpSize 32

inline void __syncthreads() { ::qk_emu::syncthreads(); }

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

inline float __frcp_rn(float v) { return 1.0f / v; }

inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<uint64_t>(a) * b) >> 32);
}

template <typename T>
inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = 32) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffles move up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = ::qk_emu::shuffle_down(mask, bits, sizeof(T), delta, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
