// Host test of the CUDA emulator (emulator.h): what the kernels rely on works as on a GPU, and what the
// hardware leaves undefined is an error. Run by ctest; kernels are launched with qk_emu::Launch directly.
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "emulator.h"

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

// Expects the launch to throw an error whose message contains `needle`.
template <typename Fn>
void check_throws(Fn launch, const char* needle, const char* what) {
  try {
    launch();
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()).find(needle) != std::string::npos) return;
    std::printf("FAIL: %s: wrong error: %s\n", what, e.what());
    ++failures;
    return;
  }
  std::printf("FAIL: %s: no error\n", what);
  ++failures;
}

// Block sum of threadIdx.x: shuffle tree within warps, then warp sums through shared memory.
__global__ void block_sum(int* out) {
  __shared__ int warp_sums[32];
  int v = static_cast<int>(threadIdx.x);
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (unsigned int w = 0; w < blockDim.x / 32; ++w) total += warp_sums[w];
    out[blockIdx.x] = total;
  }
}

// Each lane's value after one shuffle down by 3 within segments of 8 lanes.
__global__ void segment_shuffle(int* out) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<int>(threadIdx.x) * 10, 3, 8);
}

// Every thread of a 3-d grid of 3-d blocks marks its global index.
__global__ void mark(int* hits) {
  const unsigned int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const unsigned int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  ++hits[block * (blockDim.x * blockDim.y * blockDim.z) + thread];
}

// Neighbours' writes are visible after the barrier, and not before it has opened for everyone.
__global__ void rotate(const int* in, int* out) {
  __shared__ int s[64];
  s[threadIdx.x] = in[blockIdx.x * 64 + threadIdx.x];
  __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

// Each thread's turn within its block in two consecutive rounds (between barriers).
__global__ void turns(int* first, int* second) {
  __shared__ int counters[2];
  if (threadIdx.x == 0) counters[0] = counters[1] = 0;
  __syncthreads();
  first[blockIdx.x * blockDim.x + threadIdx.x] = counters[0]++;
  __syncthreads();
  second[blockIdx.x * blockDim.x + threadIdx.x] = counters[1]++;
}

// Thread t reads what thread t + 1 wrote, without a barrier in between (a bug the order must expose).
__global__ void missing_barrier(int* out) {
  __shared__ int s[33];
  s[threadIdx.x] = static_cast<int>(blockIdx.x * 100 + threadIdx.x);
  s[32] = -1;
  out[blockIdx.x * 32 + threadIdx.x] = s[threadIdx.x + 1];
}

__global__ void barrier_after_early_exit(int n) {
  if (static_cast<int>(threadIdx.x) >= n) return;
  __syncthreads();
}

__global__ void shuffle_after_early_exit(int n) {
  if (static_cast<int>(threadIdx.x) >= n) return;
  (void)__shfl_down_sync(0xffffffffu, 1.0f, 1);
}

__global__ void shuffle_against_barrier() {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    (void)__shfl_down_sync(0xffffffffu, 1.0f, 1);
  }
}

__global__ void shuffle_outside_own_mask() { (void)__shfl_down_sync(0x0000ffffu, 1.0f, 1); }

}  // namespace

int main() {
  std::vector<int> sums(3, -1);
  qk_emu::Launch(3, 256)(block_sum, sums.data());
  check(sums == std::vector<int>(3, 255 * 256 / 2), "block sum of threadIdx.x over shuffles and shared memory");

  std::vector<int> lanes(32, -1);
  qk_emu::Launch(1, 32)(segment_shuffle, lanes.data());
  bool segments_ok = true;
  for (int lane = 0; lane < 32; ++lane) {
    segments_ok = segments_ok && lanes[lane] == (lane % 8 + 3 < 8 ? lane + 3 : lane) * 10;
  }
  check(segments_ok, "shuffle down within width-8 segments keeps the caller's value past the segment");

  std::vector<int> hits(2 * 3 * 2 * (4 * 2 * 3), 0);
  qk_emu::Launch(dim3(2, 3, 2), dim3(4, 2, 3))(mark, hits.data());
  check(hits == std::vector<int>(hits.size(), 1), "every thread of a 3-d grid runs once with its indices");

  std::vector<int> in(128), out(128, -1);
  for (int i = 0; i < 128; ++i) in[i] = i * 7;
  qk_emu::Launch(2, 64)(rotate, in.data(), out.data());
  bool rotated = true;
  for (int i = 0; i < 128; ++i) rotated = rotated && out[i] == in[i / 64 * 64 + (i % 64 + 1) % 64];
  check(rotated, "shared memory written before a barrier is read after it");

  std::vector<int> first(64), second(64);
  qk_emu::Launch(2, 32)(turns, first.data(), second.data());
  bool alternating = true;
  for (int t = 0; t < 32; ++t) {  // block 0 starts in thread order, block 1 reversed; each round turns around
    alternating = alternating && first[t] == 31 - t && second[t] == t && first[32 + t] == t && second[32 + t] == 31 - t;
  }
  check(alternating, "threads run in thread order or reversed, alternating between blocks and barriers");

  std::vector<int> racy(64);
  qk_emu::Launch(2, 32)(missing_barrier, racy.data());
  bool stale = false;
  for (int t = 0; t < 31; ++t) stale = stale || racy[32 * 0 + t] != t + 1 || racy[32 * 1 + t] != 100 + t + 1;
  check(stale, "a read of a neighbour's write without a barrier sees a stale value in some block");

  check_throws([] { qk_emu::Launch(1, 64)(barrier_after_early_exit, 40); }, "have exited",
               "a barrier reached by some threads while others exited");
  qk_emu::Launch(1, 64)(barrier_after_early_exit, 64);  // all reach it: fine
  check_throws([] { qk_emu::Launch(1, 32)(shuffle_after_early_exit, 20); }, "is named by its warp's shuffle mask",
               "a full-mask shuffle after some lanes exited");
  check_throws([] { qk_emu::Launch(1, 32)(shuffle_against_barrier); }, "waiting at __syncthreads",
               "lanes of one warp at a barrier and at a shuffle");
  check_throws([] { qk_emu::Launch(1, 32)(shuffle_outside_own_mask); }, "leaves it out",
               "a lane shuffling with a mask that leaves it out");

  check(cudaGetLastError() == cudaSuccess, "no error before an invalid launch");
  int untouched = 0;
  qk_emu::Launch(0, 32)(mark, &untouched);
  check(untouched == 0 && cudaGetLastError() == cudaErrorInvalidConfiguration, "an empty grid runs nothing and errs");
  check(cudaGetLastError() == cudaSuccess, "cudaGetLastError clears the error");
  qk_emu::Launch(1, 2048)(mark, &untouched);
  check(untouched == 0 && cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads per block err");

  if (failures) return 1;
  std::printf("CUDA emulator: all checks passed\n");
  return 0;
}
