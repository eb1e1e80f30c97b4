// Torch glue shared by the families' private CUDA ops (csrc/ops/<family>_cuda.cpp): device guard, stream,
// launch check, and the library the ops register in.
//
// Built with QKERNELS_CUDA_EMULATION=<library> (by tests/cuda_emulator.py, never by setup.py), the same glue runs
// the kernels under the CPU emulator of csrc/emu on CPU tensors, registered as <library>::_*_cuda (the launcher
// ops only), so that the tests cover the CUDA kernels and this glue on machines without a GPU.
#pragma once

#ifdef QKERNELS_CUDA_EMULATION
#include <c10/core/Device.h>
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif
#include <cuda_runtime.h>

#include "glue.h"

namespace qkernels {
namespace glue {

#ifdef QKERNELS_CUDA_EMULATION
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
inline void* current_stream() { return nullptr; }
#else
using DeviceGuard = c10::cuda::CUDAGuard;
inline void* current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }
#endif

inline void check_launch(int err) {
  TORCH_CHECK(err == 0, "qkernels CUDA kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

inline void check_cuda_flavour(int64_t flavour) {
  TORCH_CHECK(flavour == static_cast<int64_t>(Flavour::Cuda), "qkernels: the CUDA kernels implement the CUDA flavour");
}

}  // namespace glue
}  // namespace qkernels

// Registers a family's CUDA ops: IMPLS as in QKERNELS_REGISTER_LAUNCHERS, EAGER_SCHEMAS/EAGER_IMPLS as in
// QKERNELS_REGISTER_EAGER (on a GPU build only: the emulated library has the launcher ops alone).
#ifdef QKERNELS_CUDA_EMULATION
#define QKERNELS_REGISTER_CUDA(IMPLS, EAGER_SCHEMAS, EAGER_IMPLS) \
  QKERNELS_REGISTER_LAUNCHERS(QKERNELS_CUDA_EMULATION, cuda, CPU, IMPLS)
#else
#define QKERNELS_REGISTER_CUDA(IMPLS, EAGER_SCHEMAS, EAGER_IMPLS) \
  QKERNELS_REGISTER_LAUNCHERS(qkernels, cuda, CUDA, IMPLS)        \
  QKERNELS_REGISTER_EAGER(cuda, EAGER_SCHEMAS, EAGER_IMPLS)
#endif
