// The CUDA execution model on fibers: see emulator.h.
#include "emulator.h"

#include <ucontext.h>

#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace qk_emu {
namespace {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 256 * 1024;

enum class State { Ready, Barrier, Shuffle, Exited };

struct Shuffle {
  unsigned int mask, delta;
  int width;
  size_t size;
  uint64_t value;
};

struct Thread {
  ucontext_t context;
  uint3 idx;
  State state;
  Shuffle shuffle;
};

// The block being run: its threads, the scheduler's context and the running thread.
struct Block {
  std::vector<Thread> threads;
  std::vector<std::unique_ptr<char[]>> stacks;  // kept between launches
  ucontext_t scheduler;
  uint3 idx;
  dim3 dim, grid;
  const std::function<void()>* body = nullptr;
  Thread* running = nullptr;
  bool reverse = false;  // the order of the current round (a member: getcontext makes locals unreliable)
};

Block block;
std::recursive_mutex launch_lock;  // __shared__ statics and `block` are process-wide
thread_local cudaError_t last_error = cudaSuccess;

void thread_main() {
  (*block.body)();
  block.running->state = State::Exited;  // uc_link returns to the scheduler
}

// Switches from the running thread back to the scheduler until it resumes this thread.
void wait(State state) {
  Thread* self = block.running;
  self->state = state;
  swapcontext(&self->context, &block.scheduler);
}

[[noreturn]] void fail(const std::string& what) {
  std::ostringstream s;
  s << "CUDA emulator: block (" << block.idx.x << ", " << block.idx.y << ", " << block.idx.z << "): " << what;
  throw std::runtime_error(s.str());
}

std::string thread_name(size_t t) {
  std::ostringstream s;
  s << "thread " << t << " (warp " << t / kWarp << ", lane " << t % kWarp << ")";
  return s.str();
}

const char* state_name(State s) {
  switch (s) {
    case State::Ready:
      return "running";
    case State::Barrier:
      return "waiting at __syncthreads";
    case State::Shuffle:
      return "waiting at __shfl_down_sync";
    case State::Exited:
      return "exited";
  }
  return "?";
}

// Completes the shuffle of warp w if every lane its mask names waits at it; true if it did.
bool complete_shuffle(size_t w) {
  const size_t first = w * kWarp, end = std::min(block.threads.size(), first + kWarp);
  const Thread* leader = nullptr;
  for (size_t t = first; t < end; ++t) {
    if (block.threads[t].state == State::Shuffle) {
      leader = &block.threads[t];
      break;
    }
  }
  if (!leader) return false;
  const Shuffle& s0 = leader->shuffle;
  for (size_t t = first; t < end; ++t) {
    const Thread& th = block.threads[t];
    const bool named = (s0.mask >> (t - first)) & 1u;
    if (th.state == State::Shuffle) {
      const Shuffle& s = th.shuffle;
      if (s.mask != s0.mask || s.width != s0.width || s.size != s0.size) {
        fail(thread_name(t) + " shuffles with another mask, width or size than its warp");
      }
      if (!named) fail(thread_name(t) + " shuffles with a mask that leaves it out");
    } else if (named) {  // (no thread is ready here: each ran until it stopped)
      fail(thread_name(t) + " is named by its warp's shuffle mask but is " + state_name(th.state));
    }
  }
  if (end - first < kWarp && (s0.mask >> (end - first)) != 0) fail("a shuffle mask names lanes past the block");
  if (s0.width <= 0 || s0.width > kWarp || (s0.width & (s0.width - 1)) != 0) fail("shuffle width is not a power of 2");
  std::vector<uint64_t> out(end - first);
  for (size_t lane = 0; lane < end - first; ++lane) {
    const Thread& th = block.threads[first + lane];
    if (th.state != State::Shuffle) continue;
    const size_t segment_lane = lane % s0.width, src = lane + th.shuffle.delta;
    if (segment_lane + th.shuffle.delta >= static_cast<size_t>(s0.width)) {
      out[lane] = th.shuffle.value;
    } else if (!((s0.mask >> src) & 1u)) {
      fail(thread_name(first + lane) + " reads lane " + std::to_string(src) + ", which is not in the mask");
    } else {
      out[lane] = block.threads[first + src].shuffle.value;
    }
  }
  for (size_t lane = 0; lane < end - first; ++lane) {
    Thread& th = block.threads[first + lane];
    if (th.state != State::Shuffle) continue;
    th.shuffle.value = out[lane];
    th.state = State::Ready;
  }
  return true;
}

// Every thread has stopped: opens the barrier or completes shuffles; false if none can.
bool release() {
  size_t exited = 0, at_barrier = 0;
  for (const Thread& t : block.threads) {
    exited += t.state == State::Exited;
    at_barrier += t.state == State::Barrier;
  }
  if (at_barrier > 0 && at_barrier + exited == block.threads.size()) {
    if (exited > 0) {
      fail(std::to_string(at_barrier) + " threads wait at __syncthreads while " + std::to_string(exited) +
           " have exited");
    }
    for (Thread& t : block.threads) t.state = State::Ready;
    return true;
  }
  bool any = false;
  for (size_t w = 0; w * kWarp < block.threads.size(); ++w) any = complete_shuffle(w) || any;
  return any;
}

[[noreturn]] void deadlock() {
  std::ostringstream s;
  s << "threads can never go on:";
  for (size_t t = 0; t < block.threads.size(); ++t) {
    if (t > 0 && block.threads[t].state == block.threads[t - 1].state) continue;
    s << " " << thread_name(t) << " " << state_name(block.threads[t].state) << ";";
  }
  fail(s.str());
}

// Runs the block's threads until every one has exited. Between two synchronization points the threads run one
// at a time, in thread order in even blocks and in reverse order in odd ones, alternating at each point: a read
// of another thread's write that lacks a barrier in between then sees the stale value in some blocks.
void run_block(uint3 idx, bool reverse) {
  block.idx = idx;
  block.reverse = reverse;
  const size_t n = block.threads.size();
  for (size_t t = 0; t < n; ++t) {
    Thread& th = block.threads[t];
    th.idx = {static_cast<unsigned int>(t % block.dim.x), static_cast<unsigned int>(t / block.dim.x % block.dim.y),
              static_cast<unsigned int>(t / (block.dim.x * block.dim.y))};
    th.state = State::Ready;
    getcontext(&th.context);
    th.context.uc_stack.ss_sp = block.stacks[t].get();
    th.context.uc_stack.ss_size = kStackBytes;
    th.context.uc_link = &block.scheduler;
    makecontext(&th.context, thread_main, 0);
  }
  for (;; block.reverse = !block.reverse) {
    for (size_t k = 0; k < n; ++k) {
      Thread& th = block.threads[block.reverse ? n - 1 - k : k];
      if (th.state != State::Ready) continue;
      block.running = &th;
      swapcontext(&block.scheduler, &th.context);
    }
    block.running = nullptr;
    bool all_exited = true;
    for (const Thread& th : block.threads) all_exited = all_exited && th.state == State::Exited;
    if (all_exited) return;
    if (!release()) deadlock();
  }
}

}  // namespace

const uint3& thread_idx() { return block.running->idx; }
const uint3& block_idx() { return block.idx; }
const dim3& block_dim() { return block.dim; }
const dim3& grid_dim() { return block.grid; }

void syncthreads() { wait(State::Barrier); }

uint64_t shuffle_down(unsigned int mask, uint64_t value, size_t size, unsigned int delta, int width) {
  block.running->shuffle = {mask, delta, width, size, value};
  wait(State::Shuffle);
  return block.running->shuffle.value;
}

void run_grid(dim3 grid, dim3 dim, const std::function<void()>& body) {
  const uint64_t threads = uint64_t(dim.x) * dim.y * dim.z;
  if (threads == 0 || threads > 1024 || dim.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  const std::lock_guard<std::recursive_mutex> lock(launch_lock);
  block.threads.assign(threads, Thread{});
  while (block.stacks.size() < threads) block.stacks.emplace_back(new char[kStackBytes]);
  block.dim = dim;
  block.grid = grid;
  block.body = &body;
  for (unsigned int z = 0; z < grid.z; ++z) {
    for (unsigned int y = 0; y < grid.y; ++y) {
      for (unsigned int x = 0; x < grid.x; ++x) run_block({x, y, z}, (x + y + z) % 2 == 1);
    }
  }
}

Launch::Launch(dim3 g, dim3 b, size_t, cudaStream_t) : grid(g), block(b) {}

}  // namespace qk_emu

cudaError_t cudaGetLastError() {
  const cudaError_t e = qk_emu::last_error;
  qk_emu::last_error = cudaSuccess;
  return e;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
  }
  return "unrecognized error code";
}
